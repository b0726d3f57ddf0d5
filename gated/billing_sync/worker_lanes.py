"""``serve``'s worker threads in two lanes: one for the reads of GET requests, one for the rest.

Every handler does its store work in a worker thread (``asyncio.to_thread``). With one pool
(asyncio's default: 6 threads on two cores) a write waiting for SQLite's one write lock (the
renewal cycle's batch holds it; ``busy_timeout`` waits up to 10 s) holds its thread, and a few
such writes left the members' page loads queued behind them. A GET reads (WAL: a reader
waits for no writer; the rare GET that writes once, a card page making the member's Stripe
customer, waits like any write), so GETs get threads of their own that a write never takes:
the member's page answers while their own form, or the cycle, waits for the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

T = TypeVar("T")

# Threads per lane. Both together stay within the store's pool (store.POOL_SIZE, 16, plus
# SQLAlchemy's 10 overflow connections), so no thread waits for a connection.
READ_THREADS = 8
WRITE_THREADS = 8
# Requests whose store work runs in the read lane.
_READING_METHODS = frozenset({"GET", "HEAD"})
_READING: ContextVar[bool] = ContextVar("gated_reading_request", default=False)


class LaneExecutor(ThreadPoolExecutor):
    """asyncio's default executor for ``serve``: work submitted while handling a GET (see
    ``ReadLane``) runs in the read lane, everything else (writes, the publisher, notices) in
    this executor's own threads."""

    def __init__(self, reads: int = READ_THREADS, writes: int = WRITE_THREADS) -> None:
        super().__init__(max_workers=writes, thread_name_prefix="write")
        self.reads = ThreadPoolExecutor(max_workers=reads, thread_name_prefix="read")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if _READING.get():
            return self.reads.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.reads.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)


class ReadLane:
    """ASGI middleware: a GET or HEAD request's worker-thread work goes to the read lane (the
    request's context carries the choice to ``LaneExecutor.submit``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _READING_METHODS:
            await self.app(scope, receive, send)
            return
        token = _READING.set(True)
        try:
            await self.app(scope, receive, send)
        finally:
            _READING.reset(token)
