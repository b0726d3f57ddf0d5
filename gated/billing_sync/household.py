"""One household invoice: a payer's renewal and the renewals of the dependants that fall due in
the same cycle run are billed on one invoice (the payer's, in the payer's site's series), with
each member's lines (plan, price, tax, period) saying whose they are, and charged once to the
payer's card.

The invoice is the payer's: its dunning (retries, grace, suspension, collections) is the
payer's, and any payment on it (card, desk, the member app) settles it for everyone on it.
Every dependant on an open household invoice has their renewal open (nothing else is billed for
that period) and owes their share of it (their lines with tax, never more than is still open),
overdue from the invoice's due date: so they go into grace and are suspended with it, and are
published ``payer_suspended`` meanwhile whenever the payer is out of household standing. Paid
in full, it moves every member's paid-through to the end of their own line's period; a
dependant's line credited in full settles that member's period alone.

A dependant whose renewal falls due when the payer's does not (joined on another day, or
frozen meanwhile) gets an invoice of their own, charged to the payer's card, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, or_, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.store import fetch, in_list

_SUB, _M, _INV, _LN, _ATT = (
    s.subscriptions,
    s.members,
    s.invoices,
    s.invoice_lines,
    s.payment_attempts,
)
# A dependant's lines on open household invoices not their own, with what is left open on
# each invoice and whether a charge of it is in flight (a SEPA debit).
_OPEN_LINES = (
    select(
        _LN.c.member_id,
        _LN.c.id.label("line_id"),
        _LN.c.amount,
        _INV.c.id,
        _INV.c.due_at,
        (_INV.c.total - _INV.c.amount_paid).label("left"),
        select(_ATT.c.id)
        .where(_ATT.c.invoice_id == _INV.c.id, _ATT.c.state.in_(s.OPEN_ATTEMPT_STATES))
        .exists()
        .label("in_flight"),
    )
    .join(_INV, _INV.c.id == _LN.c.invoice_id)
    .where(
        _LN.c.member_id.is_not(None),
        _LN.c.member_id.in_(in_list()),
        _INV.c.status == "open",
        _INV.c.member_id != _LN.c.member_id,
    )
)
# The payers of some members, the dependants of some payers (by the partial index of payers),
# and which of some members are due for review (``partners``).
_PAYERS = select(_M.c.payer_id).where(_M.c.id.in_(in_list()), _M.c.payer_id.is_not(None))
_DEPENDANTS = select(_M.c.id).where(_M.c.payer_id.is_not(None), _M.c.payer_id.in_(in_list()))
_DUE_TOO = select(_SUB.c.member_id).where(
    _SUB.c.member_id.in_(in_list()), _SUB.c.review_at <= bindparam("now")
)
# Lines credited in full (their credit notes, with tax) on some invoices.
_CREDITED = select(s.credit_notes.c.line_id, s.credit_notes.c.amount).where(
    s.credit_notes.c.invoice_id.in_(in_list()), s.credit_notes.c.line_id.is_not(None)
)
_PERIODS = select(_LN.c.invoice_id, _LN.c.member_id, _LN.c.period_end).where(
    _LN.c.invoice_id.in_(in_list()), _LN.c.member_id.is_not(None), _LN.c.period_end.is_not(None)
)

# Each member's net on some household invoices: their lines without the tax.
_NET = (
    select(_LN.c.invoice_id, _LN.c.member_id, func.sum(_LN.c.amount).label("net"))
    .where(_LN.c.invoice_id.in_(in_list()), _LN.c.member_id.is_not(None), _LN.c.kind != "tax")
    .group_by(_LN.c.invoice_id, _LN.c.member_id)
)


class Share(NamedTuple):
    """A dependant's part of an open household invoice: what they owe of it, since when, and
    whether its charge is in flight."""

    invoice_id: int
    owed: int
    due_at: int
    in_flight: bool


def partners(conn: Connection, due: Sequence[str], now: int) -> list[str]:
    """The members of ``due``'s households (their payers, and their payers' dependants) whose
    review is due at ``now`` too and who are not in ``due``: reviewed in the same batch, a
    dependant's renewal goes on the payer's invoice."""
    if not due:
        return []
    # Statements built once, their lists spelled out by ``fetch``: the cycle asks this of every
    # batch, and a batch without any household (most of them) costs two index lookups a member.
    ids = list(due)
    payers = {r.payer_id for r in fetch(conn, _PAYERS, {"ids": ids})}
    heads = list(payers.union(ids)) if payers else ids
    # By the payer index: the dependants of every payer in sight.
    household = payers.union(r.id for r in fetch(conn, _DEPENDANTS, {"ids": heads}))
    household.difference_update(ids)
    if not household:
        return []
    return sorted(r.member_id for r in fetch(conn, _DUE_TOO, {"ids": list(household), "now": now}))


def open_shares(conn: Connection, dependants: Sequence[str]) -> dict[str, list[Share]]:
    """Each dependant's shares of open household invoices (``Share``)."""
    if not dependants:
        return {}
    gross: dict[tuple[str, int], list[Any]] = {}
    found = fetch(conn, _OPEN_LINES, {"ids": list(dependants)})
    if not found:
        return {}
    # A line credited (a credit note of that line) is no longer owed by its member.
    credited = dict(fetch(conn, _CREDITED, {"ids": list({int(r.id) for r in found})}))
    for r in found:
        key = (r.member_id, int(r.id))
        amount = int(r.amount)
        if r.line_id in credited:
            # The membership line's credit note carries its tax line with it.
            amount -= int(credited[r.line_id])
        if key in gross:
            gross[key][0] += amount
        else:
            gross[key] = [amount, int(r.due_at), int(r.left), bool(r.in_flight)]
    out: dict[str, list[Share]] = {}
    for (member_id, invoice_id), (amount, due_at, left, in_flight) in gross.items():
        if amount > 0:
            out.setdefault(member_id, []).append(
                Share(invoice_id, min(amount, left), due_at, in_flight)
            )
    return out


