"""Configuration of a gate (``gated.toml``), validated at the edge.

A bad file raises :class:`ConfigError` with one line that names the field and the problem; the CLI
prints that line and exits 2. The gate's settings are plain dataclasses checked by the small
validator below rather than pydantic models: pydantic's schema machinery cost a gate ~14 MiB of
its RSS and a tenth of a second of its start (BENCHMARKS.md). The messages are pydantic's
wording, so a file gets the same line either way. ``billing.toml`` is the head office's
(:mod:`gated.billing_sync.config`), which keeps pydantic.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gated.errors import GatedError
from gated.placement import check_decision_cpu

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ID = r"^[A-Za-z0-9_-]{1,64}$"
_READER_KINDS = ("sim", "pcsc", "nfc", "serial_qr", "hid_qr", "wiegand")


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
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 72h, 3d)")
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 72h, 3d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def check_mqtt_url(v: str) -> str:
    """``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT`` (the gate's and the head office's)."""
    match = re.match(r"^mqtts?://[^/:]+(?::(\d+))?/?$", v)
    if not match:
        raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
    if match.group(1) is not None and not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"port {match.group(1)} is not a TCP port (1-65535)")
    return v


def check_timezone(v: str) -> str:
    """An IANA time zone name that this system knows."""
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)"
        ) from exc
    return v


def _snapshot_url(v: str | None) -> str | None:
    if v is not None and not re.match(r"^(https?://[^/\s]+/\S*|file:///\S+)$", v):
        raise ValueError("must be an https:// (or http://) URL, or file:///PATH")
    return v


def _listen_address(v: str) -> str:
    if v and not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
        raise ValueError('must be HOST:PORT (e.g. "127.0.0.1:9464"), or "" for no endpoint')
    if v and int(v.rsplit(":", 1)[1]) > 65535:
        raise ValueError("port must be 0-65535")
    return v


def _rule(**rules: Any) -> dict[str, Any]:
    """A field's checks, as ``dataclasses.field(metadata=...)``: ``gt``, ``ge``, ``le``,
    ``pattern``, ``min_length``; ``before`` converts the raw value and ``check`` tests the
    converted one (both raise ValueError with the message)."""
    return rules


# --- gated.toml ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class KeysConfig:
    credential_key_file: Path = Path("/etc/gated/credential.key")
    head_office_public_key_files: list[Path] = field(
        default_factory=lambda: [Path("/etc/gated/head-office.pub")]
    )
    command_public_key_files: list[Path] = field(default_factory=list)
    # The staff console's desk key: trusted for pulse and lockdown only (DESIGN, GateCommand).
    desk_command_public_key_files: list[Path] = field(default_factory=list)


@dataclass(kw_only=True)
class MqttConfig:
    url: str = field(default="mqtt://127.0.0.1:1883", metadata=_rule(check=check_mqtt_url))
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    heartbeat_s: float = field(default=30.0, metadata=_rule(gt=0))
    client_id: str | None = None
    # How long a link may be silent before it is given up (None: twice heartbeat_s, at least 5 s),
    # how long a CONNECT may wait for the broker's CONNACK, and the reconnect backoff's cap.
    keepalive_s: int | None = field(default=None, metadata=_rule(ge=1, le=3600))
    connect_timeout_s: float = field(default=10.0, metadata=_rule(gt=0, le=300))
    backoff_max_s: float = field(default=60.0, metadata=_rule(ge=1, le=3600))


@dataclass(kw_only=True)
class HeadOfficeConfig:
    snapshot_url: str | None = field(default=None, metadata=_rule(check=_snapshot_url))
    token_file: Path | None = None
    ca_file: Path | None = None


@dataclass(kw_only=True)
class PolicyConfig:
    anti_passback_s: float = field(default=0, metadata=_rule(ge=0))
    daily_limit: int | None = field(default=None, metadata=_rule(ge=0))
    max_offline: float = field(default=72 * 3600.0, metadata=_rule(before=parse_duration))
    qr_window_s: float = field(default=30, metadata=_rule(gt=0, le=600))


@dataclass(kw_only=True)
class ControlConfig:
    """What the control socket lets its clients hold: far below systemd's 1024 descriptors, so a
    flood of connections never starves the broker link or the cache of file descriptors."""

    max_connections: int = field(default=64, metadata=_rule(ge=2, le=256))
    # A connection with no request started for idle_timeout_s is closed; a request line must
    # arrive whole within request_timeout_s of its first byte, and a reply be taken as fast.
    idle_timeout_s: float = field(default=10.0, metadata=_rule(gt=0))
    request_timeout_s: float = field(default=5.0, metadata=_rule(gt=0))


@dataclass(kw_only=True)
class DoorConfig:
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
    pulse_ms: int = field(default=3000, metadata=_rule(gt=0, le=60000))
    held_open_s: float = field(default=30, metadata=_rule(gt=0))


@dataclass(kw_only=True)
class _ReaderBase:
    id: str | None = field(default=None, metadata=_rule(pattern=_ID))
    direction: Literal["in", "out"] = "in"
    debounce_ms: int = field(default=1500, metadata=_rule(ge=0))


@dataclass(kw_only=True)
class SimReaderConfig(_ReaderBase):
    """Fed through the control socket (``gatectl badge``); the demo and tests use it."""

    kind: Literal["sim"] = "sim"


@dataclass(kw_only=True)
class PcscReaderConfig(_ReaderBase):
    """A CCID reader (ACR122U, ACR1252, ...) through pcscd; the UID comes from GET DATA."""

    kind: Literal["pcsc"] = "pcsc"
    reader_name: str = ""  # a substring of the PC/SC reader name; empty = the first reader


NfcTarget = Literal["106A", "106B", "212F", "424F"]  # ISO 14443 A/B, FeliCa 212/424 kbit/s
NFC_DEFAULT_TARGETS: tuple[NfcTarget, ...] = ("106A", "106B", "212F")


@dataclass(kw_only=True)
class NfcReaderConfig(_ReaderBase):
    """An nfcpy device (PN532 over UART/I2C/USB, ...); pcscd must not own the same device."""

    kind: Literal["nfc"] = "nfc"
    # "usb", "tty:AMA0:pn532", "udp:HOST:PORT"
    path: str = field(default="usb", metadata=_rule(min_length=1))
    targets: list[NfcTarget] = field(
        default_factory=lambda: list(NFC_DEFAULT_TARGETS), metadata=_rule(min_length=1)
    )


@dataclass(kw_only=True)
class SerialQrReaderConfig(_ReaderBase):
    """A USB-CDC or RS-232 QR scanner sending one code per line (CR and/or LF)."""

    kind: Literal["serial_qr"] = "serial_qr"
    port: str = field(default="/dev/ttyACM0", metadata=_rule(min_length=1))
    baudrate: int = field(default=9600, metadata=_rule(gt=0))
    max_length: int = field(default=512, metadata=_rule(gt=0, le=65536))


@dataclass(kw_only=True)
class HidQrReaderConfig(_ReaderBase):
    """A keyboard-wedge QR scanner, grabbed exclusively through evdev."""

    kind: Literal["hid_qr"] = "hid_qr"
    device: str = field(metadata=_rule(min_length=1))  # /dev/input/by-id/... path or the name
    max_length: int = field(default=512, metadata=_rule(gt=0, le=65536))


@dataclass(kw_only=True)
class WiegandReaderConfig(_ReaderBase):
    """A Wiegand reader on two GPIO inputs (BCM numbers); 26- and 34-bit frames."""

    kind: Literal["wiegand"] = "wiegand"
    d0_pin: int = field(metadata=_rule(ge=0, le=53))
    d1_pin: int = field(metadata=_rule(ge=0, le=53))
    byte_order: Literal["as_sent", "reversed"] = "as_sent"  # "reversed" if PC/SC shows it backwards
    frame_timeout_ms: int = field(default=20, metadata=_rule(ge=5, le=200))

    def _field_problems(self) -> Iterator[tuple[str, str]]:
        if self.d1_pin == self.d0_pin:
            yield "d1_pin", "d0_pin and d1_pin must be different pins"


ReaderConfig = (
    SimReaderConfig
    | PcscReaderConfig
    | NfcReaderConfig
    | SerialQrReaderConfig
    | HidQrReaderConfig
    | WiegandReaderConfig
)
# A [[readers]] entry's class by its ``kind``.
_READER_CLASSES: dict[str, type[_ReaderBase]] = {
    "sim": SimReaderConfig,
    "pcsc": PcscReaderConfig,
    "nfc": NfcReaderConfig,
    "serial_qr": SerialQrReaderConfig,
    "hid_qr": HidQrReaderConfig,
    "wiegand": WiegandReaderConfig,
}


@dataclass(kw_only=True)
class MetricsConfig:
    """The Prometheus endpoint; on localhost unless an operator chooses otherwise."""

    # "" turns the endpoint off
    listen: str = field(default="127.0.0.1:9464", metadata=_rule(check=_listen_address))

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when the endpoint is off."""
        if not self.listen:
            return None
        host, port = self.listen.rsplit(":", 1)
        return host.strip("[]"), int(port)


