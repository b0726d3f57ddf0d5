"""What a member changes on their own in the member app, beside the operations staff use
(``membership.freeze``, ``membership.cancel``, ``members.set_payment_method``): the fee and dates
of a freeze and the end of a cancellation worked out before the member confirms (from the same
engine rules those operations apply), their phone and emergency contact, an e-mail change
confirmed by a link to the new address, and a card entered in the browser (a SetupIntent).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import func, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import load_one
from gated.billing_sync.gateway import CardSetup
from gated.billing_sync.notices import render
from gated.billing_sync.publishing import queue_mail, readdress_notices
from gated.billing_sync.signup import CONTACT_MAX, EMAIL, EMAIL_MAX, PHONE, clean_text
from gated.billing_sync.store import digest, token_usable
from gated.contract import format_time

log = logging.getLogger("gated.billing.self_service")

EMAIL_CHANGE_TTL_S = 24 * 3600


def freeze_quote(
    ctx: Context, member_id: str, months: int, start_at: int | None = None
) -> dict[str, Any]:
    """What freezing for ``months`` from now (or from ``start_at``, a later day) would do:
    whether the rules allow it (and if not, why), from when to when, the fee billed at once
    (gross, with its tax), whether the plan keeps it if the freeze ends early, and the new
    paid-through date. Changes nothing."""
    now = ctx.clock()
    f = load_one(ctx, member_id)
    if f.sub is None or f.plan is None:
        return {"allowed": False, "reason": "You have no membership to freeze yet."}
    try:
        eng.check_freeze(f.sub.status, f.account.owed, months)
        start = eng.freeze_start(start_at, now)
    except eng.FreezeRefused as exc:
        return {"allowed": False, "reason": _freeze_reason(str(exc), f.sub.status)}
    with ctx.reader.connect() as conn:
        booked = conn.execute(
            select(s.freezes.c.id).where(
                s.freezes.c.member_id == member_id, s.freezes.c.ends_at > now
            )
        ).first()
    if booked is not None:
        return {"allowed": False, "reason": "A freeze is already booked."}
    end = eng.add_months(start, months)
    net = int(f.plan.freeze_fee) * months
    fee = net + eng.tax_of(net, int(f.plan.tax_rate_bp))
    paid_through = f.sub.paid_through
    return {
        "allowed": True,
        "months": months,
        "start": format_time(start),
        "end": format_time(end),
        "fee": fee,
        # Said before the member confirms: the plan keeps the fee if they unfreeze early.
        "fee_kept": bool(f.plan.freeze_fee_kept) and fee > 0,
        "currency": f.plan.currency,
        "paid_through": format_time(int(paid_through) + end - start) if paid_through else None,
    }


def _freeze_reason(rule: str, status: str) -> str:
    if "1 to 3" in rule:
        return "A freeze lasts one to three months."
    if "before today" in rule:
        return "A freeze cannot start before today."
    if status in ("active", "pending_cancel"):
        return "Pay what is open first: only a membership that is paid up can be frozen."
    return "Only a membership that is active and paid up can be frozen."


def cancel_quote(ctx: Context, member_id: str) -> dict[str, Any]:
    """The day a cancellation made now takes effect (the end of the paid period or of the
    minimum term, whichever is later), and whether the member may cancel. Changes nothing."""
    now = ctx.clock()
    f = load_one(ctx, member_id)
    if f.sub is None or f.plan is None:
        return {"allowed": False, "reason": "You have no membership to cancel yet."}
    if f.sub.cancel_at is not None:
        return {
            "allowed": False,
            "reason": f"Your membership is already cancelled; it ends on "
            f"{format_time(int(f.sub.cancel_at))[:10]}.",
        }
    if f.sub.status in ("cancelled", "collections", "expired"):
        return {"allowed": False, "reason": "Your membership has already ended."}
    when = eng.cancel_date(f.sub.paid_through, f.sub.started_at, f.plan.min_term_months, now)
    min_term_end = eng.add_months(int(f.sub.started_at), int(f.plan.min_term_months))
    return {
        "allowed": True,
        "ends_at": format_time(when),
        "min_term_months": int(f.plan.min_term_months),
        "min_term_end": format_time(min_term_end) if f.plan.min_term_months else None,
        "paid_through": format_time(int(f.sub.paid_through)) if f.sub.paid_through else None,
    }


def contact(ctx: Context, member_id: str) -> dict[str, Any]:
    """The member's contact details as they may edit them."""
    m = s.members
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(m.c.name, m.c.email, m.c.phone, m.c.emergency_contact).where(m.c.id == member_id)
        ).first()
    if row is None:
        raise NotFound(f"no member {member_id!r}")
    return dict(row._mapping)


