"""Notices sent ahead of time rather than on an event: the upcoming charge a few days before a
renewal (``[notices] upcoming_charge_days``), a card about to expire (``card_expiry_days``),
and the price change a plan change announces. Each renewal and each card's expiry is announced
once: what was announced is kept beside it (``reminded_through`` on the subscription,
``card_expiry_noticed`` on the member), so a second cycle (or ``run`` beside ``serve``) finds
nothing left to send."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, bindparam, or_, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.facts import derive_facts, load_facts, read_rows
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.publishing import queue_notices
from gated.billing_sync.renewals import pending_changes, renewal_terms
from gated.billing_sync.store import bulk

log = logging.getLogger("gated.billing.reminders")

DAY = 86_400
# Members whose renewal is charged on its day: not in dunning (a renewal then waits for the
# next retry), frozen, cancelling, suspended or gone.
_RENEWING = ("active",)
_SET_NOTICED = (
    update(s.members)
    .where(s.members.c.id == bindparam("mid"))
    .values(card_expiry_noticed=bindparam("exp"))
)
_SET_REMINDED = (
    update(s.subscriptions)
    .where(s.subscriptions.c.member_id == bindparam("mid"))
    .values(reminded_through=bindparam("pt"))
)


def anything(ctx: Context, query: Select[Any]) -> bool:
    """Whether ``query`` finds a row, asked in a read transaction: most cycles find nothing to
    remind of, and on SQLite a write transaction takes the one write lock at its BEGIN, which
    the member app's writes then wait for (the cycle runs every ``cycle_interval_s``)."""
    with ctx.reader.connect() as conn:
        return conn.execute(query).first() is not None


def queue_reminders(ctx: Context, now: int) -> None:
    """Every reminder whose time has come (the end of a full billing cycle calls this)."""
    queue_upcoming_charges(ctx, now)
    queue_card_expiries(ctx, now)


def queue_upcoming_charges(ctx: Context, now: int) -> int:
    """Queue an ``upcoming_charge`` notice for every renewal due within the configured days
    that was not announced yet (a batch at a time); returns how many were queued."""
    days = ctx.config.notices.upcoming_charge_days
    if days <= 0:
        return 0
    sub, plans = s.subscriptions, s.plans
    due = (
        select(sub.c.member_id, sub.c.paid_through)
        .join(plans, plans.c.id == sub.c.plan_id)
        .where(
            sub.c.paid_through > now,
            sub.c.paid_through <= now + days * DAY,
            sub.c.status.in_(_RENEWING),
            sub.c.cancel_at.is_(None),
            plans.c.auto_renew.is_(True),
            or_(sub.c.reminded_through.is_(None), sub.c.reminded_through != sub.c.paid_through),
        )
        .order_by(sub.c.paid_through, sub.c.member_id)
        .limit(ctx.config.batch_size)
    )
    queued = 0
    while not ctx.stopping.is_set() and anything(ctx, due):
        with ctx.engine.begin() as conn:
            rows = conn.execute(due).all()
            if not rows:
                break
            batch = read_rows(conn, [r.member_id for r in rows], now)
            facts = derive_facts(batch)
            pending = pending_changes(conn)
            items = []
            for r in rows:
                f = facts.get(r.member_id)
                if f is None or f.plan is None or f.sub is None:
                    continue
                # What the renewal will bill: a plan booked for it, a kept price, a price
                # change due by then.
                plan, price = renewal_terms(f.sub, batch.plans, pending)
                amount = price + eng.tax_of(price, int(plan.tax_rate_bp))
                values = {
                    "amount": format_amount(amount, plan.currency),
                    "date": format_day(int(r.paid_through)),
                    "plan": plan.name,
                }
                items.append((f, "upcoming_charge", values))
            queue_notices(ctx, conn, items)
            bulk(conn, _SET_REMINDED, [{"mid": r.member_id, "pt": r.paid_through} for r in rows])
            queued += len(items)
    if queued:
        log.info("event=upcoming_charges_queued count=%d", queued)
    return queued


def queue_card_expiries(ctx: Context, now: int) -> int:
    """Queue a ``card_expiring`` notice to every member whose card on file expires within the
    configured days while their membership renews (a batch at a time), once per card's expiry;
    returns how many were queued."""
    days = ctx.config.notices.card_expiry_days
    if days <= 0:
        return 0
    m, sub, plans = s.members, s.subscriptions, s.plans
    due = (
        select(m.c.id, m.c.card_expires_at, sub.c.paid_through)
        .join(sub, sub.c.member_id == m.c.id)
        .join(plans, plans.c.id == sub.c.plan_id)
        .where(
            m.c.card_expires_at <= now + days * DAY,
            m.c.payment_method.is_not(None),
            or_(m.c.card_expiry_noticed.is_(None), m.c.card_expiry_noticed != m.c.card_expires_at),
            sub.c.status.in_(("active", "grace")),
            sub.c.cancel_at.is_(None),
            plans.c.auto_renew.is_(True),
        )
        .order_by(m.c.card_expires_at, m.c.id)
        .limit(ctx.config.batch_size)
    )
    queued = 0
    while not ctx.stopping.is_set() and anything(ctx, due):
        with ctx.engine.begin() as conn:
            rows = conn.execute(due).all()
            if not rows:
                break
            facts = load_facts(conn, [r.id for r in rows], now)
            items = [
                (
                    facts[r.id],
                    "card_expiring",
                    {
                        # The expiry month is the month before the instant it stops working.
                        "expiry": format_day(int(r.card_expires_at) - DAY)[:7],
                        "date": format_day(None if r.paid_through is None else int(r.paid_through)),
                    },
                )
                for r in rows
                if r.id in facts
            ]
            queue_notices(ctx, conn, items)
            bulk(
                conn,
                _SET_NOTICED,
                [{"mid": r.id, "exp": r.card_expires_at} for r in rows],
            )
            queued += len(items)
    if queued:
        log.info("event=card_expiries_queued count=%d", queued)
    return queued


def queue_price_change(
    ctx: Context,
    conn: Connection,
    member_ids: Sequence[str],
    old: int,
    new: int,
    effective_at: int,
) -> None:
    """Tell members their plan's price changes from ``old`` to ``new`` (gross, minor units, in
    the plan's currency) on ``effective_at``: the hook a price change calls in its transaction,
    for each member whose price it changes (not those kept on their old price)."""
    facts = load_facts(conn, list(member_ids), ctx.clock())
    items = []
    for f in facts.values():
        if f.plan is None:
            continue
        values = {
            "plan": f.plan.name,
            "old": format_amount(old, f.plan.currency),
            "new": format_amount(new, f.plan.currency),
            "date": format_day(effective_at),
        }
        items.append((f, "price_change", values))
    queue_notices(ctx, conn, items)
