"""Metrics end to end: a real gate subprocess, badges through gatectl, /metrics scraped over HTTP."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gated.contract import Signer, compact_json, member_topic
from gated.metrics import GateMetrics
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.helpers import SITE, HeadOffice, wait_until

ACTIVE_UID = "04A1B2C3D4E5F6"
FROZEN_UID = "04A1B2C3D4E5F7"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[GateProcess]:
    # Port 0: the kernel picks a free loopback port; the daemon reports it in its status.
    config = write_config(tmp_path, extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            [
                {"member_id": "m_1", "status": "active", "cards": [ACTIVE_UID]},
                {"member_id": "m_2", "status": "frozen", "cards": [FROZEN_UID]},
            ]
        )
    )
    proc = GateProcess(config, tmp_path)
    out = proc.gated("members", "import", str(members), "-c", str(config))
    assert out.returncode == 0, out.stderr
    proc.start()
    yield proc
    proc.stop()


def scrape(url: str) -> Samples:
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_badge_moves_the_decision_counters_and_latency(gate: GateProcess) -> None:
    url = gate.request("status")["metrics_url"]
    before = scrape(url)
    allow = ("gated_decisions_total", (("reason", "ok"), ("result", "allow")))
    frozen = ("gated_decisions_total", (("reason", "frozen"), ("result", "deny")))
    count = ("gated_decision_latency_seconds_count", ())
    # Every reason exists from the first scrape, at zero, so rate() works before the first deny.
    assert before[allow] == 0 and before[frozen] == 0 and before[count] == 0

    granted = gate.badge(card=ACTIVE_UID)
    refused = gate.badge(card=FROZEN_UID)
    assert granted["allow"] and not refused["allow"]

    after = scrape(url)
    assert after[allow] == 1 and after[frozen] == 1 and after[count] == 2
    total = granted["latency_us"] + refused["latency_us"]
    assert after[("gated_decision_latency_seconds_sum", ())] == pytest.approx(total / 1e6)
    # Both latencies fall in the bucket whose bound covers the slower one, and none below zero.
    slowest = max(granted["latency_us"], refused["latency_us"]) / 1e6
    buckets = {
        float(dict(labels)["le"]): v
        for (name, labels), v in after.items()
        if name == "gated_decision_latency_seconds_bucket"
    }
    assert all(v == 2 for le, v in buckets.items() if le >= slowest)

    assert after[("gated_cache_members", ())] == 2
    assert after[("gated_cache_max_version", ())] >= 2
    assert after[("gated_reader_up", (("kind", "sim"), ("reader", "sim-1")))] == 1
    assert after[("gated_outbox_max_events", ())] == 1_000_000
    assert after[("gated_outbox_dropped_events_total", ())] == 0
    assert after[("gated_lockdown", ())] == 0
    # Local-only gate: the lag counts from start and only grows.
    assert after[("gated_sync_lag_seconds", ())] >= before[("gated_sync_lag_seconds", ())]


def test_random_uids_show_as_rejected_and_lockdown_as_a_gauge(gate: GateProcess) -> None:
    url = gate.request("status")["metrics_url"]
    assert gate.badge(card="08A1B2C3")["reason"] == "unknown_credential"
    assert gate.gatectl("lockdown", "on").returncode == 0
    after = scrape(url)
    assert (
        after[("gated_rejected_messages_total", (("reason", "random_uid"), ("source", "gate")))]
        == 1
    )
    assert (
        after[("gated_decisions_total", (("reason", "unknown_credential"), ("result", "deny")))]
        == 1
    )
    assert after[("gated_lockdown", ())] == 1


@pytest.mark.needs_mosquitto
def test_head_office_sync_shows_as_freshness_and_forged_messages_as_rejects(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = write_config(
        tmp_path,
        extra=f'[mqtt]\nurl = "{mosquitto.url}"\nheartbeat_s = 1\n[metrics]\nlisten = "127.0.0.1:0"\n',
    )
    gate = GateProcess(config, tmp_path)
    gate.start()
    hq = HeadOffice(tmp_path / "keys", mosquitto.port)
    try:
        url = gate.request("status")["metrics_url"]
        hq.publish(hq.state("m_1", 10, cards=[ACTIVE_UID]))

        version = ("gated_cache_max_version", ())
        wait_until(lambda: scrape(url)[version] == 10, what="member state applied")
        fresh = scrape(url)
        assert fresh[("gated_sync_lag_seconds", ())] < 30
        assert fresh[("gated_head_office_last_contact_timestamp_seconds", ())] > 1.7e9
        forged = Signer(Ed25519PrivateKey.generate()).sign(hq.state("m_1", 20, cards=[ACTIVE_UID]))
        hq.raw(member_topic(SITE, "m_1"), compact_json(forged))
        bad = ("gated_rejected_messages_total", (("reason", "bad_signature"), ("source", "mqtt")))
        wait_until(lambda: scrape(url).get(bad) == 1, what="forged state counted")
        assert scrape(url)[("gated_cache_max_version", ())] == 10
    finally:
        hq.close()
        gate.stop()


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[metrics]\nlisten = ""\n')
    proc = GateProcess(config, tmp_path)
    proc.start()
    try:
        assert proc.request("status")["metrics_url"] is None
    finally:
        proc.stop()


def test_tallies_become_prometheus_families() -> None:
    """The hand-kept tallies follow Prometheus semantics: cumulative ``le`` buckets (a value on
    a bound counts in it), +Inf equals the count, and a fire counts when it starts only."""
    metrics = GateMetrics(SimpleNamespace())  # type: ignore[arg-type]  # no gate is scraped
    for us in (100, 250, 900, 2_000_000):
        metrics.decided(True, "ok", us)
    metrics.decided(False, "some_future_reason", 10)
    metrics.door_event("fire", "active")
    metrics.door_event("fire", "cleared")
    metrics.door_event("door_held", None)
    metrics.door_event("exit", None)
    families = {f.name: f for f in metrics.families()}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    bucket = "gated_decision_latency_seconds_bucket"
    assert samples[(bucket, (("le", "0.0001"),))] == 2  # 10 µs and exactly 100 µs
    assert samples[(bucket, (("le", "0.00025"),))] == 3
    assert samples[(bucket, (("le", "0.001"),))] == 4
    assert samples[(bucket, (("le", "1.0"),))] == 4
    assert samples[(bucket, (("le", "+Inf"),))] == 5
    assert samples[("gated_decision_latency_seconds_count", ())] == 5
    assert samples[("gated_decisions_total", (("reason", "ok"), ("result", "allow")))] == 4
    assert (
        samples[("gated_decisions_total", (("reason", "some_future_reason"), ("result", "deny")))]
        == 1
    )
    assert samples[("gated_door_alarms_total", (("kind", "fire"),))] == 1
    assert samples[("gated_door_alarms_total", (("kind", "door_held"),))] == 1
    assert samples[("gated_door_alarms_total", (("kind", "door_forced"),))] == 0
    # And the exposition is valid text for a real scraper.
    registry = CollectorRegistry()
    registry.register(_Tallies(metrics))
    assert "# TYPE gated_decision_latency_seconds histogram" in generate_latest(registry).decode()


class _Tallies(Collector):
    """Just the tallies, with no gate behind them."""

    def __init__(self, metrics: GateMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()
