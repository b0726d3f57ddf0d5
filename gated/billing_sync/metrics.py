"""Prometheus metrics for gated-billing, read from the store at scrape time (so every process
that shares the store reports the same truth, and nothing is counted twice after a restart)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, exists, func, select

from gated.billing_sync import schema as s
from gated.billing_sync.store import reading

# Webhooks refused before anything is stored (bad signature), by reason; this process only.
WEBHOOK_FAILURES: Counter[str] = Counter()


class StoreCollector(Collector):
    """Members by status, attempts by state, charges, declines by code, recoveries, webhook
    failures, outbox and notice backlogs, version head."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "gated_billing_members", "Members by billing status", labels=["status"]
        )
        attempts = GaugeMetricFamily(
            "gated_billing_payment_attempts", "Payment attempts by state", labels=["state"]
        )
        with reading(self.engine).connect() as conn:
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
            n = s.notifications
            notices = conn.execute(
                select(func.count()).where(n.c.sent_at.is_(None), n.c.failed_at.is_(None))
            ).scalar_one()
            failed_notices = conn.execute(
                select(func.count()).where(n.c.sent_at.is_(None), n.c.failed_at.is_not(None))
            ).scalar_one()
            head = conn.execute(select(s.version_head.c.value)).scalar() or 0
            charged = CounterMetricFamily(
                "gated_billing_charged_minor_units",
                "Money charged successfully through the gateway, in minor units",
                labels=["currency"],
            )
            a = s.payment_attempts
            for currency, amount in conn.execute(
                select(a.c.currency, func.sum(a.c.amount))
                .where(a.c.state == "succeeded")
                .group_by(a.c.currency)
            ):
                charged.add_metric([currency], amount or 0)
            declines = CounterMetricFamily(
                "gated_billing_declines", "Declined charges by decline code and class",
                labels=["code", "class"],
            )  # fmt: skip
            for code, klass, count in conn.execute(
                select(a.c.decline_code, a.c.decline_class, func.count())
                .where(a.c.state == "failed")
                .group_by(a.c.decline_code, a.c.decline_class)
            ):
                declines.add_metric([code or "unknown", klass or "unknown"], count)
            # A recovery: an invoice paid (by retry, new card, pay link or front desk) after at
            # least one of its charges failed.
            failed_before = exists().where(
                (a.c.invoice_id == s.payments.c.invoice_id) & (a.c.state == "failed")
            )
            recoveries = conn.execute(
                select(func.count(func.distinct(s.payments.c.invoice_id))).where(
                    failed_before,
                    s.payments.c.amount > 0,
                    s.payments.c.method.not_in(s.NOT_MONEY_METHODS),
                )
            ).scalar_one()
        yield members
        yield attempts
        yield charged
        yield declines
        yield CounterMetricFamily(
            "gated_billing_recoveries", "Invoices paid after a failed charge", value=recoveries
        )
        webhook_failures = CounterMetricFamily(
            "gated_billing_webhook_failures", "Webhooks refused (nothing applied), by reason",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(WEBHOOK_FAILURES.items()):
            webhook_failures.add_metric([reason], count)
        yield webhook_failures
        yield GaugeMetricFamily(
            "gated_billing_status_outbox_depth",
            "Member states not yet acknowledged by MQTT",
            value=outbox,
        )
        yield GaugeMetricFamily(
            "gated_billing_notices_queued", "Notices not yet accepted by SMTP", value=notices
        )
        yield GaugeMetricFamily(
            "gated_billing_notices_failed",
            "Notices refused for good (bounced addresses), waiting for a corrected one",
            value=failed_notices,
        )
        yield GaugeMetricFamily(
            "gated_billing_version_head", "Highest version handed out", value=head
        )


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding only the store collector (no process metrics of the test runner)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    return registry
