"""Wiegand readers on two GPIO inputs: a pure frame decoder and an edge-callback shell.

A Wiegand reader pulls D0 low for a 0 bit and D1 low for a 1 bit (pulses of ~50 µs, ~1-2 ms
apart). There is no end-of-frame marker: a frame ends when no bit has come for
``frame_timeout_ms``. The timer restarts on every bit, so a frame is complete ``frame_timeout_ms``
after its last bit whatever its length (a timer from the first bit would cost ~200 ms a swipe).

Frames, parity as the standard formats define them:
- 26 bits: even parity over bits 1-12, facility code (8 bits), card number (16 bits), odd parity
  over bits 13-24 → ``w26:FAC:NUM`` (decimal).
- 34 bits: even parity over bits 1-16, 32 data bits, odd parity over bits 17-32 → the 8-hex-digit
  UID. ``byte_order = "reversed"`` for readers that send the UID bytes backwards, so a card reads
  the same here as on a PC/SC reader.
Anything else (other lengths, bad parity) is rejected and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from gated.placement import join_decisions
from gated.readers.device import DeviceError, HardwareReader, missing_driver

if TYPE_CHECKING:
    from gated.config import WiegandReaderConfig
    from gated.readers.base import Emit

ByteOrder = Literal["as_sent", "reversed"]
_MAX_BITS = 64  # longer bursts are noise; stop storing bits, reject at the end of the frame


class BadFrame(Exception):
    """A frame that is not a valid 26- or 34-bit Wiegand frame; ``str()`` is the reason code."""


def _parity_ok(bits: Sequence[int], even_over: slice, odd_over: slice) -> bool:
    return (sum(bits[even_over]) + bits[0]) % 2 == 0 and (sum(bits[odd_over]) + bits[-1]) % 2 == 1


def decode_frame(bits: Sequence[int], byte_order: ByteOrder = "as_sent") -> str:
    """A complete frame → the credential value; BadFrame with the reason otherwise."""
    n = len(bits)
    if n == 26:
        if not _parity_ok(bits, slice(1, 13), slice(13, 25)):
            raise BadFrame("wiegand_parity")
        facility = int("".join(map(str, bits[1:9])), 2)
        number = int("".join(map(str, bits[9:25])), 2)
        return f"w26:{facility}:{number}"
    if n == 34:
        if not _parity_ok(bits, slice(1, 17), slice(17, 33)):
            raise BadFrame("wiegand_parity")
        data = int("".join(map(str, bits[1:33])), 2).to_bytes(4, "big")
        return (data[::-1] if byte_order == "reversed" else data).hex().upper()
    raise BadFrame("wiegand_length")


def _with_parity(data: list[int]) -> list[int]:
    half = len(data) // 2
    return [sum(data[:half]) % 2, *data, 1 - sum(data[half:]) % 2]


def encode_26(facility: int, number: int) -> list[int]:
    """The bits of a 26-bit frame (for the simulator, tests and the benchmark)."""
    return _with_parity([int(b) for b in f"{facility:08b}{number:016b}"])


def encode_34(uid: str, byte_order: ByteOrder = "as_sent") -> list[int]:
    """The bits a 34-bit reader sends for a 4-byte UID (8 hex digits)."""
    data = bytes.fromhex(uid)
    if byte_order == "reversed":
        data = data[::-1]
    return _with_parity([int(b) for b in f"{int.from_bytes(data, 'big'):032b}"])


class WiegandDecoder:
    """Assembles bits into frames by their timing. Pure: the caller passes the times in.

    ``bit`` returns the previous frame's result when a bit arrives after a gap longer than the
    timeout (the timer was late); ``flush`` returns the current frame's result once the timeout
    has passed since its last bit. A result is the credential value or a :class:`BadFrame`.
    """

    __slots__ = ("_bits", "_byte_order", "_count", "_last_ns", "_timeout_ns")

    def __init__(self, frame_timeout_ms: int = 20, byte_order: ByteOrder = "as_sent") -> None:
        self._timeout_ns = frame_timeout_ms * 1_000_000
        self._byte_order = byte_order
        self._bits: list[int] = []
        self._count = 0
        self._last_ns = 0

    @property
    def deadline_ns(self) -> int | None:
        """When the frame in progress is complete, or None when idle."""
        return self._last_ns + self._timeout_ns if self._count else None

    def bit(self, value: int, at_ns: int) -> str | BadFrame | None:
        """Feed one bit (0 from D0, 1 from D1) seen at ``at_ns``."""
        done = self.flush(at_ns)
        if self._count < _MAX_BITS:
            self._bits.append(value)
        self._count += 1
        self._last_ns = at_ns
        return done

    def flush(self, now_ns: int) -> str | BadFrame | None:
        """The frame in progress, if its timeout has passed at ``now_ns``."""
        if not self._count or now_ns - self._last_ns < self._timeout_ns:
            return None
        bits, count = self._bits, self._count
        self._bits, self._count = [], 0
        if count != len(bits):
            return BadFrame("wiegand_length")
        try:
            return decode_frame(bits, self._byte_order)
        except BadFrame as bad:
            return bad


class WiegandReader(HardwareReader):
    """D0/D1 falling edges through a gpiozero pin factory (lgpio on a Pi, MockFactory in tests)."""

    kind = "wiegand"

    def __init__(self, config: WiegandReaderConfig, pin_factory: Any = None) -> None:
        super().__init__(config)
        self._config = config
        self._pin_factory = pin_factory
        self._decoder = WiegandDecoder(config.frame_timeout_ms, config.byte_order)
        self._timer: asyncio.TimerHandle | None = None
        self._callbacks: list[Any] = []  # gpiozero holds pin callbacks weakly: keep them alive

    def _open_pins(self, loop: asyncio.AbstractEventLoop, on_bit: Any) -> list[Any]:
        try:
            from gpiozero import Device
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise missing_driver("gpiozero") from exc
        factory = self._pin_factory
        pins: list[Any] = []
        try:
            if factory is None:
                factory = Device.pin_factory or Device._default_pin_factory()
            for bit, number in ((0, self._config.d0_pin), (1, self._config.d1_pin)):
                pin = factory.pin(number)
                pins.append(pin)
                pin.function = "input"
                pin.pull = "up"  # the lines idle high; a bit is a low pulse
                pin.bounce = None
                pin.edges = "falling"
                callback = _edge_callback(loop, on_bit, bit)
                self._callbacks.append(callback)
                pin.when_changed = callback
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            _close_pins(pins)
            self._callbacks.clear()
            raise DeviceError(f"GPIO {self._config.d0_pin}/{self._config.d1_pin}: {exc}") from exc
        return pins

    def _on_bit(self, emit: Emit, loop: asyncio.AbstractEventLoop, bit: int, at_ns: int) -> None:
        self._settle(emit, self._decoder.bit(bit, at_ns))
        if self._timer is not None:
            self._timer.cancel()
        deadline = self._decoder.deadline_ns
        if deadline is not None:
            delay = max(0.0, (deadline - time.monotonic_ns()) / 1e9)
            self._timer = loop.call_later(delay, self._on_timeout, emit)

    def _on_timeout(self, emit: Emit) -> None:
        self._timer = None
        self._settle(emit, self._decoder.flush(time.monotonic_ns()))

    def _settle(self, emit: Emit, result: str | BadFrame | None) -> None:
        if isinstance(result, BadFrame):
            self._reject(str(result))
        elif result is not None:
            # The frame's presence time is its last bit: the timeout is part of the latency.
            self._deliver(emit, "card", result, time.monotonic_ns())

    async def run(self, emit: Emit) -> None:
        """Listen for edges until cancelled; a GPIO setup failure is retried with backoff."""
        loop = asyncio.get_running_loop()
        delay = 0.25
        while True:
            try:
                pins = self._open_pins(loop, lambda bit, at: self._on_bit(emit, loop, bit, at))
            except DeviceError as fault:
                self._fault(fault)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._ready(f"D0=GPIO{self._config.d0_pin} D1=GPIO{self._config.d1_pin}")
            try:
                await loop.create_future()  # edges arrive through callbacks until cancelled
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                _close_pins(pins)
                self._callbacks.clear()


# Threads that delivered an edge and were put on the decision CPU (gated.placement).
_joined = threading.local()


def _edge_callback(loop: asyncio.AbstractEventLoop, on_bit: Any, bit: int) -> Any:
    # gpiozero calls this on its own thread (lgpio) or the caller's (MockFactory): stamp the time
    # here, decode on the loop. The edge thread is the driver's, not ours: it joins the decision
    # CPU at its first edge.
    def changed(ticks: object, state: object) -> None:
        at = time.monotonic_ns()
        if not getattr(_joined, "done", False):
            _joined.done = join_decisions()
        with contextlib.suppress(RuntimeError):  # the loop closed
            loop.call_soon_threadsafe(on_bit, bit, at)

    return changed


def _close_pins(pins: list[Any]) -> None:
    for pin in pins:
        pin.when_changed = None
        pin.close()
