"""Taking money back off an invoice: credit notes (what an invoice is worth goes down), refunds
(money given back, each with its credit note), voiding an open invoice and writing off a debt.

Every amount here is booked on the invoice as a row of ``payments`` (``schema.NOT_MONEY_METHODS``
for credit notes and write-offs, ``refund`` for money given back), so what an invoice shows as
paid is what is settled on it, and everything that reads "what is owed" (dunning, the cycle, the
front desk, reports) needs no change. For every invoice and member::

    total = money received - money refunded + credited + written off + still open

A refund goes through the payment gateway like a charge (``refunds`` table): the row and its
idempotency key are committed first, then the provider is asked, then the result is booked with
its credit note in one transaction. A restart (``resume_refunds``, at the start of every cycle)
first asks the provider for a refund made under that key before asking again, so money is given
back once even where the provider ignores idempotency keys. A payment taken at the desk is given
back at the desk: booked at once.

A refund books a credit note for what it gives back, except the part that only returns an
overpayment (an invoice paid twice): the invoice keeps its paid status, worth that much less.
A renewal settled by a credit note, a void or a write-off counts as paid for its period, as
Stripe's subscriptions do: the member's paid-through moves on and nothing is billed twice.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import Rows, charge_method, load_facts
from gated.billing_sync.gateway import GatewayRejected, GatewayUnavailable, RefundResult
from gated.billing_sync.household import members_on, settle_line
from gated.billing_sync.invoices import apply_payments, home_site
from gated.billing_sync.notices import format_amount
from gated.billing_sync.numbering import next_number, site_year
from gated.billing_sync.periods import ensure_invoice_open, ensure_issuable
from gated.billing_sync.publishing import queue_notice, refresh
from gated.billing_sync.store import insert_ids

log = logging.getLogger("gated.billing")
_INV, _PAY, _REF, _CN = s.invoices, s.payments, s.refunds, s.credit_notes
# Rows of ``payments`` that are money received (a chargeback's negative row included): what a
# refund can give back.
_NOT_RECEIVED = (*s.NOT_MONEY_METHODS, "refund", "chargeback")
# Closed invoices a refund leaves closed (it books its own credit note, so nothing reopens).
_CLOSED = ("void", "written_off")


@dataclass
class Outcome:
    """What a money action did: credit notes booked, money given back (and how much of it is
    still waiting on the provider, to be finished by the next cycle), refunds the provider
    refused."""

    invoice_id: int
    currency: str
    credited: int = 0
    refunded: int = 0
    waiting: int = 0
    credit_notes: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a person: what was credited and given back."""
        parts = []
        if self.refunded:
            parts.append(f"{format_amount(self.refunded, self.currency)} refunded")
        if self.waiting:
            parts.append(
                f"{format_amount(self.waiting, self.currency)} waiting on the payment provider"
                " (the next cycle finishes it)"
            )
        if self.credited and not self.refunded:
            parts.append(f"{format_amount(self.credited, self.currency)} credited")
        if self.credit_notes:
            parts.append("credit note " + ", ".join(self.credit_notes))
        return f"invoice {self.invoice_id}: " + ("; ".join(parts) or "nothing to give back")


def credit_note_number(conn: Connection, inv: Any, at: int) -> str:
    """The legal number of a credit note on ``inv`` issued at ``at``: the next of the issuing
    site's credit-note series for the year (``numbering``), taken in the caller's transaction,
    so a rollback gives it back. Refused in a closed month (``periods``). An invoice from
    before sites issued invoices is credited under its member's first site."""
    site = inv.site
    if site is None:
        sites = conn.execute(
            select(s.members.c.sites).where(s.members.c.id == inv.member_id)
        ).scalar_one()
        site = home_site(sites)
    ensure_issuable(conn, at, [site])
    return next_number(conn, site, site_year(conn, site, at), "credit_note")


def tax_part(amount: int, inv: Any) -> int:
    """The tax in ``amount`` of an invoice carrying ``inv.tax`` in ``inv.total``, rounded half
    away from zero, as the revenue report shares it."""
    total = int(inv.total)
    if total <= 0:
        return 0
    return (abs(amount) * int(inv.tax) * 2 + total) // (2 * total)


