"""Helpers for reader tests: run a reader as a task, collect its credentials, wait on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from gated.policy.credential import Credential
from gated.readers.base import Reader


class Collected:
    """The credentials a running reader emitted, in order, with the time each was emitted."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Credential, int]] = asyncio.Queue()

    def emit(self, credential: Credential) -> None:
        self.queue.put_nowait((credential, time.monotonic_ns()))

    async def next(self, timeout: float = 5.0) -> Credential:
        credential, _ = await asyncio.wait_for(self.queue.get(), timeout)
        return credential

    async def next_timed(self, timeout: float = 5.0) -> tuple[Credential, int]:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` on the loop until it holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(reader: Reader) -> AsyncIterator[Collected]:
    """Run ``reader`` for the body of the block; cancel it afterwards and check it stops."""
    collected = Collected()
    task = asyncio.create_task(reader.run(collected.emit))
    try:
        yield collected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert task.done()
