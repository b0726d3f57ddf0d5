"""The reports as they were before the rollups: every raw row read and counted in Python. The
rollup tests recount with these after random writes and expect the same rows (MRR spreads a
renewal over its months rounded half up, as the rollup's SQL does)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from gated.billing_sync import schema as s
from gated.billing_sync.household import net_by_member
from gated.billing_sync.reports import (
    CURRENT,
    EVERYTHING,
    WEEKDAYS,
    Report,
    Scope,
    _members_at,
    _tax_share,
    granted_entry,
    month_of,
    monthly,
    months_in,
)
from gated.billing_sync.store import reading


def revenue(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Money received per month, currency and method (``card``, ``sepa_debit``, ``front_desk``,
    ...; chargebacks and refunds count negative; credit notes and write-offs are not money): gross, and apart the net and the tax in it (each payment's
    share of its invoice's tax, rounded per payment). A household invoice's payment is split
    between the members on it (``household_parts``), each part at its member's sites; the
    payment counts once, at its own member's."""
    p, inv, ln = s.payments, s.invoices, s.invoice_lines
    with reading(engine).connect() as conn:
        who = _members_at(conn, scope)
        rows = conn.execute(
            select(
                p.c.at,
                inv.c.currency,
                p.c.method,
                p.c.amount,
                p.c.member_id,
                inv.c.tax,
                inv.c.total,
                inv.c.id,
                inv.c.household,
            )
            .join(inv, inv.c.id == p.c.invoice_id)
            .where(scope.within(p.c.at), p.c.method.not_in(s.NOT_MONEY_METHODS))
        ).all()
        lines: dict[int, list[tuple[str, str, int]]] = {}
        for line in conn.execute(
            select(ln.c.invoice_id, ln.c.member_id, ln.c.kind, ln.c.amount).where(
                ln.c.member_id.is_not(None),
                ln.c.invoice_id.in_({int(r.id) for r in rows if r.household}),
            )
        ):
            lines.setdefault(int(line.invoice_id), []).append(
                (line.member_id, line.kind, int(line.amount))
            )
    totals: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        key = (datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m"), r.currency, r.method)
        amount = int(r.amount)
        tax = _tax_share(amount, int(r.tax), int(r.total))
        on_it = lines.get(int(r.id), [])
        if r.household:
            weights: dict[str, int] = {}
            taxed: dict[str, int] = {}
            for member, kind, line_amount in on_it:
                weights[member] = weights.get(member, 0) + line_amount
                if kind == "tax":
                    taxed[member] = taxed.get(member, 0) + line_amount
            gross_parts = household_parts(amount, weights, r.member_id)
            tax_parts = household_parts(tax, taxed, r.member_id)
            parts = [
                (m, gross_parts.get(m, 0), tax_parts.get(m, 0))
                for m in sorted(gross_parts.keys() | tax_parts.keys())
            ]
        else:
            parts = [(r.member_id, amount, tax)]
        for member, gross, tax_part in parts:
            if who is None or member in who:
                acc = totals.setdefault(key, [0, 0, 0])
                acc[0] += gross
                acc[1] += tax_part
        if who is None or r.member_id in who:
            totals.setdefault(key, [0, 0, 0])[2] += 1
    return (
        ["month", "currency", "method", "gross", "net", "tax", "payments"],
        [(*k, g, g - tax, tax, n) for k, (g, tax, n) in sorted(totals.items()) if n or g or tax],
    )


def household_parts(amount: int, weights: dict[str, int], payer: str) -> dict[str, int]:
    """``amount`` split between the members of ``weights`` in proportion to them, in whole
    units adding up to ``amount``: each member's is the cumulative share up to them (members in
    id order) less the one before them, each rounded toward zero. With nothing to share by, it
    is all ``payer``'s."""
    whole = sum(weights.values())
    if whole == 0:
        return {payer: amount}

    def toward_zero(n: int) -> int:
        q = abs(n) // abs(whole)
        return q if (n >= 0) == (whole > 0) else -q

    out: dict[str, int] = {}
    upto = 0
    for member in sorted(weights):
        before = upto
        upto += weights[member]
        out[member] = toward_zero(amount * upto) - toward_zero(amount * before)
    return out


def mrr(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Monthly recurring revenue per month and currency: the net of every paid renewal whose
    period covers the month's last instant (or now, for this month), spread over its months;
    a household invoice's for each member on it, their net at their sites."""
    inv = s.invoices
    with reading(engine).connect() as conn:
        who = _members_at(conn, scope)
        found = conn.execute(
            select(
                inv.c.id,
                inv.c.member_id,
                inv.c.currency,
                inv.c.subtotal,
                inv.c.period_start,
                inv.c.period_end,
                inv.c.household,
            ).where(
                inv.c.kind == "renewal",
                inv.c.status == "paid",
                inv.c.period_start.is_not(None),
                inv.c.period_end.is_not(None),
            )
        ).all()
        nets = net_by_member(conn, [int(r.id) for r in found if r.household])
    rows = [
        (member, r.currency, net, r.period_start, r.period_end)
        for r in found
        for member, net in (nets[r.id].items() if r.id in nets else [(r.member_id, r.subtotal)])
        if who is None or member in who
    ]
    earliest = min((int(r[3]) for r in rows), default=None)
    out = []
    for month, _start, end in months_in(scope, now, earliest):
        at = min(end - 1, now)
        totals: dict[str, tuple[int, set[str]]] = {}
        for member, currency, net, start, stop in rows:
            if start <= at < stop:
                amount, members = totals.get(currency, (0, set()))
                members.add(member)
                share = monthly(int(net), int(start), int(stop))
                totals[currency] = (amount + share, members)
        out += [(month, cur, v[0], len(v[1])) for cur, v in sorted(totals.items())]
    return ["month", "currency", "mrr", "members"], out


def members(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """New members and cancellations per month, the members at the month's start, and churn
    (cancellations that took effect in the month over members at its start, in %)."""
    sub = s.subscriptions
    with reading(engine).connect() as conn:
        who = _members_at(conn, scope)
        rows = conn.execute(
            select(sub.c.member_id, sub.c.started_at, sub.c.cancel_at, sub.c.status)
        ).all()
    rows = [r for r in rows if who is None or r.member_id in who]
    earliest = min((int(r.started_at) for r in rows), default=None)
    ended = [r for r in rows if r.cancel_at is not None and r.cancel_at <= now]
    out = []
    for month, start, end in months_in(scope, now, earliest):
        new = sum(1 for r in rows if start <= r.started_at < end)
        cancelled = sum(1 for r in ended if start <= r.cancel_at < end)
        at_start = sum(
            1
            for r in rows
            if r.started_at < start and (r.cancel_at is None or r.cancel_at >= start)
        )
        churn = f"{100 * cancelled / at_start:.1f}" if at_start else ""
        out.append((month, new, cancelled, at_start, churn))
    return ["month", "new", "cancelled", "at_start", "churn_pct"], out


def recovery(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Failed payments and dunning recovery per month of the first failure, currency and
    decline class: invoices that failed, their amount, what was paid on them since, how many
    were paid in full, and the recovery rate (the amount recovered over the amount failed)."""
    at, inv, p = s.payment_attempts, s.invoices, s.payments
    with reading(engine).connect() as conn:
        who = _members_at(conn, scope)
        failures = conn.execute(
            select(at.c.invoice_id, at.c.created_at, at.c.decline_class, at.c.member_id)
            .where(at.c.state == "failed")
            .order_by(at.c.invoice_id, at.c.created_at, at.c.id)
        ).all()
        first: dict[int, tuple[int, str]] = {}
        for f in failures:
            if who is not None and f.member_id not in who:
                continue
            first.setdefault(int(f.invoice_id), (int(f.created_at), f.decline_class or "unknown"))
        ids = [i for i, (t, _) in first.items() if scope.within_value(t)]
        invoices = {
            r.id: r
            for r in conn.execute(
                select(inv.c.id, inv.c.currency, inv.c.total, inv.c.status).where(inv.c.id.in_(ids))
            )
        }
        paid: dict[int, int] = {}
        for r in conn.execute(
            select(p.c.invoice_id, p.c.amount, p.c.at).where(
                p.c.invoice_id.in_(ids), p.c.method.not_in(s.NOT_MONEY_METHODS)
            )
        ):
            if r.at >= first[int(r.invoice_id)][0]:
                paid[int(r.invoice_id)] = paid.get(int(r.invoice_id), 0) + int(r.amount)
    totals: dict[tuple[str, str, str], list[int]] = {}
    for invoice_id in ids:
        when, decline = first[invoice_id]
        row = invoices[invoice_id]
        acc = totals.setdefault((month_of(when), row.currency, decline), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += int(row.total)
        acc[2] += paid.get(invoice_id, 0)
        acc[3] += 1 if row.status == "paid" else 0
    return (
        [
            "month",
            "currency",
            "decline_class",
            "failed",
            "failed_amount",
            "recovered_amount",
            "recovered",
            "recovery_pct",
        ],
        [(*k, *v, f"{100 * v[2] / v[1]:.1f}" if v[1] else "") for k, v in sorted(totals.items())],
    )


def statuses(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Members (not erased) by status now."""
    sub, m = s.subscriptions, s.members
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(sub.c.status, m.c.sites)
            .join(m, m.c.id == sub.c.member_id)
            .where(m.c.erased.is_(False))
        ).all()
    counts: dict[str, int] = {}
    for r in rows:
        if scope.sites is None or set(json.loads(r.sites)) & set(scope.sites):
            counts[r.status] = counts.get(r.status, 0) + 1
    return ["status", "members"], sorted(counts.items())


def heatmap(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Entries per site, weekday and hour (the site's local time) over the period: every cell
    of each site with entries, zeros included."""
    ev = s.gate_events
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(ev.c.site, ev.c.at).where(granted_entry(), scope.within(ev.c.at))
        ).all()
    cells: dict[str, list[int]] = {}
    for r in rows:
        if not scope.has(r.site):
            continue
        local = datetime.fromtimestamp(r.at, scope.zone(r.site))
        cells.setdefault(r.site, [0] * 168)[local.weekday() * 24 + local.hour] += 1
    return (
        ["site", "weekday", "hour", "entries"],
        [
            (site, WEEKDAYS[i // 24], i % 24, n)
            for site, counts in sorted(cells.items())
            for i, n in enumerate(counts)
        ],
    )


def sites(engine: Engine, now: int, scope: Scope = EVERYTHING) -> Report:
    """Each site side by side: members who may enter it, how many are current, entries and
    distinct visitors over the period."""
    sub, m, ev = s.subscriptions, s.members, s.gate_events
    with reading(engine).connect() as conn:
        people = conn.execute(
            select(m.c.sites, sub.c.status)
            .join(sub, sub.c.member_id == m.c.id)
            .where(m.c.erased.is_(False))
        ).all()
        visits = conn.execute(
            select(ev.c.site, func.count(), func.count(ev.c.member_id.distinct()))
            .where(granted_entry(), scope.within(ev.c.at))
            .group_by(ev.c.site)
        ).all()
    table: dict[str, list[int]] = {}
    for r in people:
        for site in json.loads(r.sites):
            acc = table.setdefault(site, [0, 0, 0, 0])
            acc[0] += 1
            acc[1] += 1 if r.status in CURRENT else 0
    for site, entries, visitors in visits:
        acc = table.setdefault(site, [0, 0, 0, 0])
        acc[2], acc[3] = int(entries), int(visitors)
    return (
        ["site", "members", "current", "entries", "visitors"],
        [(site, *v) for site, v in sorted(table.items()) if scope.has(site)],
    )
