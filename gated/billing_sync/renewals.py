"""What a member's next renewal bills: which plan, at what price per period. The billing cycle
bills it and the upcoming-charge notice announces it, from this one rule, so the amount a
member is told is the amount they are charged.

The renewal bills the plan booked for it (a change at the renewal), else the member's plan; at
the member's own price if a grandfathering change kept one, else the plan's. A price change not
yet applied counts when its day is on or before the renewal: the cycle applies it before it
bills that renewal. This module reads nothing of its own beyond the pending changes, and
imports nothing that sends notices (``prices`` imports ``reminders``, which imports this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select

from gated.billing_sync import schema as s

# Plan id -> its price changes not yet applied, as (effective_at, price), in the order the
# cycle applies them (by day, then by id).
Pending = Mapping[str, Sequence[tuple[int, int]]]


def member_price(sub: Any, plan: Any) -> int:
    """What ``sub`` (a subscription row) pays per period of ``plan`` today: its own kept price,
    or the plan's."""
    return int(plan.price if sub.price is None else sub.price)


def pending_changes(conn: Connection) -> dict[str, list[tuple[int, int]]]:
    """Every price change not yet applied, by plan (see ``Pending``)."""
    pc = s.price_changes
    rows = conn.execute(
        select(pc.c.plan_id, pc.c.effective_at, pc.c.price)
        .where(pc.c.applied_at.is_(None))
        .order_by(pc.c.effective_at, pc.c.id)
    )
    out: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        out.setdefault(r.plan_id, []).append((int(r.effective_at), int(r.price)))
    return out


def renewal_terms(
    sub: Any, plans: Mapping[str, Any], pending: Pending | None = None
) -> tuple[Any, int]:
    """The plan row and the price per period (net, minor units) the renewal at
    ``sub.paid_through`` bills: ``sub`` is a subscription row, ``plans`` every plan by id,
    ``pending`` the changes not yet applied (none when the cycle bills: it applied them)."""
    switching = sub.next_plan_id is not None
    plan = plans[sub.next_plan_id if switching else sub.plan_id]
    # A switch drops a kept price: the new plan is billed at its own.
    kept = None if switching else sub.price
    price = int(plan.price)
    for effective_at, new in (pending or {}).get(plan.id, ()):
        if effective_at > int(sub.paid_through):
            break
        # As apply_price_changes does: a grandfathering change keeps the price of whoever is
        # on the plan (the switch comes after, as the renewal is billed) and joined before it.
        if kept is None and plan.grandfather and not switching and sub.started_at < effective_at:
            kept = price
        price = new
    return plan, int(price if kept is None else kept)
