"""What the front desk reads: one member's page and the words for gate events in the live
check-in feed (finding a member is ``member_search``). Every read is scoped to the sites a staff
account covers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from gated.billing_sync import members
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import NotFound
from gated.billing_sync.notices import format_amount
from gated.contract import REASON_WORDS

ALL_SITES = "*"
# The gate's own words for its decisions, and the desk's for what else a gate reports.
WORDS = {**REASON_WORDS, "door_pulse": "Opened once", "on": "Locked down", "off": "Lockdown lifted"}


def in_scope(member_sites: Sequence[str], staff_sites: Sequence[str]) -> bool:
    """Whether an account covering ``staff_sites`` may see a member of ``member_sites``."""
    return ALL_SITES in staff_sites or any(site in staff_sites for site in member_sites)


def member_page(ctx: Context, member_id: str, staff_sites: Sequence[str]) -> dict[str, Any]:
    """One member for the desk: account, plan, open invoices, credit notes, cards (ids only),
    recent visits. NotFound for an unknown, erased or out-of-scope member (all look alike)."""
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
                inv.c.id,
                inv.c.number,
                inv.c.kind,
                inv.c.total,
                inv.c.amount_paid,
                inv.c.currency,
                inv.c.due_at,
            )
            .where(inv.c.member_id == member_id, inv.c.status == "open")
            .order_by(inv.c.due_at, inv.c.id)
        ).all()
        cn = s.credit_notes
        notes = conn.execute(
            select(
                cn.c.id,
                cn.c.number,
                cn.c.kind,
                cn.c.amount,
                cn.c.currency,
                cn.c.created_at,
                inv.c.number.label("invoice_number"),
            )
            .join(inv, inv.c.id == cn.c.invoice_id)
            .where(cn.c.member_id == member_id)
            .order_by(cn.c.created_at.desc(), cn.c.id.desc())
            .limit(24)
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
        contact = conn.execute(
            select(s.members.c.phone, s.members.c.emergency_contact).where(
                s.members.c.id == member_id
            )
        ).one()
        m["has_photo"] = (
            conn.execute(
                select(s.member_photos.c.member_id).where(s.member_photos.c.member_id == member_id)
            ).first()
            is not None
        )
    m["phone"] = contact.phone
    m["emergency_contact"] = contact.emergency_contact
    m["plan_name"] = plan.name if plan else None
    m["currency"] = plan.currency if plan else ctx.config.currency
    m["open_invoices"] = [
        {**r._asdict(), "owed": int(r.total - r.amount_paid)} for r in open_invoices
    ]
    # The newest credit notes, each linked to its PDF (/desk/credit-notes/ID.pdf).
    m["credit_notes"] = [r._asdict() for r in notes]
    m["card_ids"] = [r._asdict() for r in card_rows]
    m["visits"] = [r._asdict() for r in visits]
    return m


def _todo(reason: str | None, owed: str, declined: bool) -> str:
    """What the desk can do about a refusal, in words."""
    if reason == "unknown_credential":
        return "card not known: search for the member and assign the card"
    if owed:
        return f"{owed}{', card declined' if declined else ''}: take payment"
    if reason == "frozen":
        return "frozen: unfreeze if they want to train"
    if reason in ("cancelled", "expired", "collections"):
        return "membership ended: talk about rejoining"
    if reason in ("anti_passback", "daily_limit", "outside_schedule", "zone_denied"):
        return "their plan's rules: let in once only if you mean to"
    return ""


def feed_items(ctx: Context, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gate events as the live check-in feed shows them: the member's name and standing, the
    reason in words, and for a refusal what the desk can do ("owes 49.90, card declined: take
    payment")."""
    ids = sorted({str(e["member_id"]) for e in events if e.get("member_id")})
    m, sub, pa = s.members, s.subscriptions, s.payment_attempts
    people: dict[str, Any] = {}
    declined: set[str] = set()
    with_photo: set[str] = set()
    if ids:
        with ctx.reader.connect() as conn:
            for row in conn.execute(
                select(m.c.id, m.c.name, m.c.erased, sub.c.status)
                .outerjoin(sub, sub.c.member_id == m.c.id)
                .where(m.c.id.in_(ids))
            ):
                people[row.id] = row
            last = (
                select(pa.c.member_id, func.max(pa.c.id).label("id"))
                .where(pa.c.member_id.in_(ids))
                .group_by(pa.c.member_id)
                .subquery()
            )
            with_photo = set(
                conn.execute(
                    select(s.member_photos.c.member_id).where(s.member_photos.c.member_id.in_(ids))
                ).scalars()
            )
            declined = {
                r.member_id
                for r in conn.execute(
                    select(pa.c.member_id)
                    .join(last, last.c.id == pa.c.id)
                    .where(pa.c.state == "failed")
                )
            }
    owed = {i: members.member(ctx, i)["owed"] for i in ids if i in people}
    items = []
    for ev in events:
        member_id = ev.get("member_id")
        person = people.get(member_id) if member_id else None
        refused = ev.get("kind") == "deny"
        reason = ev.get("reason")
        owes = owed.get(str(member_id), 0)
        owed_text = f"owes {format_amount(owes, ctx.config.currency)}" if owes > 0 else ""
        items.append(
            {
                "event_id": ev.get("event_id"),
                "at": ev.get("at"),
                "site": ev.get("site"),
                "gate": ev.get("gate"),
                "kind": ev.get("kind"),
                "member_id": member_id,
                "name": (person.name if person is not None and not person.erased else None),
                "status": person.status if person is not None else None,
                "reason": reason,
                "words": WORDS.get(str(reason), str(reason or ev.get("kind") or ""))
                if reason or refused
                else ("Welcome" if ev.get("kind") == "entry" else str(ev.get("kind"))),
                "todo": _todo(reason, owed_text, member_id in declined) if refused else "",
                "refused": refused,
                "operator": ev.get("operator"),
                "photo": member_id in with_photo,
            }
        )
    return items


def recent_events(
    ctx: Context, staff_sites: Sequence[str], limit: int = 30
) -> list[dict[str, Any]]:
    """The newest gate events at ``staff_sites`` as feed items, newest first."""
    ev = s.gate_events
    q = select(ev.c.payload).order_by(ev.c.at.desc(), ev.c.event_id.desc()).limit(limit)
    if ALL_SITES not in staff_sites:
        q = q.where(ev.c.site.in_(list(staff_sites)))
    with ctx.reader.connect() as conn:
        events = [json.loads(p) for p in conn.execute(q).scalars()]
    return feed_items(ctx, events)