def update_contact(ctx: Context, member_id: str, phone: str, emergency_contact: str) -> None:
    """Change the member's phone number and emergency contact (both required)."""
    phone = clean_text(phone, "phone number", 32)
    if not PHONE.fullmatch(phone):
        raise BillingError("Enter your phone number with digits, like +49 30 1234567.")
    emergency = clean_text(emergency_contact, "emergency contact", CONTACT_MAX)
    with ctx.engine.begin() as conn:
        changed = conn.execute(
            update(s.members)
            .where(s.members.c.id == member_id)
            .values(phone=phone, emergency_contact=emergency)
        ).rowcount
    if changed != 1:
        raise NotFound(f"no member {member_id!r}")
    log.info("event=contact_changed member=%s fields=phone,emergency_contact", member_id)


def request_email_change(ctx: Context, member_id: str, new_email: str, link_base: str) -> None:
    """Mail a confirmation link (under ``link_base``) to ``new_email``; the address changes
    only when it is opened and confirmed (``confirm_email_change``)."""
    email = clean_text(new_email, "e-mail address", EMAIL_MAX)
    if not EMAIL.fullmatch(email):
        raise BillingError("Enter the new e-mail address, like name@example.com.")
    f = load_one(ctx, member_id)
    if f.member.email and f.member.email.lower() == email.lower():
        raise BillingError("That is already your e-mail address.")
    now = ctx.clock()
    token = secrets.token_urlsafe(32)
    notice = render(
        "email_change",
        email,
        member_id,
        name=f.member.name,
        link=f"{link_base}{token}",
        hours=EMAIL_CHANGE_TTL_S // 3600,
    )
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(s.email_changes).values(
                member_id=member_id,
                new_email=email,
                token_sha256=digest(token),
                created_at=now,
                expires_at=now + EMAIL_CHANGE_TTL_S,
            )
        )
        queue_mail(conn, notice, now)
    log.info("event=email_change_requested member=%s", member_id)


def email_change_usable(ctx: Context, token: str) -> bool:
    """Whether a confirmation link would still change the address (for its GET page)."""
    return token_usable(ctx.reader, s.email_changes, "token_sha256", token, ctx.clock())


def confirm_email_change(ctx: Context, token: str) -> str | None:
    """Use a confirmation link: the member's address becomes the one it was sent to. Returns
    the member id, or None for a link that is unknown, used or expired (or an address another
    member took meanwhile)."""
    e, m = s.email_changes, s.members
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        row = conn.execute(
            select(e)
            .where(e.c.token_sha256 == digest(token), e.c.used_at.is_(None), e.c.expires_at > now)
            .with_for_update()
        ).first()
        if row is None:
            return None
        conn.execute(update(e).where(e.c.id == row.id).values(used_at=now))
        taken = conn.execute(
            select(m.c.id).where(
                func.lower(m.c.email) == row.new_email.lower(),
                m.c.id != row.member_id,
                m.c.erased.is_(False),
            )
        ).first()
        if taken is not None:
            return None
        old = conn.execute(select(m.c.email).where(m.c.id == row.member_id)).scalar()
        # Proven reachable by the link: any bounce of the old address no longer applies.
        conn.execute(
            update(m)
            .where(m.c.id == row.member_id)
            .values(email=row.new_email, email_bounced_at=None)
        )
        readdress_notices(conn, row.member_id, old, row.new_email)
    log.info("event=email_changed member=%s", row.member_id)
    return str(row.member_id)


def card_setup(ctx: Context, member_id: str, kind: str = "card") -> CardSetup:
    """A SetupIntent for a card (``kind`` "sepa_debit": a bank account) the member (or, for a
    dependant, nobody: the payer pays) enters in the browser; the provider's customer is made
    on first use."""
    f = load_one(ctx, member_id)
    if f.member.payer_id:
        raise BillingError("Your membership is paid by someone else: they change the card.")
    customer = f.member.customer_ref
    if customer is None:
        customer = ctx.gateway.create_customer(member_id, f.member.email, f.member.name)
        with ctx.engine.begin() as conn:
            conn.execute(
                update(s.members).where(s.members.c.id == member_id).values(customer_ref=customer)
            )
    return ctx.gateway.create_setup(customer, kind)


def card_from_setup(ctx: Context, member_id: str, setup_id: str) -> str:
    """The card a succeeded SetupIntent of this member saved; BillingError otherwise."""
    f = load_one(ctx, member_id)
    pm = None
    if f.member.customer_ref is not None:
        pm = ctx.gateway.setup_payment_method(setup_id, f.member.customer_ref)
    if pm is None:
        raise BillingError("Your card was not saved. Enter it again.")
    return pm
