"""Prometheus metrics for gated-billing, read from the store at scrape time (so every process
that shares the store reports the same truth, and nothing is counted twice after a restart)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from gated.billing_sync import schema as s


class StoreCollector(Collector):
    """Members by status, attempts by state, outbox and notice backlogs, version head."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "gated_billing_members", "Members by billing status", labels=["status"]
        )
        attempts = GaugeMetricFamily(
            "gated_billing_payment_attempts", "Payment attempts by state", labels=["state"]
        )
        with self.engine.connect() as conn:
            for status, count in conn.execute(
                select(s.subscriptions.c.status, func.count()).group_by(s.subscriptions.c.status)
            ):
                members.add_metric([status], count)
            for state, count in conn.execute(
                select(s.payment_attempts.c.state, func.count()).group_by(
                    s.payment_attempts.c.state
                )
            ):
                attempts.add_metric([state], count)
            outbox = conn.execute(
                select(func.count()).where(s.status_outbox.c.published_at.is_(None))
            ).scalar_one()
            notices = conn.execute(
                select(func.count()).where(s.notifications.c.sent_at.is_(None))
            ).scalar_one()
            head = conn.execute(select(s.version_head.c.value)).scalar() or 0
        yield members
        yield attempts
        yield GaugeMetricFamily(
            "gated_billing_status_outbox_depth",
            "Member states not yet acknowledged by MQTT",
            value=outbox,
        )
        yield GaugeMetricFamily(
            "gated_billing_notices_queued", "Notices not yet accepted by SMTP", value=notices
        )
        yield GaugeMetricFamily(
            "gated_billing_version_head", "Highest version handed out", value=head
        )


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding only the store collector (no process metrics of the test runner)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    return registry
