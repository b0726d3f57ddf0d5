"""Online sign-up: what a visitor may join (sites, plans and their rules in numbers), a sign-up
with its accepted contract and first invoice, paying that invoice on-session, the signed terms,
and deleting sign-ups left unpaid for a day.

A sign-up is a member without a subscription until its first invoice (kind ``signup``) is paid:
the cycle bills nothing for it and the gates are told nothing. Paying it, by any path, starts the
membership (``enrolment.start_memberships``, called where the payment is booked), so a payment
the provider reports by webhook after the browser is gone completes the sign-up as well.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.enrolment import start_memberships
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import ChargeResult
from gated.billing_sync.invoices import InvoiceSpec, create_invoices
from gated.billing_sync.members import set_payment_method
from gated.billing_sync.paying import pay_invoice
from gated.billing_sync.publishing import refresh
from gated.billing_sync.store import many
from gated.contract import format_time

log = logging.getLogger("gated.billing.signup")

# An unpaid sign-up is deleted this long after it was made (``purge_unpaid``).
UNPAID_TTL_S = 86_400
NAME_MAX = 100
EMAIL_MAX = 254
CONTACT_MAX = 200
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{4,30}")


@dataclass(frozen=True)
class Terms:
    """The membership terms as shown to the visitor: version, SHA-256 of the file, text."""

    version: str
    sha256: str
    text: str


@dataclass(frozen=True)
class Applicant:
    """What a visitor typed into the sign-up form."""

    site: str
    plan_id: str
    name: str
    email: str
    phone: str
    emergency_contact: str


def offer(ctx: Context) -> dict[str, Any]:
    """The sites and plans one can join, with every number the visitor should see before
    signing: the gross price, the tax in it, the minimum term and the freeze rules."""
    with ctx.reader.connect() as conn:
        # A pass sold at the desk (``products.py``) has no months and is no plan to join.
        rows = conn.execute(
            select(s.plans)
            .where(s.plans.c.period_months > 0)
            .order_by(s.plans.c.price, s.plans.c.id)
        ).all()
    return {"sites": list(ctx.config.sites), "plans": [plan_terms(r) for r in rows]}


def plan_terms(row: Any) -> dict[str, Any]:
    """One plan's numbers as the sign-up page shows them."""
    price, rate = int(row.price), int(row.tax_rate_bp)
    tax = eng.tax_of(price, rate)
    fee = int(row.freeze_fee)
    return {
        "id": row.id,
        "name": row.name,
        "currency": row.currency,
        "net": price,
        "tax": tax,
        "tax_rate_bp": rate,
        "price": price + tax,
        "period_months": int(row.period_months),
        "min_term_months": int(row.min_term_months),
        "freeze_fee": fee + eng.tax_of(fee, rate),
        "auto_renew": bool(row.auto_renew),
        "sepa": bool(row.sepa),
    }


def clean_text(value: str, what: str, limit: int) -> str:
    """A typed field, required, trimmed and normalized (NFC); control characters and overlong
    text are refused with a message naming the field."""
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise BillingError(f"Enter your {what}.")
    if len(value) > limit:
        raise BillingError(f"Your {what} is too long (at most {limit} characters).")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in value):
        raise BillingError(f"Your {what} contains characters we cannot store.")
    return value


def check_applicant(a: Applicant) -> Applicant:
    """The form's fields checked and cleaned; BillingError names the first bad one."""
    name = clean_text(a.name, "name", NAME_MAX)
    email = clean_text(a.email, "e-mail address", EMAIL_MAX)
    if not EMAIL.fullmatch(email):
        raise BillingError("Enter your e-mail address, like name@example.com.")
    phone = clean_text(a.phone, "phone number", 32)
    if not PHONE.fullmatch(phone):
        raise BillingError("Enter your phone number with digits, like +49 30 1234567.")
    emergency = clean_text(a.emergency_contact, "emergency contact", CONTACT_MAX)
    return Applicant(a.site, a.plan_id, name, email, phone, emergency)


def start(
    ctx: Context, applicant: Applicant, terms: Terms, client_address: str, user_agent: str
) -> str:
    """Record a sign-up: the member (no subscription yet), the accepted contract and the
    first invoice, due now. Returns the new member's id. An unpaid sign-up with the same
    address is replaced; an address of a member who has paid is refused."""
    a = check_applicant(applicant)
    if a.site not in ctx.config.sites:
        raise BillingError("Choose one of the sites listed.")
    now = ctx.clock()
    m, su = s.members, s.signups
    with ctx.engine.begin() as conn:
        plan = conn.execute(select(s.plans).where(s.plans.c.id == a.plan_id)).first()
        if plan is None or int(plan.period_months) < 1:
            raise NotFound("That plan is no longer offered. Choose one of the plans listed.")
        holders = conn.execute(
            select(m.c.id, su.c.paid_at, su.c.member_id.label("signup"))
            .join(su, su.c.member_id == m.c.id, isouter=True)
            .where(func.lower(m.c.email) == a.email.lower(), m.c.erased.is_(False))
        ).all()
        if any(h.signup is None or h.paid_at is not None for h in holders):
            raise BillingError(
                "This e-mail address already belongs to a membership: sign in instead."
            )
        _delete(conn, [h.id for h in holders if _purgeable(conn, h.id)])
        member_id = f"web-{secrets.token_hex(6)}"
        conn.execute(
            insert(m).values(
                id=member_id,
                name=a.name,
                email=a.email,
                sites=json.dumps([a.site]),
                role="member",
                erased=False,
                created_at=now,
                phone=a.phone,
                emergency_contact=a.emergency_contact,
            )
        )
        end = eng.add_months(now, int(plan.period_months))
        label = f"{plan.name}, first {_months(int(plan.period_months))}"
        spec = InvoiceSpec(
            member_id,
            "signup",
            plan.currency,
            [("membership", label, 1, int(plan.price))],
            int(plan.tax_rate_bp),
            now,
            (now, end),
        )
        (invoice_id,) = create_invoices(conn, [spec], now, issue=False)
        conn.execute(
            insert(su).values(
                member_id=member_id, plan_id=plan.id, invoice_id=invoice_id, created_at=now
            )
        )
        conn.execute(
            insert(s.contracts).values(
                member_id=member_id,
                plan_id=plan.id,
                terms_version=terms.version,
                terms_sha256=terms.sha256,
                terms_text=terms.text,
                accepted_at=now,
                client_address=client_address[:64],
                user_agent=user_agent[:200],
            )
        )
    log.info("event=signup_started member=%s plan=%s", member_id, plan.id)
    return member_id


