"""The verifier processes: signature checks and row making, off the daemon's GIL.

Member states are verified in worker processes, not threads: parsing and canonical JSON hold the
GIL, and a loop thread that must win the GIL back after every poll would wait a switch interval
each time (the convoy effect) and slow both decisions and the MQTT stream. At nice 19 they only
take what the gate leaves (see BENCHMARKS.md, sync). Functions named ``in a verifier process``
run there; :class:`VerifierPool` is the daemon's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gated.cache.index import member_row
from gated.contract import ContractError, SignatureError, Verifier, loads_bounded
from gated.placement import process_cpus

T = TypeVar("T")

# One per core (up to 3).
VERIFY_PROCESSES = max(1, min(3, os.cpu_count() or 1))
VERIFY_NICE = 19
# How long a starting sync waits for every verifier process to be up.
VERIFIER_START_S = 10.0
# Rows cross from a verifier process pickled in chunks this size: unpickling one holds the GIL
# ~0.1 ms.
ROW_CHUNK = 64
PR_SET_PDEATHSIG = 1


class VerifierPool:
    """The verifier processes of one gate (spawned, one per core up to VERIFY_PROCESSES),
    trusting ``public_keys`` and keeping the states for ``site``."""

    def __init__(self, public_keys: list[bytes], site: str) -> None:
        self._public_keys = public_keys
        self._site = site
        self.size = VERIFY_PROCESSES
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the daemon has threads (the cache writer) that a fork would copy
        # mid-lock.
        return ProcessPoolExecutor(
            VERIFY_PROCESSES,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_verifier,
            initargs=(self._public_keys, self._site, os.getpid(), process_cpus()),
        )

    @property
    def pids(self) -> list[int]:
        """The verifier processes' ids (for tests and diagnostics)."""
        return list(self._pool._processes or {})

    async def start(self) -> None:
        """Start every verifier process now and wait until each has taken a job, not when the
        first sync needs it. The pool starts a process only when a job finds none idle, so one
        job would start one; and the first process up could take every warm-up job while the
        others were still importing, to finish starting in the middle of the first sync (a cold
        start's) on cores the sync needs. Each warm-up job holds its process a little, so the
        next goes to another; at most VERIFIER_START_S is spent waiting.

        The loop's default thread pool gets its first thread now too: starting one waits for it
        to run, and a cold start's first file work would otherwise do that under a badge."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(int)
        ready: set[int] = set()
        deadline = time.monotonic() + VERIFIER_START_S
        with contextlib.suppress(BrokenProcessPool, OSError):
            while len(ready) < VERIFY_PROCESSES and time.monotonic() < deadline:
                ready.update(
                    await asyncio.gather(
                        *(
                            loop.run_in_executor(self._pool, _verifier_ready, 0.05)
                            for _ in range(VERIFY_PROCESSES)
                        )
                    )
                )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a verifier process. A pool whose process died raises
        BrokenProcessPool once and is replaced for the next call."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise

    def shutdown(self) -> None:
        """Stop the processes without waiting for queued work."""
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- in a verifier process ---------------------------------------------------------------------

_verifier: Verifier | None = None
_site = ""


def _init_verifier(
    public_keys: list[bytes], site: str, parent: int, cpus: frozenset[int] | None
) -> None:
    """In a verifier process: the trusted head-office keys and this gate's site. The process
    ends with the daemon, even when the daemon is killed with SIGKILL. ``cpus``: the CPUs to run
    on, when the loop that spawned it is pinned (its affinity is inherited)."""
    global _verifier, _site
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)
    # Below the daemon: when cores are short, the loop thread (decisions) runs first.
    os.nice(VERIFY_NICE)
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    _verifier = Verifier(public_keys)
    _site = site


def process_verifier() -> tuple[Verifier, str]:
    """In a verifier process: the head-office verifier and this gate's site."""
    assert _verifier is not None, "not in a verifier process"
    return _verifier, _site


def _verifier_ready(hold_s: float) -> int:
    """In a verifier process: a warm-up job (see ``VerifierPool.start``)."""
    time.sleep(hold_s)
    return os.getpid()


def verify_member_states(payloads: list[bytes]) -> tuple[list[bytes], int, str, list[str]]:
    """In a verifier process: the cache rows of the good signed MemberStates that name this site,
    pickled in chunks of ROW_CHUNK (the daemon's writer thread unpickles them a chunk at a time:
    a whole batch at once would hold the GIL, and so the badges, for more than a millisecond);
    with the number of rows, the newest ``issued_at`` among them and the reason each other
    payload is dropped."""
    verifier, site = process_verifier()
    rows: list[dict[str, Any]] = []
    rejects: list[str] = []
    for payload in payloads:
        try:
            body = verifier.verify(loads_bounded(payload), "member_state")
            row = member_row(body)
            if site not in body["sites"]:
                rejects.append("other_site")
                continue
            rows.append(row)
        except SignatureError:
            rejects.append("bad_signature")
        except (ContractError, ValueError, KeyError, TypeError, AttributeError):
            rejects.append("malformed")
    newest = max((row["issued_at"] for row in rows), default="")
    return pickled(rows), len(rows), newest, rejects


def pickled(rows: list[dict[str, Any]]) -> list[bytes]:
    """In a verifier process: rows pickled ROW_CHUNK at a time for the writer thread."""
    return [
        pickle.dumps(rows[i : i + ROW_CHUNK], protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(rows), ROW_CHUNK)
    ]


def unpickled(chunks: list[bytes]) -> Iterator[dict[str, Any]]:
    """On the cache writer's thread: the rows of a batch, a chunk at a time (pickled by our own
    verifier processes, never by anyone else)."""
    for chunk in chunks:
        yield from pickle.loads(chunk)
