"""Payment plans for arrears: what a member owes, split into instalments due a month apart.

The open invoices are settled by a ``payment_plan`` transfer (a payment row that moves their
balance, not money: the revenue report leaves it out) and the same amount is billed again as
``instalment`` invoices, each due on its day and carrying its share of the tax of what it
replaces, so that the books still add up (invoiced = paid + open) and the revenue of each
instalment shows its net and tax. An instalment is charged on its day like any invoice, through
the same crash-safe protocol; one not yet due is neither charged nor overdue, so the member is
in good standing while the instalments are paid on time. A missed one is dunned as any other
debt: retries, grace, suspension, collections.

A plan is changed the same way: what is still owed on its instalments (the open ones, and the
rest of one paid in part) is moved by a ``payment_plan`` transfer onto new instalments; the
instalments paid stay as they are, and the total owed does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError
from gated.billing_sync.facts import load_facts
from gated.billing_sync.invoices import apply_payment, home_site
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.numbering import number_rows
from gated.billing_sync.publishing import refresh
from gated.billing_sync.store import bulk, insert_ids

MAX_INSTALMENTS = 12


@dataclass(frozen=True)
class Instalment:
    """One instalment: its day, what it costs and the tax in it."""

    due_at: int
    total: int
    tax: int

    def as_dict(self) -> dict[str, Any]:
        """The instalment as plain values."""
        return {"due": format_day(self.due_at), "total": self.total, "tax": self.tax}


@dataclass(frozen=True)
class PaymentPlan:
    """What a payment plan replaces (open invoices) and its instalments."""

    member_id: str
    currency: str
    invoices: list[int]
    instalments: list[Instalment]

    @property
    def total(self) -> int:
        """What is owed, and what the instalments add up to."""
        return sum(i.total for i in self.instalments)


def split(amount: int, parts: int) -> list[int]:
    """``amount`` in ``parts`` as equal as minor units allow, the larger ones first."""
    base, extra = divmod(amount, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def quote(
    ctx: Context, member_id: str, instalments: int, first_at: int | None = None
) -> PaymentPlan:
    """The payment plan that would split what ``member_id`` owes into ``instalments`` a month
    apart from ``first_at`` (default today); refused, saying why, where it is not allowed."""
    now = ctx.clock()
    with ctx.reader.connect() as conn:
        return _plan(ctx, conn, member_id, instalments, first_at, now)


def start(
    ctx: Context, member_id: str, instalments: int, first_at: int | None = None
) -> tuple[PaymentPlan, CycleReport]:
    """Put ``member_id``'s arrears on a payment plan: the open invoices are settled by a
    transfer to the instalment invoices, each due on its day. An instalment due today is
    charged at once."""
    return _book(ctx, member_id, instalments, first_at, change=False)


def change_quote(
    ctx: Context, member_id: str, instalments: int, first_at: int | None = None
) -> PaymentPlan:
    """The new instalments that would re-split what is still owed on ``member_id``'s payment
    plan into ``instalments`` a month apart from ``first_at`` (default today); refused, saying
    why, where it is not allowed."""
    now = ctx.clock()
    with ctx.reader.connect() as conn:
        return _plan(ctx, conn, member_id, instalments, first_at, now, change=True)


def change(
    ctx: Context, member_id: str, instalments: int, first_at: int | None = None
) -> tuple[PaymentPlan, CycleReport]:
    """Re-split what is still owed on ``member_id``'s payment plan into ``instalments`` new
    ones: the open instalments are settled by a transfer to the new ones (the instalments paid
    are left as they are). A new instalment due today is charged at once."""
    return _book(ctx, member_id, instalments, first_at, change=True)


def _book(
    ctx: Context, member_id: str, instalments: int, first_at: int | None, *, change: bool
) -> tuple[PaymentPlan, CycleReport]:
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        plan = _plan(ctx, conn, member_id, instalments, first_at, now, change=change)
        facts = load_facts(conn, [member_id], now)[member_id]
        heads = []
        for part in plan.instalments:
            heads.append(
                {
                    "member_id": member_id,
                    "kind": "instalment",
                    "currency": plan.currency,
                    "period_start": None,
                    "period_end": None,
                    "subtotal": part.total - part.tax,
                    "tax": part.tax,
                    "total": part.total,
                    "amount_paid": 0,
                    "status": "open",
                    "due_at": part.due_at,
                    "created_at": now,
                    # Issued now by the member's home site, like every invoice.
                    "site": home_site(facts.member.sites),
                }
            )
        number_rows(conn, heads, now)
        ids = insert_ids(conn, s.invoices, heads)
        replaced = ", ".join(map(str, plan.invoices))
        lines: list[dict[str, Any]] = []
        for k, (invoice_id, head) in enumerate(zip(ids, heads, strict=True), 1):
            lines.append(
                {
                    "invoice_id": invoice_id,
                    "kind": "instalment",
                    "description": f"Instalment {k} of {len(ids)} for invoice(s) {replaced}",
                    "quantity": 1,
                    "unit_amount": head["subtotal"],
                    "amount": head["subtotal"],
                    "tax_rate_bp": 0,
                }
            )
            if head["tax"]:
                lines.append(
                    {
                        "invoice_id": invoice_id,
                        "kind": "tax",
                        "description": f"Tax in invoice(s) {replaced}",
                        "quantity": 1,
                        "unit_amount": head["tax"],
                        "amount": head["tax"],
                        "tax_rate_bp": 0,
                    }
                )
        bulk(conn, insert(s.invoice_lines), lines)
        for inv in facts.open_invoices:
            if inv.id in plan.invoices:
                apply_payment(
                    conn,
                    inv,
                    int(inv.total - inv.amount_paid),
                    "payment_plan",
                    f"payment-plan-{ids[0]}:{inv.id}",
                    now,
                )
        conn.execute(
            s.subscriptions.update()
            .where(s.subscriptions.c.member_id == member_id)
            .values(review_at=now)
        )
        refresh(ctx, conn, [member_id], now)
    ctx.notify_published()
    return plan, run_cycle(ctx, member_ids=[member_id])


def _plan(
    ctx: Context,
    conn: Connection,
    member_id: str,
    instalments: int,
    first_at: int | None,
    now: int,
    *,
    change: bool = False,
) -> PaymentPlan:
    if not 2 <= instalments <= MAX_INSTALMENTS:
        raise BillingError(f"a payment plan has 2 to {MAX_INSTALMENTS} instalments")
    facts = load_facts(conn, [member_id], now).get(member_id)
    if facts is None:
        raise BillingError(f"no member {member_id!r}")
    if facts.member.erased:
        raise BillingError(f"member {member_id} is erased")
    first = now if first_at is None or first_at < now else first_at
    if first > now + 31 * eng.DAY:
        raise BillingError("the first instalment is due within a month")
    if facts.account.processing:
        raise BillingError(
            f"a charge for {member_id} is still in flight: wait for it to settle first"
        )
    if facts.account.disputed:
        raise BillingError(f"{member_id} has a dispute open: wait for it to close first")
    owing = [i for i in facts.open_invoices if i.total > i.amount_paid]
    on_plan = [i for i in owing if i.kind == "instalment"]
    if change:
        # Only the plan's rest is re-split; any other debt is dunned as it was.
        if not on_plan:
            raise BillingError(f"{member_id} owes nothing on a payment plan: nothing to change")
        owing = on_plan
    elif on_plan:
        raise BillingError(f"{member_id} is on a payment plan already")
    a = s.payment_attempts
    if conn.execute(
        select(a.c.id).where(
            a.c.invoice_id.in_([int(i.id) for i in owing]),
            a.c.state.in_(s.OPEN_ATTEMPT_STATES),
        )
    ).first():
        # Moving a debt whose charge may still succeed would leave it paid twice.
        raise BillingError(
            f"a charge for {member_id} is still in flight: wait for it to settle first"
        )
    owed = sum(int(i.total - i.amount_paid) for i in owing)
    if owed < instalments:
        raise BillingError(f"{member_id} owes {owed}: nothing to split into {instalments}")
    currency = owing[0].currency
    smallest = ctx.config.dunning.minimum_for(currency)
    if owed // instalments < smallest:
        # Each would be written off as a rest below the processor's minimum, not charged.
        raise BillingError(
            f"{member_id} owes {format_amount(owed, currency)}: {instalments} instalments would"
            f" each be below the smallest charge, {format_amount(smallest, currency)}"
        )
    tax = sum(_tax_share(int(i.total - i.amount_paid), int(i.tax), int(i.total)) for i in owing)
    days = [eng.add_months(first, k) for k in range(instalments)]
    parts = [
        Instalment(day, total, part_tax)
        for day, total, part_tax in zip(
            days, split(owed, instalments), split(tax, instalments), strict=True
        )
    ]
    return PaymentPlan(member_id, currency, [int(i.id) for i in owing], parts)


def _tax_share(amount: int, tax: int, total: int) -> int:
    """The tax in ``amount`` still open on an invoice of ``total`` carrying ``tax``, rounded
    half up."""
    if total <= 0:
        return 0
    return (2 * amount * tax + total) // (2 * total)
