"""Invoices and the money booked against them: itemized invoices with their tax line, payments
(a card's, the front desk's, a chargeback's reversal) applied oldest first, the view of one
invoice and the pay link that opens its page.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, bindparam, func, insert, or_, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.enrolment import start_memberships
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import Facts, load_facts
from gated.billing_sync.household import periods_paid
from gated.billing_sync.notices import format_amount
from gated.billing_sync.numbering import issue_drafts, number_rows
from gated.billing_sync.publishing import queue_notice, refresh
from gated.billing_sync.store import bulk, fetch, in_list, insert_ids, many

_SUB, _INV = s.subscriptions, s.invoices
_SET_INVOICE_PAID = (
    update(_INV)
    .where(_INV.c.id == bindparam("iid"))
    .values(amount_paid=bindparam("ap"), status=bindparam("st"), paid_at=bindparam("pa"))
)
# What is settled on invoices as it stands, their rows locked until the transaction ends.
_SETTLED_NOW = (
    select(_INV.c.id, _INV.c.amount_paid, _INV.c.paid_at)
    .where(_INV.c.id.in_(in_list()))
    .order_by(_INV.c.id)
    .with_for_update()
)
_EXTEND_PAID_THROUGH = (
    update(_SUB)
    .where(
        _SUB.c.member_id == bindparam("mid"),
        or_(_SUB.c.paid_through.is_(None), _SUB.c.paid_through < bindparam("pe")),
    )
    .values(paid_through=bindparam("pe"))
)


class InvoiceSpec(NamedTuple):
    """An invoice to create: net lines (kind, description, quantity, unit amount), one tax
    rate, and the period a renewal pays for; ``taxed`` lines carry a rate of their own (kind,
    description, quantity, unit amount, rate: products sold on the next invoice), and the
    invoice then has one tax line per rate."""

    member_id: str
    kind: str
    currency: str
    lines: list[tuple[str, str, int, int]]
    tax_rate_bp: int
    due_at: int
    period: tuple[int, int] | None
    taxed: tuple[tuple[str, str, int, int, int], ...] = ()
    # A household's renewal: the dependants' renewals billed on this (the payer's) invoice,
    # each with its own lines, tax rate and period (``household.py``).
    household: tuple[InvoiceSpec, ...] = ()

    @property
    def subtotal(self) -> int:
        """The sum of the net lines (a household's, every member's)."""
        net = sum(q * unit for _, _, q, unit in self.lines)
        if self.taxed:
            net += sum(q * unit for _, _, q, unit, _ in self.taxed)
        return net + sum(d.subtotal for d in self.household) if self.household else net

    def nets(self) -> dict[int, int]:
        """The net amount of the spec's own lines at each tax rate (its own rate first)."""
        out = {self.tax_rate_bp: sum(q * unit for _, _, q, unit in self.lines)}
        for _, _, q, unit, rate in self.taxed:
            out[rate] = out.get(rate, 0) + q * unit
        return out

    @property
    def tax(self) -> int:
        """The tax: on the net at each rate, each rounded on its own (one tax line per rate);
        on a household invoice each member's, on their own lines (so the household pays to the
        cent what separate invoices would have billed)."""
        if self.taxed:
            own = sum(eng.tax_of(net, rate) for rate, net in self.nets().items())
        else:
            own = eng.tax_of(sum(q * unit for _, _, q, unit in self.lines), self.tax_rate_bp)
        return own + sum(d.tax for d in self.household) if self.household else own

    @property
    def total(self) -> int:
        """What the invoice bills: the net lines and the tax."""
        return self.subtotal + self.tax


class NewInvoice(NamedTuple):
    """A renewal invoice the batch created: what booking a payment reads of an invoice."""

    id: int
    member_id: str
    kind: str
    total: int
    amount_paid: int
    period_end: int | None
    # Its legal number, given as it was created (a renewal is never a draft).
    number: str | None = None
    # Never paid yet: read by ``apply_payments`` as an invoice row's, where a missing field
    # would cost a raised and swallowed AttributeError per renewal.
    paid_at: int | None = None
    household: bool = False


