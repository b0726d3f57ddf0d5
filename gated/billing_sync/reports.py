"""Read-only reports over the store: each returns (columns, rows) for a table or CSV. The one
query module behind ``gated-billing report …`` and the console's dashboards, so a chart's numbers
are the CLI's for the same period (``Scope``). Months are UTC calendar months; attendance is
counted in each site's time zone."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
)

from gated.billing_sync import schema as s
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.errors import BillingError
from gated.billing_sync.household import net_by_member
from gated.billing_sync.store import reading

Report = tuple[list[str], list[tuple[Any, ...]]]
# What a report reads from: the store (each report in a connection of its own), or a connection
# the caller holds, so a page of several reports reads them in one transaction.
Readable = Engine | Connection
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# Statuses that hold a current membership (the gates let them in).
CURRENT = ("active", "grace", "pending_cancel")
# Today's occupancy curve, in slots of this many minutes.
SLOT_MIN = 15
SLOT_S = SLOT_MIN * 60
DAY = 86_400
# The months a renewal's period spans are counted in these (30.4375 days).
MONTH_S = 2_629_800
# A site counts as having exit readers when an exit was recorded this recently.
EXITS_WITHIN_S = 30 * 86_400


@dataclass(frozen=True)
class Scope:
    """What a report covers: ``[start, end)`` in Unix seconds (None: open), the sites (None:
    all) and each site's time zone (UTC when not named)."""

    start: int | None = None
    end: int | None = None
    sites: tuple[str, ...] | None = None
    zones: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def months(cls, first: str | None, last: str | None, **more: Any) -> Scope:
        """From the first instant of month ``first`` (``YYYY-MM``) to the end of ``last``."""
        return cls(
            _month_start(first) if first else None,
            _next_month(_month_start(last)) if last else None,
            **more,
        )

    def zone(self, site: str) -> ZoneInfo:
        return ZoneInfo(self.zones.get(site, "UTC"))

    def within(self, column: Any) -> ColumnElement[bool]:
        """``column`` (Unix seconds) inside the period."""
        clauses = []
        if self.start is not None:
            clauses.append(column >= self.start)
        if self.end is not None:
            clauses.append(column < self.end)
        return and_(True, *clauses)

    def within_value(self, ts: int) -> bool:
        """A Unix time inside the period."""
        return (self.start is None or ts >= self.start) and (self.end is None or ts < self.end)

    def has(self, site: str) -> bool:
        return self.sites is None or site in self.sites


EVERYTHING = Scope()


def _month_start(text: str) -> int:
    match = _MONTH.match(text)
    if match is None:
        raise BillingError(f"not a month: {text!r} (use YYYY-MM)")
    return int(datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC).timestamp())


def _next_month(ts: int) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(y, m, 1, tzinfo=UTC).timestamp())


# Rollup rows come by the day, many to a day (sites, currencies, methods): each day's month is
# worked out once, not once a row.
@lru_cache(maxsize=4096)
def month_of(ts: int) -> str:
    """``YYYY-MM`` (UTC) of a Unix time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def last_months(now: int, count: int) -> tuple[str, str]:
    """The first and last month of the ``count`` months ending with ``now``'s."""
    d = datetime.fromtimestamp(now, UTC)
    index = d.year * 12 + d.month - 1 - (count - 1)
    return f"{index // 12:04d}-{index % 12 + 1:02d}", d.strftime("%Y-%m")


def months_in(scope: Scope, now: int, earliest: int | None) -> list[tuple[str, int, int]]:
    """Each month of the scope as (``YYYY-MM``, start, end), up to ``now``'s month; an open
    start begins at ``earliest``."""
    first = scope.start if scope.start is not None else earliest
    if first is None:
        return []
    start = _month_start(month_of(first))
    stop = min(scope.end if scope.end is not None else _next_month(now), _next_month(now))
    out = []
    while start < stop:
        end = _next_month(start)
        out.append((month_of(start), start, end))
        start = end
    return out


