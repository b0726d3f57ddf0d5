"""``gatectl doctor`` checks for the configured readers.

Each check is ``(level, message, fix)``: level ``ok``/``warn``/``fail``, a one-line message, and a
one-line fix (empty when there is nothing to do). Checks only look: they open no reader and claim
no device, so they are safe while the daemon runs. ``root`` lets tests point them at a fake
``/sys`` and ``/proc``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gated.config import (
    HidQrReaderConfig,
    NfcReaderConfig,
    PcscReaderConfig,
    SerialQrReaderConfig,
    WiegandReaderConfig,
)

Level = Literal["ok", "warn", "fail"]
Check = tuple[Level, str, str]

# USB NFC readers nfcpy drives, and the ones CCID/pcscd drives (ACR122U is both: pick one owner).
NFC_USB_IDS = {
    "04e6:5591": "SCM SCL3711",
    "04cc:0531": "Philips PN531",
    "04cc:2533": "NXP PN533",
    "054c:0193": "Sony RC-S330",
    "054c:02e1": "Sony RC-S330",
    "054c:06c1": "Sony RC-S380",
    "054c:06c3": "Sony RC-S380",
    "072f:2200": "ACS ACR122U",
    "072f:223b": "ACS ACR1252U",
}
NFC_KERNEL_MODULES = ("pn533_usb", "pn533", "nfc")
BLACKLIST_FIX = (
    "printf 'blacklist pn533_usb\\nblacklist pn533\\nblacklist nfc\\n' | sudo tee "
    "/etc/modprobe.d/gated-nfc.conf && sudo modprobe -r pn533_usb pn533 nfc"
)


@dataclass(frozen=True)
class UsbNfcDevice:
    """An NFC reader on USB and who holds it."""

    ids: str
    model: str
    devnode: str
    kernel_drivers: tuple[str, ...]  # bound to its interfaces (usbfs = a user-space program)
    holders: tuple[str, ...]  # processes with its devnode open (pcscd, python for nfcpy, ...)

    @property
    def owner(self) -> str:
        """Who drives it: a kernel module, a process, or nobody."""
        kernel = [d for d in self.kernel_drivers if d != "usbfs"]
        if kernel:
            return f"the kernel's {kernel[0]} driver"
        if self.holders:
            return ", ".join(sorted(set(self.holders)))
        return "nobody"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _processes(root: Path) -> Iterable[tuple[str, Path]]:
    proc = root / "proc"
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return
    for pid in pids:
        yield _read(proc / pid / "comm"), proc / pid


def usb_nfc_devices(root: Path = Path("/")) -> list[UsbNfcDevice]:
    """NFC readers on USB, with the kernel driver and the processes holding each."""
    devices = root / "sys/bus/usb/devices"
    found: list[UsbNfcDevice] = []
    try:
        entries = sorted(os.listdir(devices))
    except OSError:
        return found
    for entry in entries:
        base = devices / entry
        ids = f"{_read(base / 'idVendor')}:{_read(base / 'idProduct')}".lower()
        if ids not in NFC_USB_IDS:
            continue
        devnode = f"/dev/bus/usb/{int(_read(base / 'busnum') or 0):03d}/{int(_read(base / 'devnum') or 0):03d}"
        drivers = tuple(
            os.path.basename(os.readlink(iface / "driver"))
            for iface in sorted(base.glob(f"{entry}:*"))
            if (iface / "driver").is_symlink()
        )
        holders = tuple(_holders(root, devnode))
        found.append(UsbNfcDevice(ids, NFC_USB_IDS[ids], devnode, drivers, holders))
    return found


def _holders(root: Path, devnode: str) -> Iterable[str]:
    for comm, pdir in _processes(root):
        try:
            fds = os.listdir(pdir / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(pdir / "fd" / fd) == devnode:
                    yield comm
                    break
            except OSError:
                continue


def loaded_modules(root: Path = Path("/")) -> set[str]:
    """Kernel modules currently loaded."""
    return {line.split()[0] for line in _read(root / "proc/modules").splitlines() if line.strip()}


def check_pcsc(readers: Sequence[PcscReaderConfig], root: Path = Path("/")) -> list[Check]:
    """pcscd runs and sees each configured PC/SC reader."""
    if not readers:
        return []
    try:
        from smartcard import scard
    except ImportError:
        return [("fail", "pyscard is not installed", "pip install 'gated[readers]'")]
    from gated.readers.device import DeviceFault
    from gated.readers.pcsc import list_readers, match_reader

    hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return [
            (
                "fail",
                f"pcscd is not running ({scard.SCardGetErrorMessage(hr)})",
                "sudo systemctl enable --now pcscd.socket",
            )
        ]
    try:
        seen = list_readers(scard, context)
    except DeviceFault as exc:  # a pcscd that vanished between the two calls
        return [("fail", f"pcscd: {exc}", "sudo systemctl restart pcscd")]
    finally:
        scard.SCardReleaseContext(context)
    checks: list[Check] = []
    for reader in readers:
        name = match_reader(seen, reader.reader_name)
        if name is None:
            listing = ", ".join(seen) or "no readers"
            checks.append(
                (
                    "fail",
                    f"{reader.id}: pcscd sees no reader matching {reader.reader_name!r} ({listing})",
                    "plug the reader in, check `pcsc_scan`, or fix reader_name in gated.toml",
                )
            )
        else:
            checks.append(("ok", f"{reader.id}: pcscd sees {name!r}", ""))
    for device in usb_nfc_devices(root):
        if device.owner.startswith("the kernel"):
            checks.append(
                (
                    "fail",
                    f"{device.model} at {device.devnode} is held by {device.owner}, "
                    "so pcscd cannot use it",
                    BLACKLIST_FIX,
                )
            )
    return checks


def check_nfc(readers: Sequence[NfcReaderConfig], root: Path = Path("/")) -> list[Check]:
    """Which driver owns each NFC USB device: nfcpy needs it to itself."""
    if not readers:
        return []
    try:
        import nfc  # noqa: F401
    except ImportError:
        return [("fail", "nfcpy is not installed", "pip install 'gated[readers]'")]
    checks: list[Check] = []
    usb_readers = [r for r in readers if r.path.startswith("usb")]
    modules = sorted(m for m in NFC_KERNEL_MODULES if m in loaded_modules(root))
    if usb_readers and modules:
        checks.append(
            (
                "warn",
                f"kernel NFC modules loaded ({', '.join(modules)}): they claim "
                "PN533-family readers before nfcpy can",
                BLACKLIST_FIX,
            )
        )
    devices = usb_nfc_devices(root)
    if usb_readers and not devices:
        checks.append(
            (
                "fail",
                "no NFC reader nfcpy knows is on USB",
                "plug the reader in; `lsusb` should list it",
            )
        )
    for device in devices:
        owner = device.owner
        if owner.startswith("the kernel"):
            checks.append(
                ("fail", f"{device.model} at {device.devnode} is owned by {owner}", BLACKLIST_FIX)
            )
        elif "pcscd" in device.holders:
            checks.append(
                (
                    "fail",
                    f"{device.model} at {device.devnode} is owned by pcscd, not nfcpy",
                    'use kind = "pcsc" for it, or stop pcscd: sudo systemctl disable --now pcscd.socket pcscd',
                )
            )
        elif not os.access(root / device.devnode.lstrip("/"), os.R_OK | os.W_OK):
            checks.append(
                (
                    "fail",
                    f"{device.model} at {device.devnode}: no read/write access",
                    "install the udev rule from docs/readers.md and replug",
                )
            )
        else:
            checks.append(
                (
                    "ok",
                    f"{device.model} at {device.devnode}: free for nfcpy"
                    + (f" (held by {owner})" if device.holders else ""),
                    "",
                )
            )
    for reader in readers:
        if reader.path.startswith("tty:"):
            checks.extend(
                _device_node(reader.id, "/dev/tty" + reader.path.split(":")[1], "dialout", root)
            )
    return checks


def _device_node(reader_id: str | None, path: str, group: str, root: Path) -> list[Check]:
    reader_id = reader_id or "reader"
    node = root / path.lstrip("/")
    if not node.exists():
        return [
            (
                "fail",
                f"{reader_id}: {path} does not exist",
                "plug the device in; check `dmesg | tail`",
            )
        ]
    if not os.access(node, os.R_OK | os.W_OK):
        return [
            ("fail", f"{reader_id}: {path}: permission denied", f"sudo usermod -aG {group} gated")
        ]
    return [("ok", f"{reader_id}: {path} present and accessible", "")]


def check_serial(readers: Sequence[SerialQrReaderConfig], root: Path = Path("/")) -> list[Check]:
    """Each serial scanner's port exists and the daemon can open it."""
    return [c for r in readers for c in _device_node(r.id, r.port, "dialout", root)]