@lru_cache(maxsize=64)  # a batch's invoices share a rate or two
def tax_label(rate_bp: int) -> str:
    """The description of an invoice's tax line: ``Tax 19 %`` for 1900 basis points."""
    return f"Tax {rate_bp / 100:g} %"


@lru_cache(maxsize=1024)  # members share a few site lists
def home_site(stored: str) -> str:
    """The site that issues a member's invoices: the first of their stored ``sites`` (JSON)."""
    return str(json.loads(stored)[0])


def create_invoice(
    ctx: Context,
    conn: Connection,
    f: Facts,
    kind: str,
    lines: list[tuple[str, str, int, int]],
    tax_rate_bp: int,
    due_at: int,
    period: tuple[int, int] | None,
) -> int:
    """One itemized invoice for a member (see ``create_invoices``)."""
    currency = f.plan.currency if f.plan is not None else ctx.config.currency
    spec = InvoiceSpec(f.member.id, kind, currency, lines, tax_rate_bp, due_at, period)
    return create_invoices(conn, [spec], ctx.clock())[0]


def create_invoices(
    conn: Connection,
    specs: list[InvoiceSpec],
    now: int,
    *,
    issue: bool = True,
    sites: Mapping[str, str] | None = None,
) -> list[int]:
    """Itemized invoices (see ``insert_invoices``); returns their ids."""
    return [i for i, _, _ in insert_invoices(conn, specs, now, issue=issue, sites=sites)]


def insert_invoices(
    conn: Connection,
    specs: list[InvoiceSpec],
    now: int,
    *,
    issue: bool = True,
    sites: Mapping[str, str] | None = None,
) -> list[tuple[int, str | None, int]]:
    """Itemized invoices, as (id, legal number or None for a draft, total) in the order of
    ``specs``: each line net, then one tax line (rate in basis points). Each is issued by its
    member's first site and numbered in that site's series now, in this transaction; ``issue=False`` makes drafts that are numbered when paid
    (``numbering.issue_drafts``). ``sites``: each member's stored ``sites``, when the caller
    read the members' rows in this transaction (the cycle's batch); else they are read here."""
    if not specs:
        return []
    if sites is None:
        m = s.members
        sites = {
            r.id: r.sites
            for r in conn.execute(
                select(m.c.id, m.c.sites).where(m.c.id.in_(many({sp.member_id for sp in specs})))
            )
        }
    heads: list[dict[str, Any]] = []
    for sp in specs:
        subtotal, tax = sp.subtotal, sp.tax
        heads.append(
            {
                "member_id": sp.member_id,
                "kind": sp.kind,
                "currency": sp.currency,
                "period_start": sp.period[0] if sp.period else None,
                "period_end": sp.period[1] if sp.period else None,
                "subtotal": subtotal,
                "tax": tax,
                "total": subtotal + tax,
                "amount_paid": 0,
                "status": "open",
                "due_at": sp.due_at,
                "created_at": now,
                "site": home_site(sites[sp.member_id]),
                "number": None,
                "issued_at": None,
                "household": bool(sp.household),
            }
        )
    if issue:
        number_rows(conn, heads, now)
    ids = insert_ids(conn, s.invoices, heads)
    # Two executemanys where a batch holds household invoices: their lines name their member
    # and period, the others' leave those columns null without binding them.
    rows: list[dict[str, Any]] = []
    household: list[dict[str, Any]] = []
    for invoice_id, sp in zip(ids, specs, strict=True):
        if sp.household:
            for part in (sp, *sp.household):
                household.extend(_lines(invoice_id, part, household=True))
        else:
            rows.extend(_lines(invoice_id, sp, household=False))
    for found in (rows, household):
        bulk(conn, insert(s.invoice_lines), found)
    return [(i, head["number"], head["total"]) for i, head in zip(ids, heads, strict=True)]


