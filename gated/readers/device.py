"""The shell every hardware reader shares: health, debouncing, and a device thread with backoff.

A driver only writes ``_session``: open the device, call ``link.ready()``, read until ``stop`` is
set, and raise :class:`DeviceAbsent` or :class:`DeviceError` when the device goes away or fails.
This module turns that into the :class:`~gated.readers.base.Reader` contract: the session runs in a
thread the reader owns, reads reach the event loop through ``call_soon_threadsafe``, a fault sets
``health`` and the session is retried with exponential backoff, and nothing raises out of ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from gated.errors import GatedError
from gated.placement import join_decisions, leave_decisions
from gated.policy.credential import Credential, CredentialKind, Direction
from gated.readers.base import Debouncer, ReaderHealth

if TYPE_CHECKING:
    from gated.config import _ReaderBase
    from gated.readers.base import Emit

log = logging.getLogger("gated.readers")

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0


class DeviceFault(GatedError):
    """A device problem a reader reports in ``health`` and retries; the message is for a human and
    never contains a card UID."""

    state = "error"


class DeviceAbsent(DeviceFault):
    """The device is not there: unplugged, no such port, no matching reader, no service."""

    state = "absent"


class DeviceError(DeviceFault):
    """The device is there but failing: permission denied, busy, protocol errors."""

    state = "error"


def missing_driver(package: str, extra: str = "readers") -> DeviceError:
    """The fault for a driver library that is not installed, with the one-line fix."""
    return DeviceError(f"the {package} library is not installed (pip install 'gated[{extra}]')")


class HardwareReader:
    """Health, debouncing and delivery shared by the hardware readers. Subclasses set ``kind``."""

    kind = "hardware"

    def __init__(self, config: _ReaderBase) -> None:
        if config.id is None:
            raise ValueError("a reader needs an id: load its config through GateConfig")
        self.id: str = config.id
        self.direction: Direction = config.direction
        self.health = ReaderHealth()
        self._debouncer = Debouncer(config.debounce_ms)

    # --- on the event loop ----------------------------------------------------------------------

    def _deliver(self, emit: Emit, kind: CredentialKind, value: str, at_ns: int) -> None:
        if not self._debouncer.accept(value, at_ns):
            return
        health = self.health
        health.reads += 1
        health.last_read_at = time.time()
        emit(Credential(kind, value, self.id, self.direction, at_ns))

    def _reject(self, reason: str) -> None:
        self.health.rejected += 1
        log.info("reader_rejected reader=%s reason=%s", self.id, reason)

    def _ready(self, detail: str) -> None:
        health = self.health
        if health.state != "ok":
            log.info("reader_ok reader=%s kind=%s detail=%r", self.id, self.kind, detail)
        health.state = "ok"
        health.detail = detail

    def _fault(self, fault: DeviceFault) -> None:
        health = self.health
        health.errors += 1
        detail = str(fault) or type(fault).__name__
        if (health.state, health.detail) != (fault.state, detail):
            log.warning(
                "reader_fault reader=%s kind=%s state=%s detail=%r",
                self.id,
                self.kind,
                fault.state,
                detail,
            )
        health.state = fault.state  # type: ignore[assignment]
        health.detail = detail

    def _error(self, detail: str) -> None:
        """A failed read that leaves the device usable: counted, state unchanged."""
        self.health.errors += 1
        log.info("reader_read_error reader=%s detail=%r", self.id, detail)


class Link:
    """The device thread's way back to the event loop. Safe to call after the loop has closed."""

    __slots__ = ("_emit", "_loop", "_reader")

    def __init__(self, reader: HardwareReader, loop: asyncio.AbstractEventLoop, emit: Emit) -> None:
        self._reader = reader
        self._loop = loop
        self._emit = emit

    def _call(self, fn: object, *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the thread was finishing
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

    def read(self, kind: CredentialKind, value: str, at_ns: int) -> None:
        """A credential read at ``at_ns`` (``time.monotonic_ns()`` when the device reported it)."""
        self._call(self._reader._deliver, self._emit, kind, value, at_ns)

    def reject(self, reason: str) -> None:
        """Bad input from the device (garbage, overlong, bad parity): counted and dropped."""
        self._call(self._reader._reject, reason)

    def error(self, detail: str) -> None:
        """A read that failed without taking the device down."""
        self._call(self._reader._error, detail)

    def ready(self, detail: str = "") -> None:
        """The device is open and reading."""
        self._call(self._reader._ready, detail)

    def fault(self, fault: DeviceFault) -> None:
        """The session ended with a fault; the thread retries after a backoff."""
        self._call(self._reader._fault, fault)


class ThreadedReader(HardwareReader):
    """A reader whose driver blocks: the session runs in a thread owned by ``run``."""

    def _session(self, stop: threading.Event, link: Link) -> None:
        """Open the device, ``link.ready()``, read until ``stop`` is set; raise DeviceFault on a
        fault. Must notice ``stop`` within about a second or after ``_interrupt``."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake a session blocked in the driver (called from the loop after ``stop`` is set)."""

    def _thread_main(self, stop: threading.Event, link: Link) -> None:
        join_decisions()  # a read then wakes the loop on its own CPU (gated.placement)
        try:
            self._read_until_stopped(stop, link)
        finally:
            leave_decisions()

    def _read_until_stopped(self, stop: threading.Event, link: Link) -> None:
        delay = BACKOFF_FIRST_S
        while not stop.is_set():
            started = time.monotonic()
            try:
                self._session(stop, link)
            except DeviceFault as fault:
                link.fault(fault)
            except Exception as exc:  # a driver bug must not kill the reader: report and retry
                log.exception("reader_crash reader=%s kind=%s", self.id, self.kind)
                link.fault(DeviceError(f"{type(exc).__name__}: {exc}"))
            else:
                if not stop.is_set():
                    link.fault(DeviceError("the driver stopped reading"))
            if time.monotonic() - started > 10 * BACKOFF_MAX_S:
                delay = BACKOFF_FIRST_S  # a long good session: the next fault starts over
            stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def run(self, emit: Emit) -> None:
        """Read until cancelled; device faults go to ``health`` and are retried, never raised."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._thread_main,
            args=(stop, Link(self, loop, emit)),
            name=f"reader-{self.id}",
            daemon=True,
        )
        thread.start()
        try:
            await loop.create_future()  # until cancelled
        finally:
            stop.set()
            self._interrupt()
            await asyncio.to_thread(thread.join, 5.0)
