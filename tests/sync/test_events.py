"""Events out, status and last will, across broker and gate failures, against a real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.contract import status_topic
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto, run_mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import SITE, EventSink, HeadOffice, uid_for, wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # Save sessions every second: mosquitto's persistence is a periodic snapshot, and a kill -9
    # loses what changed since the last one (the shipped config saves every 10 s).
    with run_mosquitto(tmp_path / "mosquitto", extra_config="autosave_interval 1\n") as b:
        yield b


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[GateProcess, HeadOffice, EventSink]]:
    config = write_config(tmp_path / "gate", extra=mqtt_section(broker.url))
    gate = GateProcess(config, tmp_path / "gate")
    hq = HeadOffice(gate.root / "keys", broker.port)
    sink = EventSink(broker.port)
    yield gate, hq, sink
    gate.stop()
    hq.close()
    sink.close()


def wait_for_autosave(broker: Mosquitto) -> None:
    """Wait for a save of the broker's sessions that began after now: the sink's session must be
    in it before the broker is killed (see the fixture), and a fixed sleep can be overrun by a
    loaded machine."""
    saved_after = time.time()
    db = broker.workdir / "mosquitto.db"
    wait_until(
        lambda: db.exists() and db.stat().st_mtime > saved_after, what="the broker's next autosave"
    )


def badge_ids(gate: GateProcess, uids: list[str], out: list[dict[str, Any]]) -> None:
    for uid in uids:
        t0 = time.monotonic()
        result = gate.request("badge", {"card": uid})
        out.append({**result, "round_trip_s": time.monotonic() - t0})


def test_broker_restart_loses_nothing_and_doubles_nothing(
    site: tuple[GateProcess, HeadOffice, EventSink], broker: Mosquitto
) -> None:
    gate, hq, sink = site
    members = [hq.state(f"m_{i}", 100 + i, cards=[uid_for(i)]) for i in range(20)]
    hq.publish(*members)
    gate.start()
    wait_until(lambda: gate.request("badge", {"card": uid_for(19)})["allow"], what="synced")
    wait_for_autosave(broker)

    results: list[dict[str, Any]] = []
    badger = threading.Thread(
        target=badge_ids, args=(gate, [uid_for(i % 20) for i in range(400)], results)
    )
    badger.start()
    wait_until(lambda: len(results) > 50, what="badging under way")
    broker.kill()
    outage_from = len(results)
    wait_until(lambda: len(results) > outage_from + 50, what="badging during the outage")
    broker.start()
    # The head office publishes while the gate is still reconnecting.
    hq.publish(hq.state("m_3", 500, cards=[uid_for(3)], status="frozen"))
    badger.join(60)
    assert len(results) == 400
    assert max(r["round_trip_s"] for r in results) < 0.5, "a decision waited on the broker"

    wait_until(
        lambda: gate.request("badge", {"card": uid_for(3)})["reason"] == "frozen",
        timeout=30,
        what="the update published during the outage",
    )
    wait_until(
        lambda: gate.request("status")["outbox_depth"] == 0, timeout=30, what="outbox drained"
    )
    decided = sum(gate.request("status")["decisions"].values())

    def decisions_seen() -> int:
        return sum(e["kind"] in ("entry", "deny") for e in sink.unique().values())

    wait_until(lambda: decisions_seen() >= decided, timeout=30, what="every decision's event")
    assert decisions_seen() == decided
    ids = [e["event_id"] for e in sink.events]
    first_seen = list(dict.fromkeys(ids))
    assert [i[:10] for i in first_seen] == sorted(i[:10] for i in first_seen), "out of order"
    stats = gate.request("status")["sync"]
    assert stats["connects"] >= 2 and stats["connected"]


def test_outbox_survives_gate_kill_during_outage(
    site: tuple[GateProcess, HeadOffice, EventSink], broker: Mosquitto
) -> None:
    gate, hq, sink = site
    hq.publish(hq.state("m_1", 1, cards=[uid_for(1)]))
    gate.start()
    wait_until(lambda: gate.request("badge", {"card": uid_for(1)})["allow"], what="synced")
    wait_until(lambda: len(sink.unique()) >= 1, what="first event")
    wait_for_autosave(broker)
    broker.stop()
    for _ in range(25):
        gate.request("badge", {"card": uid_for(1)})
    status = gate.request("status")
    assert status["outbox_depth"] >= 25
    decided = sum(status["decisions"].values())
    gate.kill()
    broker.start()
    gate.start()

    def decisions_seen() -> int:
        return sum(e["kind"] in ("entry", "deny") for e in sink.unique().values())

    wait_until(lambda: decisions_seen() >= decided, timeout=30, what="every event after restart")
    wait_until(lambda: gate.request("status")["outbox_depth"] == 0, what="outbox empty")
    assert decisions_seen() == decided


def test_last_will_marks_a_killed_gate_offline(
    site: tuple[GateProcess, HeadOffice, EventSink], broker: Mosquitto
) -> None:
    gate, hq, _sink = site
    seen: list[dict[str, Any]] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="status-watch")
    watcher.on_message = lambda _c, _u, m: seen.append(json.loads(m.payload))
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(status_topic(SITE, "t1"), qos=1)
    watcher.loop_start()
    try:
        hq.publish(hq.state("m_1", 7, cards=[uid_for(1)]))
        gate.start()
        online = wait_until(
            lambda: next(
                (s for s in reversed(seen) if s["state"] == "online" and s["members"]), None
            ),
            what="online status with members",
        )
        assert online["site"] == SITE and online["gate"] == "t1" and online["max_version"] == 7
        assert online["digest"] == gate.request("status")["digest"]
        gate.kill()
        offline = wait_until(lambda: seen[-1]["state"] == "offline" and seen[-1], what="last will")
        assert offline["gate"] == "t1"
        gate.start()
        wait_until(lambda: seen[-1]["state"] == "online", what="online again")
        gate.stop()
        wait_until(lambda: seen[-1]["state"] == "offline", what="offline on a clean stop")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