def _lines(invoice_id: int, sp: InvoiceSpec, *, household: bool) -> list[dict[str, Any]]:
    """The rows of ``sp``'s own lines (those at its rate, then those with a rate of their own)
    and a tax line per rate; on a household invoice each says whose it is and which period it
    pays for."""
    whose: dict[str, Any] = {}
    if household:
        start, end = sp.period or (None, None)
        whose = {"member_id": sp.member_id, "period_start": start, "period_end": end}

    def line(kind: str, text: str, quantity: int, unit: int, rate: int) -> dict[str, Any]:
        row = {
            "invoice_id": invoice_id,
            "kind": kind,
            "description": text,
            "quantity": quantity,
            "unit_amount": unit,
            "amount": quantity * unit,
            "tax_rate_bp": rate,
        }
        if whose:
            row.update(whose)
        return row

    rows = [line(k, d, q, unit, sp.tax_rate_bp) for k, d, q, unit in sp.lines]
    rows += [line(k, d, q, unit, rate) for k, d, q, unit, rate in sp.taxed]
    for rate, net in sp.nets().items():
        tax = eng.tax_of(net, rate)
        if tax:
            rows.append(line("tax", tax_label(rate), 1, tax, rate))
    return rows


def apply_payment(
    conn: Connection,
    inv: Row[Any],
    amount: int,
    method: str,
    reference: str | None,
    now: int,
) -> None:
    """Book one payment against one invoice (see ``apply_payments``)."""
    apply_payments(conn, [(inv, amount, method, reference)], now)


def apply_payments(
    conn: Connection,
    items: list[tuple[Row[Any], int, str, str | None]],
    now: int,
    *,
    extend: bool = True,
) -> dict[str, int]:
    """Book money against invoices (one item per invoice); a fully paid renewal moves
    paid-through forward, a fully paid sign-up starts its membership. Callers refresh the members afterwards. Returns the end of each
    renewal paid in full, by member: with ``extend=False`` paid-through is not written here,
    and the caller must refresh the members from facts extended to these ends
    (``facts.extended``): the refresh writes paid-through with the status."""
    if not items:
        return {}
    settled: dict[int, tuple[int, int | None]] = {}
    if conn.dialect.name == "postgresql":
        # Under READ COMMITTED a caller's row may be older than the invoice: another
        # transaction (a credit note, a write-off, another payment) may have booked on it since
        # it was read. Adding to a stale amount_paid would drop what that one booked; so the
        # rows are locked and what they hold now is added to. (SQLite's writers take turns,
        # BEGIN IMMEDIATE: a row read in the caller's transaction is the row as it stands.)
        ids = {"ids": [int(inv.id) for inv, _, _, _ in items]}
        settled = {
            int(r.id): (int(r.amount_paid), r.paid_at) for r in fetch(conn, _SETTLED_NOW, ids)
        }
    bulk(
        conn,
        insert(s.payments),
        [
            {
                "invoice_id": inv.id,
                "member_id": inv.member_id,
                "amount": amount,
                "method": method,
                "reference": ref,
                "at": now,
            }
            for inv, amount, method, ref in items
        ],
    )
    inv_updates = []
    renewed = []
    households: list[int] = []
    joined: list[str] = []
    drafts: list[int] = []
    for inv, amount, _, _ in items:
        if settled:
            before, paid_at = settled[int(inv.id)]
        else:
            before, paid_at = int(inv.amount_paid), getattr(inv, "paid_at", None)
        paid = before + amount
        full = paid >= int(inv.total)
        inv_updates.append(
            {
                "iid": inv.id,
                "ap": paid,
                "st": "paid" if full else "open",
                # A credit note or a refund on a paid invoice keeps the day it was paid.
                "pa": (paid_at or now) if full else None,
            }
        )
        if full and inv.kind == "renewal" and inv.period_end is not None:
            renewed.append({"mid": inv.member_id, "pe": inv.period_end})
            if getattr(inv, "household", False):
                households.append(int(inv.id))
        elif full and inv.kind == "signup":
            joined.append(inv.member_id)
            drafts.append(int(inv.id))
    bulk(conn, _SET_INVOICE_PAID, inv_updates)
    # A household's renewal paid in full pays every dependant's period on it too.
    for ends in periods_paid(conn, households).values():
        renewed.extend({"mid": m, "pe": end} for m, end in ends.items())
    if joined:
        # A sign-up's draft invoice is issued (numbered) once it is paid.
        issue_drafts(conn, drafts, now)
        start_memberships(conn, joined, now)
    if extend:
        bulk(conn, _EXTEND_PAID_THROUGH, renewed)
    return {r["mid"]: r["pe"] for r in renewed}


