"""Changes staff book on a running membership: a freeze (the contract runs that much longer, a
fee billed now), ending one early, a cancellation at the end of the term, and extras (personal
training, a class pack) billed on their own invoice and charged at once.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import next_invoice
from gated.billing_sync import schema as s
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import load_facts, load_one
from gated.billing_sync.invoices import create_invoice
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.publishing import queue_notice, refresh
from gated.billing_sync.refunds import Outcome, execute_refunds, give_back
from gated.contract import format_time


def freeze(ctx: Context, member_id: str, months: int, start_at: int | None = None) -> CycleReport:
    """Freeze a current member for 1-3 months from today or a later day (never back-dated):
    denied meanwhile, contract extended by as long, the plan's monthly freeze fee billed now.
    One freeze at a time: another is refused while one is running or booked."""
    now = ctx.clock()
    facts = load_one(ctx, member_id)
    if facts.sub is None or facts.plan is None:
        raise BillingError(f"member {member_id} has no subscription")
    eng.check_freeze(facts.sub.status, facts.account.owed, months)
    start = eng.freeze_start(start_at, now)
    end = eng.add_months(start, months)
    fee = int(facts.plan.freeze_fee) * months
    with ctx.engine.begin() as conn:
        if conn.execute(
            select(s.freezes.c.id).where(
                s.freezes.c.member_id == member_id, s.freezes.c.ends_at > now
            )
        ).first():
            raise eng.FreezeRefused("a freeze is already booked")
        invoice_id = None
        if fee:
            lines = [
                (
                    "freeze_fee",
                    f"Freeze fee, {months} month(s)",
                    months,
                    int(facts.plan.freeze_fee),
                )
            ]
            invoice_id = create_invoice(
                ctx, conn, facts, "freeze", lines, int(facts.plan.tax_rate_bp), now, None
            )
        conn.execute(
            insert(s.freezes).values(
                member_id=member_id,
                starts_at=start,
                ends_at=end,
                fee=fee,
                created_at=now,
                invoice_id=invoice_id,
            )
        )
        length = end - start
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(
                paid_through=s.subscriptions.c.paid_through + length,
                cancel_at=s.subscriptions.c.cancel_at + length,
                review_at=now,
            )
        )
        queue_notice(
            ctx,
            conn,
            facts,
            "freeze",
            start=format_time(start),
            end=format_time(end),
            amount=format_amount(fee, facts.plan.currency),
            fee_rule=freeze_fee_rule(fee, bool(facts.plan.freeze_fee_kept)),
        )
        refresh(ctx, conn, [member_id], now)
    return run_cycle(ctx, member_ids=[member_id])


def freeze_fee_rule(fee: int, kept: bool) -> str:
    """What happens to a freeze fee if the freeze ends early, in a sentence (a notice's line,
    the command line's confirmation): nothing without a fee."""
    if not fee:
        return ""
    if kept:
        return "The fee is not refunded if the freeze ends early.\n"
    return "If the freeze ends early, the unused part of the fee is given back.\n"


def unfreeze(ctx: Context, member_id: str) -> Outcome | None:
    """End the current freeze now (or drop a booked one); the unused time comes off the
    extension, and the unused part of its fee is given back (``engine.unused_freeze_fee``): a
    credit note on what is still owed of it, a refund of what was paid, unless the plan keeps
    its freeze fee (``freeze_fee_kept``). Returns what was given back (None when nothing
    was)."""
    now = ctx.clock()
    back: Outcome | None = None
    pending: list[int] = []
    with ctx.engine.begin() as conn:
        row = conn.execute(
            select(s.freezes)
            .where(s.freezes.c.member_id == member_id, s.freezes.c.ends_at > now)
            .order_by(s.freezes.c.starts_at)
        ).first()
        if row is None:
            raise NotFound(f"member {member_id} has no current or booked freeze")
        unused = row.ends_at - max(now, row.starts_at)
        if row.starts_at > now:
            conn.execute(delete(s.freezes).where(s.freezes.c.id == row.id))
        else:
            conn.execute(update(s.freezes).where(s.freezes.c.id == row.id).values(ends_at=now))
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(
                paid_through=s.subscriptions.c.paid_through - unused,
                cancel_at=s.subscriptions.c.cancel_at - unused,
                review_at=now,
            )
        )
        kept = conn.execute(
            select(s.plans.c.freeze_fee_kept)
            .join(s.subscriptions, s.subscriptions.c.plan_id == s.plans.c.id)
            .where(s.subscriptions.c.member_id == member_id)
        ).scalar()
        fee, amount = 0, 0
        # A plan whose freeze fee is kept said so before the freeze was booked.
        if row.invoice_id is not None:
            fee = conn.execute(
                select(s.invoices.c.total).where(s.invoices.c.id == row.invoice_id)
            ).scalar_one()
            if not kept:
                amount = eng.unused_freeze_fee(int(fee), row.starts_at, row.ends_at, now)
            if amount > 0:
                reason = "freeze ended early: the unused part of its fee"
                back, pending = give_back(ctx, conn, row.invoice_id, amount, reason, now)
        refresh(ctx, conn, [member_id], now)
        facts = load_facts(conn, [member_id], now).get(member_id)
        if facts is not None:
            currency = facts.plan.currency if facts.plan is not None else ctx.config.currency
            started = row.starts_at <= now
            queue_notice(
                ctx,
                conn,
                facts,
                "unfreeze",
                what=(
                    f"your freeze ended on {format_day(now)}, before {format_day(row.ends_at)}"
                    " as it was booked."
                    if started
                    else f"your freeze booked from {format_day(row.starts_at)} until"
                    f" {format_day(row.ends_at)} is called off."
                ),
                returned=_fee_returned(int(fee), amount, back, bool(kept), currency),
            )
    if back is not None:
        execute_refunds(ctx, pending, back)
    ctx.notify_published()
    return back


