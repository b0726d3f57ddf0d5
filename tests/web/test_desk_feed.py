"""The check-in feed's hub: a batch of gate events is put into words once, in the intake's
thread, for every open feed (twenty consoles cost the store what one does), and a store error
while doing so leaves the intake running."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy.exc import OperationalError

from gated.web.desk_feed import FeedHub

EVENTS = [{"event_id": "01J", "site": "downtown", "kind": "entry", "member_id": "ann"}]


def test_a_batch_is_put_into_words_once_for_every_open_feed() -> None:
    calls: list[tuple[str, list[dict[str, Any]]]] = []

    def words(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append((threading.current_thread().name, events))
        return [{**e, "words": "Welcome"} for e in events]

    hub = FeedHub(words)

    async def main() -> list[list[dict[str, Any]]]:
        feeds = [hub.open() for _ in range(20)]
        # The intake calls the hook from its worker thread.
        await asyncio.to_thread(hub.from_thread, EVENTS)
        return [await asyncio.wait_for(f.get(), 5) for f in feeds]

    got = asyncio.run(main())
    assert got == [[{**EVENTS[0], "words": "Welcome"}]] * 20
    assert len(calls) == 1 and calls[0][0] != threading.main_thread().name


def test_no_open_feed_costs_nothing_and_a_store_error_is_not_the_intakes() -> None:
    calls: list[int] = []

    def failing(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(events))
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    hub = FeedHub(failing)
    hub.from_thread(EVENTS)  # no feed was ever opened
    assert calls == []

    async def main() -> bool:
        feed = hub.open()
        await asyncio.to_thread(hub.from_thread, EVENTS)  # must not raise
        await asyncio.sleep(0.05)
        return feed.empty()

    assert asyncio.run(main()) and calls == [1]
