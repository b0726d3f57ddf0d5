"""The live check-in feed, and letting someone in once. The feed: every gate event at the
account's sites on the desk's screen within a second, as Server-Sent Events. The attendance
intake (``serve``'s MQTT publisher) stores each event and hands the batch to
``FeedHub.from_thread``, which puts it into words through the facade once, in the intake's
thread; every open feed gets the rows on the event loop and sends those of its sites. The page
itself lists the latest events, so it works without JavaScript; ``desk-feed.js`` adds new rows
as text (never as HTML). Letting in once sends the chosen gate a ``pulse`` signed with the desk
key, naming the staff member."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiomqtt
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError
from gated.billing_sync.front_desk import in_scope
from gated.web.desk_members import MEMBER_ID

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

log = logging.getLogger("gated.web.feed")

HEARTBEAT_S = 15.0
# How often an idle feed looks whether serve is stopping (it must not hold the shutdown up).
STOP_CHECK_S = 1.0
QUEUE_MAX = 1000


class FeedHub:
    """Fans each batch of stored gate events out to the open feeds, put into words once for
    all of them (``words``: the facade's ``feed_items``; what it says depends on the event,
    never on who reads it, so twenty open consoles cost what one does)."""

    def __init__(self, words: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
        self.words = words
        self.loop: asyncio.AbstractEventLoop | None = None
        self.feeds: set[asyncio.Queue[list[dict[str, Any]]]] = set()
        self.dropped = 0

    def from_thread(self, events: list[dict[str, Any]]) -> None:
        """The intake's hook (called in its worker thread, after the events are stored)."""
        loop = self.loop
        if loop is None or not self.feeds:
            return
        try:
            items = self.words(events)
        except SQLAlchemyError as exc:
            # The events are stored: the feeds miss these rows (a reload shows them), the
            # intake goes on.
            log.error("event=feed_words_failed error=%s", type(exc).__name__)
            return
        loop.call_soon_threadsafe(self._fan_out, items)

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


def _sse(item: dict[str, Any]) -> str:
    return f"event: gate\ndata: {json.dumps(item, sort_keys=True)}\n\n"


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The feed page and its event stream, for ``desk.RULES``."""
    billing = desk.web.billing
    hub = FeedHub(billing.feed_items)
    billing.gate_events_hook = hub.from_thread

    async def page(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        sites = visitor.session.staff.sites
        items = await asyncio.to_thread(billing.recent_feed, sites)
        gates = await asyncio.to_thread(billing.known_gates, sites)
        return desk.page(visitor, "desk_feed.html", title="Check-ins", items=items, gates=gates)

    async def let_in(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        """Let someone in once at a chosen gate (a walk-in, a member whose card failed)."""
        assert visitor.session is not None
        staff = visitor.session.staff
        site, _, gate = form.get("gate", "").partition("/")
        member_id = form.get("member", "") or None
        back = f"/desk/members/{member_id}" if member_id else "/desk/feed"
        known = await asyncio.to_thread(billing.known_gates, staff.sites)
        if (site, gate) not in known or (member_id and not MEMBER_ID.fullmatch(member_id)):
            return desk.redirect(visitor, back, "Choose one of your sites' gates.", error=True)
        actor = Actor("staff", staff.id, staff.role, desk.web.client(request))
        loop = asyncio.get_running_loop()

        def run() -> None:
            with billing.audited(actor, "let_in_once", member_id) as entry:
                sent = asyncio.run_coroutine_threadsafe(
                    billing.let_in_once(site, gate, staff.id), loop
                )
                entry.detail.update(site=site, gate=gate, command=sent.result(timeout=10))

        try:
            await asyncio.to_thread(run)
        except (BillingError, aiomqtt.MqttError, TimeoutError) as exc:
            log.error("event=let_in_failed site=%s gate=%s error=%s", site, gate, exc)
            said = f"{exc}"[:300] or "No broker answered."
            return desk.redirect(visitor, back, f"The gate was not opened: {said}", error=True)
        return desk.redirect(visitor, back, "Gate opened.")

    async def stream(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        sites = visitor.session.staff.sites
        queue = hub.open()

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                # The latest events first (oldest to newest; the page drops those it shows):
                # whatever was stored between the page's rendering, or a dropped connection,
                # and this stream's start is not lost. The queue is already open, so nothing
                # falls between the two either.
                for item in reversed(await asyncio.to_thread(billing.recent_feed, sites)):
                    yield _sse(item)
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
                    for item in batch:
                        if in_scope([str(item.get("site"))], sites):
                            yield _sse(item)
            finally:
                hub.feeds.discard(queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},  # nginx: pass each event on at once
        )

    return {"feed": page, "feed_events": stream, "let_in": let_in}
