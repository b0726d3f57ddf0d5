"""The gate's trusted time (DESIGN "Time").

A Pi has no RTC and may boot in 1970, so ``now`` for every policy check is the latest of the
system clock, the last known good time saved on disk, and the newest ``issued_at`` seen from head
office. Whether the kernel clock is NTP-synchronized is read with adjtimex(2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

TIME_ERROR = 5  # adjtimex: clock not synchronized


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `modes` (0 = read only) and the return value matter.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


def system_clock_synchronized() -> bool | None:
    """True/False from the kernel's NTP state; None if it cannot be read here."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != TIME_ERROR)


class TrustedClock:
    """``now()`` never goes back past the last time the gate knew to be good."""

    def __init__(self, floor: float = 0.0, system: Callable[[], float] = time.time) -> None:
        self._floor = floor
        self._system = system

    def now(self) -> float:
        t = self._system()
        return t if t >= self._floor else self._floor

    def advance_to(self, known_good: float) -> None:
        """Raise the floor (a saved time, or a head-office ``issued_at``)."""
        if known_good > self._floor:
            self._floor = known_good

    @property
    def floor(self) -> float:
        return self._floor

    def system_behind(self) -> bool:
        """True while the system clock is behind what the gate knows (e.g. booted in 1970)."""
        return self._system() < self._floor