# --- reading an invoice --------------------------------------------------------------------------


def _invoice(conn: Connection, invoice_id: int) -> Row[Any]:
    row = conn.execute(select(_INV).where(_INV.c.id == invoice_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    return row


def _refundable(
    conn: Connection, invoice_id: int, *, skip_disputed: bool = False
) -> list[tuple[Row[Any], int]]:
    """The invoice's payments that can be given back, newest first, each with what is left of
    it: its amount less its refunds (booked or on their way) and nothing of one charged back.
    A payment whose dispute is open is the bank's to decide: refused with a clear line, or
    left out (``skip_disputed``)."""
    pays = conn.execute(
        select(_PAY)
        .where(_PAY.c.invoice_id == invoice_id, _PAY.c.amount > 0)
        .where(_PAY.c.method.not_in(_NOT_RECEIVED))
        .order_by(_PAY.c.id.desc())
    ).all()
    if not pays:
        return []
    given = dict(
        conn.execute(
            select(_REF.c.payment_id, func.sum(_REF.c.amount))
            .where(_REF.c.invoice_id == invoice_id, _REF.c.state != "failed")
            .group_by(_REF.c.payment_id)
        ).all()
    )
    refs = [p.reference for p in pays if p.reference]
    charged_back = set(
        conn.execute(
            select(_PAY.c.reference).where(_PAY.c.reference.in_([f"{r}:chargeback" for r in refs]))
        ).scalars()
    )
    disputed = set(
        conn.execute(
            select(s.disputes.c.payment_ref).where(
                s.disputes.c.payment_ref.in_(refs), s.disputes.c.status == "open"
            )
        ).scalars()
    )
    out = []
    for p in pays:
        if p.reference in disputed and skip_disputed:
            continue
        if p.reference in disputed:
            raise BillingError(
                f"the payment {p.reference} on invoice {invoice_id} is disputed by the member's"
                " bank: it is refunded or kept when the dispute closes"
            )
        if f"{p.reference}:chargeback" in charged_back:
            continue
        left = int(p.amount) - int(given.get(p.id, 0))
        if left > 0:
            out.append((p, left))
    return out


def _gateway_payments(conn: Connection, refs: Sequence[str]) -> set[str]:
    """Which payment references are the provider's (an intent we charged)."""
    if not refs:
        return set()
    a = s.payment_attempts
    return set(conn.execute(select(a.c.gateway_ref).where(a.c.gateway_ref.in_(refs))).scalars())


def _line_amount(conn: Connection, inv: Any, line_id: int) -> int:
    """What one line of an invoice is worth with its tax; refused if it is not the invoice's, is
    the tax line itself, or was credited before."""
    ln = s.invoice_lines
    line = conn.execute(select(ln).where(ln.c.id == line_id, ln.c.invoice_id == inv.id)).first()
    if line is None:
        raise BillingError(f"invoice {inv.id} has no line {line_id} (see `invoice show {inv.id}`)")
    if line.kind == "tax":
        raise BillingError("the tax line goes with the lines it taxes: credit those instead")
    earlier = conn.execute(
        select(_CN.c.id)
        .where(_CN.c.line_id == line_id)
        .union(select(_REF.c.id).where(_REF.c.line_id == line_id, _REF.c.state == "new"))
    ).first()
    if earlier is not None:
        raise BillingError(f"line {line_id} of invoice {inv.id} was credited before")
    return int(line.amount) + eng.tax_of(int(line.amount), int(line.tax_rate_bp))


def _in_flight(conn: Connection, invoice_id: int) -> bool:
    a = s.payment_attempts
    return (
        conn.execute(
            select(a.c.id).where(a.c.invoice_id == invoice_id, a.c.state.in_(s.OPEN_ATTEMPT_STATES))
        ).first()
        is not None
    )


def _open_for_change(conn: Connection, inv: Any, what: str) -> int:
    """What is still open on an invoice that ``what`` (credit, void, write off) may change:
    refused for a closed invoice, an online sign-up not yet paid (dropped after a day unpaid)
    and one whose charge is in flight (a SEPA debit: wait for it to settle)."""
    if inv.status != "open":
        raise BillingError(f"invoice {inv.id} is {inv.status}: only an open invoice can be {what}")
    if inv.kind == "signup":
        raise BillingError(
            f"invoice {inv.id} is an online sign-up not yet paid: it is dropped after a day"
        )
    if _in_flight(conn, int(inv.id)):
        raise BillingError(
            f"invoice {inv.id} has a charge in flight (a debit settles within days): wait for it"
        )
    rest = int(inv.total) - int(inv.amount_paid)
    if rest <= 0:
        raise BillingError(f"nothing is open on invoice {inv.id}")
    return rest


# --- booking --------------------------------------------------------------------------------------


def book_credit(
    conn: Connection,
    inv: Any,
    amount: int,
    kind: str,
    reason: str,
    now: int,
    line_id: int | None = None,
) -> str:
    """A credit note of ``amount`` (gross) on ``inv``, booked on it as settled; returns its
    number. A renewal it settles moves paid-through on (see the module's docstring)."""
    number = credit_note_number(conn, inv, now)
    note_id = insert_ids(
        conn,
        _CN,
        [
            dict(
                invoice_id=inv.id,
                member_id=inv.member_id,
                kind=kind,
                line_id=line_id,
                amount=amount,
                tax=tax_part(amount, inv),
                currency=inv.currency,
                reason=reason,
                created_at=now,
                number=number,
            )
        ],
    )[0]
    apply_payments(conn, [(inv, amount, "credit_note", f"cn:{note_id}")], now)
    return number


def _book_refund(
    conn: Connection, row: Any, gateway_ref: str | None, now: int, out: Outcome
) -> str | None:
    """Book a refund that the provider made (or the desk gave): the money given back as a
    negative ``refund`` row, and a credit note for all of it but what only returns an
    overpayment, so the invoice keeps the status it had. Returns the credit note's number."""
    inv = _invoice(conn, int(row.invoice_id))
    status = inv.status
    amount = int(row.amount)
    overpaid = max(0, int(inv.amount_paid) - int(inv.total))
    credit = amount - min(amount, overpaid)
    note_id = None
    number = None
    if credit:
        number = book_credit(conn, inv, credit, row.kind, row.reason, now, row.line_id)
        note_id = conn.execute(select(_CN.c.id).where(_CN.c.number == number)).scalar_one()
        out.credit_notes.append(number)
        out.credited += credit
        inv = _invoice(conn, int(row.invoice_id))
    apply_payments(conn, [(inv, -amount, "refund", gateway_ref or f"rf:{row.id}")], now)
    if status in _CLOSED:
        conn.execute(update(_INV).where(_INV.c.id == inv.id).values(status=status))
    conn.execute(
        update(_REF)
        .where(_REF.c.id == row.id)
        .values(state="succeeded", gateway_ref=gateway_ref, credit_note_id=note_id, updated_at=now)
    )
    out.refunded += amount
    return number if credit else None


def _new_refund(
    conn: Connection,
    pay: Any,
    currency: str,
    amount: int,
    kind: str,
    reason: str,
    key: str,
    now: int,
    line_id: int | None = None,
) -> int:
    """A refund row, ``new``, of ``amount`` of the payment ``pay``."""
    return insert_ids(
        conn,
        _REF,
        [
            {
                "invoice_id": pay.invoice_id,
                "member_id": pay.member_id,
                "payment_id": pay.id,
                "amount": amount,
                "currency": currency,
                "kind": kind,
                "line_id": line_id,
                "reason": reason,
                "idempotency_key": key,
                "state": "new",
                "created_at": now,
                "updated_at": now,
            }
        ],
    )[0]


def _start_refunds(
    conn: Connection,
    inv: Any,
    amount: int,
    kind: str,
    reason: str,
    now: int,
    out: Outcome,
    line_id: int | None = None,
    *,
    skip_disputed: bool = False,
) -> list[int]:
    """Refund rows for ``amount`` of the invoice's money, newest payment first: one given back
    at the desk is booked now; the provider's are committed ``new`` and returned, to be made
    once this transaction commits (``execute_refunds``)."""
    payable = _refundable(conn, int(inv.id), skip_disputed=skip_disputed)
    left_total = sum(left for _, left in payable)
    if amount > left_total:
        raise BillingError(
            f"invoice {inv.id} has {format_amount(left_total, inv.currency)} to refund (paid"
            f" less refunded); asked {format_amount(amount, inv.currency)}"
        )
    provider = _gateway_payments(conn, [p.reference for p, _ in payable if p.reference])
    pending: list[int] = []
    rest = amount
    for p, left in payable:
        if rest <= 0:
            break
        part = min(rest, left)
        rest -= part
        key = f"rf{inv.id}-{secrets.token_hex(6)}"
        refund_id = _new_refund(conn, p, inv.currency, part, kind, reason, key, now, line_id)
        if p.reference in provider:
            pending.append(refund_id)
        else:
            row = conn.execute(select(_REF).where(_REF.c.id == refund_id)).one()
            _book_refund(conn, row, None, now, out)
    return pending


def execute_refunds(
    ctx: Context, refund_ids: Sequence[int], out: Outcome | None = None, *, resumed: bool = False
) -> Outcome | None:
    """Ask the provider for committed refunds and book what it answers. A refund a restart
    finds committed is looked up by its key first (it may have been made before the crash). An
    unreachable provider leaves the row for the next cycle; a refusal marks it failed, books
    nothing and is reported in ``out.refused``."""
    if not refund_ids:
        return out
    with ctx.reader.connect() as conn:
        rows = conn.execute(
            select(_REF, _PAY.c.reference)
            .join(_PAY, _PAY.c.id == _REF.c.payment_id)
            .where(_REF.c.id.in_(list(refund_ids)), _REF.c.state == "new")
            .order_by(_REF.c.id)
        ).all()
    members: set[str] = set()
    for row in rows:
        result: RefundResult | None = None
        error: str | None = None
        try:
            if resumed:
                result = next(
                    (
                        r
                        for r in ctx.gateway.refunds_of(row.reference)
                        if r.key == row.idempotency_key
                    ),
                    None,
                )
            if result is None:
                result = ctx.gateway.refund(row.reference, int(row.amount), row.idempotency_key)
        except GatewayUnavailable as exc:
            log.warning("event=refund_unavailable refund=%s error=%s", row.id, exc)
            if out is not None:
                out.waiting += int(row.amount)
            continue
        except GatewayRejected as exc:
            error = str(exc)
        with ctx.engine.begin() as conn:
            now = ctx.clock()
            state = conn.execute(
                select(_REF.c.state).where(_REF.c.id == row.id).with_for_update()
            ).scalar_one()
            if state != "new":
                continue  # booked meanwhile (by the provider's webhook)
            if result is None or result.state == "failed":
                why = error or "the provider refused the refund"
                conn.execute(
                    update(_REF)
                    .where(_REF.c.id == row.id)
                    .values(state="failed", error=why[:500], updated_at=now)
                )
                log.warning("event=refund_failed refund=%s", row.id)
                if out is not None:
                    out.refused.append(why)
                continue
            note = _book_refund(conn, row, result.refund_id, now, out or Outcome(0, row.currency))
            _refund_notice(
                ctx, conn, row.member_id, int(row.amount), row.currency, row.invoice_id, [note]
            )
            refresh(ctx, conn, [row.member_id], now)
            members.add(row.member_id)
    if members:
        ctx.notify_published()
    return out


def resume_refunds(ctx: Context, member_ids: Sequence[str] | None = None) -> None:
    """Finish refunds a crash (or an unreachable provider) left ``new``: looked up by key at the
    provider first, made only if it has none."""
    q = select(_REF.c.id).where(_REF.c.state == "new").order_by(_REF.c.id)
    if member_ids is not None:
        q = q.where(_REF.c.member_id.in_(list(member_ids)))
    with ctx.reader.connect() as conn:
        ids = list(conn.execute(q).scalars())
    execute_refunds(ctx, ids, resumed=True)


def _refund_notice(
    ctx: Context,
    conn: Connection,
    member_id: str,
    amount: int,
    currency: str,
    invoice_id: int,
    credit_notes: Sequence[str | None],
    *,
    at_desk: bool = False,
) -> None:
    """The ``refund`` notice: the amount, the invoice, how the money comes back and the credit
    notes booked for it (the payer's, for a dependant)."""
    facts = load_facts(conn, [member_id], ctx.clock()).get(member_id)
    if facts is None:
        return
    notes = [n for n in credit_notes if n]
    note_ids = conn.execute(select(_CN.c.id).where(_CN.c.number.in_(notes))).scalars()
    how = (
        "at the front desk"
        if at_desk
        else "to the way you paid it; a card refund reaches your account within a few days"
    )
    queue_notice(
        ctx,
        conn,
        facts,
        "refund",
        amount=format_amount(amount, currency),
        invoices=[invoice_id],
        how=how,
        credit_note=f"Credit note: {', '.join(notes)}.\n" if notes else "",
        attach=[f"cn{i}" for i in sorted(note_ids)],
    )


# --- the actions ----------------------------------------------------------------------------------


def _check_amount(amount: int | None, line_id: int | None, what: str) -> None:
    if amount is not None and amount <= 0:
        raise BillingError(f"a {what} needs a positive amount (minor units)")
    if amount is not None and line_id is not None:
        raise BillingError("give an amount or a line, not both")


def refund(
    ctx: Context,
    invoice_id: int,
    amount: int | None = None,
    line_id: int | None = None,
    reason: str = "refund",
) -> Outcome:
    """Give back money paid on an invoice: ``amount`` (minor units), one line with its tax, or
    (neither) everything paid and not yet given back. Card and SEPA payments go back through the
    provider, desk payments at the desk; each refund books its credit note."""
    _check_amount(amount, line_id, "refund")
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        inv = _invoice(conn, invoice_id)
        out = Outcome(invoice_id, inv.currency)
        if inv.status == "void":
            raise BillingError(f"invoice {invoice_id} is void: nothing was paid on it to refund")
        if line_id is not None:
            amount = _line_amount(conn, inv, line_id)
        if amount is None:
            amount = sum(left for _, left in _refundable(conn, invoice_id))
            if amount <= 0:
                raise BillingError(f"nothing was paid on invoice {invoice_id} to refund")
        pending = _start_refunds(conn, inv, amount, "refund", reason, now, out, line_id)
        if out.refunded:
            # Given back at the desk, booked now; the provider's refunds send theirs when
            # booked (execute_refunds).
            _refund_notice(
                ctx,
                conn,
                inv.member_id,
                out.refunded,
                inv.currency,
                invoice_id,
                out.credit_notes,
                at_desk=True,
            )
            refresh(ctx, conn, [inv.member_id], now)
    execute_refunds(ctx, pending, out)
    ctx.notify_published()
    if out.refused:
        raise BillingError(f"invoice {invoice_id}: {'; '.join(out.refused)}; nothing was booked")
    return out


def credit(
    ctx: Context,
    invoice_id: int,
    amount: int | None = None,
    line_id: int | None = None,
    reason: str = "credit",
) -> Outcome:
    """A credit note on what is still open on an invoice (no money moves): ``amount``, one line
    with its tax, or (neither) everything open."""
    _check_amount(amount, line_id, "credit")
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        inv = _invoice(conn, invoice_id)
        rest = _open_for_change(conn, inv, "credited")
        if line_id is not None:
            amount = _line_amount(conn, inv, line_id)
        amount = rest if amount is None else amount
        if amount > rest:
            raise BillingError(
                f"invoice {invoice_id} has {format_amount(rest, inv.currency)} open; a credit"
                f" of {format_amount(amount, inv.currency)} is more (refund what was paid)"
            )
        out = Outcome(invoice_id, inv.currency, credited=amount)
        out.credit_notes.append(book_credit(conn, inv, amount, "credit", reason, now, line_id))
        if line_id is not None:
            dependant = settle_line(conn, inv.member_id, line_id)
            refresh(ctx, conn, [inv.member_id, *([dependant] if dependant else [])], now)
        else:
            refresh(ctx, conn, members_on(conn, inv), now)
    ctx.notify_published()
    return out


def void(ctx: Context, invoice_id: int, reason: str = "void") -> Outcome:
    """Void an open invoice nothing was paid on (issued in error): a credit note for all of it,
    status ``void``. One with money on it is refused: refund it instead."""
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        inv = _invoice(conn, invoice_id)
        if inv.status != "void":
            money = sum(left for _, left in _refundable(conn, invoice_id))
            if money:
                raise BillingError(
                    f"invoice {invoice_id} has {format_amount(money, inv.currency)} paid on it:"
                    " refund it (`invoice refund`) instead of voiding it"
                )
        ensure_invoice_open(conn, invoice_id)  # a closed month's invoice: credit it instead
        rest = _open_for_change(conn, inv, "voided")
        out = Outcome(invoice_id, inv.currency, credited=rest)
        out.credit_notes.append(book_credit(conn, inv, rest, "void", reason, now))
        conn.execute(update(_INV).where(_INV.c.id == invoice_id).values(status="void"))
        refresh(ctx, conn, members_on(conn, inv), now)
    ctx.notify_published()
    return out


def write_off(ctx: Context, invoice_id: int, reason: str = "bad debt") -> int:
    """Write off what is still open on an invoice as bad debt: it leaves ``outstanding`` and
    dunning, booked as ``write_off`` (not money, not a credit note). Returns the amount."""
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        inv = _invoice(conn, invoice_id)
        rest = _open_for_change(conn, inv, "written off")
        apply_payments(conn, [(inv, rest, "write_off", f"wo:{invoice_id}")], now)
        conn.execute(update(_INV).where(_INV.c.id == invoice_id).values(status="written_off"))
        log.info("event=written_off invoice=%s amount=%d reason=%s", invoice_id, rest, reason)
        refresh(ctx, conn, members_on(conn, inv), now)
    ctx.notify_published()
    return rest


def write_off_below_minimum(ctx: Context, conn: Connection, rows: Rows, now: int) -> bool:
    """Write off every rest too small for the processor (``[dunning] minimum_charge``) on the
    due open invoices of the members in ``rows`` (a cycle's batch, just read) who are charged
    by card or debit, inside the caller's transaction, before their facts are derived: the
    processor refuses such a charge, so asking would only fail every cycle and keep the member
    in dunning for cents. Left alone: a member without a payment method (the desk takes any
    amount) or with a charge in flight, a sign-up not yet paid and an instalment not yet due.
    Returns whether anything was written off (then the caller reads the rows again). Reads
    nothing in the common case: the batch's rows hold all it needs."""
    dunning = ctx.config.dunning
    small = []
    for member_id, invs in rows.open_invoices.items():
        if member_id in rows.in_flight:
            continue
        for inv in invs:
            rest = int(inv.total) - int(inv.amount_paid)
            if (
                0 < rest < dunning.minimum_for(inv.currency)
                and inv.kind != "signup"
                and inv.due_at <= now
            ):
                m = rows.members[member_id]
                _, pm = charge_method(
                    m.customer_ref, m.payment_method, m.payer_customer, m.payer_method
                )
                if pm is not None:
                    small.append(inv)
    if not small:
        return False
    apply_payments(
        conn,
        [
            (inv, int(inv.total) - int(inv.amount_paid), "write_off", f"wo:{inv.id}")
            for inv in small
        ],
        now,
    )
    conn.execute(
        update(_INV).where(_INV.c.id.in_([inv.id for inv in small])).values(status="written_off")
    )
    for inv in small:
        log.info(
            "event=written_off invoice=%s amount=%d reason=below_minimum_charge",
            inv.id,
            int(inv.total) - int(inv.amount_paid),
        )
    return True


def give_back(
    ctx: Context, conn: Connection, invoice_id: int, amount: int, reason: str, now: int
) -> tuple[Outcome, list[int]]:
    """Return ``amount`` of an invoice inside the caller's transaction (the unused part of a
    freeze fee): a credit on what is still open first, then a refund of money paid for the rest
    (never more than was paid). The caller passes the returned refund ids to
    ``execute_refunds`` once it has committed. Refused while a charge of the invoice is in
    flight (a SEPA debit): crediting what it is about to pay would leave the invoice paid twice
    when it settles, and what it pays can only be refunded once it has."""
    if _in_flight(conn, invoice_id):
        raise BillingError(
            f"invoice {invoice_id} has a charge in flight (a debit settles within days):"
            " try again once it has settled"
        )
    inv = _invoice(conn, invoice_id)
    out = Outcome(invoice_id, inv.currency)
    rest = int(inv.total) - int(inv.amount_paid) if inv.status == "open" else 0
    first = min(amount, max(0, rest))
    if first:
        out.credit_notes.append(book_credit(conn, inv, first, "freeze", reason, now))
        out.credited += first
        inv = _invoice(conn, invoice_id)
    payable = _refundable(conn, invoice_id, skip_disputed=True)
    second = min(amount - first, sum(left for _, left in payable))
    pending: list[int] = []
    if second > 0:
        pending = _start_refunds(conn, inv, second, "freeze", reason, now, out, skip_disputed=True)
    return out, pending


# --- the provider's side --------------------------------------------------------------------------


def refunds_reported(ctx: Context, intent_id: str) -> bool:
    """The provider says a payment was refunded (``charge.refunded``): every refund of it is
    booked once, ours (finished if a crash left it ``new``) and those made on the provider's
    side (its dashboard), each with its credit note. Returns whether anything was booked."""
    results = [r for r in ctx.gateway.refunds_of(intent_id) if r.state != "failed"]
    booked = False
    for result in results:
        with ctx.engine.begin() as conn:
            now = ctx.clock()
            known = conn.execute(
                select(_REF.c.id).where(_REF.c.gateway_ref == result.refund_id)
            ).first()
            if known is not None:
                continue
            row = None
            if result.key:
                row = conn.execute(
                    select(_REF).where(_REF.c.idempotency_key == result.key).with_for_update()
                ).first()
                if row is not None and row.state != "new":
                    continue
            if row is None:
                pay = conn.execute(
                    select(_PAY, _INV.c.currency)
                    .join(_INV, _INV.c.id == _PAY.c.invoice_id)
                    .where(_PAY.c.reference == intent_id)
                ).first()
                if pay is None:
                    log.warning("event=refund_unknown_payment intent=%s", intent_id)
                    continue
                refund_id = _new_refund(
                    conn,
                    pay,
                    pay.currency,
                    result.amount,
                    "refund",
                    "refunded at the payment provider",
                    f"provider-{result.refund_id}",
                    now,
                )
                row = conn.execute(select(_REF).where(_REF.c.id == refund_id)).one()
            out = Outcome(int(row.invoice_id), row.currency)
            note = _book_refund(conn, row, result.refund_id, now, out)
            _refund_notice(
                ctx, conn, row.member_id, int(row.amount), row.currency, row.invoice_id, [note]
            )
            refresh(ctx, conn, [row.member_id], now)
            booked = True
    if booked:
        ctx.notify_published()
    return booked


def invoice_money(ctx: Context, invoice_id: int) -> dict[str, Any]:
    """An invoice's lines (with their ids), what was booked on it (payments, refunds, credit
    notes, write-offs) and its credit notes, for ``invoice show``."""
    ln = s.invoice_lines
    with ctx.reader.connect() as conn:
        inv = conn.execute(select(_INV).where(_INV.c.id == invoice_id)).first()
        if inv is None:
            raise NotFound(f"no invoice {invoice_id}")
        lines = conn.execute(
            select(ln.c.id, ln.c.kind, ln.c.description, ln.c.amount)
            .where(ln.c.invoice_id == invoice_id)
            .order_by(ln.c.id)
        ).all()
        booked = conn.execute(
            select(_PAY.c.id, _PAY.c.at, _PAY.c.method, _PAY.c.amount, _PAY.c.reference)
            .where(_PAY.c.invoice_id == invoice_id)
            .order_by(_PAY.c.id)
        ).all()
        notes = conn.execute(
            select(_CN.c.number, _CN.c.kind, _CN.c.amount, _CN.c.tax, _CN.c.line_id, _CN.c.reason)
            .where(_CN.c.invoice_id == invoice_id)
            .order_by(_CN.c.id)
        ).all()
    return {
        "id": int(inv.id),
        "member_id": inv.member_id,
        "kind": inv.kind,
        "status": inv.status,
        "currency": inv.currency,
        "total": int(inv.total),
        "settled": int(inv.amount_paid),
        "open": max(0, int(inv.total - inv.amount_paid)) if inv.status == "open" else 0,
        "lines": [dict(r._mapping) for r in lines],
        "booked": [dict(r._mapping) for r in booked],
        "credit_notes": [dict(r._mapping) for r in notes],
    }
