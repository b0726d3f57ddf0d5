"""A broker with mosquitto's default queue limit silently drops retained members for a new
subscriber: the gate notices the sync ended short of the manifest and doctor says why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto, run_mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import HeadOffice, wait_until
from tests.sync.test_convergence import publish_retained


@pytest.fixture
def default_queue_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    defaults = "max_queued_messages 1000\nmax_inflight_messages 20\n"  # mosquitto's own
    with run_mosquitto(tmp_path / "mosquitto", extra_config=defaults) as b:
        yield b


def test_doctor_warns_when_a_sync_ends_short_of_the_manifest(
    tmp_path: Path, default_queue_broker: Mosquitto
) -> None:
    root = tmp_path / "gate"
    gate = GateProcess(write_config(root, extra=mqtt_section(default_queue_broker.url)), root)
    hq = HeadOffice(root / "keys", default_queue_broker.port)
    try:
        manifest = publish_retained(default_queue_broker.port, hq, 3000)
        gate.start()
        last = wait_until(
            lambda: gate.request("status")["sync"]["last_sync"], timeout=30, what="a settled sync"
        )
        assert last["members"] < manifest["count"] == last["manifest_count"]
        out = gate.gatectl("doctor", "--json")
        assert out.returncode == 1
        sync_check = next(c for c in json.loads(out.stdout)["checks"] if c["name"] == "sync")
        assert sync_check["level"] == "warn"
        assert "max_queued_messages 0" in sync_check["fix"]
    finally:
        gate.stop()
        hq.close()
