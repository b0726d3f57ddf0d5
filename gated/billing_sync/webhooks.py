"""Payment-provider events (delivered by webhook): each applied once by event id; PaymentIntent
updates recorded like a cycle's own results, chargebacks suspending a member until they close,
and cards added or removed on the provider's side.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection, func, insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.charging import (
    Charge,
    CycleReport,
    applies,
    card_declined_for_good,
    record_results,
)
from gated.billing_sync.context import Context
from gated.billing_sync.facts import charge_methods, load_facts
from gated.billing_sync.gateway import ChargeResult
from gated.billing_sync.invoices import payment_by_reference, reverse_payment
from gated.billing_sync.members import new_card
from gated.billing_sync.notices import format_amount
from gated.billing_sync.publishing import queue_notice, refresh
from gated.billing_sync.store import insert_ignore


def webhook_known(ctx: Context, event_id: str) -> bool:
    """Whether a provider event was already processed."""
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(s.webhook_events.c.id).where(s.webhook_events.c.id == event_id)
        ).first()
    return row is not None


def webhook_done(ctx: Context, event_id: str, event_type: str) -> None:
    """Record a processed provider event by id (a concurrent duplicate is ignored)."""
    with ctx.engine.begin() as conn:
        insert_ignore(
            conn,
            s.webhook_events,
            [{"id": event_id, "type": event_type, "received_at": ctx.clock()}],
        )


def intent_update(ctx: Context, intent_id: str, result: ChargeResult) -> bool:
    """A provider event about a PaymentIntent; applied only if the attempt is not final, but
    a success always is, unless already booked (``charging.applies``)."""
    a = s.payment_attempts
    with ctx.engine.begin() as conn:
        row = conn.execute(select(a).where(a.c.gateway_ref == intent_id).with_for_update()).first()
        if row is None or not applies(row.state, result):
            return False
        customer, pm = charge_methods(conn, {row.member_id}).get(row.member_id, (None, None))
        charge = Charge(
            row.id,
            row.invoice_id,
            row.member_id,
            row.idempotency_key,
            row.amount,
            row.currency,
            customer,
            pm,
            intent_id,
            result,
        )
        record_results(ctx, conn, [charge], CycleReport())
    ctx.notify_published()
    return True


class DisputeMoney(NamedTuple):
    """What a dispute is about in money, as the provider reports it: the amount disputed and the
    fee it charges the gym (the sum of the fees of the dispute's balance transactions, net of
    any given back when it is won). Booked on the dispute, never billed to the member."""

    amount: int | None = None
    currency: str | None = None
    fee: int | None = None


# A dispute event that says nothing about money.
NO_MONEY = DisputeMoney()


def _book_dispute_money(conn: Connection, dispute_id: str, money: DisputeMoney) -> None:
    d = s.disputes
    values: dict[str, Any] = {}
    if money.amount is not None:
        values.update(amount=money.amount, currency=money.currency)
    if money.fee is not None:
        values["fee"] = money.fee
    if values:
        conn.execute(update(d).where(d.c.id == dispute_id).values(**values))


def dispute_opened(
    ctx: Context, dispute_id: str, intent_id: str | None, money: DisputeMoney = NO_MONEY
) -> None:
    """A chargeback: the member is suspended until it closes (unless it already closed) and
    told what their bank disputes; its amount and fee are booked on the dispute."""
    member_id = member_for_intent(ctx, intent_id)
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        opened = insert_ignore(
            conn,
            s.disputes,
            [
                {
                    "id": dispute_id,
                    "member_id": member_id,
                    "payment_ref": intent_id,
                    "status": "open",
                    "opened_at": now,
                    "closed_at": None,
                }
            ],
        )
        if opened:
            _book_dispute_money(conn, dispute_id, money)
        if member_id:
            if opened and intent_id:
                _chargeback_notice(ctx, conn, member_id, intent_id, "dispute", now)
            refresh(ctx, conn, [member_id], now)
    ctx.notify_published()


def _chargeback_notice(
    ctx: Context, conn: Connection, member_id: str, intent_id: str, kind: str, now: int
) -> None:
    """A ``dispute`` or ``chargeback`` notice with the amount of the payment concerned."""
    payment = payment_by_reference(conn, intent_id)
    facts = load_facts(conn, [member_id], now).get(member_id)
    if payment is None or facts is None:
        return
    amount = format_amount(int(payment.amount), payment.currency)
    queue_notice(ctx, conn, facts, kind, amount=amount, invoices=[payment.invoice_id])


def dispute_closed(
    ctx: Context,
    dispute_id: str,
    intent_id: str | None,
    outcome: str,
    money: DisputeMoney = NO_MONEY,
) -> None:
    """A dispute closed: the suspension lifts; a lost dispute reopens the money it took (due
    when it was first due: the member is dunned and let in by their standing). The fee as the
    provider reports it at the close is booked on the dispute."""
    member_id = member_for_intent(ctx, intent_id)
    now = ctx.clock()
    d = s.disputes
    with ctx.engine.begin() as conn:
        row = conn.execute(select(d).where(d.c.id == dispute_id)).first()
        if row is not None and row.status != "open":
            return
        if row is None:
            conn.execute(
                insert(d).values(
                    id=dispute_id,
                    member_id=member_id,
                    payment_ref=intent_id,
                    status=outcome,
                    opened_at=None,
                    closed_at=now,
                )
            )
        else:
            conn.execute(
                update(d).where(d.c.id == dispute_id).values(status=outcome, closed_at=now)
            )
        _book_dispute_money(conn, dispute_id, money)
        if outcome == "lost" and intent_id and member_id:
            taken = reverse_payment(conn, intent_id, now)
            if taken is not None:
                # The money the bank took back is a failed payment: dunning starts (collections
                # after ``collections_days``), and the disputed card is not charged again.
                sub = s.subscriptions
                conn.execute(
                    update(sub)
                    .where(sub.c.member_id == member_id)
                    .values(
                        first_failure_at=func.coalesce(sub.c.first_failure_at, now),
                        next_retry_at=None,
                        needs_new_card=True,
                        review_at=now,
                    )
                )
                # Nor is it charged for anyone else it pays for.
                payer = conn.execute(
                    select(s.members.c.payer_id).where(s.members.c.id == member_id)
                ).scalar()
                card_declined_for_good(conn, {payer or member_id})
                _chargeback_notice(ctx, conn, member_id, intent_id, "chargeback", now)
        if member_id:
            refresh(ctx, conn, [member_id], now)
    ctx.notify_published()


def payment_method_attached(ctx: Context, customer_ref: str, payment_method: str) -> None:
    """A member added a card on the provider's side: use it and retry what is owed."""
    with ctx.reader.connect() as conn:
        payer = conn.execute(
            select(s.members.c.id).where(s.members.c.customer_ref == customer_ref)
        ).scalar()
    if payer is not None:
        new_card(ctx, payer, customer_ref, payment_method)


def payment_method_detached(ctx: Context, payment_method: str) -> None:
    """A card removed on the provider's side is no longer charged."""
    with ctx.engine.begin() as conn:
        conn.execute(
            update(s.members)
            .where(s.members.c.payment_method == payment_method)
            .values(payment_method=None)
        )


def member_for_intent(ctx: Context, intent_id: str | None) -> str | None:
    """The member an intent charged, or None."""
    if not intent_id:
        return None
    with ctx.reader.connect() as conn:
        return conn.execute(
            select(s.payment_attempts.c.member_id).where(
                s.payment_attempts.c.gateway_ref == intent_id
            )
        ).scalar()
