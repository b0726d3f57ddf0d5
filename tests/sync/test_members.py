"""Member state over a real mosquitto into a real gate, checked through gatectl."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.contract import Signer, compact_json, member_topic
from tests.gatefixture import GateProcess
from tests.sync.helpers import SITE, HeadOffice, wait_until

UID = "04A1B2C3D4E5F6"


def sync_stats(gate: GateProcess) -> dict[str, Any]:
    return dict(gate.request("status")["sync"])


def test_published_state_decides_and_bad_messages_are_counted(
    gate: GateProcess, hq: HeadOffice
) -> None:
    gate.start()
    hq.publish(hq.state("m_1", 10, cards=[UID]))
    wait_until(lambda: gate.badge(card=UID)["allow"], what="badge allowed")

    hq.publish(hq.state("m_1", 11, cards=[UID], status="suspended"))
    started = time.monotonic()
    # Through the control socket (what gatectl sends) so the poll itself costs no process start.
    wait_until(
        lambda: gate.request("badge", {"card": UID})["reason"] == "suspended",
        timeout=1.0,
        what="suspended within a second",
    )
    assert time.monotonic() - started < 1.0
    assert gate.badge(card=UID) | {"latency_us": 0} == {
        "allow": False,
        "reason": "suspended",
        "member_id": "m_1",
        "latency_us": 0,
    }

    topic = member_topic(SITE, "m_1")
    forged = Signer(Ed25519PrivateKey.generate()).sign(hq.state("m_1", 20, cards=[UID]))
    hq.raw(topic, compact_json(forged))
    hq.raw(topic, compact_json(hq.signer.sign(hq.state("m_1", 5, cards=[UID]))))  # older
    hq.raw(topic, compact_json(hq.signer.sign(hq.state("m_1", 21, cards=[UID], sites=["uptown"]))))
    hq.raw(topic, b'{"version": 22, "member_id": "m_1", ')  # malformed
    big = hq.signer.sign(hq.state("m_1", 23, cards=[UID]))
    big["padding"] = "x" * 1_000_000
    hq.raw(topic, compact_json(big))
    hq.raw(topic, b"")  # empty: ignored, never an erasure
    hq.raw(member_topic("uptown", "m_1"), b"{}")  # not subscribed: never arrives

    def counted() -> dict[str, Any] | None:
        s = sync_stats(gate)
        r, k = s["rejected"], s["skipped"]
        ok = (
            r.get("bad_signature") == 1
            and r.get("other_site") == 1
            and r.get("malformed") == 1
            and r.get("oversized") == 1
            and k.get("not_newer", 0) >= 1
            and k.get("empty_payload") == 1
        )
        return s if ok else None

    stats = wait_until(counted, what="every bad message counted")
    assert stats["connected"] and stats["applied"] == 2
    result = gate.badge(card=UID)
    assert result["reason"] == "suspended"
    lookup = gate.request("cache_lookup", {"member": "m_1"})
    assert lookup["member"]["version"] == 11
    status = json.loads(gate.gatectl("status", "--json").stdout)
    assert status["sync"]["rejected"]["bad_signature"] == 1


def test_messages_are_taken_straight_from_the_installed_mqtt_client() -> None:
    """The sync hooks paho's on_message inside aiomqtt (a Task and an asyncio.wait per message
    less). If an aiomqtt upgrade moved those attributes the gate would quietly fall back to the
    slower iterator; this says so instead."""
    import asyncio

    import aiomqtt
    from paho.mqtt.client import MQTTMessage

    from gated.mqtt_session import take_messages_directly

    async def hook() -> list[tuple[str, bytes]]:
        seen: list[tuple[str, bytes]] = []
        client = aiomqtt.Client("127.0.0.1", 1)
        direct = take_messages_directly(
            client,
            lambda topic, payload: seen.append((topic, payload)),
            lambda: seen.append(("bad_topic", b"")),
        )
        assert direct
        on_message = client._client.on_message
        good = MQTTMessage(topic=member_topic(SITE, "m_1").encode())
        good.payload = b'{"x":1}'
        on_message(client._client, None, good)
        on_message(client._client, None, MQTTMessage(topic=b"gated/v1/\xff"))
        return seen

    assert asyncio.run(hook()) == [
        (member_topic(SITE, "m_1"), b'{"x":1}'),
        ("bad_topic", b""),
    ]


def test_a_loop_pass_reads_a_few_mqtt_packets_however_many_publishes_wait() -> None:
    """paho reads as many packets per call as the client has unacknowledged publishes: during a
    sync, with events waiting for PUBACKs behind the flood, that was hundreds of member states in
    one loop callback, and a badge waited 20-60 ms behind them. The gate reads a few per pass."""
    import asyncio

    import aiomqtt
    from paho.mqtt.enums import MQTTErrorCode

    from gated.mqtt_session import READ_PACKETS_PER_PASS, take_messages_directly

    async def reads(results: list[MQTTErrorCode]) -> tuple[int, MQTTErrorCode, list[int]]:
        client = aiomqtt.Client("127.0.0.1", 1)
        paho_client = client._client
        paho_client._out_messages.update({mid: object() for mid in range(500)})  # type: ignore[misc]
        paho_client._sock = object()  # type: ignore[assignment]
        calls = 0
        handled: list[int] = []

        def packet_read() -> MQTTErrorCode:
            nonlocal calls
            calls += 1
            return results[calls - 1] if calls <= len(results) else MQTTErrorCode.MQTT_ERR_SUCCESS

        def rc_handle(rc: int) -> MQTTErrorCode:
            handled.append(rc)
            return MQTTErrorCode(rc)

        paho_client._packet_read = packet_read  # type: ignore[method-assign]
        paho_client._loop_rc_handle = rc_handle  # type: ignore[method-assign]
        take_messages_directly(client, lambda topic, payload: None, lambda: None)
        try:
            rc = paho_client.loop_read()
        finally:
            paho_client._sock = None  # nothing for paho to close
            paho_client._out_messages.clear()
        return calls, rc, handled

    # a flood waiting in the socket: a few packets, then back to the loop
    assert asyncio.run(reads([])) == (READ_PACKETS_PER_PASS, MQTTErrorCode.MQTT_ERR_SUCCESS, [])
    assert READ_PACKETS_PER_PASS < 500
    # the socket drained: stop at once
    again = [MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN]
    assert asyncio.run(reads(again)) == (2, MQTTErrorCode.MQTT_ERR_SUCCESS, [])
    # a broken link is handed to paho's own handling, as its loop_read does
    lost = [MQTTErrorCode.MQTT_ERR_CONN_LOST]
    assert asyncio.run(reads(lost)) == (1, MQTTErrorCode.MQTT_ERR_CONN_LOST, [7])


def test_every_verifier_process_is_started_before_the_first_sync() -> None:
    """The pool starts a process only when a job finds none idle: warming it with one job left
    the others to start in the middle of the first sync, holding badges up for ~30 ms; and the
    first process up could take every warm-up job while another was still importing."""
    import asyncio

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from gated.cache.verifier import VERIFY_NICE, VERIFY_PROCESSES, VerifierPool

    async def started() -> list[int]:
        key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        pool = VerifierPool([key], SITE)
        try:
            await pool.start()
            # Each has run its initializer (nice 19) by now, not just been spawned.
            return [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.pids]
        finally:
            pool.shutdown()

    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert asyncio.run(started()) == [min(19, ours + VERIFY_NICE)] * VERIFY_PROCESSES


def test_the_heartbeat_stops_when_the_order_to_stop_comes_with_a_puback() -> None:
    """Python 3.11's asyncio.wait_for, which aiomqtt waits for acknowledgements with, returns
    instead of raising when the PUBACK and the order to stop arrive in the same loop pass: the
    gate's loops must still stop, or a gate being restarted waits for the service manager to
    kill it."""
    import asyncio
    from types import SimpleNamespace

    from gated.cache.sync import SiteSync
    from tests.puback_race import stops_when_cancelled_with_a_puback, wait_for_puback

    calls = 0

    async def beat() -> bool:
        puback = asyncio.Event()

        async def publish_status(client: Any, state: str) -> None:
            nonlocal calls
            calls += 1
            await wait_for_puback(puback)
            puback.clear()

        sync = object.__new__(SiteSync)
        sync.mqtt = SimpleNamespace(heartbeat_s=0.001)  # type: ignore[assignment]
        sync._publish_status = publish_status  # type: ignore[method-assign]
        return await stops_when_cancelled_with_a_puback(sync._heartbeat(None), puback)  # type: ignore[arg-type]

    assert asyncio.run(beat()) and calls == 1
