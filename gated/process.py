"""How the daemon's process runs: the event loop's thread under real-time scheduling, a short GIL
switch interval, the loaded member index kept out of the collector, and the memory the start
used and freed given back to the system.

Each is a process-wide setting the daemon makes once, at start; they live here so that
``daemon.py`` reads as wiring and the hot path.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys

log = logging.getLogger("gated.daemon")

# The cache writer and the executors' threads hold the GIL in Python code; a short switch interval
# lets the loop thread (decisions) take it back soon.
GIL_SWITCH_INTERVAL_S = 0.0002


def decide_in_realtime(priority: int) -> str:
    """Run the calling thread, the event loop's (every decision), under SCHED_FIFO at
    ``priority``; returns what is in effect, for status and doctor.

    A woken thread under the normal policy waits its turn behind every runnable thread of the
    board; a real-time loop runs as soon as the card is handed to it (BENCHMARKS.md, gate hot
    path). SCHED_RESET_ON_FORK: threads and processes started from here afterwards (the
    readers' threads, the verifier processes) get the normal policy, so only this thread can
    take the CPU first. The kernel still keeps 5% of each core for the rest (RT throttling).
    Needs CAP_SYS_NICE or an RLIMIT_RTPRIO of ``priority`` (the shipped unit's LimitRTPRIO=);
    without it the loop stays under the normal policy, which is logged and shown by doctor."""
    if priority <= 0:
        return "normal (realtime_priority = 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        log.warning(
            "event=realtime_unavailable priority=%d error=%r: decisions run under the normal "
            "policy (allow it with LimitRTPRIO=%d in the unit, or set realtime_priority = 0)",
            priority, exc.strerror or str(exc), priority,
        )  # fmt: skip
        return f"normal (SCHED_FIFO {priority} refused: {exc.strerror or exc})"
    log.info("event=realtime policy=SCHED_FIFO priority=%d", priority)
    return f"fifo {priority}"


def settle_after_load() -> None:
    """After the start has loaded the member index (with the collector off): a short GIL switch
    interval, the loaded objects frozen out of the collector's generations (a full collection
    then never walks them during a badge), and the freed memory given back."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # No collection first: here it finds a handful of objects (9 at 100,000 members) and cost
    # ~12 ms of the start before READY=1; the few it would have freed stay frozen.
    gc.freeze()
    gc.enable()
    release_free_memory()


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False where
    there is no such call (another C library).

    Loading the index leaves ~7 MiB of a 100,000-member start freed but held by the C heap (the
    rows SQLite handed over, its page cache, the arrays' earlier sizes): without this the gate's
    RSS keeps it for ever (BENCHMARKS.md, compact member index)."""
    try:
        # The process's own symbols (libc is loaded): find_library would run ldconfig first.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
