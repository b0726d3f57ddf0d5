"""Read-only reports over the store: each returns (columns, rows) for a table or CSV."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from gated.billing_sync import schema as s
from gated.billing_sync.store import reading

Report = tuple[list[str], list[tuple[Any, ...]]]


def _day(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def revenue(engine: Engine, now: int) -> Report:
    """Money received per month, currency and method (chargebacks count negative)."""
    p, inv = s.payments, s.invoices
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(p.c.at, inv.c.currency, p.c.method, p.c.amount).join(
                inv, inv.c.id == p.c.invoice_id
            )
        ).all()
    totals: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        key = (datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m"), r.currency, r.method)
        acc = totals.setdefault(key, [0, 0])
        acc[0] += int(r.amount)
        acc[1] += 1
    return (
        ["month", "currency", "method", "amount", "payments"],
        [(*k, v[0], v[1]) for k, v in sorted(totals.items())],
    )


def outstanding(engine: Engine, now: int) -> Report:
    """Open invoices per member: how much, how many, since when."""
    inv = s.invoices
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(
                inv.c.member_id,
                inv.c.currency,
                func.count(),
                func.sum(inv.c.total - inv.c.amount_paid),
                func.min(inv.c.due_at),
            )
            .where(inv.c.status == "open")
            .group_by(inv.c.member_id, inv.c.currency)
            .order_by(func.min(inv.c.due_at))
        ).all()
    return (
        ["member", "currency", "invoices", "owed", "oldest_due", "days_overdue"],
        [
            (r[0], r[1], r[2], int(r[3]), _day(r[4]), max(0, (now - int(r[4])) // 86_400))
            for r in rows
        ],
    )


def dunning(engine: Engine, now: int) -> Report:
    """Members in dunning or with money open."""
    sub, inv = s.subscriptions, s.invoices
    owed = (
        select(inv.c.member_id, func.sum(inv.c.total - inv.c.amount_paid).label("owed"))
        .where(inv.c.status == "open")
        .group_by(inv.c.member_id)
        .subquery()
    )
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(
                sub.c.member_id,
                sub.c.status,
                owed.c.owed,
                sub.c.first_failure_at,
                sub.c.retries_done,
                sub.c.next_retry_at,
                sub.c.needs_new_card,
            )
            .join(owed, owed.c.member_id == sub.c.member_id, isouter=True)
            .where((owed.c.owed > 0) | sub.c.status.in_(("grace", "suspended", "collections")))
            .order_by(sub.c.first_failure_at)
        ).all()
    return (
        ["member", "status", "owed", "first_failure", "retries", "next_retry", "needs_new_card"],
        [
            (r[0], r[1], int(r[2] or 0), _day(r[3]), r[4], _day(r[5]), "yes" if r[6] else "")
            for r in rows
        ],
    )


def attendance(engine: Engine, now: int) -> Report:
    """Entries per day and site (granted entries only; denies are not attendance)."""
    ev = s.gate_events
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(ev.c.at, ev.c.site, ev.c.member_id).where(
                ev.c.kind == "entry", ev.c.reason.is_distinct_from("not_passed")
            )
        ).all()
    days: dict[tuple[str, str], tuple[int, set[str]]] = {}
    for r in rows:
        key = (_day(r.at), r.site)
        count, members = days.get(key, (0, set()))
        if r.member_id:
            members.add(r.member_id)
        days[key] = (count + 1, members)
    return (
        ["day", "site", "entries", "members"],
        [(k[0], k[1], v[0], len(v[1])) for k, v in sorted(days.items())],
    )


def passes(engine: Engine, now: int) -> Report:
    """Members on plans that do not auto-renew: when each pass ends (soonest first) and its
    status (``expired`` once it has)."""
    sub, p, m = s.subscriptions, s.plans, s.members
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(sub.c.member_id, p.c.id, sub.c.paid_through, sub.c.status)
            .join(p, p.c.id == sub.c.plan_id)
            .join(m, m.c.id == sub.c.member_id)
            .where(p.c.auto_renew.is_(False), m.c.erased.is_(False))
            .order_by(sub.c.paid_through, sub.c.member_id)
        ).all()
    return (
        ["member", "plan", "ends", "status", "days_left"],
        [
            (r[0], r[1], _day(r[2]), r[3], max(0, -(-(int(r[2] or now) - now) // 86_400)))
            for r in rows
        ],
    )


REPORTS: dict[str, Callable[[Engine, int], Report]] = {
    "revenue": revenue,
    "outstanding": outstanding,
    "dunning": dunning,
    "attendance": attendance,
    "passes": passes,
}


def invoices(engine: Engine, member_id: str | None, with_lines: bool) -> list[tuple[Any, ...]]:
    """Invoice rows (newest first), each followed by its lines when asked."""
    inv, ln = s.invoices, s.invoice_lines
    q = select(inv).order_by(inv.c.id.desc())
    if member_id:
        q = q.where(inv.c.member_id == member_id)
    out: list[tuple[Any, ...]] = []
    with reading(engine).connect() as conn:
        rows = conn.execute(q.limit(1000)).all()
        lines: dict[int, list[Any]] = {}
        if with_lines and rows:
            for line in conn.execute(
                select(ln).where(ln.c.invoice_id.in_([r.id for r in rows])).order_by(ln.c.id)
            ):
                lines.setdefault(line.invoice_id, []).append(line)
    for r in rows:
        head = (
            r.id,
            r.member_id,
            r.kind,
            r.status,
            r.currency,
            r.subtotal,
            r.tax,
            r.total,
            r.amount_paid,
            _day(r.due_at),
        )
        if not with_lines:
            out.append(head)
            continue
        for i, line in enumerate(lines.get(r.id, [])):
            blank = ("",) * len(head)
            out.append(
                (head if i == 0 else blank)
                + (line.kind, line.description, line.quantity, line.unit_amount, line.amount)
            )
    return out
