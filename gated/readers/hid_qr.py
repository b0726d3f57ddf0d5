"""Keyboard-wedge QR scanners through evdev, grabbed exclusively so codes never type into a console.

The scanner "types" each code and presses Enter. Key events map to characters with a US layout and
the shift keys; a key outside the map (a control key, a function key) spoils the code, which is
rejected at Enter, as is an overlong code or a partial one followed by silence.
"""

from __future__ import annotations

import errno
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from gated.readers.device import DeviceAbsent, DeviceError, Link, ThreadedReader, missing_driver
from gated.readers.serial_qr import PARTIAL_TIMEOUT_NS, Rejected, check_code

if TYPE_CHECKING:
    from gated.config import HidQrReaderConfig

# Linux input-event codes (a stable kernel ABI), so the decoder needs no evdev import.
EV_KEY = 1
KEY_ENTER, KEY_KPENTER = 28, 96
_SHIFT_KEYS = frozenset({42, 54})  # KEY_LEFTSHIFT, KEY_RIGHTSHIFT
_IGNORED_KEYS = frozenset({58, 69})  # KEY_CAPSLOCK, KEY_NUMLOCK: state keys some scanners press


def _us_layout() -> dict[int, tuple[str, str]]:
    rows = [
        (2, "1234567890-=", "!@#$%^&*()_+"),
        (16, "qwertyuiop[]", "QWERTYUIOP{}"),
        (30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
        (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
    ]
    keys = {
        code + i: (plain[i], shifted[i]) for code, plain, shifted in rows for i in range(len(plain))
    }
    keys[57] = (" ", " ")  # KEY_SPACE
    keypad = {
        71: "7",
        72: "8",
        73: "9",
        74: "-",
        75: "4",
        76: "5",
        77: "6",
        78: "+",
        79: "1",
        80: "2",
        81: "3",
        82: "0",
        83: ".",
        55: "*",
        98: "/",
    }
    keys.update({code: (ch, ch) for code, ch in keypad.items()})
    return keys


US_KEYS = _us_layout()


class KeyEvent(Protocol):
    """What the decoder needs of an ``evdev.InputEvent``."""

    type: int
    code: int
    value: int


class KeyboardWedgeDecoder:
    """Key events → codes. Pure: the caller passes the arrival time in."""

    __slots__ = ("_buf", "_last_ns", "_max", "_shift", "_spoiled")

    def __init__(self, max_length: int) -> None:
        self._max = max_length
        self._buf: list[str] = []
        self._shift: set[int] = set()
        self._spoiled: str | None = None
        self._last_ns = 0

    def feed(self, event: KeyEvent, at_ns: int) -> list[str | Rejected]:
        """One input event → the code it completes, and a rejection for a stale partial code."""
        if event.type != EV_KEY:
            return []  # EV_SYN, EV_MSC scan codes: framing, not keys
        code, value = event.code, event.value
        if code in _SHIFT_KEYS:
            (self._shift.add if value else self._shift.discard)(code)
            return []
        if value != 1 or code in _IGNORED_KEYS:
            return []  # key up, autorepeat
        out: list[str | Rejected] = []
        stale = self.expire(at_ns)
        if stale is not None:
            out.append(stale)
        self._last_ns = at_ns
        if code in (KEY_ENTER, KEY_KPENTER):
            done = self._take()
            if done is not None:
                out.append(done)
            return out
        chars = US_KEYS.get(code)
        if chars is None:
            self._spoiled = self._spoiled or "qr_unmapped_key"
        elif len(self._buf) >= self._max:
            self._spoiled = "qr_overlong"
        else:
            self._buf.append(chars[1] if self._shift else chars[0])
        return out

    def expire(self, now_ns: int) -> Rejected | None:
        """A partial code that has been silent for too long is dropped."""
        if (self._buf or self._spoiled) and now_ns - self._last_ns > PARTIAL_TIMEOUT_NS:
            self._buf.clear()
            self._spoiled = None
            return Rejected("qr_partial")
        return None

    def _take(self) -> str | Rejected | None:
        spoiled, text = self._spoiled, "".join(self._buf)
        self._buf.clear()
        self._spoiled = None
        if spoiled:
            return Rejected(spoiled)
        return check_code(text.encode(), self._max) if text else None


class HidQrReader(ThreadedReader):
    """Grabs one evdev keyboard device (by path or by name) and decodes what it types."""

    kind = "hid_qr"

    def __init__(self, config: HidQrReaderConfig) -> None:
        super().__init__(config)
        self._config = config

    def _open(self) -> Any:
        try:
            import evdev
        except ImportError as exc:
            raise missing_driver("evdev") from exc
        wanted = self._config.device
        try:
            if wanted.startswith("/"):
                return evdev.InputDevice(wanted)
            for path in evdev.list_devices():
                device = evdev.InputDevice(path)
                if device.name == wanted:
                    return device
                device.close()
        except FileNotFoundError as exc:
            raise DeviceAbsent(
                f"{wanted}: no such input device (is the scanner plugged in?)"
            ) from exc
        except PermissionError as exc:
            raise DeviceError(f"{wanted}: permission denied (add the gated user to input)") from exc
        except OSError as exc:
            raise DeviceAbsent(f"{wanted}: {exc.strerror or exc}") from exc
        raise DeviceAbsent(f"no input device named {wanted!r} (see: python -m evdev.evtest)")

    def _session(self, stop: threading.Event, link: Link) -> None:
        device = self._open()
        try:
            try:
                device.grab()  # exclusive: the codes must not reach a console or a login prompt
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise DeviceError(f"{device.path}: grabbed by another program") from exc
                raise DeviceError(f"{device.path}: cannot grab: {exc.strerror}") from exc
            link.ready(f"{device.name} ({device.path})")
            self._read(device, stop, link)
        finally:
            device.close()  # closing also releases the grab

    def _read(self, device: Any, stop: threading.Event, link: Link) -> None:
        decoder = KeyboardWedgeDecoder(self._config.max_length)
        while not stop.is_set():
            try:
                ready, _, _ = select.select([device.fd], [], [], 0.5)
                events = list(device.read()) if ready else []
            except BlockingIOError:
                events = []
            except OSError as exc:
                raise DeviceAbsent(f"{device.path}: disconnected") from exc
            now = time.monotonic_ns()
            items: list[str | Rejected | None] = [decoder.expire(now)] if not events else []
            for event in events:
                items.extend(decoder.feed(event, now))
            for item in items:
                if isinstance(item, Rejected):
                    link.reject(item)
                elif item is not None:
                    link.read("qr", item, now)