def _months(n: int) -> str:
    return "month" if n == 1 else f"{n} months"


def status(ctx: Context, member_id: str) -> dict[str, Any] | None:
    """The member's sign-up (plan, first invoice, whether it is paid), or None when the member
    did not join online."""
    su, inv = s.signups, s.invoices
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(su, inv.c.total, inv.c.amount_paid, inv.c.currency, inv.c.status)
            .join(inv, inv.c.id == su.c.invoice_id)
            .where(su.c.member_id == member_id)
        ).first()
        if row is None:
            return None
        plan = conn.execute(select(s.plans).where(s.plans.c.id == row.plan_id)).first()
    return {
        "member_id": member_id,
        "plan": plan_terms(plan) if plan is not None else None,
        "invoice_id": int(row.invoice_id),
        "total": int(row.total),
        "owed": int(row.total - row.amount_paid),
        "currency": row.currency,
        "paid": row.paid_at is not None,
        "created_at": format_time(int(row.created_at)),
    }


def pay(
    ctx: Context, member_id: str, payment_method: str | None, submit_key: str, return_url: str
) -> ChargeResult:
    """Pay the sign-up's first invoice now, on-session: with ``payment_method`` saved first
    (a test method's name, or the card a SetupIntent saved), else with the card on file. The
    same ``submit_key`` twice is one attempt and one charge (``paying.pay_invoice``)."""
    found = status(ctx, member_id)
    if found is None:
        raise NotFound("no sign-up of this member")
    if found["paid"]:
        return ChargeResult("", "succeeded")
    if payment_method is not None:
        set_payment_method(ctx, member_id, payment_method)
    result = pay_invoice(ctx, found["invoice_id"], submit_key, return_url)
    if result.state == "processing":
        # A debit that settles later (SEPA): the membership starts once the mandate is given
        # and the debit submitted; should the debit fail, dunning takes it from there.
        now = ctx.clock()
        with ctx.engine.begin() as conn:
            if start_memberships(conn, [member_id], now):
                refresh(ctx, conn, [member_id], now)
        ctx.notify_published()
    return result


def contract(ctx: Context, member_id: str) -> dict[str, Any] | None:
    """The member's latest accepted contract (terms text, version, SHA-256, when, from where),
    or None."""
    c = s.contracts
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(c, s.members.c.name)
            .join(s.members, s.members.c.id == c.c.member_id)
            .where(c.c.member_id == member_id)
            .order_by(c.c.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return {
        "member_id": member_id,
        "name": row.name,
        "plan_id": row.plan_id,
        "terms_version": row.terms_version,
        "terms_sha256": row.terms_sha256,
        "terms_text": row.terms_text,
        "accepted_at": format_time(int(row.accepted_at)),
        "client_address": row.client_address,
        "user_agent": row.user_agent,
    }


def purge_unpaid(ctx: Context) -> int:
    """Delete sign-ups still unpaid a day after they were made (none was ever published);
    one with a payment still in flight is left until it settles. Returns how many."""
    su = s.signups
    cutoff = ctx.clock() - UNPAID_TTL_S
    with ctx.engine.begin() as conn:
        stale = conn.execute(
            select(su.c.member_id).where(su.c.paid_at.is_(None), su.c.created_at <= cutoff)
        ).scalars()
        gone = [m for m in stale if _purgeable(conn, m)]
        _delete(conn, gone)
    if gone:
        log.info("event=signups_purged count=%d", len(gone))
    return len(gone)


def _purgeable(conn: Any, member_id: str) -> bool:
    """An unpaid sign-up with no payment attempt that could still take money."""
    a = s.payment_attempts
    unpaid = conn.execute(
        select(s.signups.c.member_id).where(
            s.signups.c.member_id == member_id, s.signups.c.paid_at.is_(None)
        )
    ).first()
    busy = conn.execute(
        select(a.c.id).where(a.c.member_id == member_id, a.c.state.in_(s.OPEN_ATTEMPT_STATES))
    ).first()
    return unpaid is not None and busy is None


def _delete(conn: Any, member_ids: list[str]) -> None:
    """Delete unpaid sign-ups and every row that names them (children first)."""
    if not member_ids:
        return
    ids = many(member_ids)
    invoices = select(s.invoices.c.id).where(s.invoices.c.member_id.in_(ids))
    conn.execute(delete(s.invoice_lines).where(s.invoice_lines.c.invoice_id.in_(invoices)))
    conn.execute(delete(s.signups).where(s.signups.c.member_id.in_(ids)))
    for table in (
        s.refunds,
        s.credit_notes,
        s.payment_attempts,
        s.payments,
        s.invoices,
        s.contracts,
        s.web_sessions,
        s.signin_tokens,
        s.email_changes,
        s.notifications,
    ):
        conn.execute(delete(table).where(table.c.member_id.in_(ids)))
    conn.execute(delete(s.members).where(s.members.c.id.in_(ids)))
