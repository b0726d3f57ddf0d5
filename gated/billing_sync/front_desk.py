"""What the front desk reads: finding a member by name, e-mail, id or card (a keyboard-wedge
reader types the UID into the search box), one member's page, and the words for a gate event in
the live check-in feed. Every read is scoped to the sites a staff account covers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, update

from gated.billing_sync import members
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import NotFound
from gated.billing_sync.publishing import refresh
from gated.contract import ContractError, normalize_uid

ALL_SITES = "*"
SEARCH_LIMIT = 25


def in_scope(member_sites: Sequence[str], staff_sites: Sequence[str]) -> bool:
    """Whether an account covering ``staff_sites`` may see a member of ``member_sites``."""
    return ALL_SITES in staff_sites or any(site in staff_sites for site in member_sites)


def search(ctx: Context, query: str, staff_sites: Sequence[str]) -> list[dict[str, Any]]:
    """Members matching ``query``: a card UID (as a reader types it, any case or separators),
    an exact member id, or part of a name or an e-mail address; erased members never."""
    query = query.strip()[:200]
    if not query:
        return []
    m, sub = s.members, s.subscriptions
    conditions = [m.c.id == query]
    try:
        lookup = ctx.keys.uid_lookup(normalize_uid(query))
    except ContractError:
        lookup = None
    if lookup is not None:
        conditions.append(
            m.c.id.in_(
                select(s.cards.c.member_id).where(
                    s.cards.c.uid_lookup == lookup, s.cards.c.revoked_at.is_(None)
                )
            )
        )
    if len(query) >= 2:
        pattern = (
            "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        conditions.append(func.lower(m.c.name).like(pattern, escape="\\"))
        conditions.append(func.lower(m.c.email).like(pattern, escape="\\"))
    with ctx.reader.connect() as conn:
        rows = conn.execute(
            select(m.c.id, m.c.name, m.c.email, m.c.sites, sub.c.status, sub.c.plan_id)
            .outerjoin(sub, sub.c.member_id == m.c.id)
            .where(m.c.erased.is_(False), or_(*conditions))
            .order_by(m.c.name, m.c.id)
            .limit(SEARCH_LIMIT * 4)
        ).all()
    found = []
    for row in rows:
        sites = json.loads(row.sites)
        if in_scope(sites, staff_sites):
            found.append({**row._asdict(), "sites": sites})
    return found[:SEARCH_LIMIT]


def member_page(ctx: Context, member_id: str, staff_sites: Sequence[str]) -> dict[str, Any]:
    """One member for the desk: account, plan, open invoices, cards (ids only), recent visits.
    NotFound for an unknown, erased or out-of-scope member (all look alike)."""
    try:
        m = members.member(ctx, member_id)
    except NotFound:
        raise NotFound(f"no member {member_id!r}") from None
    if not in_scope(m["sites"], staff_sites):
        raise NotFound(f"no member {member_id!r}")
    inv, cards, ev = s.invoices, s.cards, s.gate_events
    with ctx.reader.connect() as conn:
        erased = conn.execute(select(s.members.c.erased).where(s.members.c.id == member_id))
        if erased.scalar():
            raise NotFound(f"no member {member_id!r}")
        plan = (
            conn.execute(select(s.plans).where(s.plans.c.id == m["plan"])).first()
            if m["plan"]
            else None
        )
        open_invoices = conn.execute(
            select(
                inv.c.id, inv.c.kind, inv.c.total, inv.c.amount_paid, inv.c.currency, inv.c.due_at
            )
            .where(inv.c.member_id == member_id, inv.c.status == "open")
            .order_by(inv.c.due_at, inv.c.id)
        ).all()
        card_rows = conn.execute(
            select(cards.c.id, cards.c.assigned_at)
            .where(cards.c.member_id == member_id, cards.c.revoked_at.is_(None))
            .order_by(cards.c.id)
        ).all()
        visits = conn.execute(
            select(ev.c.at, ev.c.site, ev.c.gate, ev.c.kind, ev.c.reason)
            .where(ev.c.member_id == member_id)
            .order_by(ev.c.at.desc())
            .limit(20)
        ).all()
    m["plan_name"] = plan.name if plan else None
    m["currency"] = plan.currency if plan else ctx.config.currency
    m["open_invoices"] = [
        {**r._asdict(), "owed": int(r.total - r.amount_paid)} for r in open_invoices
    ]
    m["card_ids"] = [r._asdict() for r in card_rows]
    m["visits"] = [r._asdict() for r in visits]
    return m


def revoke_card_by_id(ctx: Context, member_id: str, card_id: int) -> None:
    """Revoke one of a member's cards by its row id (the desk never sees a UID)."""
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(s.cards)
            .where(
                s.cards.c.id == card_id,
                s.cards.c.member_id == member_id,
                s.cards.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        ).rowcount
        if done == 0:
            raise NotFound(f"member {member_id} holds no card {card_id}")
        refresh(ctx, conn, [member_id], now)
