"""Prometheus metrics for a gate, served over HTTP (127.0.0.1:9464 unless configured otherwise).

Two kinds of numbers, kept apart so a badge pays almost nothing:
- Things that happen (decisions, their latency, door alarms) are tallied on the event loop in
  plain ints, after the door has acted: 0.7 µs per decision measured alone on a desktop core,
  ~2 µs inside a real decision. prometheus-client's own ``Counter.inc()`` plus
  ``Histogram.observe()`` take a lock each and cost ~4 µs alone, for numbers only the loop
  thread ever writes.
- Things that are (cache size, max version, head-office contact, outbox depth, readers, clock)
  are read from the gate only when Prometheus scrapes.
Both are turned into metric families by one collector, in the HTTP server's thread, when scraped.

The server is prometheus-client's, in a daemon thread; a port that cannot be bound is logged and
the gate runs on without metrics: the door matters more than the graph.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from gated import __version__
from gated.cache.index import MemberIndex
from gated.cache.store import CacheWriter
from gated.clock import TrustedClock
from gated.outbox_guard import OutboxGuard
from gated.policy.decide import GateContext
from gated.policy.reasons import DENY_REASONS
from gated.readers.base import Reader

log = logging.getLogger("gated.metrics")

# The budget is 1 ms at the relay; the buckets resolve around it and still catch a stalled loop.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
DOOR_ALARMS = ("door_forced", "door_held", "fire")


class SyncRejections(Protocol):
    """The head-office link, as the metrics read it."""

    @property
    def rejected(self) -> Counter[str]: ...


class MetricsGate(Protocol):
    """What a scrape reads of the gate (plain attribute reads, atomic under the GIL)."""

    @property
    def index(self) -> MemberIndex: ...
    @property
    def last_head_office_at(self) -> float | None: ...
    @property
    def started_at(self) -> float: ...
    @property
    def rejected(self) -> Counter[str]: ...
    @property
    def sync(self) -> SyncRejections | None: ...
    @property
    def outbox(self) -> OutboxGuard: ...
    @property
    def readers(self) -> Sequence[Reader]: ...
    @property
    def context(self) -> GateContext: ...
    @property
    def stale(self) -> bool: ...
    @property
    def clock_synchronized(self) -> bool | None: ...
    @property
    def clock(self) -> TrustedClock: ...
    @property
    def writer(self) -> CacheWriter: ...


class GateMetrics:
    """The gate's tallies and its registry (one per gate: gates in one process never clash).

    Written only from the event loop; the collector reads them from the scrape thread, where
    copying a dict or a list is atomic under the GIL.
    """

    def __init__(self, gate: MetricsGate) -> None:
        # Every known reason is there from the first scrape, at zero: rate() and alerts need the
        # series to exist before the first deny.
        self.decisions: dict[tuple[str, str], int] = {("allow", "ok"): 0}
        self.decisions.update({("deny", reason): 0 for reason in DENY_REASONS})
        self._bounds = LATENCY_BUCKETS
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0
        self.door_alarms = dict.fromkeys(DOOR_ALARMS, 0)
        self.registry = CollectorRegistry()
        self.registry.register(GateStateCollector(gate, self))
        self.url: str | None = None
        self._server: Any = None

    def decided(self, allow: bool, reason: str, latency_us: int) -> None:
        """Count one decision and its latency (on the event loop, after the door has acted)."""
        key = ("allow" if allow else "deny", reason)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        seconds = latency_us * 1e-6
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.latency_buckets[bisect_left(self._bounds, seconds)] += 1
        self.latency_sum += seconds

    def door_event(self, kind: str, detail: str | None) -> None:
        """Count an alarm (a fire counts when it starts, not when it clears)."""
        if kind in self.door_alarms and (kind != "fire" or detail == "active"):
            self.door_alarms[kind] += 1

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint; log and carry on if the address cannot be bound."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("event=metrics_unavailable listen=%s:%d error=%s", host, port, exc)
            return
        bound = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"
        log.info("event=metrics_listening url=%s", self.url)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def families(self) -> Iterator[Any]:
        """The tallies as metric families (called by the collector at scrape time)."""
        decisions = CounterMetricFamily(
            "gated_decisions",
            "Badges decided, by result (allow/deny) and reason code.",
            labels=["result", "reason"],
        )
        for (result, reason), count in sorted(dict(self.decisions).items()):
            decisions.add_metric([result, reason], count)
        yield decisions
        counts = list(self.latency_buckets)
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(str, self._bounds), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            "gated_decision_latency_seconds",
            "Credential read to relay/LED command, per decision.",
            buckets=cumulative,
            sum_value=self.latency_sum,
        )
        alarms = CounterMetricFamily(
            "gated_door_alarms",
            "Door alarms raised: forced open, held open, fire input active.",
            labels=["kind"],
        )
        for kind, count in dict(self.door_alarms).items():
            alarms.add_metric([kind], count)
        yield alarms


class GateStateCollector(Collector):
    """Reads the gate's current state at scrape time, in the HTTP server's thread.

    Only plain attribute reads and dict copies: each is atomic under the GIL, so the loop thread
    is never locked out and never waits.
    """

    def __init__(self, gate: MetricsGate, tallies: GateMetrics) -> None:
        self.gate = gate
        self.tallies = tallies

    def collect(self) -> Iterator[Any]:
        gate = self.gate
        yield from self.tallies.families()
        yield InfoMetricFamily("gated_build", "Software version.", value={"version": __version__})
        yield GaugeMetricFamily(
            "gated_cache_members", "Members held in the in-memory index.", value=gate.index.count
        )
        yield GaugeMetricFamily(
            "gated_cache_max_version",
            "Highest member version the cache holds.",
            value=gate.index.max_version,
        )
        last = gate.last_head_office_at
        if last is not None:
            yield GaugeMetricFamily(
                "gated_head_office_last_contact_timestamp_seconds",
                "When a verified head-office object last arrived (Unix time).",
                value=last,
            )
        since = last if last is not None else gate.started_at
        yield GaugeMetricFamily(
            "gated_sync_lag_seconds",
            "Seconds since the last head-office contact (since start if none yet).",
            value=max(0.0, time.time() - since),
        )
        rejected = CounterMetricFamily(
            "gated_rejected_messages",
            "Inputs refused before any decision: head-office messages (source=mqtt: bad "
            "signature, wrong site, ...) and local ones (source=gate: random UID, ...).",
            labels=["source", "reason"],
        )
        for reason, count in sorted(dict(gate.rejected).items()):
            rejected.add_metric(["gate", reason], count)
        if gate.sync is not None:
            for reason, count in sorted(dict(gate.sync.rejected).items()):
                rejected.add_metric(["mqtt", reason], count)
        yield rejected
        outbox = gate.outbox
        yield GaugeMetricFamily(
            "gated_outbox_events", "Events waiting for the broker.", value=outbox.depth
        )
        yield GaugeMetricFamily(
            "gated_outbox_max_events",
            "The outbox ceiling: at this depth new events are no longer kept.",
            value=outbox.ceiling,
        )
        yield CounterMetricFamily(
            "gated_outbox_dropped_events",
            "Events not kept because the outbox was at its ceiling.",
            value=outbox.dropped,
        )
        yield CounterMetricFamily(
            "gated_events_lost",
            "Events a refusing disk (full, failing) rolled back and that could not be held.",
            value=gate.writer.events_lost,
        )
        yield GaugeMetricFamily(
            "gated_events_held",
            "Events a refusing disk rolled back, held in memory until a commit succeeds.",
            value=gate.writer.events_held,
        )
        up = GaugeMetricFamily(
            "gated_reader_up", "1 while the reader reports ok.", labels=["reader", "kind"]
        )
        reads = CounterMetricFamily(
            "gated_reader_reads", "Credentials read.", labels=["reader", "kind"]
        )
        errors = CounterMetricFamily(
            "gated_reader_errors", "Reader faults seen.", labels=["reader", "kind"]
        )
        for reader in list(gate.readers):
            labels = [reader.id, reader.kind]
            up.add_metric(labels, 1.0 if reader.health.state == "ok" else 0.0)
            reads.add_metric(labels, reader.health.reads)
            errors.add_metric(labels, reader.health.errors)
        yield from (up, reads, errors)
        yield GaugeMetricFamily(
            "gated_lockdown", "1 while lockdown refuses every badge.", value=gate.context.lockdown
        )
        yield GaugeMetricFamily(
            "gated_stale_cache",
            "1 while head office has been silent for longer than max_offline.",
            value=gate.stale,
        )
        synced = gate.clock_synchronized
        if synced is not None:
            yield GaugeMetricFamily(
                "gated_clock_synchronized", "1 while the system clock is NTP-synchronized.", synced
            )
        yield GaugeMetricFamily(
            "gated_clock_plausible",
            "1 while the system clock is believed (synchronized, or past the last good time).",
            value=gate.clock.plausible(),
        )
        yield CounterMetricFamily(
            "gated_clock_skewed_objects",
            "Verified head-office objects dated more than 5 minutes ahead: time ignored.",
            value=gate.clock.skew_count,
        )