def _fee_returned(fee: int, amount: int, back: Outcome | None, kept: bool, currency: str) -> str:
    """The unfreeze notice's line on the fee: kept, given back (how), or nothing left of it."""
    if not fee:
        return ""
    money = format_amount(fee, currency)
    if kept:
        return f"Your plan keeps the freeze fee ({money}): none of it is refunded.\n"
    if back is None:
        return f"Nothing of the freeze fee ({money}) is given back: every day of it was used.\n"
    parts = []
    if back.credited:
        parts.append(f"{format_amount(back.credited, currency)} comes off what is still owed of it")
    if amount > back.credited:
        parts.append(
            f"{format_amount(amount - back.credited, currency)} is refunded to the way it was paid"
        )
    return (
        f"The unused part of the freeze fee ({money}), {format_amount(amount, currency)},"
        f" is given back: {' and '.join(parts)}.\n"
    )


def cancel(ctx: Context, member_id: str) -> int:
    """Cancel at the end of the paid period or the minimum term; returns that date."""
    now = ctx.clock()
    facts = load_one(ctx, member_id)
    if facts.sub is None or facts.plan is None:
        raise BillingError(f"member {member_id} has no subscription")
    when = eng.cancel_date(
        facts.sub.paid_through, facts.sub.started_at, facts.plan.min_term_months, now
    )
    with ctx.engine.begin() as conn:
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(cancel_at=when, review_at=now)
        )
        # Products sold on the next invoice wait for no renewal now: billed alone, charged
        # at the review just asked for.
        next_invoice.bill_alone(conn, member_id, now)
        refresh(ctx, conn, [member_id], now)
        queue_notice(ctx, conn, facts, "cancellation", plan=facts.plan.name, end=format_day(when))
    return when


def uncancel(ctx: Context, member_id: str) -> None:
    """Withdraw a cancellation before the contract ends: the member renews as before. Refused
    once the end date has passed (the contract is over: enrol them again)."""
    now = ctx.clock()
    facts = load_one(ctx, member_id)
    if facts.sub is None or facts.member.erased:
        raise BillingError(f"member {member_id} has no subscription")
    cancel_at = facts.sub.cancel_at
    if cancel_at is None:
        raise BillingError(f"member {member_id} has not cancelled")
    if cancel_at <= now:
        raise BillingError(
            f"the contract of {member_id} ended on {format_time(cancel_at)}: enrol them again"
        )
    with ctx.engine.begin() as conn:
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id, s.subscriptions.c.cancel_at > now)
            .values(cancel_at=None, review_at=now)
        )
        refresh(ctx, conn, [member_id], now)
    ctx.notify_published()


def charge_extra(
    ctx: Context,
    member_id: str,
    kind: str,
    description: str,
    amount: int,
    tax_rate_bp: int | None = None,
) -> CycleReport:
    """Bill an extra (personal training, a class pack) on its own invoice and charge it now."""
    if amount <= 0:
        raise BillingError("an extra needs a positive amount (minor units)")
    now = ctx.clock()
    facts = load_one(ctx, member_id)
    if facts.plan is None:
        raise BillingError(f"member {member_id} has no subscription")
    rate = int(facts.plan.tax_rate_bp) if tax_rate_bp is None else tax_rate_bp
    with ctx.engine.begin() as conn:
        invoice_id = create_invoice(
            ctx, conn, facts, "extra", [("extra", description, 1, amount)], rate, now, None
        )
        conn.execute(
            insert(s.extras).values(
                member_id=member_id,
                kind=kind,
                description=description,
                amount=amount,
                tax_rate_bp=rate,
                created_at=now,
                invoice_id=invoice_id,
            )
        )
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(review_at=now)
        )
    return run_cycle(ctx, member_ids=[member_id])
