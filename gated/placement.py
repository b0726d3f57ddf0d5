"""Which CPU decisions run on: the event loop's thread and the readers' threads share one CPU of
the process's allowed set, and the gate's other threads keep off it.

A read reaches the loop by a wake-up from the reader's thread (``call_soon_threadsafe``). With
both threads on one CPU the woken SCHED_FIFO loop preempts the reader at once (~24 µs a badge on
the development machine); on two CPUs it is the wake-up of another core (39-57 µs), and which of
the two the kernel chose moved an idle badge's p50 by ~20 µs from run to run (BENCHMARKS.md, gate
hot path). The cache writer and the worker threads share the GIL with the loop: kept on the other
CPUs they run beside a decision instead of queueing on its CPU. While the loop is busy for long
(a sync's burst), the readers may run anywhere (:func:`spread_readers`): a real-time loop that does
not sleep would leave them no time on its CPU.

Linux only (``os.sched_setaffinity``); where the kernel or a sandbox refuses, or only one CPU is
allowed, nothing is pinned and :attr:`Placement.detail` says why (status and doctor show it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Set
from dataclasses import dataclass

log = logging.getLogger("gated.daemon")


def check_decision_cpu(value: object) -> str:
    """A ``decision_cpu`` setting as the config keeps it: ``"auto"``, ``"off"`` or a CPU number
    (``"0"``, ``"3"``); ValueError with the one-line reason otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4096:
        return str(value)
    if isinstance(value, str) and (value in ("auto", "off") or value.isdigit()):
        return str(int(value)) if value.isdigit() else value
    raise ValueError(f'must be "auto", "off" or a CPU number such as 3, not {value!r}')


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the gate's threads run. ``cpu`` None: nothing is pinned."""

    cpu: int | None
    others: frozenset[int]  # the other threads' CPUs (empty when nothing is pinned)
    allowed: frozenset[int]  # the process's allowed set before pinning
    detail: str  # for status and doctor
    wanted: bool  # the setting asked for a pin (a refusal is then worth a warning)


_NOT_STARTED = Placement(None, frozenset(), frozenset(), "not pinned (not started)", False)
_placement = _NOT_STARTED
_readers: set[int] = set()  # native ids of the threads that joined the decision CPU


def current() -> Placement:
    """The placement in effect (the last :func:`place_decisions` not yet released)."""
    return _placement


def _cpus(cpus: Set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def place_decisions(setting: str) -> Placement:
    """Pin the calling thread (the event loop's) to the decision CPU and move the process's other
    threads that already run (the cache writer) off it; reader threads join it with
    :func:`join_decisions`, threads started later keep off it with :func:`keep_off_decisions`.

    ``setting``: ``"auto"`` (the highest CPU allowed: the kernel and most interrupts favour the
    first), ``"off"``, or a CPU number."""
    global _placement
    if setting == "off":
        _placement = Placement(
            None, frozenset(), frozenset(), "not pinned (decision_cpu = off)", False
        )
        return _placement
    try:
        allowed = frozenset(os.sched_getaffinity(0))
    except (OSError, AttributeError) as exc:  # not Linux, or a sandbox refusing the call
        return _refused(setting, frozenset(), f"CPU affinity unavailable: {exc}")
    if setting == "auto" and len(allowed) < 2:
        _placement = Placement(
            None, frozenset(), allowed, f"not pinned (one CPU allowed: {_cpus(allowed)})", False
        )
        return _placement
    cpu = max(allowed) if setting == "auto" else int(setting)
    if cpu not in allowed:
        return _refused(setting, allowed, f"CPU {cpu} is not in the allowed set {_cpus(allowed)}")
    others = allowed - {cpu} or allowed
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return _refused(setting, allowed, f"pinning refused: {exc.strerror or exc}")
    _move_others(others)
    _placement = Placement(
        cpu, others, allowed, f"cpu {cpu} (readers with it; other threads on {_cpus(others)})", True
    )
    log.info("event=decision_cpu cpu=%d others=%s", cpu, _cpus(others))
    return _placement


def _move_others(cpus: Set[int]) -> None:
    """Every thread of the process but the caller onto ``cpus``."""
    me = threading.get_native_id()
    with contextlib.suppress(OSError):
        for tid in map(int, os.listdir("/proc/self/task")):
            if tid != me:
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    os.sched_setaffinity(tid, cpus)


def _refused(setting: str, allowed: frozenset[int], why: str) -> Placement:
    global _placement
    log.warning(
        "event=decision_cpu_unavailable setting=%s reason=%r: decisions and readers run "
        "wherever the kernel puts them",
        setting, why,
    )  # fmt: skip
    _placement = Placement(None, frozenset(), allowed, f"not pinned ({why})", True)
    return _placement


def join_decisions() -> bool:
    """Put the calling thread (a reader's) on the decision CPU, if there is one; True if it
    is there now."""
    cpu = _placement.cpu
    if cpu is None:
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # the reader reads on, wherever it runs
        log.warning("event=reader_cpu_refused cpu=%d error=%r", cpu, exc.strerror or str(exc))
        return False
    _readers.add(threading.get_native_id())
    return True


def leave_decisions() -> None:
    """A reader's thread that ends: forget it (its id may be reused by another thread)."""
    _readers.discard(threading.get_native_id())


def spread_readers() -> None:
    """While the loop is busy for long (a sync's burst of updates), let the readers' threads run
    on any allowed CPU: a real-time loop that does not sleep leaves a thread of the normal policy
    on its CPU no time, and a read handed over then waited milliseconds (BENCHMARKS.md)."""
    _move_readers(_placement.allowed)


def gather_readers() -> None:
    """The loop idle again: the readers' threads back on its CPU."""
    cpu = _placement.cpu
    if cpu is not None:
        _move_readers({cpu})


def _move_readers(cpus: Set[int]) -> None:
    if _placement.cpu is None:
        return
    for tid in list(_readers):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # the thread ended
            _readers.discard(tid)


def keep_off_decisions() -> None:
    """Keep the calling thread (one the loop started that is not a reader's) off the decision CPU:
    a thread inherits its creator's affinity, and the loop's is the decision CPU alone."""
    placement = _placement
    if placement.cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, placement.others)


def process_cpus() -> frozenset[int] | None:
    """The CPUs a process the loop spawns should run on (the whole allowed set: verifier
    processes do not share the GIL, and the loop preempts them), or None if nothing is pinned."""
    placement = _placement
    return placement.allowed if placement.cpu is not None else None


def release_decisions() -> None:
    """At stop: every thread back on the allowed set, nothing pinned (a process that goes on,
    such as a test's, is as it was)."""
    global _placement
    placement = _placement
    if placement.cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, placement.allowed)
        _move_others(placement.allowed)
    _placement = _NOT_STARTED
    _readers.clear()
