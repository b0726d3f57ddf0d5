"""Selling on the next invoice: a product sold at the desk to a member whose membership renews
goes, instead of onto an invoice of its own, as a line (with its own tax rate) onto the
member's next renewal invoice, which the cycle charges as usual.

The rule:
- Only a member whose plan renews, ``active`` or ``frozen``, with no cancellation booked, and
  only a product in the plan's currency: anyone else has no renewal to wait for (a member in
  dunning has one only once the open one is paid; a pass is paid at once in any case). The
  stock is taken at the sale, as for any sale.
- A line waits in ``pending_lines`` (no money is owed yet). The renewal invoice takes every
  waiting line of its member in the transaction that issues it (``create_renewals``, the
  cycle's one call), with one tax line per rate, and each becomes a row of ``sales`` on that
  invoice (method ``next_invoice``).
- Cancelling the membership, or erasing the member, bills what waits at once, on an invoice of
  its own (kind ``sale``), in that transaction; the member's next review charges it. So a line
  never waits for a renewal that will not come.
- A line waits at most ``next_invoice_max_days`` (billing.toml, default 35: more than a
  monthly period, so a monthly renewal always comes first) after its sale: whatever holds the
  renewal back longer (a freeze, a dispute, a payer not in good standing, an earlier renewal
  unpaid, a payment plan, a yearly plan), the cycle then bills what waits on an invoice of its
  own, as a cancellation does, and reviews the member, which charges it (``bill_overdue``).
  ``bill_by`` is that day, shown with the line wherever it is listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError
from gated.billing_sync.facts import load_facts
from gated.billing_sync.invoices import InvoiceSpec, create_invoices, insert_invoices
from gated.billing_sync.publishing import refresh
from gated.billing_sync.store import bulk, fetch, in_list

METHOD = "next_invoice"
DAY = 86_400
# Statuses whose membership renews: a line sold now is billed at the next renewal.
RENEWING = ("active", "frozen")

_P = s.pending_lines
# Read for every batch of the cycle: built once, its ids bound as one list (see facts.py).
_WAITING = (
    select(_P).where(_P.c.member_id.in_(in_list()), _P.c.invoice_id.is_(None)).order_by(_P.c.id)
)


def check(conn: Connection, member_id: str, product: Row[Any], now: int) -> None:
    """Refuse a sale on the next invoice the member has no renewal for (see the rule)."""
    facts = load_facts(conn, [member_id], now).get(member_id)
    if facts is None or facts.member.erased:
        raise BillingError(f"no member {member_id!r}")
    sub, plan = facts.sub, facts.plan
    if sub is None or plan is None or not plan.auto_renew:
        raise BillingError(
            f"member {member_id} has no membership that renews: take payment now with --method"
        )
    if sub.status not in RENEWING or sub.cancel_at is not None:
        raise BillingError(
            f"member {member_id} is {sub.status}"
            f"{', with a cancellation booked' if sub.cancel_at is not None else ''}:"
            " no next invoice to add it to; take payment now with --method"
        )
    if product.currency != plan.currency:
        raise BillingError(
            f"{product.name} is sold in {product.currency}; member {member_id} is billed in"
            f" {plan.currency}"
        )


def add(
    conn: Connection, member_id: str, product: Row[Any], quantity: int, operator: str, now: int
) -> int:
    """Put ``quantity`` of ``product`` on the member's next invoice; returns its line's id."""
    row = conn.execute(
        insert(_P)
        .values(
            member_id=member_id,
            product_id=product.id,
            kind=product.kind,
            description=product.name,
            quantity=quantity,
            unit_amount=int(product.price),
            tax_rate_bp=int(product.tax_rate_bp),
            currency=product.currency,
            operator=operator[:64],
            created_at=now,
        )
        .returning(_P.c.id)
    ).one()
    return int(row[0])


def waiting(conn: Connection, member_ids: list[str]) -> dict[str, list[Any]]:
    """The lines waiting for each of these members' next invoice, oldest first."""
    if not member_ids:
        return {}
    out: dict[str, list[Any]] = {}
    for r in fetch(conn, _WAITING, {"ids": member_ids}):
        out.setdefault(r.member_id, []).append(r)
    return out


def _taxed(rows: list[Any]) -> tuple[tuple[str, str, int, int, int], ...]:
    return tuple(
        (r.kind, r.description, int(r.quantity), int(r.unit_amount), int(r.tax_rate_bp))
        for r in rows
    )


