"""A batch of members' facts: their rows, subscriptions, plans, open invoices, attempts in
flight, disputes and freezes, read from the store in a handful of queries per batch (never per
member) and derived into the engine's ``Account``, the input of every status and dunning rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, bindparam, select

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import NotFound
from gated.billing_sync.household import Share, open_shares, with_shares
from gated.billing_sync.store import fetch, in_list, many

_NO_SHARES: Mapping[str, list[Share]] = MappingProxyType({})
# A member's payer, joined to the member: made once, as an alias builds its columns anew.
_PAYER = s.members.alias("payer")


# The statements that read a batch, built once: building one and working out its cache key
# cost ~0.1-0.2 ms each, about as much as running some of them on 500 members.
_M, _SUB, _INV, _ATT = s.members, s.subscriptions, s.invoices, s.payment_attempts
# One row per member with its subscription (the two tables share no column name, so the row
# serves as both) and what a payer contributes: e-mail and the card to charge.
_LOAD_MEMBERS = (
    select(
        _M,
        _SUB,
        _PAYER.c.email.label("payer_email"),
        _PAYER.c.name.label("payer_name"),
        _PAYER.c.customer_ref.label("payer_customer"),
        _PAYER.c.payment_method.label("payer_method"),
    )
    .join(_SUB, _SUB.c.member_id == _M.c.id, isouter=True)
    .join(_PAYER, _PAYER.c.id == _M.c.payer_id, isouter=True)
    .where(_M.c.id.in_(in_list()))
)
_ALL_PLANS = select(s.plans)
_THEIR_PLANS = select(s.plans).where(s.plans.c.id.in_(in_list()))
_OPEN_INVOICES = (
    select(
        _INV, select(_ATT.c.id).where(_ATT.c.invoice_id == _INV.c.id).exists().label("attempted")
    )
    .where(_INV.c.member_id.in_(in_list()), _INV.c.status == "open")
    .order_by(_INV.c.due_at)
)
_IN_FLIGHT = select(_ATT.c.member_id).where(
    _ATT.c.member_id.in_(in_list()), _ATT.c.state.in_(s.OPEN_ATTEMPT_STATES)
)
_DISPUTED = select(s.disputes.c.member_id).where(
    s.disputes.c.member_id.in_(in_list()), s.disputes.c.status == "open"
)
_FREEZES = (
    select(s.freezes.c.member_id, s.freezes.c.starts_at, s.freezes.c.ends_at)
    .where(s.freezes.c.member_id.in_(in_list()), s.freezes.c.ends_at > bindparam("now"))
    .order_by(s.freezes.c.starts_at.desc())
)


@dataclass
class Facts:
    """One member's row, subscription, plan and derived engine account."""

    member: Any
    sub: Any
    plan: Any
    account: eng.Account
    open_invoices: list[Any]
    email_to: str | None = None
    # (customer, payment method) to charge: a dependant is charged to the payer.
    method: tuple[str | None, str | None] = (None, None)
    # Who is told about the card and the money: the payer, for a dependant (their e-mail
    # address and name), else the member.
    bill_to: str | None = None
    bill_name: str | None = None


class Rows(NamedTuple):
    """What ``read_rows`` reads for a batch of members, before their engine accounts are derived."""

    # Member id -> the member's row joined with their subscription and their payer's contact.
    members: dict[str, Any]
    plans: dict[str, Any]
    open_invoices: dict[str, list[Any]]
    in_flight: set[str]
    disputed: set[str]
    freezes: dict[str, tuple[int, int]]
    # When they were read: an invoice due later (a payment plan's instalment) is not charged yet.
    now: int = 0
    # Dependants' shares of their payers' open household invoices (``household.py``).
    shares: Mapping[str, list[Share]] = _NO_SHARES


def load_one(ctx: Context, member_id: str) -> Facts:
    """One member's facts, read now; NotFound for an unknown member."""
    with ctx.reader.connect() as conn:
        facts = load_facts(conn, [member_id], ctx.clock())
    if member_id not in facts:
        raise NotFound(f"no member {member_id!r}")
    return facts[member_id]


def load_facts(conn: Connection, ids: Sequence[str], now: int) -> dict[str, Facts]:
    """Bulk-load members, subscriptions, plans, open invoices, attempts, disputes and freezes
    into engine Accounts: a handful of queries per batch, not per member."""
    # Facts keep only each member's own plan: the other plans are not read (a member's page
    # asks for one member, and a store may hold many plans).
    return derive_facts(read_rows(conn, ids, now, all_plans=False))


