"""The publisher against a real mosquitto: signed retained states and manifests, no version lost
across a broker restart, gate events consumed once, and the signed snapshot over HTTP."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from sqlalchemy import func, select

from gated.billing_sync import schema
from gated.billing_sync.config import BillingMqttConfig
from gated.billing_sync.keys import new_signing_key
from gated.billing_sync.publisher import Publisher
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.contract import (
    MAX_VERSION,
    Verifier,
    compact_json,
    events_topic,
    manifest_topic,
    members_wildcard,
    read_snapshot,
    site_digest,
)
from tests.billing.helpers import make_billing
from tests.billing.test_webhooks import ThreadServer
from tests.puback_race import stops_when_cancelled_with_a_puback, wait_for_puback
from tests.services import Mosquitto

SITE = "downtown"
# A gate's event: m1 let in at gate t1.
ENTRY: dict[str, Any] = {
    "event_id": "01JD0000000000000000000001",
    "site": SITE,
    "gate": "t1",
    "at": "2026-12-01T09:00:00Z",
    "kind": "entry",
    "member_id": "m1",
    "credential_kind": "card",
    "reader_id": "sim-1",
    "direction": "in",
    "reason": "ok",
    "latency_us": 120,
    "source": "reader",
    "operator": None,
}


def publisher_for(b: Billing, url: str) -> Publisher:
    return Publisher(
        b.engine,
        BillingMqttConfig(url=url, client_id="billing-test"),
        b.keys.current_signer,
        b.config.sites,
        b.clock,
        b.record_gate_events,
    )


async def retained(port: int, site: str = SITE, quiet: float = 0.6) -> dict[str, dict[str, Any]]:
    """Every retained message under the site (members by id, plus 'manifest'), read by a fresh
    subscriber until the broker goes quiet."""
    out: dict[str, dict[str, Any]] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"reader-{time.monotonic_ns()}") as c:
        await c.subscribe(members_wildcard(site), qos=1)
        await c.subscribe(manifest_topic(site), qos=1)
        try:
            while True:
                async with asyncio.timeout(quiet):
                    msg = await anext(aiter(c.messages))
                obj = json.loads(msg.payload)  # type: ignore[arg-type]
                key = "manifest" if str(msg.topic).endswith("/manifest") else obj["member_id"]
                out[key] = obj
        except TimeoutError:
            return out


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


def version_floor(b: Billing) -> int:
    with b.engine.connect() as conn:
        return int(conn.execute(select(schema.version_head.c.value)).scalar_one())


def gate_event_ids(b: Billing) -> list[str]:
    with b.engine.connect() as conn:
        return [r.event_id for r in conn.execute(select(schema.gate_events.c.event_id))]


async def wait_drained(b: Billing, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with b.engine.connect() as conn:
            left = conn.execute(
                select(func.count()).where(schema.status_outbox.c.published_at.is_(None))
            ).scalar_one()
        if left == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"outbox not drained: {left} rows left")


def check_site(b: Billing, seen: dict[str, dict[str, Any]]) -> None:
    """Signatures verify, each member is at its newest version, the manifest matches."""
    verifier = Verifier([b.keys.signer.public_key_raw])
    manifest = verifier.verify(seen.pop("manifest"), "manifest")
    states = {m: verifier.verify(s, "member_state") for m, s in seen.items()}
    with b.engine.connect() as conn:
        newest = dict(
            conn.execute(
                select(schema.member_states.c.member_id, schema.member_states.c.version)
            ).all()
        )
    assert {m: s["version"] for m, s in states.items()} == newest
    live = [(m, s["version"]) for m, s in states.items() if s["status"] != "erased"]
    assert manifest["digest"] == site_digest(live) and manifest["count"] == len(live)
    assert manifest["max_version"] == max(newest.values())


async def test_publishes_signed_states_and_survives_a_broker_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    b, _ = make_billing(tmp_path, sites=[SITE])
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        for i in range(5):
            card = "pm_sim_ok" if i % 2 == 0 else "pm_sim_decline_insufficient_funds"
            await asyncio.to_thread(
                b.add_member, f"m{i}", f"M{i}", plan_id="monthly", payment_method=card
            )
        await wait_drained(b)
        check_site(b, await retained(mosquitto.port))

        mosquitto.kill()
        await asyncio.to_thread(b.record_payment, "m1")
        await asyncio.to_thread(b.erase, "m2")
        await asyncio.to_thread(b.assign_card, "m0", "04A1B2C3D4E5F6")
        # Once the publisher has lost the broker, nothing can mark a row published.
        await until(lambda: not pub.connected.is_set(), "the publisher notices the broker is gone")
        with b.engine.connect() as conn:
            pending = conn.execute(
                select(func.count()).where(schema.status_outbox.c.published_at.is_(None))
            ).scalar_one()
        assert pending == 3  # held while the broker is down
        mosquitto.start()
        await wait_drained(b, timeout=20)
        seen = await retained(mosquitto.port)
        assert seen["m1"]["status"] == "active" and seen["m2"]["status"] == "erased"
        check_site(b, seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_gate_events_are_consumed_once_even_while_billing_is_away(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    b, _ = make_billing(tmp_path, sites=[SITE])
    event = dict(ENTRY)
    subscribed = {**event, "event_id": "01JD0000000000000000000002"}
    after = {**event, "event_id": "01JD0000000000000000000003"}

    async def send(*events: dict[str, Any]) -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="gate-t1") as gate:
            for ev in events:
                await gate.publish(events_topic(SITE, "t1"), compact_json(ev), qos=1)

    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    await asyncio.wait_for(pub.connected.wait(), 10)
    # An event that arrives shows the session subscribed to the gates' events; one sent before
    # the subscription is lost, so it is sent again until one arrives.
    deadline = time.monotonic() + 10
    while subscribed["event_id"] not in gate_event_ids(b):
        assert time.monotonic() < deadline, "the publisher never subscribed to the gates' events"
        await send(subscribed)
        await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # billing is away: the broker keeps its persistent session's QoS 1 queue
    await send(event, event)  # a gate that lost the PUBACK sends again
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.wait_for(pub.connected.wait(), 10)
        # One gate's messages arrive in order: once the next one is in, both copies were seen.
        await send(after)
        await until(lambda: after["event_id"] in gate_event_ids(b), "the queued events consumed")
        ids = [i for i in gate_event_ids(b) if i not in (subscribed["event_id"], after["event_id"])]
        assert ids == [event["event_id"]]
        with b.engine.connect() as conn:
            row = conn.execute(
                select(schema.gate_events).where(schema.gate_events.c.event_id == ids[0])
            ).one()
        assert row.kind == "entry" and row.member_id == "m1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_versions_continue_above_a_retained_manifest(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A store restored from an old backup must not reuse numbers the gates already hold."""
    b, _ = make_billing(tmp_path, sites=[SITE])
    manifest = b.keys.signer.sign(
        {
            "type": "manifest",
            "site": SITE,
            "count": 1,
            "max_version": 5000,
            "digest": "00" * 32,
            "issued_at": "2026-12-01T00:00:00Z",
        }
    )
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="old-hq") as c:
        await c.publish(manifest_topic(SITE), compact_json(manifest), qos=1, retain=True)
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.wait_for(pub.connected.wait(), 10)
        await until(lambda: version_floor(b) >= 5000, "the retained manifest's versions adopted")
        await asyncio.to_thread(
            b.add_member, "m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok"
        )
        with b.engine.connect() as conn:
            version = conn.execute(select(schema.member_states.c.version)).scalar_one()
        assert version > 5000
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("signed_by", ["another key", "nobody"])
async def test_a_forged_retained_manifest_does_not_raise_versions(
    tmp_path: Path, mosquitto: Mosquitto, signed_by: str
) -> None:
    """Anyone who can write to the broker could otherwise push billing's versions past 2^53,
    above which every gate refuses every state."""
    b, _ = make_billing(tmp_path, sites=[SITE])
    body = {
        "type": "manifest",
        "site": SITE,
        "count": 1,
        "max_version": MAX_VERSION,
        "digest": "00" * 32,
        "issued_at": "2026-12-01T00:00:00Z",
    }
    if signed_by == "another key":
        forged = new_signing_key(tmp_path / "intruder.pem").sign(body)
    else:
        forged = {**b.keys.signer.sign({**body, "max_version": 1}), "max_version": MAX_VERSION}
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="intruder") as c:
        await c.publish(manifest_topic(SITE), compact_json(forged), qos=1, retain=True)
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.to_thread(
            b.add_member, "m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok"
        )
        await wait_drained(b)  # published after the retained manifests were read
        await asyncio.to_thread(
            b.add_member, "m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok"
        )
        await wait_drained(b)
        ms = schema.member_states
        with b.engine.connect() as conn:
            version = conn.execute(select(ms.c.version).where(ms.c.member_id == "m2")).scalar_one()
        assert version < 1000
        seen = await retained(mosquitto.port)
        assert seen["m2"]["version"] == version
        assert seen["manifest"]["kid"] == b.keys.signer.kid
        assert getattr(pub, "refused_manifests", None) == {"bad_signature": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_snapshot_needs_the_gates_bearer_token(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok", sites=["downtown"])
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok", sites=["uptown"])
    b.add_member("m3", "Cid", plan_id="monthly", payment_method="pm_sim_ok")
    b.erase("m3")
    token = b.add_gate("downtown", "t1")
    other = b.add_gate("uptown", "u1")
    with ThreadServer(create_app(b, None)) as srv:
        url = f"http://127.0.0.1:{srv.port}/v1/sites/downtown/snapshot"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer gt_wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 401
        ok = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        trailer, states = read_snapshot(
            ok.content, Verifier([b.keys.signer.public_key_raw]), "downtown"
        )
        assert sorted(s["member_id"] for s in states) == ["m1", "m3"]
        assert {s["member_id"]: s["status"] for s in states}["m3"] == "erased"
        assert trailer["count"] == 1
        b.revoke_gate("downtown", "t1")
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401


async def test_a_key_rotated_by_another_process_is_picked_up(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    b, _ = make_billing(tmp_path, sites=[SITE])
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.to_thread(
            b.add_member, "m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok"
        )
        await wait_drained(b)
        old_kid = b.keys.signer.kid
        time.sleep(0.01)  # a distinct mtime
        new = new_signing_key(b.config.keys.head_office_private_key_file)  # as `keys rotate` does
        assert new.kid != old_kid
        await asyncio.to_thread(b.republish_all)
        await wait_drained(b)
        seen = await retained(mosquitto.port)
        assert seen["m1"]["kid"] == new.kid and seen["manifest"]["kid"] == new.kid
        Verifier([new.public_key_raw]).verify(seen["m1"], "member_state")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_metrics_report_the_store(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    with ThreadServer(create_app(b, None)) as srv:
        text = httpx.get(f"http://127.0.0.1:{srv.port}/metrics").text
    assert 'gated_billing_members{status="active"} 1.0' in text
    assert 'gated_billing_members{status="pending"} 1.0' in text
    assert 'gated_billing_payment_attempts{state="failed"} 1.0' in text
    # m1 pending then active, m2 pending; nothing drains the outbox in this test
    assert "gated_billing_status_outbox_depth 3.0" in text
    assert "gated_billing_version_head 3.0" in text
    assert 'gated_billing_declines_total{class="hard",code="lost_card"} 1.0' in text
    assert (
        'gated_billing_charged_minor_units_total{currency="EUR"} 5938.0' in text
    )  # 49.90 + 19% tax
    assert "gated_billing_recoveries_total 0.0" in text


def test_metrics_count_recoveries_and_refused_webhooks(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    b.record_payment("m2")  # Bob pays at the front desk after the failed charge
    with ThreadServer(create_app(b, "whsec_test")) as srv:
        refused = httpx.post(f"http://127.0.0.1:{srv.port}/v1/stripe/webhook", content=b"{}",
                             headers={"stripe-signature": "t=1,v1=forged"})  # fmt: skip
        text = httpx.get(f"http://127.0.0.1:{srv.port}/metrics").text
    assert refused.status_code == 400
    assert "gated_billing_recoveries_total 1.0" in text
    assert 'gated_billing_webhook_failures_total{reason="bad_signature"}' in text


class _StuckClient:
    """A client whose disconnect never completes (a broker or socket that never answers)."""

    def __init__(self) -> None:
        self.exited = False

    async def __aenter__(self) -> _StuckClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True
        await asyncio.Event().wait()


async def test_a_stopped_publisher_does_not_wait_forever_for_its_disconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiomqtt waits for its DISCONNECT to complete with no time limit; a publisher (or a gate)
    being stopped or failing leaves after DISCONNECT_TIMEOUT_S, and what stopped it surfaces."""
    from gated import mqtt_session as module

    monkeypatch.setattr(module, "DISCONNECT_TIMEOUT_S", 0.1)

    stuck = _StuckClient()

    async def serve() -> None:
        async with module.session(stuck):  # type: ignore[arg-type]
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    await asyncio.sleep(0.05)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert stuck.exited and time.monotonic() - started < 2

    async def lose_the_link() -> None:
        async with module.session(_StuckClient()):  # type: ignore[arg-type]
            raise aiomqtt.MqttError("link lost")

    with pytest.raises(aiomqtt.MqttError, match="link lost"):
        await asyncio.wait_for(lose_the_link(), 5)


async def test_the_outbox_drain_stops_when_the_order_to_stop_comes_with_a_puback(
    tmp_path: Path,
) -> None:
    """A publisher test hung here. The PUBACK and the order to stop arrived in the same loop
    pass; Python 3.11's asyncio.wait_for, which aiomqtt waits for acknowledgements with, then
    returns instead of raising. The drain loop ran on, and the task group stopping the
    publisher waited for it for ever."""
    b, _ = make_billing(tmp_path, sites=[SITE])
    pub = publisher_for(b, "mqtt://127.0.0.1:1")
    puback = asyncio.Event()
    calls = 0

    async def drain(client: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            return 0  # nothing more to send: the loop waits for a wake-up
        await wait_for_puback(puback)
        return 1

    pub.drain = drain  # type: ignore[method-assign]
    assert await stops_when_cancelled_with_a_puback(pub._drain_loop(None), puback)  # type: ignore[arg-type]
    assert calls == 1
    # The fix replaces aiomqtt's private wait; an aiomqtt that stopped using it needs a new one.
    for call in (aiomqtt.Client.publish, aiomqtt.Client.subscribe, aiomqtt.Client.unsubscribe):
        assert "self._wait_for(" in inspect.getsource(call)


async def test_the_drain_waits_for_the_write_lock_off_the_event_loop(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """On SQLite, marking rows published waits for the write lock (a renewal batch holds it):
    in a worker thread, so serve's event loop (every member's request) goes on meanwhile."""
    site = "lock-site"  # its own: the broker keeps other tests' retained states
    b, _ = make_billing(tmp_path, sites=[site])
    lock = sqlite3.connect(tmp_path / "billing.db", isolation_level=None, check_same_thread=False)
    pub = publisher_for(b, mosquitto.url)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="lock-watch") as watch:
        await watch.subscribe(members_wildcard(site), qos=1)
        task = asyncio.create_task(pub.run())
        try:
            await asyncio.to_thread(b.add_member, "m0", "M0", plan_id="monthly")
            await wait_drained(b)  # started (its start-up writes too) and idle
            await anext(aiter(watch.messages))

            def change_then_lock() -> None:
                b.record_payment("m0")
                # At once, as a renewal batch would (the publisher looks every 0.25 s).
                lock.execute("BEGIN IMMEDIATE")

            await asyncio.to_thread(change_then_lock)
            async with asyncio.timeout(10):
                await anext(aiter(watch.messages))  # published: now it marks the row
            longest, last = 0.0, time.monotonic()
            for _ in range(30):
                await asyncio.sleep(0.01)
                now = time.monotonic()
                longest, last = max(longest, now - last), now
            assert longest < 0.5, f"the event loop stood still for {longest:.2f} s"
            with b.reader.connect() as conn:
                left = conn.execute(
                    select(func.count()).where(schema.status_outbox.c.published_at.is_(None))
                ).scalar_one()
            assert left == 1  # still waiting for the lock
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await wait_drained(b)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
