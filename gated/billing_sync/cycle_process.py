"""Billing cycles on a timer: in ``serve``'s threads, or in a process of their own.

A cycle over a large gym is minutes of Python work. Run in ``serve``'s threads it shares one
interpreter lock with the member app, and every member's request waits behind it. With
``[serve] cycles = "own-process"``, ``serve`` starts ``gated-billing run --every`` as a child
instead: the cycle gets its own interpreter (and the service manager can ``Nice=`` it apart),
``serve`` restarts it when it dies and stops it when it stops itself. The two share nothing but
the store: the child's status changes reach the gates through the publisher (which looks at the
outbox every quarter second; in a process of its own too, ``publisher_process.py``, supervised
here as well), and notices are delivered by ``serve`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from gated.billing_sync.service import Billing, CycleReport

log = logging.getLogger("gated.billing")

# Seconds to wait before starting a cycle process that ended, by how many ended in a row: a
# process that fails at once (a bad key file, the database gone) must not spin.
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# A child that ran this long before it ended starts again after the shortest delay.
HEALTHY_RUN_S = 60.0
# What a stopping cycle gets to finish its batch (its gateway calls in flight) before it is
# killed; below the unit's TimeoutStopSec=30s, so serve itself still stops in time.
STOP_GRACE_S = 20.0
# How often an orphaned cycle process notices that serve is gone.
PARENT_CHECK_S = 1.0


def cycle_once(billing: Billing) -> CycleReport:
    """One cycle and the housekeeping after it, logged. A locked or briefly unreachable
    database loses only this cycle: the next one resumes every attempt it left open."""
    try:
        report = billing.run_cycle()
        # Housekeeping: online sign-ups left unpaid for a day go (none was published).
        billing.purge_unpaid_signups()
    except SQLAlchemyError as exc:
        log.error("event=cycle_failed error=%s", type(exc).__name__)
        return CycleReport()
    if report.reviewed or report.resumed:
        log.info(
            "event=cycle reviewed=%d renewals=%d retries=%d succeeded=%d failed=%d errors=%d "
            "batches=%d rested_s=%.1f",
            report.reviewed,
            report.renewals,
            report.retries,
            report.succeeded,
            report.failed,
            report.errors,
            report.batches,
            report.rested_s,
        )
    return report


def run_every(
    billing: Billing,
    every: float,
    stop: threading.Event,
    after: Callable[[], object] | None = None,
) -> None:
    """A cycle (then ``after``, e.g. notice delivery) every ``every`` seconds until ``stop``
    is set: ``gated-billing run --every``. Set ``billing.stopping`` with ``stop`` to end a
    running cycle after its batch."""
    log.info("event=cycles_every every_s=%g notices=%s", every, "on" if after else "off")
    while not stop.is_set():
        cycle_once(billing)
        if after is not None and not stop.is_set():
            after()
        stop.wait(every)


def watch_parent(parent: int, stop: threading.Event, billing: Billing) -> threading.Thread:
    """Stop like on SIGTERM once ``parent`` is gone (``serve`` killed -9 leaves no one to stop
    its child, and a second ``serve`` would start another)."""

    def watch() -> None:
        while not stop.wait(PARENT_CHECK_S):
            if os.getppid() != parent:
                log.warning("event=cycle_process_orphaned parent=%d", parent)
                billing.stopping.set()
                stop.set()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def child_command(config_path: Path, interval: float, share: float = 1.0) -> list[str]:
    """The cycle process ``serve`` starts: this interpreter, so it runs the same code, busy for
    at most ``share`` of its wall time (``[serve] cycle_share``)."""
    return [
        sys.executable,
        "-m",
        "gated.billing_sync",
        "run",
        "--every",
        repr(interval),
        "--share",
        repr(share),
        "--no-notices",
        "--parent",
        str(os.getpid()),
        "-c",
        str(config_path),
    ]


def lower_priority(pid: int, nice: int) -> None:
    """Make process ``pid`` ``nice`` steps nicer than this one (at most 19: the lowest)."""
    if nice <= 0:
        return
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(ProcessLookupError):  # it ended at once: supervise restarts it
        os.setpriority(os.PRIO_PROCESS, pid, min(19, mine + nice))


async def supervise(
    command: list[str],
    name: str = "cycle_process",
    nice: int = 0,
    started: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> None:
    """``serve``'s task for a child process (``name``: ``cycle_process`` for ``cycles =
    "own-process"``): run ``command`` ``nice`` steps nicer than ``serve``, start it again when
    it ends (after a delay that grows while it keeps failing), and stop it (SIGTERM, then SIGKILL
    after ``STOP_GRACE_S``) when this task is cancelled. With ``started``, the child's stdin is a
    pipe from ``serve`` and ``started`` gets each child as it starts (a child reads EOF there
    when ``serve`` is gone, even killed -9)."""
    failures = 0
    env = {**os.environ, "GATED_LOG_LEVEL": logging.getLevelName(logging.getLogger().level)}
    stdin = asyncio.subprocess.PIPE if started is not None else asyncio.subprocess.DEVNULL
    while True:
        begun = time.monotonic()
        child = await asyncio.create_subprocess_exec(*command, stdin=stdin, env=env)
        # Set as it starts, before it imports the service (seconds of CPU on a busy host).
        lower_priority(child.pid, nice)
        log.info("event=%s_started pid=%d nicer_by=%d", name, child.pid, nice)
        if started is not None:
            started(child)
        try:
            code = await child.wait()
        except asyncio.CancelledError:
            await _stop(child, name)
            raise
        if time.monotonic() - begun >= HEALTHY_RUN_S:
            failures = 0
        delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
        failures += 1
        log.error("event=%s_ended code=%d restart_in_s=%g", name, code, delay)
        await asyncio.sleep(delay)


async def _stop(child: asyncio.subprocess.Process, name: str) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it ended as we were told to stop
        child.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE_S):
            await child.wait()
    except TimeoutError:
        log.error("event=%s_killed pid=%d grace_s=%g", name, child.pid, STOP_GRACE_S)
        child.kill()
        await child.wait()
    log.info("event=%s_stopped pid=%d code=%d", name, child.pid, child.returncode or 0)
