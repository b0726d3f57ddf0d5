"""A member paying an invoice on-session, on the page a pay link opens: one attempt per
submitted form, charged through the same protocol as a renewal (``charging.execute``), and,
when the bank wanted the member to authenticate, what became of it once they are back.
"""

from __future__ import annotations

import logging
from typing import cast

from sqlalchemy import select

from gated.billing_sync import schema as s
from gated.billing_sync.charging import Charge, CycleReport, execute
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, InvoiceClosed, NotFound
from gated.billing_sync.facts import charge_methods
from gated.billing_sync.gateway import ChargeResult, GatewayError, IntentState
from gated.billing_sync.store import insert_ignore
from gated.billing_sync.webhooks import intent_update

log = logging.getLogger("gated.billing")


def pay_invoice(ctx: Context, invoice_id: int, submit_key: str, return_url: str) -> ChargeResult:
    """Charge what is open on an invoice now, on-session, with the card on file.

    ``submit_key`` comes from the page's form: submitting the same form twice makes one
    attempt (its idempotency key), and no second attempt starts while one for the invoice is
    still open. The result is recorded like any charge's (a success makes the member active
    and is published at once); ``requires_action`` with an ``action_url`` is left open until
    the member comes back (``pay_returned``) or the webhook says.
    """
    a, inv_t = s.payment_attempts, s.invoices
    key = f"pay{invoice_id}-{submit_key}"
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        mine = 0
        if conn.execute(select(a.c.id).where(a.c.idempotency_key == key)).first() is None:
            inv = conn.execute(
                select(inv_t).where(inv_t.c.id == invoice_id).with_for_update()
            ).first()
            if inv is None:
                raise NotFound(f"no invoice {invoice_id}")
            if inv.status != "open" or inv.total <= inv.amount_paid:
                raise InvoiceClosed(f"invoice {invoice_id} is {inv.status}")
            busy = conn.execute(
                select(a.c.id).where(
                    a.c.invoice_id == invoice_id, a.c.state.in_(s.OPEN_ATTEMPT_STATES)
                )
            ).first()
            if busy is None:
                row = {
                    "invoice_id": invoice_id,
                    "member_id": inv.member_id,
                    "idempotency_key": key,
                    "amount": int(inv.total - inv.amount_paid),
                    "currency": inv.currency,
                    "state": "new",
                    "created_at": now,
                    "updated_at": now,
                }
                mine = insert_ignore(conn, a, [row])
        attempt = conn.execute(select(a).where(a.c.idempotency_key == key)).first()
        if attempt is not None:
            methods = charge_methods(conn, [attempt.member_id])
    if attempt is None:
        return ChargeResult("", "processing")  # another payment of this invoice is under way
    if not mine:
        # The same form again: answer with what became of the first submission.
        state = "processing" if attempt.state in ("new", "created") else attempt.state
        return ChargeResult(
            attempt.gateway_ref or "", cast(IntentState, state), attempt.decline_code
        )
    customer, pm = methods.get(attempt.member_id, (None, None))
    charge = Charge(
        attempt.id,
        invoice_id,
        attempt.member_id,
        key,
        int(attempt.amount),
        attempt.currency,
        customer,
        pm,
        return_url=return_url,
    )
    report = CycleReport()
    execute(ctx, [charge], report)
    ctx.notify_published()
    if charge.result is None:
        raise BillingError("the payment provider could not be reached; try again shortly")
    log.info(
        "event=pay_link_charge invoice=%s member=%s state=%s",
        invoice_id,
        attempt.member_id,
        charge.result.state,
    )
    return charge.result


def pay_returned(ctx: Context, invoice_id: int) -> None:
    """The member is back from their bank's page: look up and record what became of the
    invoice's on-session attempts that are still open or were left waiting on them (3-D Secure
    finished in the page after the charge answered ``requires_action``)."""
    a = s.payment_attempts
    with ctx.reader.connect() as conn:
        rows = conn.execute(
            select(a).where(
                a.c.invoice_id == invoice_id,
                a.c.idempotency_key.startswith(f"pay{invoice_id}-"),
                a.c.state.in_(("created", "requires_action")),
            )
        ).all()
    for r in rows:
        try:
            result = ctx.gateway.retrieve_intent(r.gateway_ref)
        except GatewayError as exc:
            log.warning("event=pay_return_lookup_failed attempt=%s error=%s", r.id, exc)
            continue
        if result.state in ("requires_confirmation", "requires_action"):
            continue
        intent_update(ctx, r.gateway_ref, result)
