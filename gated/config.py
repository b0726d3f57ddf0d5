"""Configuration models for ``gated.toml``, validated at the edge.

A bad file raises :class:`ConfigError` with one line that names the field and the problem; the CLI
prints that line and exits 2.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gated.errors import GatedError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ID = r"^[A-Za-z0-9_-]{1,64}$"


class ConfigError(GatedError):
    """A configuration file that cannot be used; the message is one line for a human."""


def parse_duration(value: str | int | float) -> float:
    """``"72h"``, ``"30s"``, ``"1500ms"``, ``"3d"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 72h, 3d)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 72h, 3d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeysConfig(_Section):
    credential_key_file: Path = Path("/etc/gated/credential.key")
    head_office_public_key_files: list[Path] = Field(
        default_factory=lambda: [Path("/etc/gated/head-office.pub")]
    )
    command_public_key_files: list[Path] = Field(default_factory=list)
    # The staff console's desk key: trusted for pulse and lockdown only (DESIGN, GateCommand).
    desk_command_public_key_files: list[Path] = Field(default_factory=list)


class MqttConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    heartbeat_s: float = Field(default=30.0, gt=0)
    client_id: str | None = None
    # How long a link may be silent before it is given up (None: twice heartbeat_s, at least 5 s),
    # how long a CONNECT may wait for the broker's CONNACK, and the reconnect backoff's cap.
    keepalive_s: int | None = Field(default=None, ge=1, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    backoff_max_s: float = Field(default=60.0, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        match = re.match(r"^mqtts?://[^/:]+(?::(\d+))?/?$", v)
        if not match:
            raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        if match.group(1) is not None and not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(f"port {match.group(1)} is not a TCP port (1-65535)")
        return v


class HeadOfficeConfig(_Section):
    snapshot_url: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None

    @field_validator("snapshot_url")
    @classmethod
    def _snapshot_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?://[^/\s]+/\S*|file:///\S+)$", v):
            raise ValueError("must be an https:// (or http://) URL, or file:///PATH")
        return v


class PolicyConfig(_Section):
    anti_passback_s: float = Field(default=0, ge=0)
    daily_limit: int | None = Field(default=None, ge=0)
    max_offline: float = 72 * 3600.0
    qr_window_s: float = Field(default=30, gt=0, le=600)

    @field_validator("max_offline", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class ControlConfig(_Section):
    """What the control socket lets its clients hold: far below systemd's 1024 descriptors, so a
    flood of connections never starves the broker link or the cache of file descriptors."""

    max_connections: int = Field(default=64, ge=2, le=256)
    # A connection with no request started for idle_timeout_s is closed; a request line must
    # arrive whole within request_timeout_s of its first byte, and a reply be taken as fast.
    idle_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)


class DoorConfig(_Section):
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] = "mock"
    relay_pin: int = 17
    green_led_pin: int = 27
    red_led_pin: int = 22
    buzzer_pin: int = 23
    door_contact_pin: int | None = None
    exit_button_pin: int | None = None
    fire_input_pin: int | None = None
    passage_sensor_pin: int | None = None
    relay_active_high: bool = True
    pulse_ms: int = Field(default=3000, gt=0, le=60000)
    held_open_s: float = Field(default=30, gt=0)


class _ReaderBase(_Section):
    id: str | None = Field(default=None, pattern=_ID)
    direction: Literal["in", "out"] = "in"
    debounce_ms: int = Field(default=1500, ge=0)


class SimReaderConfig(_ReaderBase):
    """Fed through the control socket (``gatectl badge``); the demo and tests use it."""

    kind: Literal["sim"] = "sim"


class PcscReaderConfig(_ReaderBase):
    """A CCID reader (ACR122U, ACR1252, ...) through pcscd; the UID comes from GET DATA."""

    kind: Literal["pcsc"] = "pcsc"
    reader_name: str = ""  # a substring of the PC/SC reader name; empty = the first reader


NfcTarget = Literal["106A", "106B", "212F", "424F"]  # ISO 14443 A/B, FeliCa 212/424 kbit/s
NFC_DEFAULT_TARGETS: tuple[NfcTarget, ...] = ("106A", "106B", "212F")


class NfcReaderConfig(_ReaderBase):
    """An nfcpy device (PN532 over UART/I2C/USB, ...); pcscd must not own the same device."""

    kind: Literal["nfc"] = "nfc"
    path: str = Field(default="usb", min_length=1)  # "usb", "tty:AMA0:pn532", "udp:HOST:PORT"
    targets: list[NfcTarget] = Field(
        default_factory=lambda: list(NFC_DEFAULT_TARGETS), min_length=1
    )


class SerialQrReaderConfig(_ReaderBase):
    """A USB-CDC or RS-232 QR scanner sending one code per line (CR and/or LF)."""

    kind: Literal["serial_qr"] = "serial_qr"
    port: str = Field(default="/dev/ttyACM0", min_length=1)
    baudrate: int = Field(default=9600, gt=0)
    max_length: int = Field(default=512, gt=0, le=65536)


class HidQrReaderConfig(_ReaderBase):
    """A keyboard-wedge QR scanner, grabbed exclusively through evdev."""

    kind: Literal["hid_qr"] = "hid_qr"
    device: str = Field(min_length=1)  # /dev/input/by-id/... path or the device name
    max_length: int = Field(default=512, gt=0, le=65536)


class WiegandReaderConfig(_ReaderBase):
    """A Wiegand reader on two GPIO inputs (BCM numbers); 26- and 34-bit frames."""

    kind: Literal["wiegand"] = "wiegand"
    d0_pin: int = Field(ge=0, le=53)
    d1_pin: int = Field(ge=0, le=53)
    byte_order: Literal["as_sent", "reversed"] = "as_sent"  # "reversed" if PC/SC shows it backwards
    frame_timeout_ms: int = Field(default=20, ge=5, le=200)

    @field_validator("d1_pin")
    @classmethod
    def _two_pins(cls, v: int, info: Any) -> int:
        if v == info.data.get("d0_pin"):
            raise ValueError("d0_pin and d1_pin must be different pins")
        return v


ReaderConfig = Annotated[
    SimReaderConfig
    | PcscReaderConfig
    | NfcReaderConfig
    | SerialQrReaderConfig
    | HidQrReaderConfig
    | WiegandReaderConfig,
    Field(discriminator="kind"),
]


class MetricsConfig(_Section):
    """The Prometheus endpoint; on localhost unless an operator chooses otherwise."""

    listen: str = "127.0.0.1:9464"  # "" turns the endpoint off

    @field_validator("listen")
    @classmethod
    def _address(cls, v: str) -> str:
        if v and not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
            raise ValueError('must be HOST:PORT (e.g. "127.0.0.1:9464"), or "" for no endpoint')
        if v and int(v.rsplit(":", 1)[1]) > 65535:
            raise ValueError("port must be 0-65535")
        return v

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when the endpoint is off."""
        if not self.listen:
            return None
        host, port = self.listen.rsplit(":", 1)
        return host.strip("[]"), int(port)


def _default_readers() -> list[ReaderConfig]:
    return [SimReaderConfig()]


class GateConfig(_Section):
    site: str = Field(pattern=_ID)
    gate: str = Field(pattern=_ID)
    zones: list[str] = Field(default_factory=lambda: ["main"])
    timezone: str = "UTC"
    state_dir: Path = Path("/var/lib/gated")
    control_socket: Path = Path("/run/gated/control.sock")
    durability: Literal["crash", "power"] = "crash"
    # SCHED_FIFO priority of the event loop's thread, where decisions run; 0 = the normal policy.
    realtime_priority: int = Field(default=10, ge=0, le=99)
    # Undelivered events kept for the broker: alarm at warn, stop queueing (loudly) at max.
    outbox_warn_events: int = Field(default=100_000, gt=0)
    outbox_max_events: int = Field(default=1_000_000, gt=0)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    mqtt: MqttConfig | None = None
    head_office: HeadOfficeConfig | None = None
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    door: DoorConfig = Field(default_factory=DoorConfig)
    readers: list[ReaderConfig] = Field(default_factory=_default_readers)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)"
            ) from exc
        return v

    def model_post_init(self, __context: Any) -> None:
        # Give readers stable ids (kind-N) and refuse duplicates: events and `gatectl readers`
        # name readers by id.
        counts: dict[str, int] = {}
        seen: set[str] = set()
        for reader in self.readers:
            counts[reader.kind] = counts.get(reader.kind, 0) + 1
            if reader.id is None:
                reader.id = f"{reader.kind}-{counts[reader.kind]}"
            if reader.id in seen:
                raise ValueError(f"readers: duplicate reader id {reader.id!r}")
            seen.add(reader.id)
        if self.outbox_warn_events >= self.outbox_max_events:
            raise ValueError("outbox_warn_events must be below outbox_max_events")
        # One GPIO pin, one job: a Wiegand data line on the relay's pin would open the door.
        pins: dict[int, str] = {}
        door = self.door
        wired = [(f"door.{name}", getattr(door, name)) for name in (
            "relay_pin", "green_led_pin", "red_led_pin", "buzzer_pin", "door_contact_pin",
            "exit_button_pin", "fire_input_pin", "passage_sensor_pin")]  # fmt: skip
        for reader in self.readers:
            if isinstance(reader, WiegandReaderConfig):
                wired += [
                    (f"readers.{reader.id}.d0_pin", reader.d0_pin),
                    (f"readers.{reader.id}.d1_pin", reader.d1_pin),
                ]
        for name, pin in wired:
            if pin is None:
                continue
            if pin in pins:
                raise ValueError(f"{name}: GPIO {pin} is already used by {pins[pin]}")
            pins[pin] = name

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def cache_path(self) -> Path:
        return self.state_dir / "cache.db"


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("sim", "pcsc", "nfc", "serial_qr", "hid_qr", "wiegand") or (
            isinstance(part, str) and part.endswith("ReaderConfig")
        ):
            continue  # discriminated-union tags add nothing for a human
        else:
            # [sites.<id>] tables are kept as site_settings; the file calls them sites.
            out += ("." if out else "") + ("sites" if part == "site_settings" else part)
    return out


def format_validation_error(exc: ValidationError) -> str:
    """The first problem, as ``field: message``."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting (check the spelling against config/gated.toml)"
    elif err["type"] == "missing":
        msg = "required setting is missing"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    where = _location(err["loc"])
    # A whole-file rule (model validator) names its own fields in the message.
    return f"{where}: {msg}{suffix}" if where else f"{msg}{suffix}"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; ConfigError with the line for a missing file or bad syntax."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such file") from exc
    except PermissionError as exc:
        raise ConfigError(f"{p}: permission denied") from exc
    except OSError as exc:  # a folder, an unreadable device, ...
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 text") from exc


