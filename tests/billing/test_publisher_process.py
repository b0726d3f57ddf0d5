"""``[serve] publisher = "own-process"``: a real ``gated-billing serve`` leaves reading, signing
and publishing member states to a child process it restarts and stops, woken through a pipe when
a payment is booked in ``serve``; the states reach a real broker signed and versioned; ``serve``
keeps consuming the gates' events; a child whose ``serve`` is gone stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from sqlalchemy import select

from gated.billing_sync import schema
from gated.contract import Verifier, compact_json, events_topic, manifest_topic, members_wildcard
from tests.billing import test_cycle_process
from tests.billing.test_cycle_process import Serve, alive, children
from tests.billing.test_publisher import ENTRY
from tests.services import Mosquitto
from tests.sync.helpers import wait_until

SITE = "downtown"
serve_with = test_cycle_process.serve_with  # the fixture: serve on a store of one member


def mqtt_extra(mosquitto: Mosquitto) -> str:
    """``[serve]`` keys (after ``cycles``) and an ``[mqtt]`` section for ``serve_with``."""
    return f'publisher = "own-process"\n[mqtt]\nurl = "{mosquitto.url}"\nclient_id = "hq"\n'


def publisher_child(s: Serve, other_than: int | None = None) -> int:
    """The pid of serve's publisher process (a new one when ``other_than`` is given)."""
    assert s.process is not None

    def found() -> int | None:
        for pid in children(s.process.pid):  # type: ignore[union-attr]
            if pid == other_than:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmdline[3:4] == [b"publish"]:
                return pid
        return None

    pid = wait_until(found, timeout=60, what="serve's publisher process")
    assert pid is not None
    return pid


class Retained:
    """Every member state and manifest the broker sends a subscriber of the site, as they come."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Retained:
        subscribed = asyncio.Event()
        self.task = asyncio.create_task(self._read(subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _read(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="watch") as client:
            await client.subscribe(members_wildcard(SITE), qos=1)
            await client.subscribe(manifest_topic(SITE), qos=1)
            subscribed.set()
            async for message in client.messages:
                obj = json.loads(message.payload)  # type: ignore[arg-type]
                key = "manifest" if str(message.topic).endswith("/manifest") else obj["member_id"]
                self.seen[key] = obj
                self.changed.set()

    async def until(
        self, key: str, check: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first message for ``key`` that passes ``check``, waited for on each arrival."""
        async with asyncio.timeout(timeout):
            while key not in self.seen or not check(self.seen[key]):
                self.changed.clear()
                await self.changed.wait()
        return self.seen[key]


def pay_link_path(s: Serve, member_id: str) -> str:
    n = schema.notifications
    with s.billing.engine.connect() as conn:
        body = conn.execute(
            select(n.c.body).where(n.c.member_id == member_id, n.c.kind == "pay_link")
        ).scalar_one()
    found = re.search(r"(/pay/\S+)", body)
    assert found is not None
    return found.group(1)


def stored_version(s: Serve, member_id: str) -> int:
    ms = schema.member_states
    with s.billing.engine.connect() as conn:
        return int(
            conn.execute(select(ms.c.version).where(ms.c.member_id == member_id)).scalar_one()
        )


async def test_a_child_publishes_signed_states_is_woken_restarted_and_stopped(
    serve_with: Callable[..., Serve], mosquitto: Mosquitto
) -> None:
    s = serve_with("off", mqtt_extra(mosquitto))
    s.billing.add_member(
        "m2",
        "Bob",
        plan_id="monthly",
        email="bob@example.org",
        payment_method="pm_sim_decline_authentication_required",
    )
    verifier = Verifier([s.billing.keys.signer.public_key_raw])
    serve = await asyncio.to_thread(s.start)
    child = await asyncio.to_thread(publisher_child, s)
    # Logged just after the port answers.
    await asyncio.to_thread(
        wait_until, lambda: "publisher=own-process" in s.logged(), 30, "serve's start logged"
    )
    async with Retained(mosquitto.port) as broker:
        # What the store held when serve started reaches the broker signed, at its version.
        newest = stored_version(s, "m1")
        m1 = await broker.until("m1", lambda m: m["version"] == newest, 60)
        assert verifier.verify(m1, "member_state")["status"] == "active"
        head = stored_version(s, "m2")
        manifest = await broker.until("manifest", lambda m: m["max_version"] == head, 10)
        assert verifier.verify(manifest, "manifest")["count"] == 2

        # A payment booked in serve (the pay link) wakes the child at once.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}") as web:
            path = pay_link_path(s, "m2")
            page = await web.get(path)
            key = re.search(r'name="key" value="([^"]+)"', page.text)
            assert key is not None
            paid = await web.post(path, data={"key": key.group(1)})
            assert paid.status_code == 200 and "Thank you" in paid.text
            answered = time.monotonic()
        m2 = await broker.until("m2", lambda m: m["status"] == "active", 2.0)
        took = time.monotonic() - answered
        assert verifier.verify(m2, "member_state")["version"] == stored_version(s, "m2") > head
        print(f"payment answered -> state at the broker: {took * 1000:.1f} ms")

        # serve still takes the gates' events (the console's feeds live in serve).
        event = {**ENTRY, "event_id": "01JD0000000000000000000009", "gate": "g1"}

        def stored_events() -> list[str]:
            with s.billing.engine.connect() as conn:
                return list(conn.execute(select(schema.gate_events.c.event_id)).scalars())

        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="gate-g1") as gate:
            deadline = time.monotonic() + 20
            # Sent again until it arrives: one sent before serve's subscription is lost.
            while event["event_id"] not in stored_events():
                assert time.monotonic() < deadline, "serve never stored the gate's event"
                await gate.publish(events_topic(SITE, "g1"), compact_json(event), qos=1)
                await asyncio.sleep(0.2)

        # A killed child is started again, and publishes what was written meanwhile.
        os.kill(child, signal.SIGKILL)
        await asyncio.to_thread(s.billing.assign_card, "m1", "04A1B2C3D4E5F6")
        again = await asyncio.to_thread(publisher_child, s, child)
        m1 = await broker.until("m1", lambda m: bool(m["credentials"]), 60)
        assert verifier.verify(m1, "member_state")["version"] == stored_version(s, "m1")
        assert "event=publisher_process_ended code=-9" in s.logged()

    serve.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve.wait, 30) == 0, s.logged()
    assert not alive(again)
    assert f"event=publisher_process_stopped pid={again} code=0" in s.logged()


def test_the_publisher_process_stops_when_its_pipe_from_serve_ends(
    serve_with: Callable[..., Serve], mosquitto: Mosquitto
) -> None:
    """serve killed -9 closes its end of the child's stdin: the child stops on its own (a
    second serve would start another publisher). Here the test holds that end."""
    s = serve_with("off", mqtt_extra(mosquitto))
    log = s.root / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "gated.billing_sync", "publish", "-c", str(s.config)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
        )
    try:
        wait_until(
            lambda: "event=mqtt_connected" in log.read_text(), timeout=60, what="child connected"
        )
        assert "client_id=hq-publisher" in log.read_text()
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(30) == 0, log.read_text()
        assert "event=publisher_process_orphaned" in log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