def _default_readers() -> list[ReaderConfig]:
    return [SimReaderConfig()]


@dataclass(kw_only=True)
class GateConfig:
    site: str = field(metadata=_rule(pattern=_ID))
    gate: str = field(metadata=_rule(pattern=_ID))
    zones: list[str] = field(default_factory=lambda: ["main"])
    timezone: str = field(default="UTC", metadata=_rule(check=check_timezone))
    state_dir: Path = Path("/var/lib/gated")
    control_socket: Path = Path("/run/gated/control.sock")
    durability: Literal["crash", "power"] = "crash"
    # SCHED_FIFO priority of the event loop's thread, where decisions run; 0 = the normal policy.
    realtime_priority: int = field(default=10, metadata=_rule(ge=0, le=99))
    # The CPU the loop and the readers' threads share (gated.placement): "auto", "off" or a number.
    decision_cpu: str = field(default="auto", metadata=_rule(before=check_decision_cpu))
    # Undelivered events kept for the broker: alarm at warn, stop queueing (loudly) at max.
    outbox_warn_events: int = field(default=100_000, metadata=_rule(gt=0))
    outbox_max_events: int = field(default=1_000_000, metadata=_rule(gt=0))
    keys: KeysConfig = field(default_factory=KeysConfig)
    mqtt: MqttConfig | None = None
    head_office: HeadOfficeConfig | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    readers: list[ReaderConfig] = field(default_factory=_default_readers)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
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


