"""An MQTT session whose goodbye is bounded, for every MQTT client we run (the gate's sync, the
billing publisher, `gated members push`, `gated command sign --publish`), and aiomqtt's waits
made to honour a cancellation on Python 3.11.

aiomqtt's exit waits for its DISCONNECT to complete with no time limit: a broker or socket that
never answers would hold a stopping service until the service manager kills it (a gate that is
restarting lets nobody in meanwhile). ``session(client)`` is ``async with client`` that leaves
after DISCONNECT_TIMEOUT_S; whatever ended the session (a cancellation, a lost link) surfaces as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiomqtt

log = logging.getLogger("gated.mqtt")

DISCONNECT_TIMEOUT_S = 5.0
T = TypeVar("T")


async def _wait_for(self: aiomqtt.Client, fut: Awaitable[T], timeout: float | None) -> T:
    """aiomqtt's wait for an acknowledgement (every QoS 1 publish, every subscribe), on
    ``asyncio.timeout``.

    Python 3.11's ``asyncio.wait_for``, which aiomqtt uses, returns the result instead of
    raising when a cancellation arrives in the same loop pass as that result (CPython gh-86296,
    fixed in 3.12). A loop that publishes until cancelled then runs on for ever, and whoever
    cancelled it waits for ever: a billing publisher test hung so, and a gate being stopped
    would have waited for the service manager to kill it.
    """
    if timeout is None:
        timeout = self.timeout
    try:
        async with asyncio.timeout(None if timeout == math.inf else timeout):
            return await fut
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out") from None


if sys.version_info < (3, 12):
    aiomqtt.Client._wait_for = _wait_for  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def session(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """``async with client``, with the disconnect on the way out bounded."""
    await client.__aenter__()
    try:
        yield client
    except BaseException as exc:
        await _leave(client, exc)
        raise
    await _leave(client, None)


async def _leave(client: aiomqtt.Client, exc: BaseException | None) -> None:
    try:
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):  # not wait_for: see _wait_for
            await client.__aexit__(
                type(exc) if exc else None, exc, exc.__traceback__ if exc else None
            )
    except TimeoutError:
        log.warning("event=mqtt_disconnect_timeout seconds=%.0f", DISCONNECT_TIMEOUT_S)
