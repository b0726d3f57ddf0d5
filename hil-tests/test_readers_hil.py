"""One real reader on a real Pi: the technician presents a card or scans a code when asked.

Set ``GATED_HIL_READER`` to the kind to test and the variables that kind needs, then run with
``-s`` so the prompts show:

    GATED_HIL_READER=pcsc GATED_HIL_PCSC_NAME=ACR122U pytest -s hil-tests/test_readers_hil.py
    GATED_HIL_READER=nfc GATED_HIL_NFC_PATH=tty:AMA0:pn532 pytest -s hil-tests/test_readers_hil.py
    GATED_HIL_READER=serial_qr GATED_HIL_SERIAL_PORT=/dev/ttyACM0 pytest -s hil-tests/test_readers_hil.py
    GATED_HIL_READER=hid_qr GATED_HIL_HID_DEVICE=/dev/input/by-id/...-event-kbd pytest -s hil-tests/test_readers_hil.py
    GATED_HIL_READER=wiegand GATED_HIL_WIEGAND_PINS=5,6 pytest -s hil-tests/test_readers_hil.py

``GATED_HIL_UID`` (optional, card readers) is the UID the test card must read as, e.g. the one
``pcsc_scan`` shows, so a Wiegand reader's byte order can be checked against PC/SC. The tests
print a short hash of what was read, never the raw UID.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time

import pytest

from gated.config import (
    HidQrReaderConfig,
    NfcReaderConfig,
    PcscReaderConfig,
    SerialQrReaderConfig,
    WiegandReaderConfig,
)
from gated.policy.credential import Credential
from gated.readers.base import Reader
from gated.readers.diagnostics import reader_checks
from gated.readers.registry import HardwareReaderConfig, build_reader

KIND = os.environ.get("GATED_HIL_READER", "")
pytestmark = pytest.mark.skipif(
    not KIND,
    reason="set GATED_HIL_READER=pcsc|nfc|serial_qr|hid_qr|wiegand on a Pi with that reader",
)
WAIT_S = 30.0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"set {name} for GATED_HIL_READER={KIND}")
    return value


def _config() -> HardwareReaderConfig:
    settings: dict[str, object] = {"id": f"hil-{KIND}", "debounce_ms": 1500}
    model: type[HardwareReaderConfig]
    if KIND == "pcsc":
        model, settings["reader_name"] = PcscReaderConfig, _env("GATED_HIL_PCSC_NAME")
    elif KIND == "nfc":
        model, settings["path"] = NfcReaderConfig, _env("GATED_HIL_NFC_PATH")
    elif KIND == "serial_qr":
        model, settings["port"] = SerialQrReaderConfig, _env("GATED_HIL_SERIAL_PORT")
    elif KIND == "hid_qr":
        model, settings["device"] = HidQrReaderConfig, _env("GATED_HIL_HID_DEVICE")
    elif KIND == "wiegand":
        model = WiegandReaderConfig
        settings["d0_pin"], settings["d1_pin"] = _env("GATED_HIL_WIEGAND_PINS").split(",")
        settings["byte_order"] = os.environ.get("GATED_HIL_WIEGAND_BYTE_ORDER", "as_sent")
    else:
        pytest.fail(f"unknown GATED_HIL_READER={KIND!r}")
    return model.model_validate(settings)


def _pin_factory() -> object:
    if KIND != "wiegand":
        return None
    from gpiozero.pins.lgpio import LGPIOFactory

    return LGPIOFactory()


async def _read_one(reader: Reader, prompt: str) -> tuple[Credential, float]:
    queue: asyncio.Queue[Credential] = asyncio.Queue()
    task = asyncio.create_task(reader.run(queue.put_nowait))
    try:
        deadline = time.monotonic() + 10
        while reader.health.state != "ok":
            assert time.monotonic() < deadline, (
                f"reader not ready: {reader.health.state} {reader.health.detail}"
            )
            await asyncio.sleep(0.05)
        print(f"\n>>> {prompt} (within {WAIT_S:.0f} s)", flush=True)
        credential = await asyncio.wait_for(queue.get(), WAIT_S)
        took = time.monotonic()
        print(
            f">>> read a {credential.kind}, sha256 {hashlib.sha256(credential.value.encode()).hexdigest()[:12]}"
        )
        print(">>> keep it there (or scan nothing) for 3 s...", flush=True)
        await asyncio.sleep(3)
        assert queue.empty(), "a card held on the reader must be one read"
        assert reader.health.reads == 1 and reader.health.rejected == 0
        return credential, took
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_doctor_is_happy_with_the_reader() -> None:
    failures = [c for c in reader_checks([_config()]) if c[0] == "fail"]
    assert not failures, failures


async def test_one_presentation_is_one_credential_of_the_right_form() -> None:
    config = _config()
    reader = build_reader(config, pin_factory=_pin_factory())
    is_card = KIND in ("pcsc", "nfc", "wiegand")
    credential, _ = await _read_one(reader, "present a card" if is_card else "scan a QR code")
    assert credential.reader_id == config.id
    if is_card:
        assert credential.kind == "card"
        assert re.fullmatch(r"([0-9A-F]{2})+|w26:\d{1,3}:\d{1,5}", credential.value)
        expected = os.environ.get("GATED_HIL_UID")
        if expected:
            assert credential.value == expected.replace(":", "").upper(), (
                "UID differs (Wiegand byte_order?)"
            )
    else:
        assert credential.kind == "qr" and credential.value.isprintable() and credential.value