# --- the validator ---------------------------------------------------------------------------------

_Problem = tuple[tuple[int | str, ...], str]  # (where, message)
_hints: dict[type, dict[str, Any]] = {}
SectionT = TypeVar("SectionT")


# The words a boolean setting may also be written as (pydantic's).
_TRUE = frozenset(("1", "on", "t", "true", "y", "yes"))
_FALSE = frozenset(("0", "off", "f", "false", "n", "no"))


class _Invalid(Exception):
    """One value that cannot be used (the message is pydantic's wording)."""


def _literal_words(choices: tuple[Any, ...]) -> str:
    words = [repr(c) for c in choices]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _scalar(tp: Any, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            if value in (0, 1):
                return bool(value)
            raise _Invalid("Input should be a valid boolean, unable to interpret input")
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise _Invalid("Input should be a valid boolean, unable to interpret input")
        raise _Invalid("Input should be a valid boolean")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and not isinstance(value, bool):
            if value.is_integer():
                return int(value)
            raise _Invalid("Input should be a valid integer, got a number with a fractional part")
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
            raise _Invalid("Input should be a valid integer, unable to parse string as an integer")
        raise _Invalid("Input should be a valid integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
            raise _Invalid("Input should be a valid number, unable to parse string as a number")
        raise _Invalid("Input should be a valid number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid("Input should be a valid string")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _Invalid("Input is not a valid path for <class 'pathlib.Path'>")
    raise TypeError(f"no check for settings of type {tp!r}")  # a programming error


def _limits(rules: Mapping[str, Any], value: Any) -> None:
    if "gt" in rules and not value > rules["gt"]:
        raise _Invalid(f"Input should be greater than {rules['gt']}")
    if "ge" in rules and not value >= rules["ge"]:
        raise _Invalid(f"Input should be greater than or equal to {rules['ge']}")
    if "le" in rules and not value <= rules["le"]:
        raise _Invalid(f"Input should be less than or equal to {rules['le']}")
    if "pattern" in rules and not re.search(rules["pattern"], value):
        raise _Invalid(f"String should match pattern '{rules['pattern']}'")
    least = rules.get("min_length")
    if least is not None and len(value) < least:
        if isinstance(value, str):
            raise _Invalid(f"String should have at least {least} character{'s' * (least > 1)}")
        raise _Invalid(
            f"List should have at least {least} item{'s' * (least > 1)} after validation,"
            f" not {len(value)}"
        )


def _value(tp: Any, value: Any, where: tuple[int | str, ...], problems: list[_Problem]) -> Any:
    """``value`` as a ``tp``; problems are added to ``problems`` (and the value is then None)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) > 1:  # the readers: one class per kind
            return _reader(value, where, problems)
        return _value(args[0], value, where, problems)
    try:
        if origin is Literal:
            choices = typing.get_args(tp)
            if value in choices and isinstance(value, str):
                return value
            raise _Invalid(f"Input should be {_literal_words(choices)}")
        if origin is list:
            if not isinstance(value, list):
                raise _Invalid("Input should be a valid list")
            (item,) = typing.get_args(tp)
            return [_value(item, v, (*where, i), problems) for i, v in enumerate(value)]
        if dataclasses.is_dataclass(tp):
            return _section(typing.cast(type, tp), value, where, problems)
        return _scalar(tp, value)
    except _Invalid as exc:
        problems.append((where, str(exc)))
        return None


def _reader(value: Any, where: tuple[int | str, ...], problems: list[_Problem]) -> Any:
    if not isinstance(value, Mapping):
        problems.append(
            (where, "Input should be a valid dictionary or object to extract fields from")
        )
        return None
    kind = value.get("kind")
    cls = _READER_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if "kind" not in value:
            problems.append((where, "Unable to extract tag using discriminator 'kind'"))
        else:
            problems.append((
                where,
                f"Input tag {kind!r} found using 'kind' does not match any of the expected"
                f" tags: {', '.join(repr(k) for k in _READER_KINDS)}",
            ))  # fmt: skip
        return None
    return _section(cls, value, where, problems)


def _section(
    cls: type[SectionT], data: Any, where: tuple[int | str, ...], problems: list[_Problem]
) -> SectionT | None:
    """A section dataclass from a TOML table, every field checked."""
    if not isinstance(data, Mapping):
        problems.append(
            (where, f"Input should be a valid dictionary or instance of {cls.__name__}")
        )
        return None
    hints = _hints.get(cls)
    if hints is None:
        hints = _hints[cls] = typing.get_type_hints(cls)
    found = len(problems)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        at = (*where, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append((at, "required setting is missing"))
            continue
        raw = data[f.name]
        rules = f.metadata
        try:
            if "before" in rules:
                raw = rules["before"](raw)
        except ValueError as exc:
            problems.append((at, str(exc)))
            continue
        before = len(problems)
        value = _value(hints[f.name], raw, at, problems)
        if len(problems) > before:
            continue
        try:
            if value is not None:
                _limits(rules, value)
                if "check" in rules:
                    value = rules["check"](value)
        except (_Invalid, ValueError) as exc:
            problems.append((at, str(exc)))
            continue
        values[f.name] = value
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems.extend(
        ((*where, k), "unknown setting (check the spelling against config/gated.toml)")
        for k in data
        if k not in names
    )
    if len(problems) > found:
        return None
    section = cls(**values)
    cross = getattr(section, "_field_problems", None)
    if cross is not None:
        problems.extend(((*where, name), message) for name, message in cross())
    return section


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _READER_KINDS or (isinstance(part, str) and part.endswith("ReaderConfig")):
            continue  # discriminated-union tags add nothing for a human
        else:
            # [sites.<id>] tables are kept as site_settings; the file calls them sites.
            out += ("." if out else "") + ("sites" if part == "site_settings" else part)
    return out


def _one_line(where: str, msg: str, more: int) -> str:
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    # A whole-file rule names its own fields in the message.
    return f"{where}: {msg}{suffix}" if where else f"{msg}{suffix}"


class ValidationErrors(Protocol):
    """What :func:`format_validation_error` reads of a pydantic ``ValidationError``."""

    def errors(self) -> Sequence[Mapping[str, Any]]: ...


def format_validation_error(exc: ValidationErrors) -> str:
    """The first problem of a pydantic error (the head office's models), as ``field: message``."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting (check the spelling against config/gated.toml)"
    elif err["type"] == "missing":
        msg = "required setting is missing"
    return _one_line(_location(err["loc"]), msg, len(exc.errors()) - 1)


def gate_config_from(data: Mapping[str, Any]) -> GateConfig:
    """A :class:`GateConfig` from a parsed ``gated.toml``; ConfigError with one line
    (``field: message``) for the first problem, and how many more there are."""
    problems: list[_Problem] = []
    try:
        config = _section(GateConfig, data, (), problems)
    except ValueError as exc:  # a whole-file rule (__post_init__)
        raise ConfigError(str(exc)) from exc
    if problems or config is None:
        where, msg = problems[0]
        raise ConfigError(_one_line(_location(where), msg, len(problems) - 1))
    return config


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
    data = load_toml(path)
    try:
        config = gate_config_from(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return _resolve_paths(config, Path(path).resolve().parent)


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
