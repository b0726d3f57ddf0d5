"""NFC readers driven by nfcpy: PN532 over UART/I2C/USB, PN533, RC-S380 and the ``udp`` simulator.

nfcpy talks to the chip itself, so it needs the device to itself: pcscd (libccid) and the kernel's
``pn533``/``pn533_usb``/``nfc`` modules must not hold a USB reader nfcpy is meant to drive (see
docs/readers.md and ``gatectl doctor``). The identifier read is the ISO 14443-A UID, the ISO
14443-B PUPI, or the FeliCa IDm. A tag held in the field is one read: the session waits for it to
leave before it senses again.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from gated.contract import normalize_uid
from gated.readers.device import DeviceAbsent, DeviceError, Link, ThreadedReader, missing_driver

if TYPE_CHECKING:
    from gated.config import NfcReaderConfig

_SENSE_INTERVAL_S = 0.1  # between sense rounds; terminate is checked once a round
_FAILURES_BEFORE_REOPEN = 3


def _open_fault(path: str, exc: OSError) -> DeviceAbsent | DeviceError:
    if exc.errno == errno.ENODEV or exc.errno == errno.ENOENT:
        return DeviceAbsent(f"no NFC device at {path!r} (plugged in? owned by another driver?)")
    if exc.errno == errno.EACCES:
        return DeviceError(f"{path}: permission denied (udev rule or the plugdev/dialout group)")
    if exc.errno == errno.EBUSY:
        return DeviceError(f"{path}: busy: pcscd or the pn533 kernel driver owns it (see doctor)")
    return DeviceError(f"{path}: {exc.strerror or exc}")


class NfcReader(ThreadedReader):
    """Senses for tags with nfcpy's reader/writer mode and emits each new tag's identifier."""

    kind = "nfc"

    def __init__(self, config: NfcReaderConfig) -> None:
        super().__init__(config)
        self._config = config

    def _open(self) -> Any:
        try:
            import nfc
        except ImportError as exc:
            raise missing_driver("nfcpy") from exc
        # nfcpy logs every tag it connects to, identifier included, at DEBUG: keep raw UIDs out
        # of the logs whatever the root level is.
        nfc_log = logging.getLogger("nfc")
        if nfc_log.getEffectiveLevel() < logging.INFO:
            nfc_log.setLevel(logging.INFO)
        path = self._config.path
        try:
            return nfc.ContactlessFrontend(path)
        except OSError as exc:
            raise _open_fault(path, exc) from exc

    def _session(self, stop: threading.Event, link: Link) -> None:
        clf = self._open()
        try:
            link.ready(f"{clf.device} at {self._config.path}")

            def on_connect(tag: Any) -> bool:
                at = time.monotonic_ns()
                identifier = bytes(getattr(tag, "identifier", b"") or b"")
                if identifier:
                    link.read("card", normalize_uid(identifier.hex()), at)
                else:
                    link.reject("nfc_no_identifier")
                return True  # hold until the tag leaves: a tag held is one read

            options = {
                "targets": list(self._config.targets),
                "on-connect": on_connect,
                "iterations": 1,
                "interval": _SENSE_INTERVAL_S,
                "beep-on-connect": False,
            }
            failures = 0
            while not stop.is_set():
                # connect() returns False after an I/O error it logged and swallowed, or for a
                # tag it cannot handle: a one-off is a bad read, a run of them a lost device.
                if clf.connect(rdwr=options, terminate=stop.is_set) is not False:
                    failures = 0
                    continue
                failures += 1
                link.error("NFC exchange failed")
                if failures >= _FAILURES_BEFORE_REOPEN:
                    raise DeviceAbsent(f"{self._config.path}: the NFC device stopped answering")
        finally:
            clf.close()
