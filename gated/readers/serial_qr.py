"""QR scanners on a serial port (USB-CDC ``/dev/ttyACM*`` or RS-232), one code per line.

Scanners end a code with CR, LF or CRLF depending on their setup; any of them ends a line and
empty lines are ignored. Overlong lines, bytes that are not text, and a partial line followed by
silence are rejected and counted, so a glitch can never prefix the next code.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING, Any

from gated.readers.device import DeviceAbsent, DeviceError, Link, ThreadedReader, missing_driver

if TYPE_CHECKING:
    from gated.config import SerialQrReaderConfig

PARTIAL_TIMEOUT_NS = 500_000_000  # a scanner sends a code in one burst; silence mid-line is a fault
_READ_TIMEOUT_S = 0.5


class Rejected(str):
    """A line the framer refused; the string is the reason code."""


def check_code(text: bytes, max_length: int) -> str | Rejected:
    """One received code → its text, or why it is refused (shared by the serial and HID readers)."""
    if len(text) > max_length:
        return Rejected("qr_overlong")
    try:
        code = text.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected("qr_not_text")
    if not code.isprintable():
        return Rejected("qr_not_text")
    return code


class LineFramer:
    """Splits a byte stream into codes. Pure: the caller passes the arrival time in."""

    __slots__ = ("_buf", "_last_ns", "_max", "_overlong")

    def __init__(self, max_length: int) -> None:
        self._max = max_length
        self._buf = bytearray()
        self._overlong = False
        self._last_ns = 0

    def feed(self, data: bytes, at_ns: int) -> list[str | Rejected]:
        """Bytes received at ``at_ns`` → the codes (and rejections) they complete."""
        out: list[str | Rejected] = []
        stale = self.expire(at_ns)
        if stale is not None:
            out.append(stale)
        start = 0
        for i, byte in enumerate(data):
            if byte in (0x0A, 0x0D):
                self._append(data[start:i])
                start = i + 1
                line = self._take()
                if line is not None:
                    out.append(line)
        self._append(data[start:])
        if self._buf or self._overlong:
            self._last_ns = at_ns
        return out

    def expire(self, now_ns: int) -> Rejected | None:
        """A partial line that has been silent for too long is dropped."""
        if (self._buf or self._overlong) and now_ns - self._last_ns > PARTIAL_TIMEOUT_NS:
            self._buf.clear()
            self._overlong = False
            return Rejected("qr_partial")
        return None

    def _append(self, chunk: bytes) -> None:
        if self._overlong or not chunk:
            return
        if len(self._buf) + len(chunk) > self._max:
            self._buf.clear()  # keep memory bounded: remember only that the line is too long
            self._overlong = True
        else:
            self._buf += chunk

    def _take(self) -> str | Rejected | None:
        if self._overlong:
            self._overlong = False
            return Rejected("qr_overlong")
        if not self._buf:
            return None  # the LF of a CRLF, or a blank line
        line = bytes(self._buf)
        self._buf.clear()
        return check_code(line, self._max)


class SerialQrReader(ThreadedReader):
    """Reads codes from a serial scanner with pyserial; unplug and replug are recovered."""

    kind = "serial_qr"

    def __init__(self, config: SerialQrReaderConfig) -> None:
        super().__init__(config)
        self._config = config

    def _open(self, serial: Any) -> Any:
        port = self._config.port
        try:
            return serial.Serial(port, self._config.baudrate, timeout=_READ_TIMEOUT_S)
        except serial.SerialException as exc:
            code = getattr(exc, "errno", None)
            if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise DeviceAbsent(f"{port}: no such device (is the scanner plugged in?)") from exc
            if code == errno.EACCES:
                raise DeviceError(
                    f"{port}: permission denied (add the gated user to dialout)"
                ) from exc
            if code == errno.EBUSY:
                raise DeviceError(f"{port}: busy (another program has the port open)") from exc
            raise DeviceError(f"{port}: {exc}") from exc

    def _session(self, stop: threading.Event, link: Link) -> None:
        try:
            import serial
        except ImportError as exc:
            raise missing_driver("pyserial") from exc
        port = self._open(serial)
        framer = LineFramer(self._config.max_length)
        link.ready(self._config.port)
        try:
            while not stop.is_set():
                try:
                    data = port.read(port.in_waiting or 1)
                except (serial.SerialException, OSError) as exc:
                    raise DeviceAbsent(f"{self._config.port}: disconnected") from exc
                now = time.monotonic_ns()
                items = framer.feed(data, now) if data else [framer.expire(now)]
                for item in items:
                    if isinstance(item, Rejected):
                        link.reject(item)
                    elif item is not None:
                        link.read("qr", item, now)
        finally:
            port.close()
