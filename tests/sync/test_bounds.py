"""Wild versions and deeply nested JSON from the broker, into a real gate: each bad message is
refused alone and counted, the rest of its batch applies, and the gate keeps deciding."""

from __future__ import annotations

import json
import socket
from typing import Any

from gated.contract import cmd_topic, compact_json, manifest_topic, member_topic
from tests.gatefixture import GateProcess
from tests.sync.helpers import SITE, HeadOffice, uid_for, wait_until

DEEP = b"[" * 100_000 + b"]" * 100_000


def sync_stats(gate: GateProcess) -> dict[str, Any]:
    return dict(gate.request("status")["sync"])


def publish_burst(hq: HeadOffice, states: list[dict[str, Any]]) -> None:
    """Every state at once, retained, waiting for the PUBACKs only after the last is sent."""
    sent = [
        hq.client.publish(
            member_topic(SITE, s["member_id"]),
            compact_json(hq.signer.sign(s)),
            qos=1,
            retain=True,
        )
        for s in states
    ]
    for info in sent:
        info.wait_for_publish(10)


def test_a_signed_version_past_2_to_the_53_is_refused_alone(
    gate: GateProcess, hq: HeadOffice
) -> None:
    good = [hq.state(f"m_{i}", 10 + i, cards=[uid_for(i)]) for i in range(20)]
    wild = hq.state("m_wild", 2**63, cards=[uid_for(99)])
    # Retained before the gate subscribes: the broker hands all 21 over in one burst, so they
    # reach the verifiers as one batch (on a gate that stored versions unbounded, SQLite's
    # OverflowError on the wild one dropped all 21).
    publish_burst(hq, [*good[:10], wild, *good[10:]])
    hq.states = {s["member_id"]: s for s in good}
    hq.publish_manifest()
    gate.start()

    stats = wait_until(
        lambda: (
            (s := sync_stats(gate))["rejected"].get("version_out_of_range") == 1
            and s["in_sync"]
            and s
        ),
        what="20 applied, the wild one refused",
    )
    assert stats["applied"] == 20
    assert set(stats["rejected"]) == {"version_out_of_range"}
    assert gate.request("badge", {"card": uid_for(7)})["allow"]
    assert gate.request("badge", {"card": uid_for(99)})["reason"] == "unknown_credential"

    # A resubscribe hands every retained state over again: the 20 are not newer, the wild one
    # is refused (and counted) again, and nothing else is lost.
    assert gate.gatectl("resync", "--json").returncode == 0
    stats = wait_until(
        lambda: (
            (s := sync_stats(gate))["rejected"].get("version_out_of_range") == 2
            and s["skipped"].get("not_newer", 0) >= 20
            and s
        ),
        what="the resubscribe's burst handled",
    )
    assert stats["applied"] == 20 and stats["in_sync"]
    assert set(stats["rejected"]) == {"version_out_of_range"}
    assert gate.request("badge", {"card": uid_for(19)})["allow"]


def deep_but_short(depth: int = 30_000) -> bytes:
    """Nested past any parser's patience yet under the 64 KiB payload and line limits."""
    return b"[" * depth + b"]" * depth


def control_line(sock: socket.socket, line: bytes) -> dict[str, Any]:
    sock.sendall(line + b"\n")
    reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    return reply


def test_deeply_nested_json_is_refused_at_every_entry_point(
    gate: GateProcess, hq: HeadOffice
) -> None:
    gate.start()
    hq.publish(hq.state("m_0", 1, cards=[uid_for(0)]))
    wait_until(lambda: gate.request("badge", {"card": uid_for(0)})["allow"], what="first member")

    # Manifest and command topics: 100k levels (over the payload limit) and 30k (under it).
    for topic in (manifest_topic(SITE), cmd_topic(SITE, "t1")):
        hq.raw(topic, DEEP, retain=False)
        hq.raw(topic, deep_but_short(), retain=False)
    # Member topic: a state carrying head office's (public) key id and a field 1,020 levels deep
    # (orjson parses up to 1,024; re-serializing it to check the signature recursed), sent in one
    # burst with 20 good states.
    deep_state = (
        b'{"type":"member_state","kid":"%s","member_id":"m_deep","version":5,"sig":"AAAA",'
        b'"status":"active","x":%s}' % (hq.signer.kid.encode(), deep_but_short(1020))
    )
    hq.client.publish(member_topic(SITE, "m_deep"), deep_state, qos=1, retain=True)
    publish_burst(hq, [hq.state(f"m_{i}", 10 + i, cards=[uid_for(i)]) for i in range(1, 21)])

    def counted() -> dict[str, Any] | None:
        s = sync_stats(gate)
        r, c = s["rejected"], s["commands"]
        ok = (
            r.get("oversized") == 2
            and r.get("too_deep") == 2
            and c.get("refused_too_deep") == 1
            and s["applied"] == 21
        )
        return s if ok else None

    wait_until(counted, what="each deep payload counted, the good states applied")
    assert gate.request("badge", {"card": uid_for(20)})["allow"]

    # Control socket: a too-long line and a deep one are answered, and the connection that
    # sent the deep one serves the next request.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(gate.socket))
        reply = control_line(s, b'{"cmd":"status","args":' + DEEP + b"}")
        assert reply["ok"] is False and "too long" in reply["error"]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(gate.socket))
        reply = control_line(s, b'{"cmd":"status","args":' + deep_but_short() + b"}")
        assert reply == {"ok": False, "error": "bad request: nested deeper than 32"}
        reply = control_line(s, b'{"cmd":"badge","args":{"card":"%s"}}' % uid_for(3).encode())
        assert reply["ok"] and reply["result"]["allow"]
    status = gate.request("status")
    assert status["rejected"]["control_bad_request"] == 2
    assert "Traceback" not in gate.log.read_text()