def payment_by_reference(conn: Connection, reference: str) -> Row[Any] | None:
    """The payment booked under a provider reference (an intent id), with its currency."""
    p = s.payments
    return conn.execute(
        select(p, _INV.c.currency)
        .join(_INV, _INV.c.id == p.c.invoice_id)
        .where(p.c.reference == reference)
    ).first()


def reverse_payment(conn: Connection, reference: str, now: int) -> Row[Any] | None:
    """Take back the payment booked under ``reference`` (a lost chargeback): its invoice is
    open again, due when it was due (the money was owed then: a chargeback earns no new grace
    period). Returns the payment taken back, or None if there was none."""
    p = s.payments
    row = payment_by_reference(conn, reference)
    if row is None:
        return None
    # A bank disputes what is left of a payment: the part already refunded is not taken twice.
    refunded = conn.execute(
        select(func.coalesce(func.sum(s.refunds.c.amount), 0)).where(
            s.refunds.c.payment_id == row.id, s.refunds.c.state == "succeeded"
        )
    ).scalar_one()
    taken = int(row.amount) - int(refunded)
    if taken <= 0:
        return None
    conn.execute(
        insert(p).values(
            invoice_id=row.invoice_id,
            member_id=row.member_id,
            amount=-taken,
            method="chargeback",
            reference=f"{reference}:chargeback",
            at=now,
        )
    )
    conn.execute(
        update(s.invoices)
        .where(s.invoices.c.id == row.invoice_id)
        .values(
            amount_paid=s.invoices.c.amount_paid - taken,
            status="open",
            paid_at=None,
        )
    )
    return row


