"""A PUBACK and an order to stop arriving in the same loop pass, for the MQTT loops' tests.

Python 3.11's ``asyncio.wait_for``, which aiomqtt waits for acknowledgements with, returns the
result instead of raising then (CPython gh-86296); ``gated.mqtt_session`` replaces that wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiomqtt


async def wait_for_puback(puback: asyncio.Event) -> None:
    """What a publish does after sending: the client's own wait for the acknowledgement."""
    await aiomqtt.Client("127.0.0.1", 1)._wait_for(puback.wait(), 10)


async def stops_when_cancelled_with_a_puback(
    loop: Coroutine[Any, Any, None], puback: asyncio.Event
) -> bool:
    """Run ``loop`` until it waits for ``puback``, then acknowledge and cancel in one pass:
    True if the loop stopped, cancelled. A loop that ran on is stopped for good first."""
    task = asyncio.create_task(loop)
    await asyncio.sleep(0.05)  # the loop waits for its PUBACK
    puback.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:  # the cancellation was lost
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return bool(done) and task.cancelled()
