"""kill -9 of a gate in the middle of a big sync: the restarted gate converges to the manifest."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.contract import build_snapshot, compact_json, format_time, manifest_topic, member_topic
from gated.push import build_manifest
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import SITE, TOKEN, HeadOffice, SnapshotServer, uid_for, wait_until

RETAINED = 20_000
SNAPSHOT = 100_000


def publish_retained(port: int, hq: HeadOffice, n: int) -> dict[str, object]:
    """n signed members retained on the broker, then the manifest; returns the manifest."""
    states = [hq.state(f"k_{i}", i + 1, cards=[uid_for(i)]) for i in range(n)]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bulk-hq")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [
            client.publish(
                member_topic(SITE, s["member_id"]),
                compact_json(hq.signer.sign(s)),
                qos=1,
                retain=True,
            )
            for s in states
        ]
        manifest = build_manifest(SITE, states, hq.signer, format_time(time.time()))
        infos.append(client.publish(manifest_topic(SITE), compact_json(manifest), 1, True))
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.loop_stop()
        client.disconnect()
    return manifest


def in_step(gate: GateProcess, manifest: dict[str, object]) -> bool:
    try:
        status = gate.request("status")
    except TimeoutError:
        # A status taking over the request's 10 s: seen only with the 2 cores shared by
        # several suites, while the restarted gate verifies 100k signatures. Asked again until
        # the wait's own deadline, which still fails a gate that never answers.
        return False
    return bool(status["digest"] == manifest["digest"] and status["members"] == manifest["count"])


def test_kill_mid_retained_sync_converges(
    gate: GateProcess, hq: HeadOffice, mosquitto: Mosquitto
) -> None:
    manifest = publish_retained(mosquitto.port, hq, RETAINED)
    gate.start()
    wait_until(
        lambda: gate.request("status")["members"] >= RETAINED // 5, timeout=60, what="partway"
    )
    gate.kill()
    gate.start()
    wait_until(lambda: in_step(gate, manifest), timeout=90, what="converged to the manifest")
    sync = gate.request("status")["sync"]
    assert sync["in_sync"] and not sync["rejected"]
    assert gate.request("badge", {"card": uid_for(RETAINED - 1)})["allow"]


@pytest.mark.slow
def test_kill_mid_snapshot_of_100k_converges(tmp_path: Path, mosquitto: Mosquitto) -> None:
    server = SnapshotServer()
    root = tmp_path / "gate"
    root.mkdir()
    (root / "token").write_text(TOKEN)
    head_office = f'[head_office]\nsnapshot_url = "{server.url}"\ntoken_file = "{root / "token"}"\n'
    gate = GateProcess(write_config(root, extra=mqtt_section(mosquitto.url) + head_office), root)
    hq = HeadOffice(root / "keys", mosquitto.port)
    try:
        states = [hq.state(f"s_{i}", i + 1, cards=[uid_for(i)]) for i in range(SNAPSHOT)]
        server.body = build_snapshot(SITE, states, hq.signer, format_time(time.time()))
        manifest = build_manifest(SITE, states, hq.signer, format_time(time.time()))
        hq.raw(manifest_topic(SITE), compact_json(manifest))
        gate.start()
        wait_until(lambda: len(server.requests) >= 1, what="the snapshot fetched")
        gate.kill()  # while it verifies and applies the 100k rows
        gate.start()
        wait_until(lambda: in_step(gate, manifest), timeout=60, what="converged to the manifest")
        # The kill landed mid-apply: nothing was committed, so the restart fetched it again.
        assert len(server.requests) == 2
        assert gate.request("badge", {"card": uid_for(SNAPSHOT - 1)})["allow"]
    finally:
        gate.stop()
        hq.close()
        server.close()