def check_hid(readers: Sequence[HidQrReaderConfig], root: Path = Path("/")) -> list[Check]:
    """Each keyboard-wedge scanner is present (by path or name) and readable."""
    checks: list[Check] = []
    for reader in readers:
        rid = reader.id or "hid_qr"
        if reader.device.startswith("/"):
            checks.extend(_device_node(rid, reader.device, "input", root))
            continue
        names = {
            _read(p / "device/name"): p.name for p in (root / "sys/class/input").glob("event*")
        }
        event = names.get(reader.device)
        if event is None:
            checks.append(
                (
                    "fail",
                    f"{rid}: no input device named {reader.device!r}",
                    "plug the scanner in; list names with: cat /sys/class/input/event*/device/name",
                )
            )
        else:
            checks.extend(_device_node(rid, f"/dev/input/{event}", "input", root))
    return checks


def check_wiegand(readers: Sequence[WiegandReaderConfig], root: Path = Path("/")) -> list[Check]:
    """The GPIO character device the Wiegand inputs use is there and accessible."""
    if not readers:
        return []
    return _device_node(readers[0].id, "/dev/gpiochip0", "gpio", root)


def reader_checks(readers: Sequence[object], root: Path = Path("/")) -> list[Check]:
    """Every check for the configured readers (sim readers need none)."""
    return [
        *check_pcsc([r for r in readers if isinstance(r, PcscReaderConfig)], root),
        *check_nfc([r for r in readers if isinstance(r, NfcReaderConfig)], root),
        *check_serial([r for r in readers if isinstance(r, SerialQrReaderConfig)], root),
        *check_hid([r for r in readers if isinstance(r, HidQrReaderConfig)], root),
        *check_wiegand([r for r in readers if isinstance(r, WiegandReaderConfig)], root),
    ]
