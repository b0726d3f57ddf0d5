"""An online sign-up becomes a membership when its first invoice is paid in full, whichever
way the money arrives (the page, the provider's webhook after the browser is gone, the front
desk): ``invoices.apply_payments`` calls ``start_memberships`` in the transaction that books it.
Until then the member has no subscription, so the cycle bills nothing and the gates hear nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, exists, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.store import many


def start_memberships(conn: Connection, member_ids: Sequence[str], now: int) -> list[str]:
    """Start the membership of each unpaid sign-up among ``member_ids`` now (paid through one
    period of its plan); returns the members started. The caller refreshes them (which makes
    them active and publishes them)."""
    su, plans = s.signups, s.plans
    rows = conn.execute(
        select(su.c.member_id, su.c.invoice_id, plans.c.id, plans.c.period_months)
        .join(plans, plans.c.id == su.c.plan_id)
        .where(su.c.member_id.in_(many(list(member_ids))), su.c.paid_at.is_(None))
    ).all()
    for r in rows:
        end = eng.add_months(now, int(r.period_months))
        conn.execute(
            insert(s.subscriptions).values(
                member_id=r.member_id,
                plan_id=r.id,
                started_at=now,
                paid_through=end,
                status="pending",
                retries_done=0,
                needs_new_card=False,
                review_at=now,
            )
        )
        # The first invoice covers the period from the day it was paid.
        conn.execute(
            update(s.invoices)
            .where(s.invoices.c.id == r.invoice_id)
            .values(period_start=now, period_end=end)
        )
        conn.execute(update(su).where(su.c.member_id == r.member_id).values(paid_at=now))
    return [str(r.member_id) for r in rows]


def welcome_due(conn: Connection, member_id: str) -> bool:
    """Whether the member joined online, has paid the sign-up, and has not been welcomed yet
    (one welcome mail, with the pass link, after the first payment, however it arrived)."""
    su, n = s.signups, s.notifications
    return bool(
        conn.execute(
            select(su.c.member_id).where(
                su.c.member_id == member_id,
                su.c.paid_at.is_not(None),
                ~exists().where(n.c.member_id == member_id, n.c.kind == "welcome"),
            )
        ).first()
    )
