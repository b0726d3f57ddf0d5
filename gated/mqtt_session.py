"""An MQTT session whose goodbye is bounded, for the gate's sync and the billing publisher.

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
from collections.abc import AsyncIterator

import aiomqtt

log = logging.getLogger("gated.mqtt")

DISCONNECT_TIMEOUT_S = 5.0


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
        await asyncio.wait_for(
            client.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None),
            DISCONNECT_TIMEOUT_S,
        )
    except TimeoutError:
        log.warning("event=mqtt_disconnect_timeout seconds=%.0f", DISCONNECT_TIMEOUT_S)