def load_gate_config(path: str | Path) -> GateConfig:
    """Load and validate ``gated.toml``; relative paths are taken from the file's folder."""
    config = validate_file(GateConfig, path)
    return _resolve_paths(config, Path(path).resolve().parent)


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


def _resolve_paths(config: GateConfig, base: Path) -> GateConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    def fix_path(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    config.state_dir = fix_path(config.state_dir)
    config.control_socket = fix_path(config.control_socket)
    keys = config.keys
    keys.credential_key_file = fix_path(keys.credential_key_file)
    keys.head_office_public_key_files = [fix_path(p) for p in keys.head_office_public_key_files]
    keys.command_public_key_files = [fix_path(p) for p in keys.command_public_key_files]
    keys.desk_command_public_key_files = [fix_path(p) for p in keys.desk_command_public_key_files]
    for section in (config.mqtt, config.head_office):
        if section is None:
            continue
        for name in ("password_file", "ca_file", "cert_file", "key_file", "token_file"):
            if hasattr(section, name):
                setattr(section, name, fix(getattr(section, name)) or getattr(section, name))
    return config


# --- billing.toml (gated-billing) ---------------------------------------------------------------


class BillingKeysConfig(_Section):
    head_office_private_key_file: Path = Path("/etc/gated/head-office.pem")
    credential_key_file: Path = Path("/etc/gated/credential.key")
    card_encryption_key_file: Path = Path("/etc/gated/cards.key")
    # Signs the console's pulse and lockdown commands; gates list its .pub in
    # desk_command_public_key_files. Unset: the console cannot open gates.
    desk_command_private_key_file: Path | None = None


class DunningConfig(_Section):
    grace_days: int = Field(default=3, ge=0, le=60)
    suspend_min_owed: int = Field(default=0, ge=0)
    max_grace_days: int = Field(default=14, ge=0, le=90)
    collections_days: int = Field(default=30, ge=1, le=365)
    # Visa allows 15 reattempts in 30 days, Mastercard 10 in 24 h: a handful of retries stays
    # well under every network's cap.
    retry_days: list[int] = Field(default_factory=lambda: [3, 7], max_length=8)

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

    _scheme = field_validator("url")(MqttConfig._scheme.__func__)  # type: ignore[attr-defined]


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

    _zone = field_validator("timezone")(GateConfig._tz.__func__)  # type: ignore[attr-defined]

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
    durability: Literal["crash", "power"] = "crash"
    keys: BillingKeysConfig = Field(default_factory=BillingKeysConfig)
    dunning: DunningConfig = Field(default_factory=DunningConfig)
    stripe: StripeConfig | None = None
    mqtt: BillingMqttConfig | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    smtp: SmtpConfig | None = None
    app: AppConfig = Field(default_factory=AppConfig)
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