def record_payment(
    ctx: Context,
    member_id: str,
    amount: int | None = None,
    method: str = "front_desk",
    reference: str | None = None,
) -> int:
    """A payment taken outside the gateway (front desk, bank transfer): applied to the oldest
    open invoices first; the member is active again and published at once. Returns the amount
    applied. An invoice with a charge still in flight (a SEPA debit takes days to settle) is
    left to that charge: taking it here as well would take the money twice."""
    now = ctx.clock()
    a = s.payment_attempts
    with ctx.engine.begin() as conn:
        # The member's open invoices locked before they are read (PostgreSQL): a credit note, a
        # write-off or a charge booked on one meanwhile is waited for and then seen, so the
        # desk never takes money for what is no longer owed. (On SQLite the transaction's
        # BEGIN IMMEDIATE already excludes every other writer: no statement is needed.)
        if conn.dialect.name == "postgresql":
            conn.execute(
                select(_INV.c.id)
                .where(_INV.c.member_id == member_id, _INV.c.status == "open")
                .order_by(_INV.c.id)
                .with_for_update()
            )
        facts = load_facts(conn, [member_id], now).get(member_id)
        if facts is None:
            raise NotFound(f"no member {member_id!r}")
        in_flight = set(
            conn.execute(
                select(a.c.invoice_id).where(
                    a.c.member_id == member_id, a.c.state.in_(s.OPEN_ATTEMPT_STATES)
                )
            ).scalars()
        )
        payable = [
            i for i in facts.open_invoices if i.total > i.amount_paid and i.id not in in_flight
        ]
        owed = sum(int(i.total - i.amount_paid) for i in payable)
        busy = ", ".join(map(str, sorted(in_flight)))
        if owed <= 0:
            if facts.account.owed > 0 and facts.member.payer_id:
                # What is left is their share of the payer's household invoice.
                raise BillingError(
                    f"member {member_id}'s renewal is on the household invoice of their payer"
                    f" {facts.member.payer_id}: take the payment from {facts.member.payer_id}"
                )
            if in_flight:
                raise BillingError(
                    f"member {member_id} owes nothing beyond invoice {busy}, whose charge is"
                    " still in flight (a SEPA debit settles within days)"
                )
            raise BillingError(f"member {member_id} owes nothing")
        amount = owed if amount is None else amount
        if amount <= 0 or amount > owed:
            less = f", less invoice {busy} whose charge is still in flight" if in_flight else ""
            raise BillingError(f"amount must be between 1 and {owed} (what is owed{less})")
        if reference is not None:
            used = conn.execute(
                select(s.payments.c.invoice_id).where(
                    or_(
                        s.payments.c.reference == reference,
                        s.payments.c.reference.startswith(f"{reference}:", autoescape=True),
                    )
                )
            ).first()
            if used is not None:
                raise BillingError(
                    f"reference {reference} was already used (a payment on invoice"
                    f" {used.invoice_id}); give each payment its own reference"
                )
        left = amount
        paid: list[str] = []
        households: list[int] = []
        for inv in payable:
            if left <= 0:
                break
            part = min(left, int(inv.total - inv.amount_paid))
            apply_payment(conn, inv, part, method, reference and f"{reference}:{inv.id}", now)
            paid.append(str(inv.id))
            if inv.household:
                households.append(int(inv.id))
            left -= part
        # The same receipt a card payment gets, for money taken at the desk or by transfer.
        currency = payable[0].currency
        queue_notice(
            ctx,
            conn,
            facts,
            "receipt",
            amount=format_amount(amount, currency),
            invoices=paid,
            attach=paid,
        )
        # Paying the payer's household invoice settles it for everyone on it.
        on_it = {m for ends in periods_paid(conn, households).values() for m in ends}
        refresh(ctx, conn, sorted(on_it | {member_id}), now)
    ctx.notify_published()
    return amount


def invoice(ctx: Context, invoice_id: int) -> dict[str, Any]:
    """One invoice with its lines and the member's name, for the pay page."""
    inv, ln = s.invoices, s.invoice_lines
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(inv, s.members.c.name)
            .join(s.members, s.members.c.id == inv.c.member_id)
            .where(inv.c.id == invoice_id)
        ).first()
        if row is None:
            raise NotFound(f"no invoice {invoice_id}")
        lines = conn.execute(
            select(ln.c.kind, ln.c.description, ln.c.quantity, ln.c.unit_amount, ln.c.amount)
            .where(ln.c.invoice_id == invoice_id)
            .order_by(ln.c.id)
        ).all()
    return {
        "id": int(row.id),
        "number": row.number,
        "site": row.site,
        "issued_at": row.issued_at,
        "member_id": row.member_id,
        "name": row.name,
        "status": row.status,
        "currency": row.currency,
        "total": int(row.total),
        "paid": int(row.amount_paid),
        "owed": int(row.total - row.amount_paid) if row.status == "open" else 0,
        "lines": [dict(line._mapping) for line in lines],
    }


def pay_link(ctx: Context, invoice_id: int) -> str:
    """The page where a member pays an invoice on-session (sent when the bank wants them to
    authenticate): ``{public_url}/pay/{invoice}.{token}``, the token a keyed MAC."""
    base = ctx.config.http.public_url.rstrip("/")
    return f"{base}/pay/{invoice_id}.{ctx.keys.pay_token(invoice_id)}"


def invoice_for_pay_token(ctx: Context, token: str) -> int | None:
    """The invoice a pay-link token names, or None for a token we did not issue."""
    number, _, mac = token.partition(".")
    if not re.fullmatch(r"[0-9]{1,12}", number):
        return None
    invoice_id = int(number)
    ok = hmac.compare_digest(mac.encode(), ctx.keys.pay_token(invoice_id).encode())
    return invoice_id if ok else None