def read_rows(conn: Connection, ids: Sequence[str], now: int, *, all_plans: bool = True) -> Rows:
    """The rows of a batch of members (``Rows``), read in a handful of queries. ``plans`` holds
    every plan (a renewal may move a member to their next plan), or with ``all_plans=False``
    only the members' current plans."""
    if not ids:
        return Rows({}, {}, {}, set(), set(), {})
    batch = {"ids": ids}
    members = {r.id: r for r in fetch(conn, _LOAD_MEMBERS, batch)}
    if all_plans:
        plans = {r.id: r for r in fetch(conn, _ALL_PLANS)}
    else:
        wanted = sorted({r.plan_id for r in members.values() if r.plan_id is not None})
        plans = {r.id: r for r in fetch(conn, _THEIR_PLANS, {"ids": wanted})} if wanted else {}
    open_inv, in_flight = invoices_and_attempts(conn, ids)
    disputed = {r.member_id for r in fetch(conn, _DISPUTED, batch)}
    freezes: dict[str, tuple[int, int]] = {}
    for r in fetch(conn, _FREEZES, {"ids": ids, "now": now}):
        freezes[r.member_id] = (r.starts_at, r.ends_at)
    shares = household_shares(conn, members)
    return Rows(members, plans, open_inv, in_flight, disputed, freezes, now, shares)


def household_shares(conn: Connection, members: Mapping[str, Any]) -> Mapping[str, list[Share]]:
    """The shares of open household invoices of the dependants among ``members`` (rows)."""
    deps = [m for m, row in members.items() if row.payer_id is not None]
    return open_shares(conn, deps) if deps else _NO_SHARES


def invoices_and_attempts(
    conn: Connection, ids: Sequence[str]
) -> tuple[dict[str, list[Any]], set[str]]:
    """Open invoices by member, and the members with an attempt not yet final."""
    batch = {"ids": ids}
    open_inv: dict[str, list[Any]] = {}
    for r in fetch(conn, _OPEN_INVOICES, batch):
        open_inv.setdefault(r.member_id, []).append(r)
    return open_inv, {r.member_id for r in fetch(conn, _IN_FLIGHT, batch)}


def reread_rows(conn: Connection, rows: Rows, ids: Sequence[str], now: int) -> Rows:
    """``rows`` (read earlier in this batch, and kept) as they are now for ``ids``, with
    invoices and attempts read again. Only valid while nobody else has written since."""
    wanted = set(ids)
    members = {m: rows.members[m] for m in ids}
    open_inv, in_flight = invoices_and_attempts(conn, ids)
    freezes = {m: w for m, w in rows.freezes.items() if m in wanted and w[1] > now}
    shares = household_shares(conn, members)
    return Rows(
        members, rows.plans, open_inv, in_flight, rows.disputed & wanted, freezes, now, shares
    )


def derive_facts(rows: Rows) -> dict[str, Facts]:
    """Facts with the engine's Accounts, from what ``read_rows`` read."""
    out: dict[str, Facts] = {}
    plans, open_inv, in_flight = rows.plans, rows.open_invoices, rows.in_flight
    disputed, freezes, now = rows.disputed, rows.freezes, rows.now
    no_invoices: list[Any] = []
    for member_id, row in rows.members.items():
        invs = open_inv.get(member_id, no_invoices)
        if invs:
            owed = sum(int(i.total - i.amount_paid) for i in invs)
            overdue_since: int | None = min(int(i.due_at) for i in invs)
            open_renewal = any(i.kind == "renewal" for i in invs)
            uncharged = any(not i.attempted and i.due_at <= now for i in invs)
        else:  # most members of a batch
            owed, overdue_since, open_renewal, uncharged = 0, None, False, False
        if row.member_id is None:
            sub_row = plan_row = None
            acct = eng.Account(
                owed=owed,
                overdue_since=overdue_since,
                freeze=freezes.get(member_id),
                disputed=member_id in disputed,
                processing=member_id in in_flight,
                open_renewal=open_renewal,
                uncharged=uncharged,
                activated=False,
            )
        else:
            sub_row = row
            plan_row = plans.get(row.plan_id)
            paid_through = row.paid_through
            acct = eng.Account(
                paid_through=paid_through,
                owed=owed,
                overdue_since=overdue_since,
                first_failure_at=row.first_failure_at,
                next_retry_at=row.next_retry_at,
                retries_done=int(row.retries_done),
                needs_new_card=bool(row.needs_new_card),
                freeze=freezes.get(member_id),
                cancel_at=row.cancel_at,
                disputed=member_id in disputed,
                processing=member_id in in_flight,
                open_renewal=open_renewal,
                uncharged=uncharged,
                previous=cast(eng.BillingStatus, row.status),
                activated=paid_through is not None and paid_through > row.started_at,
                renews=plan_row is None or bool(plan_row.auto_renew),
            )
        if member_id in rows.shares:
            acct = with_shares(acct, rows.shares[member_id])
        method = charge_method(
            row.customer_ref, row.payment_method, row.payer_customer, row.payer_method
        )
        email_to = row.email or row.payer_email
        if row.payer_id:
            bill_to, bill_name = row.payer_email, row.payer_name
        else:
            bill_to, bill_name = row.email, row.name
        out[member_id] = Facts(
            row, sub_row, plan_row, acct, invs, email_to, method, bill_to, bill_name
        )
    return out