def bill_by(sold_at: int, max_days: int) -> int:
    """The day a line sold at ``sold_at`` is billed on its own if no renewal took it."""
    return sold_at + max_days * DAY


def bill_overdue(ctx: Context, now: int) -> list[str]:
    """Bill, each on an invoice of its own due now, the members' lines that have waited
    ``next_invoice_max_days`` for a renewal, and have those members reviewed (which charges
    it). Returns the members billed. Reads one indexed range when none is overdue."""
    since = now - ctx.config.next_invoice_max_days * DAY
    overdue = select(_P.c.member_id).where(_P.c.invoice_id.is_(None), _P.c.created_at <= since)
    with ctx.reader.connect() as conn:
        if conn.execute(overdue.limit(1)).first() is None:
            return []
    # Run by the cycle before its batches: no renewal of this cycle is issued meanwhile.
    with ctx.engine.begin() as conn:
        ids = sorted(set(conn.execute(overdue).scalars()))
        for member_id in ids:
            bill_alone(conn, member_id, now)
        if ids:
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id.in_(ids))
                .values(review_at=now)
            )
            refresh(ctx, conn, ids, now)
    return ids


def gross(r: Any) -> int:
    """A line with its tax (the sale's total; the invoice taxes each rate's sum)."""
    net = int(r.quantity) * int(r.unit_amount)
    return net + eng.tax_of(net, int(r.tax_rate_bp))


def _book(conn: Connection, taken: list[tuple[int, list[Any]]], now: int) -> None:
    """Each line on its invoice, and a row of ``sales`` for it there."""
    bulk(
        conn,
        update(_P).where(_P.c.id == bindparam("lid")).values(invoice_id=bindparam("iid")),
        [{"lid": r.id, "iid": invoice_id} for invoice_id, rows in taken for r in rows],
    )
    conn.execute(
        insert(s.sales),
        [
            {
                "product_id": r.product_id,
                "member_id": r.member_id,
                "invoice_id": invoice_id,
                "quantity": int(r.quantity),
                "total": gross(r),
                "method": METHOD,
                "walk_in": False,
                "operator": r.operator,
                "at": now,
            }
            for invoice_id, rows in taken
            for r in rows
        ],
    )


def create_renewals(
    conn: Connection, renewals: list[InvoiceSpec], now: int, *, sites: Mapping[str, str]
) -> list[tuple[int, str | None, int]]:
    """``insert_invoices`` for the cycle's renewal invoices, each with its member's waiting
    lines added, and on a household invoice each dependant's with their own part
    (``renewals`` is updated in place, so the caller charges what was issued)."""
    found = waiting(conn, [m for sp in renewals for m in (sp.member_id, *_household(sp))])
    if not found:
        return insert_invoices(conn, renewals, now, sites=sites)
    taken: dict[int, list[Any]] = {}

    def with_lines(sp: InvoiceSpec, into: list[Any]) -> InvoiceSpec:
        rows = [r for r in found.get(sp.member_id, ()) if r.currency == sp.currency]
        into += rows
        return sp._replace(taxed=sp.taxed + _taxed(rows)) if rows else sp

    for i, sp in enumerate(renewals):
        rows: list[Any] = []
        sp = with_lines(sp, rows)
        if sp.household:
            sp = sp._replace(household=tuple(with_lines(d, rows) for d in sp.household))
        if rows:
            renewals[i] = sp
            taken[i] = rows
    created = insert_invoices(conn, renewals, now, sites=sites)
    if taken:
        _book(conn, [(created[i][0], rows) for i, rows in taken.items()], now)
    return created


def _household(sp: InvoiceSpec) -> list[str]:
    return [d.member_id for d in sp.household]


def bill_alone(conn: Connection, member_id: str, now: int) -> int | None:
    """A cancellation: the member's waiting lines on an invoice of their own, due now (the
    caller has the member reviewed, which charges it). Returns its id, or None."""
    rows = waiting(conn, [member_id]).get(member_id, [])
    if not rows:
        return None
    # One invoice per currency would be needed for lines in several; a line is only ever sold
    # in the plan's currency (``check``), so they share the first's.
    spec = InvoiceSpec(member_id, "sale", rows[0].currency, [], 0, now, None, _taxed(rows))
    [invoice_id] = create_invoices(conn, [spec], now)
    _book(conn, [(invoice_id, rows)], now)
    return invoice_id
