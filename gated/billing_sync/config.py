"""Configuration models for ``billing.toml`` (the head office), validated at the edge with
pydantic; a bad file raises :class:`~gated.config.ConfigError` with one line naming the field.
A gate's ``gated.toml`` is checked without pydantic (:mod:`gated.config`)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gated.config import (
    _ID,
    ConfigError,
    check_mqtt_url,
    check_timezone,
    format_validation_error,
    load_toml,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_file(model: type[ModelT], path: str | Path) -> ModelT:
    """Read a TOML file into ``model``; ConfigError with one line naming the field."""
    data = load_toml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class BillingKeysConfig(_Section):
    head_office_private_key_file: Path = Path("/etc/gated/head-office.pem")
    credential_key_file: Path = Path("/etc/gated/credential.key")
    card_encryption_key_file: Path = Path("/etc/gated/cards.key")
    # Signs the console's pulse and lockdown commands; gates list its .pub in
    # desk_command_public_key_files. Unset: the console cannot open gates.
    desk_command_private_key_file: Path | None = None


# Stripe's minimum charge amounts (minor units; its "minimum and maximum charge amounts" table):
# it refuses a PaymentIntent below them. A currency not listed: MINIMUM_CHARGE_OTHER.
MINIMUM_CHARGE: dict[str, int] = {
    "AUD": 50,
    "BRL": 50,
    "CAD": 50,
    "CHF": 50,
    "CZK": 1500,
    "DKK": 250,
    "EUR": 50,
    "GBP": 30,
    "HKD": 400,
    "HUF": 17500,
    "JPY": 50,
    "MXN": 1000,
    "NOK": 300,
    "NZD": 50,
    "PLN": 200,
    "RON": 200,
    "SEK": 300,
    "SGD": 50,
    "USD": 50,
}
MINIMUM_CHARGE_OTHER = 50


class DunningConfig(_Section):
    grace_days: int = Field(default=3, ge=0, le=60)
    suspend_min_owed: int = Field(default=0, ge=0)
    max_grace_days: int = Field(default=14, ge=0, le=90)
    collections_days: int = Field(default=30, ge=1, le=365)
    # Visa allows 15 reattempts in 30 days, Mastercard 10 in 24 h: a handful of retries stays
    # well under every network's cap.
    retry_days: list[int] = Field(default_factory=lambda: [3, 7], max_length=8)
    # The smallest charge the processor takes, per currency (minor units), over the defaults in
    # MINIMUM_CHARGE: a rest below it is never sent to the processor (see
    # refunds.write_off_below_minimum).
    minimum_charge: dict[str, int] = Field(default_factory=dict)

    @field_validator("minimum_charge")
    @classmethod
    def _minimums(cls, v: dict[str, int]) -> dict[str, int]:
        for currency, amount in v.items():
            if not re.match(r"^[A-Z]{3}$", currency) or amount < 0:
                raise ValueError(
                    f"{currency} = {amount}: give an upper-case currency code and an amount in"
                    " minor units, 0 or more (e.g. EUR = 50)"
                )
        return v

    def minimum_for(self, currency: str) -> int:
        """The smallest amount of ``currency`` (minor units) the processor is asked to charge."""
        return self.minimum_charge.get(currency, MINIMUM_CHARGE.get(currency, MINIMUM_CHARGE_OTHER))

    @field_validator("retry_days")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v) or v != sorted(set(v)):
            raise ValueError("must be strictly increasing positive day counts, e.g. [3, 7]")
        return v

    @model_validator(mode="after")
    def _collections_after_retries(self) -> DunningConfig:
        # Collections ends dunning: a retry scheduled on or after it would never be made, and
        # the notice before it would promise one.
        if self.retry_days and self.collections_days <= self.retry_days[-1]:
            raise ValueError(
                f"collections_days ({self.collections_days}) must be after the last of"
                f" retry_days ({self.retry_days[-1]})"
            )
        return self


class StripeConfig(_Section):
    api_key_file: Path
    webhook_secret_file: Path | None = None
    api_base: str | None = None
    max_requests_per_s: float = Field(default=25.0, gt=0, le=100)
    # Calls a billing cycle keeps in flight: one at a time, a round trip each, is ~2-3 charges/s.
    concurrency: int = Field(default=8, ge=1, le=32)
    max_retries: int = Field(default=4, ge=0, le=10)
    # Live Stripe needs renewals confirmed as merchant-initiated; a local fake may reject it.
    off_session: bool = True
    # Stripe.js in the member app (card entry, 3-D Secure): the publishable key (pk_...) and
    # where the script is loaded from (Stripe's own address; a local fake's in tests).
    publishable_key: str | None = None
    js_url: str = "https://js.stripe.com/v3/"


class BillingMqttConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = "gated-billing"

    _scheme = field_validator("url")(check_mqtt_url)


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    # Addresses (or networks) of reverse proxies whose X-Forwarded-For names the real client;
    # rate limits count per client, so without this every member behind a proxy is one client.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return v


class SmtpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "billing@gym.example"
    username: str | None = None
    password_file: Path | None = None
    starttls: bool = False


class AppConfig(_Section):
    """``[app]``: the member app served under /app/."""

    # How long a member stays signed in on one device.
    session_days: int = Field(default=30, ge=1, le=365)
    # How often the pass shows a fresh QR code, in seconds; a gate's qr_window_s should be at
    # least twice this.
    qr_refresh_s: int = Field(default=10, ge=1, le=300)
    # The membership terms a sign-up accepts (first line "Version: ..."); unset: the shipped
    # default in gated/web/terms/.
    terms_file: Path | None = None


class ServeConfig(_Section):
    """``[serve]``: how ``gated-billing serve`` runs its parts."""

    # Where the billing cycles (renewals, retries, dunning) run. "in-process": threads of serve,
    # sharing its interpreter lock with the web (a 100k-member cycle slows every member's
    # request); "own-process": a child process serve starts, restarts when it dies and stops
    # with itself; "off": serve runs none (`gated-billing run --every SECONDS`, or cron's
    # `gated-billing run`, does them).
    cycles: Literal["in-process", "own-process", "off"] = "in-process"
    # With "own-process": how much nicer (lower CPU priority) than serve the cycle process runs.
    # On a busy host the members' requests get the cores first and the cycle the rest; on an
    # idle one the cycle runs as fast as at serve's priority. 0 runs both alike.
    cycle_nice: int = Field(default=10, ge=0, le=19)
    # With "own-process": the fraction of its wall time the cycle process may be busy. After
    # each batch it rests in proportion to the batch's wall time (at 0.5 as long again), so the
    # members' requests get the cores and the store between batches. Niceness cannot do this on
    # PostgreSQL: the cycle's SQL runs in a server process serve cannot renice. 1 never rests.
    cycle_share: float = Field(default=0.5, ge=0.05, le=1)
    # Where the MQTT publisher (reading, signing and publishing member states and manifests)
    # runs: "in-process" (serve's event loop), or "own-process" (a child serve starts, restarts
    # and stops, woken through a pipe; serve keeps the gates' events and statuses). Unset: as
    # the cycles ("own-process" with cycles = "own-process"), since a child's 100,000 renewals
    # are what would fill serve's loop.
    publisher: Literal["in-process", "own-process"] | None = None


class NoticesConfig(_Section):
    """``[notices]``: reminders sent ahead of time (0 turns one off)."""

    # Days before a renewal that the member is told the amount and the date.
    upcoming_charge_days: int = Field(default=7, ge=0, le=60)
    # Days before the card on file expires that its owner is asked for a new one.
    card_expiry_days: int = Field(default=30, ge=0, le=90)


class SiteConfig(_Section):
    """``[sites.<id>]``: what invoices, heatmaps and the nightly occupancy reset need of a site."""

    name: str | None = None
    address: str | None = None
    tax_id: str | None = None
    timezone: str = "UTC"
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")

    _zone = field_validator("timezone")(check_timezone)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class BillingConfig(_Section):
    database_url: str = "sqlite:///billing.db"
    state_dir: Path = Path("/var/lib/gated-billing")
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    sites: list[str] = Field(min_length=1)
    gateway: Literal["simulated", "stripe"] = "simulated"
    cycle_interval_s: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=200, ge=1, le=10000)
    # On SQLite: a cycle's batch shrinks (from batch_size, to 20 at the fewest) while its write
    # transactions hold the one write lock longer than this, which every other writer (a
    # member's form, the front desk) waits for.
    batch_hold_ms: int = Field(default=100, ge=10, le=60_000)
    durability: Literal["crash", "power"] = "crash"
    # A line sold "on the next invoice" waits at most this many days for the renewal; then it
    # is billed on its own (a renewal held back by a freeze, a dispute, an unpaid invoice).
    next_invoice_max_days: int = Field(default=35, ge=1, le=400)
    keys: BillingKeysConfig = Field(default_factory=BillingKeysConfig)
    dunning: DunningConfig = Field(default_factory=DunningConfig)
    stripe: StripeConfig | None = None
    mqtt: BillingMqttConfig | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    smtp: SmtpConfig | None = None
    app: AppConfig = Field(default_factory=AppConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    notices: NoticesConfig = Field(default_factory=NoticesConfig)
    # Filled from ``[sites.<id>]`` tables; ``sites = ["a", "b"]`` leaves it empty (defaults).
    site_settings: dict[str, SiteConfig] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _site_tables(cls, data: Any) -> Any:
        """``sites`` is a list of ids, or ``[sites.<id>]`` tables whose keys are the ids."""
        if isinstance(data, dict) and "site_settings" in data:
            raise ValueError("site_settings: unknown setting (use [sites.<id>] tables)")
        if isinstance(data, dict) and isinstance(data.get("sites"), dict):
            tables = data["sites"]
            data = {**data, "sites": list(tables), "site_settings": tables}
        return data

    def site(self, site_id: str) -> SiteConfig:
        """A site's settings (its id as its name, UTC and the head office's currency when it
        has no ``[sites.<id>]`` table)."""
        found = self.site_settings.get(site_id)
        if found is None:
            found = SiteConfig()
        return found.model_copy(
            update={"name": found.name or site_id, "currency": found.currency or self.currency}
        )

    @field_validator("sites")
    @classmethod
    def _site_ids(cls, v: list[str]) -> list[str]:
        for site in v:
            if not re.match(_ID, site):
                raise ValueError(f"site id {site!r} must match {_ID}")
        return v

    def model_post_init(self, __context: Any) -> None:
        if self.gateway == "stripe" and self.stripe is None:
            raise ValueError('gateway = "stripe" needs a [stripe] section with api_key_file')


def load_billing_config(path: str | Path) -> BillingConfig:
    """Load and validate ``billing.toml``; relative paths are taken from the file's folder."""
    config = validate_file(BillingConfig, path)
    base = Path(path).resolve().parent

    def fix(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    config.state_dir = fix(config.state_dir)
    keys = config.keys
    keys.head_office_private_key_file = fix(keys.head_office_private_key_file)
    keys.credential_key_file = fix(keys.credential_key_file)
    keys.card_encryption_key_file = fix(keys.card_encryption_key_file)
    if keys.desk_command_private_key_file is not None:
        keys.desk_command_private_key_file = fix(keys.desk_command_private_key_file)
    for section, names in (
        (config.stripe, ("api_key_file", "webhook_secret_file")),
        (config.mqtt, ("password_file", "ca_file", "cert_file", "key_file")),
        (config.smtp, ("password_file",)),
        (config.app, ("terms_file",)),
    ):
        for name in names:
            value = getattr(section, name, None) if section is not None else None
            if value is not None:
                setattr(section, name, fix(value))
    prefix = "sqlite:///"
    if config.database_url.startswith(prefix) and not config.database_url.startswith(prefix + "/"):
        relative = config.database_url[len(prefix) :]
        config.database_url = prefix + str(fix(Path(relative)))
    return config