def hold_dependants(conn: Connection, facts: dict[str, Facts], now: int, rules: eng.Rules) -> None:
    """Mark the dependants in ``facts`` whose payer is not in household standing at ``now``
    (``payer_ok`` false): nothing is charged for them while they are locked out. The payer's
    status is worked out at ``now``, not read as stored, so a payer whose contract ends at this
    very instant is already out when their dependants' renewals fall due with it."""
    payer_ids = {f.member.payer_id for f in facts.values() if f.member.payer_id}
    if not payer_ids:
        return
    payers = {p: facts[p] for p in payer_ids if p in facts}
    missing = [p for p in payer_ids if p not in facts]
    if missing:
        payers.update(load_facts(conn, missing, now))
    standing = {
        p: "cancelled" if pf.member.erased else eng.status_at(pf.account, now, rules)
        for p, pf in payers.items()
        if pf.sub is not None
    }
    for f in facts.values():
        payer = f.member.payer_id
        if payer and standing.get(payer) not in eng.HOUSEHOLD_STANDING:
            f.account = f.account._replace(payer_ok=False)


def charge_methods(
    conn: Connection, member_ids: Iterable[str]
) -> dict[str, tuple[str | None, str | None]]:
    """(customer, payment method) to charge per member: a dependant is charged to the payer."""
    m, payer = s.members, _PAYER
    rows = conn.execute(
        select(
            m.c.id,
            m.c.customer_ref,
            m.c.payment_method,
            payer.c.customer_ref.label("pc"),
            payer.c.payment_method.label("ppm"),
        )
        .join(payer, payer.c.id == m.c.payer_id, isouter=True)
        .where(m.c.id.in_(many(list(member_ids))))
    ).all()
    return {r.id: charge_method(r.customer_ref, r.payment_method, r.pc, r.ppm) for r in rows}


def dependants(conn: Connection, payer_ids: Sequence[str]) -> list[str]:
    """The members (not erased) whose payer is one of ``payer_ids``."""
    return list(
        conn.execute(
            select(s.members.c.id).where(
                # Spelled out so that SQLite uses the partial index of payers.
                s.members.c.payer_id.is_not(None),
                s.members.c.payer_id.in_(many(payer_ids)),
                s.members.c.erased.is_(False),
            )
        ).scalars()
    )


def extended(rows: Rows, renewed: dict[str, int]) -> Rows:
    """``rows`` with each renewal paid in full moving paid-through forward to its end, as
    ``invoices.apply_payments`` would in the store."""
    i = -1
    for member_id, end in renewed.items():
        row = rows.members.get(member_id)
        if row is not None and (row.paid_through is None or row.paid_through < end):
            # row._replace() goes through all 27 fields by name (2.0 us); slices take 0.65 us.
            if i < 0:
                i = row._fields.index("paid_through")
            rows.members[member_id] = row._make((*row[:i], end, *row[i + 1 :]))
    return rows


def charge_method(
    customer: str | None, method: str | None, payer_customer: str | None, payer_method: str | None
) -> tuple[str | None, str | None]:
    """(customer, payment method) to charge: a dependant's payer's, when the member has a payer
    with either on file, else the member's own."""
    if payer_method or payer_customer:
        return payer_customer, payer_method
    return customer, method