def _day(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _members_at(conn: Connection, scope: Scope) -> set[str] | None:
    """The members of the scope's sites (None: every member): money follows its member."""
    if scope.sites is None:
        return None
    m = s.members
    wanted = set(scope.sites)
    return {
        r.id for r in conn.execute(select(m.c.id, m.c.sites)) if set(json.loads(r.sites)) & wanted
    }


@contextmanager
def _connected(source: Readable) -> Iterator[Connection]:
    """A connection to read through: the caller's, or one of the store's for this report."""
    if isinstance(source, Connection):
        yield source
        return
    with reading(source).connect() as conn:
        yield conn


def granted_entry() -> ColumnElement[bool]:
    """A granted entry (one the passage sensor saw, where fitted): what attendance counts."""
    ev = s.gate_events
    return and_(ev.c.kind == "entry", ev.c.reason.is_distinct_from("not_passed"))


def revenue(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Money received per month, currency and method (``card``, ``sepa_debit``, ``front_desk``,
    ...; chargebacks and refunds count negative; credit notes and write-offs are not money):
    gross, and apart the net and the tax in it (each payment's share of its invoice's tax,
    rounded per payment). A payment counts at its member's sites; its money at each site is
    that of the members there: a household invoice's payment is split between the members on
    it, by their lines (``0029_household_revenue``), so a site may receive money without a
    payment of its own. Read from the daily rollup ``rollup_payments``."""
    r = s.rollup_payments
    with _connected(engine) as conn:
        rows = conn.execute(
            select(
                r.c.day, r.c.sites, r.c.currency, r.c.method, r.c.gross, r.c.tax, r.c.payments
            ).where(scope.within(r.c.day))
        ).all()
    at_sites = _site_filter(scope)
    totals: dict[tuple[str, str, str], list[int]] = {}
    for row in rows:
        if at_sites(row.sites):
            acc = totals.setdefault((month_of(row.day), row.currency, row.method), [0, 0, 0])
            acc[0] += int(row.gross)
            acc[1] += int(row.tax)
            acc[2] += int(row.payments)
    return (
        ["month", "currency", "method", "gross", "net", "tax", "payments"],
        [(*k, g, g - tax, tax, n) for k, (g, tax, n) in sorted(totals.items()) if n or g or tax],
    )


def records(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """A report's rows as objects for JSON (an empty cell is null)."""
    return [{c: (None if v == "" else v) for c, v in zip(columns, r, strict=True)} for r in rows]


def _tax_share(amount: int, tax: int, total: int) -> int:
    """The tax in ``amount`` paid on an invoice of ``total`` carrying ``tax``, rounded half away
    from zero (a part payment carries its part; a chargeback takes it back)."""
    if total <= 0:
        return 0
    share = (abs(amount) * tax * 2 + total) // (2 * total)
    return share if amount >= 0 else -share


def outstanding(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Open invoices per member: how much, how many, since when."""
    inv = s.invoices
    with _connected(engine) as conn:
        who = _members_at(conn, scope)
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
            if who is None or r[0] in who
        ],
    )


def dunning(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Members in dunning or with money open."""
    sub, inv = s.subscriptions, s.invoices
    owed = (
        select(inv.c.member_id, func.sum(inv.c.total - inv.c.amount_paid).label("owed"))
        .where(inv.c.status == "open")
        .group_by(inv.c.member_id)
        .subquery()
    )
    with _connected(engine) as conn:
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


def attendance(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Entries per day (in the site's time zone) and site (granted entries only; denies are
    not attendance)."""
    ev = s.gate_events
    with _connected(engine) as conn:
        rows = conn.execute(
            select(ev.c.at, ev.c.site, ev.c.member_id).where(granted_entry(), scope.within(ev.c.at))
        ).all()
    days: dict[tuple[str, str], tuple[int, set[str]]] = {}
    for r in rows:
        if not scope.has(r.site):
            continue
        key = (datetime.fromtimestamp(r.at, scope.zone(r.site)).strftime("%Y-%m-%d"), r.site)
        count, members = days.get(key, (0, set()))
        if r.member_id:
            members.add(r.member_id)
        days[key] = (count + 1, members)
    return (
        ["day", "site", "entries", "members"],
        [(k[0], k[1], v[0], len(v[1])) for k, v in sorted(days.items())],
    )


def passes(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Members on plans that do not auto-renew: when each pass ends (soonest first) and its
    status (``expired`` once it has)."""
    sub, p, m = s.subscriptions, s.plans, s.members
    with _connected(engine) as conn:
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


def _site_filter(scope: Scope) -> Callable[[str], bool]:
    """Whether a member with these sites (as stored, JSON) belongs to the scope's sites."""
    if scope.sites is None:
        return lambda _: True
    wanted = set(scope.sites)
    seen: dict[str, bool] = {}

    def at_sites(sites: str) -> bool:
        if sites not in seen:
            seen[sites] = bool(set(json.loads(sites)) & wanted)
        return seen[sites]

    return at_sites


def monthly(subtotal: int, period_start: int, period_end: int) -> int:
    """A renewal's net per month: over the months its period spans (30.4375 days each, rounded
    half up, at least one), rounded toward zero, as the rollup's SQL counts it."""
    months = max(1, (2 * (period_end - period_start) + MONTH_S) // (2 * MONTH_S))
    share = abs(subtotal) // months
    return share if subtotal >= 0 else -share


class _Renewal(NamedTuple):
    currency: str
    sites: str
    subtotal: int
    period_start: int
    period_end: int


def _renewals_today(conn: Connection, now: int, by_site: bool) -> list[_Renewal]:
    """Paid renewals starting or ending between today's UTC midnight and ``now``: the daily
    MRR rollup counts a whole day, this instant needs these apart. A household invoice is one
    renewal per member on it, their net at their sites, as the rollup counts it. Without
    ``by_site`` (a scope of every site) the members' sites are not read (left empty): at
    100,000 members that is two thousand lookups of a member, most of the query's time."""
    inv, m = s.invoices, s.members
    today = now - now % DAY
    sites_column = m.c.sites if by_site else literal_column("''").label("sites")
    q = select(
        inv.c.id,
        inv.c.household,
        inv.c.currency,
        sites_column,
        inv.c.subtotal,
        inv.c.period_start,
        inv.c.period_end,
    )
    if by_site:
        q = q.join(m, m.c.id == inv.c.member_id)
    found = conn.execute(
        q.where(
            inv.c.kind == "renewal",
            inv.c.status == "paid",
            inv.c.period_start.is_not(None),
            inv.c.period_end.is_not(None),
            or_(
                inv.c.period_start.between(today, now),
                inv.c.period_end.between(today, now),
            ),
        )
    ).all()
    nets = net_by_member(conn, [int(r.id) for r in found if r.household])
    sites: dict[str, str] = {}
    if nets and by_site:
        ids = {member for parts in nets.values() for member in parts}
        sites = dict(conn.execute(select(m.c.id, m.c.sites).where(m.c.id.in_(ids))).all())
    out = []
    for r in found:
        parts = nets.get(r.id)
        if parts is None:
            out.append(_Renewal(r.currency, r.sites, r.subtotal, r.period_start, r.period_end))
            continue
        out += [
            _Renewal(
                r.currency, sites[member] if by_site else "", net, r.period_start, r.period_end
            )
            for member, net in parts.items()
        ]
    return out


def mrr(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Monthly recurring revenue per month and currency: the net of every paid renewal whose
    period covers the month's last instant (or now, for this month), spread over its months,
    and how many renewals that is (a member has one at a time). From ``rollup_mrr``, where
    each renewal adds its share on its first day and takes it away on the day it ends; this
    month's figure at ``now`` sets apart the renewals that start or end today."""
    r = s.rollup_mrr
    with _connected(engine) as conn:
        rows = conn.execute(
            select(r.c.day, r.c.sites, r.c.currency, r.c.amount, r.c.renewals).order_by(r.c.day)
        ).all()
        today_rows = _renewals_today(conn, now, scope.sites is not None)
    at_sites = _site_filter(scope)
    rows = [row for row in rows if at_sites(row.sites) and (row.amount or row.renewals)]
    today = now - now % DAY
    earliest = int(rows[0].day) if rows else None
    out = []
    totals: dict[str, list[int]] = {}
    i = 0
    for month, _start, end in months_in(scope, now, earliest):
        at = min(end - 1, now)
        # Every change up to the day of ``at``; today's only up to this instant.
        upto = at - at % DAY if at < today else today - 1
        while i < len(rows) and rows[i].day <= upto:
            acc = totals.setdefault(rows[i].currency, [0, 0])
            acc[0] += int(rows[i].amount)
            acc[1] += int(rows[i].renewals)
            i += 1
        shown = {cur: list(v) for cur, v in totals.items()}
        if at >= today:
            for t in today_rows:
                if not at_sites(t.sites):
                    continue
                share = monthly(int(t.subtotal), int(t.period_start), int(t.period_end))
                acc = shown.setdefault(t.currency, [0, 0])
                if today <= t.period_start <= at:
                    acc[0], acc[1] = acc[0] + share, acc[1] + 1
                if today <= t.period_end <= at:
                    acc[0], acc[1] = acc[0] - share, acc[1] - 1
        out += [(month, cur, v[0], v[1]) for cur, v in sorted(shown.items()) if v[1]]
    return ["month", "currency", "mrr", "members"], out


def deferred(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Deferred revenue: at the end of each month (now, for this month), the net of paid
    invoices for time not yet served. An invoice for a period counts the part of its net still
    ahead, in proportion to the seconds left (rounded down per invoice, and on a household
    invoice per member: each member's lines count at that member's sites); one whose period
    has not begun counts whole. Tax is not revenue and is left out."""
    inv = s.invoices
    with _connected(engine) as conn:
        who = _members_at(conn, scope)
        found = conn.execute(
            select(
                inv.c.id,
                inv.c.member_id,
                inv.c.currency,
                inv.c.subtotal,
                inv.c.period_start,
                inv.c.period_end,
                inv.c.paid_at,
                inv.c.household,
            ).where(
                inv.c.status == "paid",
                inv.c.paid_at.is_not(None),
                inv.c.period_start.is_not(None),
                inv.c.period_end > inv.c.period_start,
            )
        ).all()
        nets = net_by_member(conn, [int(r.id) for r in found if r.household])
    # (invoice, member, currency, net, period start, period end, paid at): a household
    # invoice is one part per member on it.
    rows = [
        (r.id, member, r.currency, net, r.period_start, r.period_end, r.paid_at)
        for r in found
        for member, net in (nets[r.id].items() if r.id in nets else [(r.member_id, r.subtotal)])
        if who is None or member in who
    ]
    earliest = min((int(r[6]) for r in rows), default=None)
    out = []
    for month, _start, end in months_in(scope, now, earliest):
        at = min(end, now)
        amounts: dict[str, int] = {}
        invoices: dict[str, set[int]] = {}
        for invoice_id, _, currency, net, start, stop, paid_at in rows:
            if paid_at > at or stop <= at:
                continue
            length = int(stop) - int(start)
            ahead = int(stop) - max(at, int(start))
            amounts[currency] = amounts.get(currency, 0) + int(net) * ahead // length
            invoices.setdefault(currency, set()).add(int(invoice_id))
        day = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")
        out += [(month, day, cur, v, len(invoices[cur])) for cur, v in sorted(amounts.items())]
    return ["month", "at", "currency", "deferred", "invoices"], out


def members(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """New members and cancellations per month, the members at the month's start, and churn
    (cancellations that took effect in the month over members at its start, in %). From
    ``rollup_subscriptions`` (started and ended per day); today's cancellations count up to
    ``now``."""
    r, sub, m = s.rollup_subscriptions, s.subscriptions, s.members
    today = now - now % DAY
    with _connected(engine) as conn:
        rows = conn.execute(
            select(r.c.day, r.c.sites, r.c.started, r.c.ended).order_by(r.c.day)
        ).all()
        ended_today = conn.execute(
            select(m.c.sites, func.count())
            .select_from(sub)
            .join(m, m.c.id == sub.c.member_id)
            .where(sub.c.cancel_at.between(today, now))
            .group_by(m.c.sites)
        ).all()
    at_sites = _site_filter(scope)
    by_day: dict[int, list[int]] = {}
    for row in rows:
        if at_sites(row.sites):
            acc = by_day.setdefault(int(row.day), [0, 0])
            acc[0] += int(row.started)
            acc[1] += int(row.ended)
    days = sorted(by_day)
    # Running totals: started[k] and ended[k] count the days before days[k].
    started = [0, *accumulate(by_day[d][0] for d in days)]
    ended = [0, *accumulate(by_day[d][1] for d in days)]
    earliest = next((d for d in days if by_day[d][0]), None)
    cancelled_today = sum(int(n) for sites, n in ended_today if at_sites(sites))
    out = []
    for month, start, end in months_in(scope, now, earliest):
        first, stop = bisect_left(days, start), bisect_left(days, end)
        # Cancellations booked for a later day of this month have not happened yet; today's
        # count up to now.
        past = min(stop, bisect_left(days, today))
        new = started[stop] - started[first]
        cancelled = ended[past] - ended[first]
        if start <= today < end:
            cancelled += cancelled_today
        at_start = started[first] - ended[first]
        churn = f"{100 * cancelled / at_start:.1f}" if at_start else ""
        out.append((month, new, cancelled, at_start, churn))
    return ["month", "new", "cancelled", "at_start", "churn_pct"], out


def recovery(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Failed payments and dunning recovery per month of the first failure, currency and
    decline class: invoices that failed, their amount, what was paid on them since, how many
    were paid in full, and the recovery rate (the amount recovered over the amount failed).
    From ``rollup_recovery``, by the day of each invoice's first failed attempt."""
    r = s.rollup_recovery
    with _connected(engine) as conn:
        rows = conn.execute(select(r).where(scope.within(r.c.day))).all()
    at_sites = _site_filter(scope)
    totals: dict[tuple[str, str, str], list[int]] = {}
    for row in rows:
        if at_sites(row.sites):
            key = (month_of(row.day), row.currency, row.decline_class)
            acc = totals.setdefault(key, [0, 0, 0, 0])
            acc[0] += int(row.failed)
            acc[1] += int(row.failed_amount)
            acc[2] += int(row.recovered_amount)
            acc[3] += int(row.recovered)
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
        [
            (*k, *v, f"{100 * v[2] / v[1]:.1f}" if v[1] else "")
            for k, v in sorted(totals.items())
            if v[0]
        ],
    )


def _statuses(engine: Readable, scope: Scope) -> list[tuple[str, str, int]]:
    """(status, sites, members) now, from ``rollup_statuses``, for the scope's sites."""
    r = s.rollup_statuses
    with _connected(engine) as conn:
        rows = conn.execute(select(r.c.status, r.c.sites, r.c.members)).all()
    at_sites = _site_filter(scope)
    return [(row.status, row.sites, int(row.members)) for row in rows if at_sites(row.sites)]


def statuses(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Members (not erased) by status now."""
    counts: dict[str, int] = {}
    for status, _, n in _statuses(engine, scope):
        counts[status] = counts.get(status, 0) + n
    return ["status", "members"], sorted((k, v) for k, v in counts.items() if v)


def utc_offsets(zone: ZoneInfo, start: int, end: int) -> list[tuple[int, int, int]]:
    """``[start, end)`` (whole 15-minute slots) cut where ``zone``'s UTC offset changes: (from,
    to, offset in seconds). Offsets change on a quarter hour, so each part is whole slots."""

    def offset(ts: int) -> int:
        delta = datetime.fromtimestamp(ts, UTC).astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    parts = []
    begin, current, t = start, offset(start), start
    while t < end:
        step = min(DAY, end - t)
        if offset(t + step) == current:
            t += step
            continue
        lo, hi = t, t + step  # the first slot with another offset is in (lo, hi]
        while hi - lo > SLOT_S:
            mid = lo + max(1, (hi - lo) // SLOT_S // 2) * SLOT_S
            lo, hi = (mid, hi) if offset(mid) == current else (lo, mid)
        if hi >= end:
            break
        parts.append((begin, hi, current))
        begin, current, t = hi, offset(hi), hi
    parts.append((begin, end, current))
    return parts


def _sites_with_entries(conn: Connection) -> list[str]:
    """The sites ``rollup_entries`` holds, each found from the one before it in the primary key
    (a loose index scan: one probe a site, not a read of every slot)."""
    r = s.rollup_entries
    walk = select(func.min(r.c.site).label("site")).cte("sites", recursive=True)
    walk = walk.union_all(
        select(select(func.min(r.c.site)).where(r.c.site > walk.c.site).scalar_subquery()).where(
            walk.c.site.is_not(None)
        )
    )
    return [site for (site,) in conn.execute(select(walk.c.site).where(walk.c.site.is_not(None)))]


def heatmap(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Entries per site, weekday and hour (the site's local time) over the period: every cell
    of each site with entries, zeros included. From ``rollup_entries`` (15-minute UTC slots),
    folded into local weekday and hour in SQL, one query per stretch of constant UTC offset."""
    r = s.rollup_entries
    cells: dict[str, list[int]] = {}
    with _connected(engine) as conn:
        for site in _sites_with_entries(conn):
            if not scope.has(site):
                continue
            # The site's first and last slot in the period: two probes of the primary key
            # (site, slot), where one MIN and MAX read every slot of the period.
            inside = and_(r.c.site == site, scope.within(r.c.slot))
            first, last = conn.execute(
                select(
                    select(func.min(r.c.slot)).where(inside).scalar_subquery(),
                    select(func.max(r.c.slot)).where(inside).scalar_subquery(),
                )
            ).one()
            if first is None:
                continue
            counts = cells.setdefault(site, [0] * 168)
            for lo, hi, offset in utc_offsets(scope.zone(site), int(first), int(last) + SLOT_S):
                # The hour of the local week that began on a Thursday (1970-01-01 was one), in
                # integer arithmetic, the same in SQLite and PostgreSQL; constants as text, so
                # the grouped expression is the selected one.
                hour: ColumnElement[Any] = literal_column(f"(slot + {offset}) % {7 * DAY} / 3600")
                for index, n in conn.execute(
                    select(hour, func.sum(r.c.entries))
                    .where(r.c.site == site, r.c.slot >= lo, r.c.slot < hi)
                    .group_by(hour)
                ):
                    # Monday's first hour is the week's 72nd from Thursday's.
                    counts[(int(index) + 72) % 168] += int(n)
    return (
        ["site", "weekday", "hour", "entries"],
        [
            (site, WEEKDAYS[i // 24], i % 24, n)
            for site, counts in sorted(cells.items())
            if any(counts)
            for i, n in enumerate(counts)
        ],
    )


def _month_mask(scope: Scope) -> tuple[dict[int, int], int, int] | None:
    """For a scope of whole UTC months: each year's bits of ``rollup_visits.months`` inside it,
    and the first and last year (None: open ends, or not whole months)."""
    if scope.start is None or scope.end is None:
        return None
    first, last = datetime.fromtimestamp(scope.start, UTC), datetime.fromtimestamp(scope.end, UTC)
    if _month_start(month_of(scope.start)) != scope.start:
        return None
    if _month_start(month_of(scope.end)) != scope.end:
        return None
    masks: dict[int, int] = {}
    y, mo = first.year, first.month
    while (y, mo) < (last.year, last.month):
        masks[y] = masks.get(y, 0) | 1 << (mo - 1)
        y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return masks, first.year, last.year


def _visitors(conn: Connection, scope: Scope) -> list[tuple[str, int]]:
    """Distinct members with a granted entry per site over the scope: from ``rollup_visits``
    for whole months or no bounds, else from the events themselves."""
    v, ev = s.rollup_visits, s.gate_events
    if scope.start is None and scope.end is None:
        q = select(v.c.site, func.count(v.c.member_id.distinct())).group_by(v.c.site)
        return [(site, int(n)) for site, n in conn.execute(q)]
    masked = _month_mask(scope)
    if masked is None:
        q = (
            select(ev.c.site, func.count(ev.c.member_id.distinct()))
            .where(granted_entry(), scope.within(ev.c.at))
            .group_by(ev.c.site)
        )
        return [(site, int(n)) for site, n in conn.execute(q)]
    masks, first, last = masked
    bits = case(masks, value=v.c.year, else_=0)
    q = (
        select(v.c.site, func.count(v.c.member_id.distinct()))
        .where(v.c.year.between(first, last), v.c.months.op("&")(bits) != 0)
        .group_by(v.c.site)
    )
    return [(site, int(n)) for site, n in conn.execute(q)]


def sites(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Each site side by side: members who may enter it, how many are current, entries and
    distinct visitors over the period (from the rollups of statuses, entries and visits)."""
    r = s.rollup_entries
    table: dict[str, list[int]] = {}
    for status, member_sites, n in _statuses(engine, EVERYTHING):
        for site in json.loads(member_sites):
            acc = table.setdefault(site, [0, 0, 0, 0])
            acc[0] += n
            acc[1] += n if status in CURRENT else 0
    with _connected(engine) as conn:
        entries = conn.execute(
            select(r.c.site, func.sum(r.c.entries)).where(scope.within(r.c.slot)).group_by(r.c.site)
        ).all()
        visitors = _visitors(conn, scope)
    for site, n in entries:
        table.setdefault(site, [0, 0, 0, 0])[2] = int(n)
    for site, n in visitors:
        table.setdefault(site, [0, 0, 0, 0])[3] = n
    return (
        ["site", "members", "current", "entries", "visitors"],
        [(site, *v) for site, v in sorted(table.items()) if scope.has(site) and any(v)],
    )


def occupancy(engine: Readable, now: int, scope: Scope = EVERYTHING) -> Report:
    """Today at each site (from local midnight in its time zone, so it resets nightly), in
    slots of SLOT_MIN minutes: entries, exits and people inside at the slot's end. ``inside``
    is empty where no exit was recorded in the last 30 days (no exit readers: count entries)."""
    ev = s.gate_events
    midnights = {}
    for site in scope.zones if scope.sites is None else scope.sites:
        local = datetime.fromtimestamp(now, scope.zone(site))
        midnights[site] = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    if not midnights:
        return ["site", "slot", "entries", "exits", "inside"], []
    with _connected(engine) as conn:
        rows = conn.execute(
            select(ev.c.site, ev.c.at, ev.c.kind)
            .where(
                ev.c.site.in_(sorted(midnights)),
                ev.c.at >= min(midnights.values()),
                ev.c.at <= now,
                granted_entry() | (ev.c.kind == "exit"),
            )
            .order_by(ev.c.at)
        ).all()
        with_exits = {
            r.site
            for r in conn.execute(
                select(ev.c.site)
                .where(ev.c.kind == "exit", ev.c.at >= now - EXITS_WITHIN_S)
                .distinct()
            )
        }
    out: list[tuple[Any, ...]] = []
    for site, midnight in sorted(midnights.items()):
        zone = scope.zone(site)
        slots = (now - midnight) // (SLOT_MIN * 60) + 1
        entries, exits = [0] * slots, [0] * slots
        for r in rows:
            if r.site == site and r.at >= midnight:
                (entries if r.kind == "entry" else exits)[(r.at - midnight) // (SLOT_MIN * 60)] += 1
        inside = 0
        for i in range(slots):
            # Never below nobody: an exit without its entry (a tailgater, a reader down).
            inside = max(0, inside + entries[i] - exits[i])
            label = (
                datetime.fromtimestamp(midnight, zone) + timedelta(minutes=SLOT_MIN * i)
            ).strftime("%H:%M")
            out.append((site, label, entries[i], exits[i], inside if site in with_exits else ""))
    return ["site", "slot", "entries", "exits", "inside"], out


REPORTS: dict[str, Callable[[Readable, int, Scope], Report]] = {
    "revenue": revenue,
    "outstanding": outstanding,
    "dunning": dunning,
    "attendance": attendance,
    "passes": passes,
    "mrr": mrr,
    "deferred": deferred,
    "members": members,
    "recovery": recovery,
    "statuses": statuses,
    "heatmap": heatmap,
    "sites": sites,
    "occupancy": occupancy,
}


# Invoices are read this many at a time (newest first, by id), so listing every invoice of a
# large gym streams in bounded memory.
INVOICE_PAGE = 1000


def count_invoices(engine: Engine, member_id: str | None) -> int:
    """How many invoices ``invoices`` would list without a limit."""
    inv = s.invoices
    q = select(func.count()).select_from(inv)
    if member_id:
        q = q.where(inv.c.member_id == member_id)
    with reading(engine).connect() as conn:
        return int(conn.execute(q).scalar_one())


def invoices(
    engine: Engine, member_id: str | None, with_lines: bool, limit: int | None = None
) -> Iterator[tuple[Any, ...]]:
    """Invoice rows (newest first), each followed by its lines when asked: every invoice, or
    the newest ``limit``. Read a page at a time, in one consistent snapshot."""
    inv, ln = s.invoices, s.invoice_lines
    left = limit
    with reading(engine).connect() as conn, conn.begin():
        before: int | None = None
        while left is None or left > 0:
            q = select(inv).order_by(inv.c.id.desc())
            if member_id:
                q = q.where(inv.c.member_id == member_id)
            if before is not None:
                q = q.where(inv.c.id < before)
            size = INVOICE_PAGE if left is None else min(left, INVOICE_PAGE)
            rows = conn.execute(q.limit(size)).all()
            if not rows:
                return
            before = rows[-1].id
            if left is not None:
                left -= len(rows)
            lines: dict[int, list[Any]] = {}
            if with_lines:
                for line in conn.execute(
                    select(ln).where(ln.c.invoice_id.in_([r.id for r in rows])).order_by(ln.c.id)
                ):
                    lines.setdefault(line.invoice_id, []).append(line)
            for r in rows:
                head = (
                    r.id,
                    r.number or "",
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
                    yield head
                    continue
                for i, line in enumerate(lines.get(r.id, [])):
                    blank = ("",) * len(head)
                    yield (head if i == 0 else blank) + (
                        line.kind,
                        line.description,
                        line.quantity,
                        line.unit_amount,
                        line.amount,
                    )
            if len(rows) < size:
                return


def scope_for(
    config: BillingConfig,
    first: str | None = None,
    last: str | None = None,
    sites: Sequence[str] | None = None,
) -> Scope:
    """The scope of a report for ``billing.toml``'s sites (each in its time zone)."""
    zones = {site: config.site(site).timezone for site in config.sites}
    return Scope.months(first, last, sites=tuple(sites) if sites else None, zones=zones)