def with_shares(acct: eng.Account, shares: Sequence[Share]) -> eng.Account:
    """``acct`` (a dependant's) with their shares of open household invoices: the renewal is
    open, the share owed, overdue from the invoice's due date."""
    if not shares:
        return acct
    due = min(sh.due_at for sh in shares)
    since = due if acct.overdue_since is None else min(acct.overdue_since, due)
    return acct._replace(
        owed=acct.owed + sum(sh.owed for sh in shares),
        overdue_since=since,
        open_renewal=True,
        processing=acct.processing or any(sh.in_flight for sh in shares),
    )


def periods_paid(conn: Connection, invoice_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """For each household invoice of ``invoice_ids``: the end of every member's period on it."""
    out: dict[int, dict[str, int]] = {}
    if not invoice_ids:
        return out
    for r in fetch(conn, _PERIODS, {"ids": list(invoice_ids)}):
        ends = out.setdefault(int(r.invoice_id), {})
        ends[r.member_id] = max(ends.get(r.member_id, 0), int(r.period_end))
    return out


def merge_renewals(
    renewals: Sequence[Any], facts: Mapping[str, Any]
) -> tuple[list[Any], dict[str, str]]:
    """The renewal invoices to create when each dependant's renewal in ``renewals`` (each an
    ``invoices.InvoiceSpec``) goes on its payer's, where the payer renews in the same batch in
    the same currency (``facts``: the batch's ``facts.Facts``; both modules import this one, so
    their types are not named here). Returns the invoices, and each dependant merged, with
    their payer."""
    parts: dict[str, list[Any]] = {}
    merged: dict[str, str] = {}
    if not any(facts[sp.member_id].member.payer_id for sp in renewals):
        return list(renewals), merged  # most batches: no dependant renews
    by_member = {sp.member_id: sp for sp in renewals}
    for sp in renewals:
        payer = facts[sp.member_id].member.payer_id
        head = by_member.get(payer) if payer else None
        if payer and head is not None and head.currency == sp.currency:
            parts.setdefault(payer, []).append(sp)
            merged[sp.member_id] = payer
    if not merged:
        return list(renewals), merged

    def named(sp: Any) -> Any:
        who = facts[sp.member_id].member.name
        return sp._replace(lines=[(k, f"{who}: {d}", q, u) for k, d, q, u in sp.lines])

    out = []
    for sp in renewals:
        if sp.member_id in merged:
            continue
        deps = parts.get(sp.member_id)
        if deps:
            sp = named(sp)._replace(household=tuple(named(d) for d in deps))
        out.append(sp)
    return out, merged


def on_invoice(
    facts: Mapping[str, Any],
    merged: Mapping[str, str],
    new: Mapping[str, tuple[tuple[int, str | None, int], Any]],
) -> None:
    """The merged dependants' facts (``merge_renewals``) with their shares of the household
    invoices just created (``new``: each payer's invoice as ``insert_invoices`` gave it, id,
    number and total, and its spec), as the store now has them."""
    for dependant, payer in merged.items():
        (invoice_id, _, _), sp = new[payer]
        part = next(d for d in sp.household if d.member_id == dependant)
        f = facts[dependant]
        f.account = with_shares(f.account, [Share(invoice_id, part.total, sp.due_at, False)])


def settle_line(conn: Connection, invoice_member: str, line_id: int) -> str | None:
    """A dependant's line of a household invoice credited in full: their period on it counts
    as settled (as a renewal settled by a credit note does), so their paid-through moves to its
    end. Returns the member to refresh, or None for any other line."""
    line = conn.execute(
        select(_LN.c.member_id, _LN.c.period_end).where(_LN.c.id == line_id)
    ).first()
    if line is None or line.member_id in (None, invoice_member) or line.period_end is None:
        return None
    conn.execute(
        update(_SUB)
        .where(
            _SUB.c.member_id == line.member_id,
            or_(_SUB.c.paid_through.is_(None), _SUB.c.paid_through < line.period_end),
        )
        .values(paid_through=line.period_end)
    )
    return str(line.member_id)


def net_by_member(conn: Connection, invoice_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """For each household invoice of ``invoice_ids``: each member's net on it (their lines
    without tax), what the reports attribute to that member and their sites."""
    out: dict[int, dict[str, int]] = {}
    if not invoice_ids:
        return out
    for r in fetch(conn, _NET, {"ids": list(invoice_ids)}):
        out.setdefault(int(r.invoice_id), {})[r.member_id] = int(r.net)
    return out


def members_on(conn: Connection, inv: Any) -> list[str]:
    """Everyone whose standing invoice ``inv`` (a row) holds: its member, and on a household
    invoice every member its lines name (each owes a share while it is open)."""
    if not inv.household:
        return [inv.member_id]
    ends = periods_paid(conn, [int(inv.id)]).get(int(inv.id), {})
    return sorted({inv.member_id, *ends})
