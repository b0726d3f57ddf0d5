"""Plan prices over time: a price change announced ahead and applied on its day. What a member
renews at (their own price, kept by a grandfathering plan, else the plan's) is
``renewals.renewal_terms``.

A change does not touch any invoice already billed: it moves the plan's price on its day (the
billing cycle applies it before it bills anything), and each member pays the new price from
their first renewal billed from then on. A plan with ``grandfather`` keeps everyone enrolled
before that day on the price they had (``subscriptions.price``), for as long as they stay on
the plan.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.engine import DAY, tax_of
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.notices import format_day
from gated.billing_sync.reminders import queue_price_change
from gated.billing_sync.store import insert_ids

log = logging.getLogger("gated.billing")
# Members are told of a price change at least this long before it applies to anyone.
NOTICE_DAYS = 30


def schedule_price_change(
    ctx: Context, plan_id: str, price: int, effective_at: int, notice_days: int = NOTICE_DAYS
) -> int:
    """Announce that ``plan_id`` costs ``price`` from ``effective_at`` (at least ``notice_days``
    from today), with a ``price_change`` notice to each member it will apply to (none on a
    grandfathering plan: its members keep their price); returns the change's id. Refused for an unknown plan, a negative price, a day
    too soon, or a day that already has a change for the plan."""
    now = ctx.clock()
    if price < 0:
        raise BillingError("a price is >= 0 (minor units)")
    today = now - now % DAY
    earliest = today + notice_days * DAY
    if effective_at < earliest:
        raise BillingError(
            f"a price change is announced {notice_days} days ahead: the earliest day is"
            f" {format_day(earliest)}"
        )
    pc = s.price_changes
    with ctx.engine.begin() as conn:
        plan = conn.execute(select(s.plans).where(s.plans.c.id == plan_id)).first()
        if plan is None:
            raise NotFound(f"no plan {plan_id!r}")
        pending = conn.execute(
            select(pc.c.effective_at).where(pc.c.plan_id == plan_id, pc.c.applied_at.is_(None))
        ).scalars()
        if effective_at in set(pending):
            raise BillingError(f"plan {plan_id} already has a price change on that day")
        values = {
            "plan_id": plan_id,
            "price": price,
            "effective_at": effective_at,
            "announced_at": now,
        }
        change_id = insert_ids(conn, pc, [values])[0]
        if not plan.grandfather:
            # Everyone on the plan pays the new price from a renewal on that day or later,
            # except members a grandfathering change of the past keeps on their price.
            sub = s.subscriptions
            told = conn.execute(
                select(sub.c.member_id)
                .join(s.members, s.members.c.id == sub.c.member_id)
                .where(
                    sub.c.plan_id == plan_id,
                    sub.c.price.is_(None),
                    sub.c.cancel_at.is_(None) | (sub.c.cancel_at > effective_at),
                    s.members.c.erased.is_(False),
                )
            ).scalars()
            rate = int(plan.tax_rate_bp)
            queue_price_change(
                ctx,
                conn,
                list(told),
                int(plan.price) + tax_of(int(plan.price), rate),
                price + tax_of(price, rate),
                effective_at,
            )
    log.info(
        "event=price_change_scheduled plan=%s price=%d effective_at=%d",
        plan_id,
        price,
        effective_at,
    )
    return change_id


def price_changes(ctx: Context, plan_id: str | None = None) -> list[Any]:
    """Price changes, soonest first (applied ones too), with the plan's name and currency."""
    pc = s.price_changes
    q = (
        select(pc, s.plans.c.name, s.plans.c.currency, s.plans.c.grandfather)
        .join(s.plans, s.plans.c.id == pc.c.plan_id)
        .order_by(pc.c.effective_at, pc.c.id)
    )
    if plan_id is not None:
        q = q.where(pc.c.plan_id == plan_id)
    with ctx.reader.connect() as conn:
        return list(conn.execute(q))


def apply_price_changes(ctx: Context) -> int:
    """Apply every announced change whose day has come, oldest first: the plan takes the new
    price; on a grandfathering plan, its members enrolled before that day keep the price they
    had. Returns how many were applied (a read, without a write, when none is due)."""
    pc, sub = s.price_changes, s.subscriptions
    now = ctx.clock()
    due_now = (pc.c.applied_at.is_(None), pc.c.effective_at <= now)
    with ctx.reader.connect() as conn:
        if conn.execute(select(pc.c.id).where(*due_now).limit(1)).first() is None:
            return 0
    with ctx.engine.begin() as conn:
        due = conn.execute(select(pc).where(*due_now).order_by(pc.c.effective_at, pc.c.id)).all()
        for change in due:
            plan = conn.execute(select(s.plans).where(s.plans.c.id == change.plan_id)).one()
            if plan.grandfather:
                conn.execute(
                    update(sub)
                    .where(
                        sub.c.plan_id == plan.id,
                        sub.c.price.is_(None),
                        sub.c.started_at < change.effective_at,
                    )
                    .values(price=plan.price)
                )
            conn.execute(update(s.plans).where(s.plans.c.id == plan.id).values(price=change.price))
            conn.execute(update(pc).where(pc.c.id == change.id).values(applied_at=now))
            log.info("event=price_change_applied plan=%s price=%d", plan.id, change.price)
    return len(due)
