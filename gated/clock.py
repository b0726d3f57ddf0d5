"""The gate's trusted time (DESIGN "Time"): head-office time is a floor, not a master.

A Pi has no RTC and may boot in 1970, so ``now`` for every policy check cannot simply be the
system clock. Nor may one signed object with a wild ``issued_at`` drag it years ahead (every member
expired, every QR code refused). The rules:

- The system clock is *plausible* when it is synchronized, or later than both the release time
  built into the software and the saved last good time. The last good time is saved only from a
  plausible clock.
- While it is plausible, ``now`` follows it, never below the saved time plus the monotonic time
  since. A verified object dated more than :data:`SKEW_LIMIT_S` ahead is still applied, but its
  time is ignored, counted and raised (``clock_skew``).
- Only while it is not plausible does a verified ``issued_at`` lift ``now``: the first one above
  what the gate has is taken as the base (and raised); later ones lift it at most
  :data:`SKEW_LIMIT_S` above that base plus the monotonic time since.
- A saved time more than :data:`SAVED_AHEAD_LIMIT_S` ahead of a synchronized clock is discarded,
  which repairs a gate misled before.

Synchronization, the release time and both clocks are read through a :class:`ClockProbe`, so
tests cover every branch without touching the machine's clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("gated.clock")

TIME_ERROR = 5  # adjtimex: clock not synchronized
# The software's release time, as systemd's time epoch is: no clock reading before it is real.
# Moved forward with every release.
RELEASE_TIME = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
# How far ahead of the gate's now a signed time may be before it is ignored (objects) or refused
# (commands).
SKEW_LIMIT_S = 300.0
# A saved last good time further than this ahead of a synchronized clock is wrong, not early.
SAVED_AHEAD_LIMIT_S = 86400.0
# A skewed head office sends the same wild date in every object: one event and one log line per
# interval, while the counter counts every object.
SKEW_ALARM_INTERVAL_S = 600.0

# (event kind, reason): ``clock_skew`` or ``clock_unsynced``, raised once per occurrence.
ClockAlarm = Callable[[str, str], object]


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


@dataclass(frozen=True, slots=True)
class ClockProbe:
    """Where the gate reads time and its trust from: the machine by default, fakes in tests."""

    system: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    synchronized: Callable[[], bool | None] = system_clock_synchronized
    release_time: float = RELEASE_TIME


def issued_too_far_ahead(issued_at: float, now: float) -> bool:
    """Whether a signed time is more than :data:`SKEW_LIMIT_S` ahead of the gate's now (a command
    that far ahead is refused, not run early)."""
    return issued_at > now + SKEW_LIMIT_S


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Skew:
    count: int = 0
    last_s: float | None = None  # how far ahead the last skewed object was
    last_at: float | None = None  # monotonic time it was seen
    alarmed_at: float | None = None


class TrustedClock:
    """``now()`` for every policy check, by the rules of the module docstring.

    ``saved`` is the last good time read from disk (None on a new gate). ``now()`` is on the hot
    path: two clock reads and a few comparisons; the synchronization state is read at start and
    by :meth:`refresh` (once a minute), not per call.
    """

    def __init__(self, saved: float | None = None, probe: ClockProbe | None = None) -> None:
        self._probe = probe or ClockProbe()
        # now() is on the hot path: its reads bound once (a probe is frozen), and the saved
        # time's floor kept with the saved time, so a call is two clock reads and a comparison.
        self._system = self._probe.system
        self._monotonic = self._probe.monotonic
        self._release_time = self._probe.release_time
        self._listener: ClockAlarm | None = None
        self._pending: list[tuple[str, str]] = []
        self.synchronized = self._probe.synchronized()
        self._remember_saved(0.0 if saved is None else float(saved))
        self.discarded_saved: float | None = None
        self._head_office: float | None = None  # the first head-office time taken as base
        self._head_office_mono = 0.0
        self._head_office_lift = 0.0  # later lifts above base + monotonic, at most SKEW_LIMIT_S
        self._skew = _Skew()
        self._discard_if_ahead()

    # --- reading ------------------------------------------------------------------------------

    def now(self) -> float:
        """The gate's time: the system clock while it is plausible, else the best floor."""
        t = self._system()
        m = self._monotonic()
        floor = self._saved_floor + (m - self._saved_mono)
        # _plausible(t), written out: a call less a badge
        if self.synchronized is True or (t > self._release_time and t > self._saved):
            return t if t >= floor else floor
        if self._head_office is not None:
            lifted = self._head_office + (m - self._head_office_mono) + self._head_office_lift
            if lifted > floor:
                return lifted
        return floor

    def plausible(self) -> bool:
        """Whether the system clock can be believed now (and the last good time saved from it)."""
        return self._plausible(self._system())

    def _plausible(self, t: float) -> bool:
        return self.synchronized is True or (t > self._release_time and t > self._saved)

    # --- what the daemon feeds in -------------------------------------------------------------

    def listen(self, on_alarm: ClockAlarm) -> None:
        """Raise alarms through ``on_alarm`` from now on (and the ones raised before, at start)."""
        self._listener = on_alarm
        pending, self._pending = self._pending, []
        for kind, reason in pending:
            on_alarm(kind, reason)

    def refresh(self) -> bool | None:
        """Read the synchronization state again (once a minute); a clock just synchronized
        discards a saved time far ahead of it. Returns the state."""
        self.synchronized = self._probe.synchronized()
        self._discard_if_ahead()
        return self.synchronized

    def good_time(self) -> float | None:
        """The time to save as the last good time, or None while the clock is not plausible.
        The caller saves it; the clock remembers it as the saved time from here on."""
        if not self.plausible():
            return None
        now = self.now()
        self._remember_saved(now)
        return now

    def observe(self, issued_at: float) -> None:
        """A verified head-office object's time (the object itself is applied either way)."""
        m = self._monotonic()
        now = self.now()
        if self._plausible(self._system()):
            if issued_too_far_ahead(issued_at, now):
                self._skewed(issued_at - now, m, "ahead of this gate's clock: time ignored")
            return
        if self._head_office is None:
            if issued_at > now:
                self._head_office = issued_at
                self._head_office_mono = m
                self._alarm(
                    "clock_unsynced",
                    f"system clock not plausible: time taken from head office ({_iso(issued_at)})",
                )
            return
        base_now = self._head_office + (m - self._head_office_mono)
        lift = issued_at - base_now
        if lift > SKEW_LIMIT_S:
            self._skewed(lift, m, "ahead of the head-office base: lifted 5 min at most")
            lift = SKEW_LIMIT_S
        if lift > self._head_office_lift:
            self._head_office_lift = lift

    # --- for doctor, status and metrics -------------------------------------------------------

    @property
    def skew_count(self) -> int:
        """Verified objects dated more than SKEW_LIMIT_S ahead, since start."""
        return self._skew.count

    @property
    def last_skew_s(self) -> float | None:
        """How far ahead the last of them was (seconds), or None."""
        return self._skew.last_s

    def last_skew_age(self) -> float | None:
        """Seconds since the last of them was seen, or None."""
        at = self._skew.last_at
        return None if at is None else self._monotonic() - at

    def stats(self) -> dict[str, Any]:
        """What ``gatectl status`` shows of the clock."""
        return {
            "plausible": self.plausible(),
            "synchronized": self.synchronized,
            "head_office_base": None if self._head_office is None else _iso(self._head_office),
            "skewed_objects": self._skew.count,
            "last_skew_s": None if self._skew.last_s is None else round(self._skew.last_s),
            "discarded_saved_time": None
            if self.discarded_saved is None
            else _iso(self.discarded_saved),
        }

    # --- inside -------------------------------------------------------------------------------

    def _remember_saved(self, saved: float) -> None:
        """The saved last good time from here on, at the monotonic time now."""
        self._saved = saved
        self._saved_mono = self._monotonic()
        self._saved_floor = max(saved, self._release_time)

    def _discard_if_ahead(self) -> None:
        if self.synchronized is not True:
            return
        t = self._system()
        if self._saved > t + SAVED_AHEAD_LIMIT_S:
            self.discarded_saved = self._saved
            self._remember_saved(0.0)
            self._head_office = None
            self._head_office_lift = 0.0
            self._alarm(
                "clock_skew",
                f"saved time {_iso(self.discarded_saved)} discarded: more than 24 h ahead of "
                f"the synchronized clock ({_iso(t)})",
            )

    def _skewed(self, ahead: float, m: float, what: str) -> None:
        skew = self._skew
        skew.count += 1
        skew.last_s = ahead
        skew.last_at = m
        if skew.alarmed_at is None or m - skew.alarmed_at >= SKEW_ALARM_INTERVAL_S:
            skew.alarmed_at = m
            self._alarm(
                "clock_skew",
                f"head-office time {ahead:.0f}s {what} ({skew.count} objects so far)",
            )

    def _alarm(self, kind: str, reason: str) -> None:
        log.warning("event=%s reason=%r", kind, reason)
        if self._listener is None:
            self._pending.append((kind, reason))
        else:
            self._listener(kind, reason)
