from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gated.config import (
    HidQrReaderConfig,
    NfcReaderConfig,
    PcscReaderConfig,
    SerialQrReaderConfig,
    WiegandReaderConfig,
)
from gated.readers.diagnostics import BLACKLIST_FIX, reader_checks, usb_nfc_devices
from tests.readers import pcscd_stack
from tests.readers.pcscd_stack import PcscdStack


def _usb_device(root: Path, name: str, ids: str, devnum: int, driver: str | None) -> None:
    base = root / "sys/bus/usb/devices" / name
    base.mkdir(parents=True)
    vendor, product = ids.split(":")
    for key, value in [
        ("idVendor", vendor),
        ("idProduct", product),
        ("busnum", "1"),
        ("devnum", str(devnum)),
    ]:
        (base / key).write_text(value + "\n")
    iface = base / f"{name}:1.0"  # as in sysfs: interfaces live inside the device
    iface.mkdir()
    if driver:
        target = root / "sys/bus/usb/drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (iface / "driver").symlink_to(target)
    node = root / f"dev/bus/usb/001/{devnum:03d}"
    node.parent.mkdir(parents=True, exist_ok=True)
    node.touch()


def _process(root: Path, pid: int, comm: str, open_path: str | None = None) -> None:
    pdir = root / "proc" / str(pid)
    (pdir / "fd").mkdir(parents=True)
    (pdir / "comm").write_text(comm + "\n")
    if open_path:
        (pdir / "fd" / "5").symlink_to(open_path)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("")
    return tmp_path


def test_nfc_device_held_by_the_kernel_driver_fails_with_the_blacklist_fix(fake_root: Path) -> None:
    _usb_device(fake_root, "1-1", "04cc:2533", 5, "pn533_usb")
    (fake_root / "proc/modules").write_text(
        "pn533_usb 20480 0 - Live 0x0\npn533 45056 1 pn533_usb\nnfc 1 2 pn533\n"
    )
    checks = reader_checks([NfcReaderConfig(id="nfc-1", path="usb")], fake_root)
    levels = {(level, fix) for level, _, fix in checks}
    assert ("warn", BLACKLIST_FIX) in levels and ("fail", BLACKLIST_FIX) in levels
    assert any("owned by the kernel's pn533_usb driver" in msg for _, msg, _ in checks)


def test_nfc_device_claimed_by_pcscd_names_pcscd(fake_root: Path) -> None:
    _usb_device(fake_root, "1-2", "072f:2200", 7, "usbfs")
    _process(fake_root, 321, "pcscd", "/dev/bus/usb/001/007")
    [device] = usb_nfc_devices(fake_root)
    assert (device.model, device.owner) == ("ACS ACR122U", "pcscd")
    [(level, message, fix)] = reader_checks([NfcReaderConfig(id="nfc-1", path="usb")], fake_root)
    assert level == "fail" and "owned by pcscd" in message and "pcsc" in fix


def test_free_nfc_device_is_ok_and_missing_one_fails(fake_root: Path) -> None:
    config = [NfcReaderConfig(id="nfc-1", path="usb")]
    [(level, message, _)] = reader_checks(config, fake_root)
    assert level == "fail" and "no NFC reader" in message
    _usb_device(fake_root, "1-3", "054c:06c3", 9, None)
    [(level, message, _)] = reader_checks(config, fake_root)
    assert level == "ok" and "RC-S380" in message


def test_serial_hid_and_gpio_nodes(fake_root: Path) -> None:
    (fake_root / "dev").mkdir()
    (fake_root / "dev/ttyACM0").touch()
    (fake_root / "dev/gpiochip0").touch()
    event = fake_root / "sys/class/input/event3/device"
    event.mkdir(parents=True)
    (event / "name").write_text("Scanner HID KBW\n")
    (fake_root / "dev/input").mkdir()
    (fake_root / "dev/input/event3").touch()
    checks = reader_checks(
        [
            SerialQrReaderConfig(id="qr-1", port="/dev/ttyACM0"),
            SerialQrReaderConfig(id="qr-2", port="/dev/ttyACM1"),
            HidQrReaderConfig(id="kbw", device="Scanner HID KBW"),
            HidQrReaderConfig(id="kbw-2", device="Other Scanner"),
            WiegandReaderConfig(id="wg", d0_pin=5, d1_pin=6),
        ],
        fake_root,
    )
    assert [level for level, _, _ in checks] == ["ok", "fail", "ok", "fail", "ok"]
    assert "/dev/ttyACM1 does not exist" in checks[1][1] and checks[1][2]
    assert "/dev/input/event3" in checks[2][1]


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[PcscdStack]:
    if pcscd_stack.missing():
        pytest.skip(str(pcscd_stack.missing()))
    with pcscd_stack.run_pcscd(tmp_path / "pcscd") as stack:
        yield stack


def test_pcscd_sees_the_configured_reader(pcscd: PcscdStack, fake_root: Path) -> None:
    checks = reader_checks(
        [
            PcscReaderConfig(id="in", reader_name="Gated Test"),
            PcscReaderConfig(id="out", reader_name="ACR1252"),
        ],
        fake_root,
    )
    assert checks[0] == ("ok", f"in: pcscd sees {pcscd.reader!r}", "")
    assert checks[1][0] == "fail" and "ACR1252" in checks[1][1] and "pcsc_scan" in checks[1][2]


@pytest.mark.skipif(bool(pcscd_stack.missing()), reason=str(pcscd_stack.missing()))
def test_pcscd_not_running_fails_with_the_fix(fake_root: Path) -> None:
    [(level, message, fix)] = reader_checks([PcscReaderConfig(id="in")], fake_root)
    assert level == "fail" and "pcscd is not running" in message and "systemctl" in fix


def test_no_readers_no_checks(fake_root: Path) -> None:
    assert reader_checks([], fake_root) == []
    assert os.path.isdir(fake_root)
