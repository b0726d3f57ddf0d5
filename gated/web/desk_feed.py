"""The live check-in feed: every gate event at the account's sites on the desk's screen within a
second, as Server-Sent Events. The attendance intake (``serve``'s MQTT publisher) stores each
event and hands the batch to ``FeedHub.from_thread``; every open feed gets it on the event loop,
puts it into words through the facade, and sends it. The page itself lists the latest events, so
it works without JavaScript; ``desk-feed.js`` adds new rows as text (never as HTML)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gated.billing_sync.front_desk import in_scope

if TYPE_CHECKING:
    from gated.web.desk import Desk, StaffVisitor

log = logging.getLogger("gated.web.feed")

HEARTBEAT_S = 15.0
# How often an idle feed looks whether serve is stopping (it must not hold the shutdown up).
STOP_CHECK_S = 1.0
QUEUE_MAX = 1000


class FeedHub:
    """Fans each batch of stored gate events out to the open feeds."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.feeds: set[asyncio.Queue[list[dict[str, Any]]]] = set()
        self.dropped = 0

    def from_thread(self, events: list[dict[str, Any]]) -> None:
        """The intake's hook (called in its worker thread)."""
        loop = self.loop
        if loop is not None and self.feeds:
            loop.call_soon_threadsafe(self._fan_out, events)

    def _fan_out(self, events: list[dict[str, Any]]) -> None:
        for queue in self.feeds:
            try:
                queue.put_nowait(events)
            except asyncio.QueueFull:
                # A feed that stopped reading loses rows rather than the server its memory.
                self.dropped += 1

    def open(self) -> asyncio.Queue[list[dict[str, Any]]]:
        self.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(QUEUE_MAX)
        self.feeds.add(queue)
        return queue


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The feed page and its event stream, for ``desk.RULES``."""
    billing = desk.web.billing
    hub = FeedHub()
    billing.gate_events_hook = hub.from_thread

    async def page(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        items = await asyncio.to_thread(billing.recent_feed, visitor.session.staff.sites)
        return desk.page(visitor, "desk_feed.html", title="Check-ins", items=items)

    async def stream(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        sites = visitor.session.staff.sites
        queue = hub.open()

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                idle = 0.0
                while not billing.stopping.is_set():
                    try:
                        async with asyncio.timeout(STOP_CHECK_S):
                            batch = await queue.get()
                    except TimeoutError:
                        idle += STOP_CHECK_S
                        if idle >= HEARTBEAT_S:
                            idle = 0.0
                            yield ": still here\n\n"
                        continue
                    idle = 0.0
                    mine = [e for e in batch if in_scope([str(e.get("site"))], sites)]
                    if not mine:
                        continue
                    for item in await asyncio.to_thread(billing.feed_items, mine):
                        yield f"event: gate\ndata: {json.dumps(item, sort_keys=True)}\n\n"
            finally:
                hub.feeds.discard(queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},  # nginx: pass each event on at once
        )

    return {"feed": page, "feed_events": stream}
