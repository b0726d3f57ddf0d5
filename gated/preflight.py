"""What would stop a gate from starting, found without starting it.

``gated run`` calls :func:`startup_problems` before it opens anything and refuses to start on any
of them; ``gated config check`` prints the same lines. So a file that passes the check starts:
its key files exist and parse, the broker's files can be read, the door's pin factory and every
reader's driver library can be imported. What comes and goes while a gate runs (an unplugged
reader, pcscd down, the broker unreachable) is not here: the gate starts, retries, and reports it
in ``gatectl readers`` and ``gatectl doctor``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gated.config import GateConfig
from gated.contract import load_credential_key, load_public_key_raw
from gated.door import check_pin_factory
from gated.errors import GatedError
from gated.readers.device import missing_driver

# The library each reader kind's driver imports when it opens its device: (module, package).
# Wiegand readers use the door's pin factory, checked with the door.
READER_DRIVERS: dict[str, tuple[str, str]] = {
    "pcsc": ("smartcard", "pyscard"),
    "nfc": ("nfc", "nfcpy"),
    "serial_qr": ("serial", "pyserial"),
    "hid_qr": ("evdev", "evdev"),
}

KEYS_FIX = "make them with: gated keys generate --out DIR"


def startup_problems(config: GateConfig) -> list[str]:
    """Every reason ``config`` cannot start a gate on this machine, one line each; ``[]`` if none."""
    return [
        *_key_problems(config),
        *_broker_problems(config),
        *_door_problems(config),
        *_reader_problems(config),
    ]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(exc, UnicodeDecodeError):
        return "not a text file"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    text = str(exc)
    # The key loaders name the file themselves; the line names it once, first.
    return text.split(": ", 1)[1] if ": " in text and text.startswith("/") else text


def _file_problem(setting: str, path: Path, load: Callable[[Path], Any], fix: str) -> list[str]:
    try:
        load(path)
    except (OSError, ValueError, GatedError) as exc:
        return [f"{setting} {path}: {_describe(exc)} ({fix})"]
    return []


def _readable(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(1)


def _key_problems(config: GateConfig) -> list[str]:
    keys = config.keys
    problems = _file_problem(
        "[keys] credential_key_file", keys.credential_key_file, load_credential_key, KEYS_FIX
    )
    # The public keys verify what arrives from head office over [mqtt]; a gate without a broker
    # never reads them.
    if config.mqtt is None:
        return problems
    if not keys.head_office_public_key_files:
        problems.append(
            "[keys] head_office_public_key_files: empty, so no member state could be trusted "
            "(list head office's public key)"
        )
    for path in keys.head_office_public_key_files:
        problems += _file_problem(
            "[keys] head_office_public_key_files:",
            path,
            load_public_key_raw,
            "copy head office's Ed25519 public key (PEM) here",
        )
    for path in keys.command_public_key_files:
        problems += _file_problem(
            "[keys] command_public_key_files:",
            path,
            load_public_key_raw,
            "copy the command signer's Ed25519 public key (PEM) here",
        )
    return problems


def _optional_files(section: str, owner: Any, names: Iterable[str]) -> list[str]:
    problems: list[str] = []
    for name in names:
        path = getattr(owner, name)
        if path is not None:
            problems += _file_problem(
                f"[{section}] {name}", path, _readable, "check the path and its permissions"
            )
    return problems


def _broker_problems(config: GateConfig) -> list[str]:
    problems: list[str] = []
    mqtt = config.mqtt
    if mqtt is not None:
        problems += _optional_files(
            "mqtt", mqtt, ("password_file", "ca_file", "cert_file", "key_file")
        )
        if mqtt.key_file is not None and mqtt.cert_file is None:
            problems.append("[mqtt] key_file is set without cert_file (set both, or neither)")
    if config.head_office is not None:
        problems += _optional_files("head_office", config.head_office, ("token_file", "ca_file"))
    return problems


def _door_problems(config: GateConfig) -> list[str]:
    try:
        check_pin_factory(config.door.pin_factory)
    except GatedError as exc:
        return [str(exc)]
    return []


def _reader_problems(config: GateConfig) -> list[str]:
    problems = []
    for reader in config.readers:
        driver = READER_DRIVERS.get(reader.kind)
        if driver is None:
            continue
        module, package = driver
        try:
            importlib.import_module(module)
        except ImportError:
            problems.append(f"readers.{reader.id} ({reader.kind}): {missing_driver(package)}")
    return problems
