"""Members: plans, enrolment, a member's details, their cards and QR key, a new card to charge,
and erasure (the gates get a signed tombstone).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import nacl.signing
from sqlalchemy import ColumnElement, Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gated.billing_sync import audit, next_invoice, photos
from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import Facts, dependants, load_facts, load_one
from gated.billing_sync.gateway import GatewayError
from gated.billing_sync.publishing import readdress_notices, refresh
from gated.billing_sync.renewals import member_price
from gated.billing_sync.store import many, read_connection
from gated.contract import MEMBER_ID_RE, card_key, format_time, normalize_uid

log = logging.getLogger("gated.billing")


@dataclass(frozen=True)
class PlanSpec:
    """A membership plan; price in minor units per period, tax in basis points."""

    id: str
    name: str
    price: int
    currency: str
    period_months: int = 1
    tax_rate_bp: int = 0
    schedule: list[dict[str, Any]] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)
    daily_limit: int | None = None
    min_term_months: int = 0
    freeze_fee: int = 0
    # False for a fixed-term pass: one period is billed, then the member is expired.
    auto_renew: bool = True
    # True: a price change (``prices``) keeps existing members on the price they had.
    grandfather: bool = False
    # True: an online sign-up may pay by SEPA Direct Debit as well as by card.
    sepa: bool = False
    # True: the freeze fee is not refunded when a freeze ends early (members are told first).
    freeze_fee_kept: bool = False


def add_plan(ctx: Context, plan: PlanSpec) -> None:
    """Create or update a plan (existing subscriptions pick up the new price at renewal)."""
    if plan.price < 0 or plan.period_months < 1:
        raise BillingError("a plan needs a price >= 0 and a period of at least one month")
    values = {
        "name": plan.name,
        "price": plan.price,
        "currency": plan.currency,
        "period_months": plan.period_months,
        "tax_rate_bp": plan.tax_rate_bp,
        "schedule": json.dumps(plan.schedule),
        "zones": json.dumps(plan.zones),
        "daily_limit": plan.daily_limit,
        "min_term_months": plan.min_term_months,
        "freeze_fee": plan.freeze_fee,
        "auto_renew": plan.auto_renew,
        "grandfather": plan.grandfather,
        "sepa": plan.sepa,
        "freeze_fee_kept": plan.freeze_fee_kept,
    }
    with ctx.engine.begin() as conn:
        done = conn.execute(update(s.plans).where(s.plans.c.id == plan.id).values(**values))
        if done.rowcount == 0:
            conn.execute(insert(s.plans).values(id=plan.id, **values))


def plans(ctx: Context) -> list[Row[Any]]:
    """Every plan, by id."""
    with ctx.reader.connect() as conn:
        return list(conn.execute(select(s.plans).order_by(s.plans.c.id)))


def add_member(
    ctx: Context,
    member_id: str,
    name: str,
    *,
    plan_id: str,
    email: str | None = None,
    sites: Sequence[str] | None = None,
    role: str = "member",
    payer_id: str | None = None,
    payment_method: str | None = None,
    with_qr: bool = False,
    start_at: int | None = None,
) -> CycleReport:
    """Enrol a member on a plan and bill the first period at once (status ``pending`` until
    it is paid). A dependant (``payer_id``) is charged to the payer's payment method.

    ``start_at`` in the past (a member migrated with their join date) bills nothing before
    today: the member counts as paid up to their next renewal date at or after today,
    anchored to the join day, and that renewal is the first charge."""
    if not MEMBER_ID_RE.match(member_id):
        raise BillingError("a member id is 1-64 of A-Z a-z 0-9 _ -")
    if role not in ("member", "staff"):
        raise BillingError("role is member or staff")
    member_sites = list(sites or ctx.config.sites)
    unknown = set(member_sites) - set(ctx.config.sites)
    if unknown:
        raise BillingError(
            f"unknown site(s) {sorted(unknown)}; billing.toml lists {ctx.config.sites}"
        )
    now = ctx.clock()
    start = now if start_at is None else start_at
    with ctx.reader.connect() as conn:
        plan = conn.execute(select(s.plans).where(s.plans.c.id == plan_id)).first()
        if plan is None:
            raise NotFound(f"no plan {plan_id!r} (add it with `gated-billing plans add`)")
        if int(plan.period_months) < 1:
            raise BillingError(f"plan {plan_id} is a pass: sell it with `gated-billing sell`")
        if conn.execute(select(s.members.c.id).where(s.members.c.id == member_id)).first():
            raise BillingError(f"member {member_id} already exists")
        if (
            payer_id
            and conn.execute(select(s.members.c.id).where(s.members.c.id == payer_id)).first()
            is None
        ):
            raise NotFound(f"no payer {payer_id!r}")
    card: SavedCard = (None, payment_method, None)
    if not payer_id:  # a dependant is charged to the payer's card
        card = save_card(ctx, member_id, email, name, payment_method)
    qr_private = nacl.signing.SigningKey.generate().encode() if with_qr else None
    with ctx.engine.begin() as conn:
        insert_member(
            ctx,
            conn,
            NewMember(member_id, name, email, member_sites, role, payer_id, plan, start),
            card,
            qr_private,
            now,
        )
        refresh(ctx, conn, [member_id], now)
    return run_cycle(ctx, member_ids=[member_id])


class NewMember(NamedTuple):
    """A member to enrol, checked: the plan is its row, the sites the ones they get."""

    member_id: str
    name: str
    email: str | None
    sites: list[str]
    role: str
    payer_id: str | None
    plan: Row[Any]
    start: int


# What the provider gave for a new member's card: (customer, payment method, card expiry).
SavedCard = tuple[str | None, str | None, int | None]


def save_card(
    ctx: Context, member_id: str, email: str | None, name: str, payment_method: str | None
) -> SavedCard:
    """A customer at the provider with the card attached, for a member not yet enrolled
    (nothing without a card). A card the provider refuses deletes the customer again, so none
    is left behind, and raises the provider's GatewayError."""
    if not payment_method:
        return None, payment_method, None
    customer_ref = ctx.gateway.create_customer(member_id, email, name)
    try:
        payment_method = ctx.gateway.attach_payment_method(customer_ref, payment_method)
    except GatewayError:
        forget_customers(ctx, [customer_ref])
        raise
    return customer_ref, payment_method, card_expiry(ctx, payment_method)


def forget_customers(ctx: Context, customer_refs: Sequence[str]) -> None:
    """Delete customers made for an enrolment that did not go through; one the provider
    cannot delete now is logged (an orphan to delete in its dashboard)."""
    for ref in customer_refs:
        try:
            ctx.gateway.delete_customer(ref)
        except GatewayError as exc:
            log.warning("event=orphan_customer customer=%s error=%s", ref, exc)


def insert_member(
    ctx: Context,
    conn: Connection,
    m: NewMember,
    card: SavedCard,
    qr_private: bytes | None,
    now: int,
) -> None:
    """The member's and subscription's rows, inside the caller's transaction (who refreshes
    and bills them once it commits)."""
    customer_ref, payment_method, expires = card
    conn.execute(
        insert(s.members).values(
            id=m.member_id,
            name=m.name,
            email=m.email,
            sites=json.dumps(m.sites),
            role=m.role,
            payer_id=m.payer_id,
            customer_ref=customer_ref,
            payment_method=payment_method,
            card_expires_at=expires,
            qr_private_key=ctx.keys.cipher.encrypt(qr_private) if qr_private else None,
            qr_key=_qr_public(qr_private) if qr_private else None,
            erased=False,
            created_at=now,
        )
    )
    conn.execute(
        insert(s.subscriptions).values(
            member_id=m.member_id,
            plan_id=m.plan.id,
            started_at=m.start,
            paid_through=eng.first_billed(
                m.start, int(m.plan.period_months), bool(m.plan.auto_renew), now
            ),
            status="pending",
            retries_done=0,
            needs_new_card=False,
            review_at=now,
        )
    )


def set_payment_method(ctx: Context, member_id: str, payment_method: str) -> CycleReport:
    """Save a new card for the member and retry what they and their dependants owe right
    away. A dependant has no card of their own (the household is charged to the payer's):
    refused, naming the payer, rather than replacing the payer's card unasked."""
    facts = load_one(ctx, member_id)
    if facts.member.payer_id:
        payer_id = facts.member.payer_id
        raise BillingError(
            f"{member_id} pays with payer {payer_id}'s card: use members set-card {payer_id}"
        )
    payer = member_id
    payer_facts = facts
    customer_ref = payer_facts.member.customer_ref or ctx.gateway.create_customer(
        payer, payer_facts.member.email, payer_facts.member.name
    )
    pm = ctx.gateway.attach_payment_method(customer_ref, payment_method)
    return new_card(ctx, payer, customer_ref, pm)


def new_card(ctx: Context, payer_id: str, customer_ref: str, pm: str) -> CycleReport:
    """Charge ``payer_id``'s new card from now on and retry what they and their dependants
    owe at once."""
    now = ctx.clock()
    expires = card_expiry(ctx, pm)
    with ctx.engine.begin() as conn:
        conn.execute(
            update(s.members)
            .where(s.members.c.id == payer_id)
            .values(customer_ref=customer_ref, payment_method=pm, card_expires_at=expires)
        )
        billed = [payer_id, *dependants(conn, [payer_id])]
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id.in_(many(billed)))
            .values(needs_new_card=False, next_retry_at=now, review_at=now)
        )
    return run_cycle(ctx, member_ids=billed)


def card_expiry(ctx: Context, payment_method: str) -> int | None:
    """When the card stops working, as the provider says; None when it cannot say now (the
    card is saved all the same: only the reminder before it expires is lost)."""
    try:
        return ctx.gateway.card_expiry(payment_method)
    except GatewayError as exc:
        log.warning("event=card_expiry_unknown error=%s", type(exc).__name__)
        return None


# ``edit_member(payer=NO_PAYER)``: the member pays for themselves from now on.
NO_PAYER = ""


def edit_member(
    ctx: Context,
    member_id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    payer: str | None = None,
    sites: Sequence[str] | None = None,
) -> None:
    """Correct a member's details: name, e-mail address, phone, payer, sites (None: unchanged).

    A new address clears a bounce, and the notices that never reached the old one (queued, or
    failed because it bounced) go to the new one, the member's and their dependants' alike.
    A new payer (``NO_PAYER``: none) is charged from the next charge on; a payer cannot have a
    payer, nor a member with dependants get one. New sites are published at once: the member's
    state on the new sites, and a signed ``erased`` state on each site they left, so that
    site's gates forget them."""
    f = load_one(ctx, member_id)
    if f.member.erased:
        raise BillingError(f"member {member_id} is erased")
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise BillingError(f"not an e-mail address: {email!r}")
    if phone is not None and not re.fullmatch(r"\+?[0-9 ()/-]{0,32}", phone):
        raise BillingError(f"not a phone number: {phone!r}")
    values: dict[str, Any] = {}
    if name is not None:
        if not name.strip():
            raise BillingError("a name cannot be empty")
        values["name"] = name
    if email is not None:
        values.update(email=email, email_bounced_at=None)
    if phone is not None:
        values["phone"] = phone or None
    if sites is not None:
        values["sites"] = json.dumps(_known_sites(ctx, sites))
    republish = sites is not None
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        if payer is not None:
            values["payer_id"] = _new_payer(conn, member_id, payer)
            republish = True
        if not values:
            raise BillingError(
                "nothing to change (give --name, --email, --phone, --payer or --site)"
            )
        conn.execute(update(s.members).where(s.members.c.id == member_id).values(**values))
        if email is not None:
            readdress_notices(conn, member_id, f.member.email, email)
        if republish:
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id == member_id)
                .values(review_at=now)
            )
            refresh(ctx, conn, [member_id], now)
    if republish:
        ctx.notify_published()


def _known_sites(ctx: Context, sites: Sequence[str]) -> list[str]:
    """``sites`` checked against billing.toml, in the order given, without repeats."""
    chosen = list(dict.fromkeys(sites))
    if not chosen:
        raise BillingError("a member needs at least one site")
    unknown = set(chosen) - set(ctx.config.sites)
    if unknown:
        raise BillingError(
            f"unknown site(s) {sorted(unknown)}; billing.toml lists {ctx.config.sites}"
        )
    return chosen


def _new_payer(conn: Connection, member_id: str, payer: str) -> str | None:
    """The payer id to store for ``member_id`` (None for ``NO_PAYER``), after the checks."""
    if payer == NO_PAYER:
        return None
    m = s.members
    if payer == member_id:
        raise BillingError("a member cannot be their own payer (use --no-payer)")
    row = conn.execute(select(m.c.payer_id, m.c.erased).where(m.c.id == payer)).first()
    if row is None or row.erased:
        raise NotFound(f"no payer {payer!r}")
    if row.payer_id is not None:
        raise BillingError(f"{payer} is paid for by {row.payer_id}: a payer pays for themselves")
    if dependants(conn, [member_id]):
        raise BillingError(f"{member_id} pays for others: a payer cannot have a payer")
    return payer


def member(ctx: Context, member_id: str) -> dict[str, Any]:
    """Everything about one member for ``members show`` (no card UIDs)."""
    # One transaction for all of it: one snapshot of the store, and one BEGIN instead of two.
    with read_connection(ctx.reader) as conn:
        return member_read(conn, member_id, ctx.clock())[1]


def member_read(
    conn: Connection, member_id: str, now: int, *, cards: bool = True
) -> tuple[Facts, dict[str, Any]]:
    """``member``'s answer read on ``conn``, with the facts it came from (the member app builds
    its page from both instead of reading the subscription, plan and open invoices again).
    ``cards=False``: the count of cards is not read (None), for pages that do not show it."""
    facts = load_facts(conn, [member_id], now).get(member_id)
    if facts is None:
        raise NotFound(f"no member {member_id!r}")
    state = conn.execute(
        select(s.member_states.c.payload).where(s.member_states.c.member_id == member_id)
    ).scalar()
    n_cards = None
    if cards:
        n_cards = conn.execute(
            select(func.count()).where(
                s.cards.c.member_id == member_id, s.cards.c.revoked_at.is_(None)
            )
        ).scalar_one()
    sub = facts.sub
    return facts, {
        "member_id": member_id,
        "name": facts.member.name,
        "email": facts.member.email,
        "email_bounced": facts.member.email_bounced_at is not None,
        "sites": json.loads(facts.member.sites),
        "role": facts.member.role,
        "payer_id": facts.member.payer_id,
        "plan": sub.plan_id if sub else None,
        "next_plan": sub.next_plan_id if sub else None,
        "price": member_price(sub, facts.plan) if sub and facts.plan else None,
        "status": sub.status if sub else None,
        "paid_through": _fmt(sub.paid_through) if sub else None,
        "owed": facts.account.owed,
        "next_retry_at": _fmt(facts.account.next_retry_at),
        "needs_new_card": facts.account.needs_new_card,
        "cancel_at": _fmt(facts.account.cancel_at),
        "freeze": [_fmt(t) for t in facts.account.freeze] if facts.account.freeze else None,
        "auto_renew": facts.account.renews,
        "cards": n_cards,
        "published": json.loads(state) if state else None,
    }


def list_members(ctx: Context, status: str | None = None) -> list[Row[Any]]:
    """Members not erased (with ``status``, when given), by id."""
    q = (
        select(
            s.members.c.id,
            s.members.c.name,
            s.subscriptions.c.plan_id,
            s.subscriptions.c.status,
            s.subscriptions.c.paid_through,
            s.member_states.c.version,
        )
        .join(s.subscriptions, s.subscriptions.c.member_id == s.members.c.id, isouter=True)
        .join(s.member_states, s.member_states.c.member_id == s.members.c.id, isouter=True)
        .where(s.members.c.erased.is_(False))
        .order_by(s.members.c.id)
    )
    if status:
        q = q.where(s.subscriptions.c.status == status)
    with ctx.reader.connect() as conn:
        return list(conn.execute(q))


def erase(ctx: Context, member_id: str) -> None:
    """Erase a member's personal data and cards; the gates get the signed tombstone. Invoices
    stay (bookkeeping), stripped of nothing but the link to a name."""
    now = ctx.clock()
    load_one(ctx, member_id)
    with ctx.engine.begin() as conn:
        conn.execute(delete(s.cards).where(s.cards.c.member_id == member_id))
        photos.delete_photo(conn, member_id)
        audit.redact_member(conn, member_id)
        conn.execute(
            update(s.members)
            .where(s.members.c.id == member_id)
            .values(
                name="",
                email=None,
                qr_private_key=None,
                qr_key=None,
                payment_method=None,
                phone=None,
                emergency_contact=None,
                erased=True,
            )
        )
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(status="cancelled", review_at=None, next_retry_at=None, cancel_at=now)
        )
        # Products sold on the next invoice: the invoice stays, like every other.
        next_invoice.bill_alone(conn, member_id, now)
        refresh(ctx, conn, [member_id], now)


def assign_card(ctx: Context, member_id: str, uid: str) -> None:
    """Enrol a card: the UID is stored encrypted, the gates get its HMAC credential."""
    uid = normalize_uid(uid)
    facts = load_one(ctx, member_id)
    if facts.member.erased:
        raise BillingError(f"member {member_id} is erased")
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        holder = card_holder(ctx, conn, uid)
        if holder is not None:
            raise BillingError(f"this card is already assigned to {holder}")
        insert_card(ctx, conn, member_id, uid, now)
        refresh(ctx, conn, [member_id], now)


def card_holder(ctx: Context, conn: Connection, uid: str) -> str | None:
    """Who holds the card with this (normalized) UID now, if anyone."""
    lookup = ctx.keys.uid_lookup(uid)
    holder = conn.execute(
        select(s.cards.c.member_id).where(
            s.cards.c.uid_lookup == lookup, s.cards.c.revoked_at.is_(None)
        )
    ).scalar()
    return None if holder is None else str(holder)


# Said when two desks give one card away at the same instant and this one came second.
CARD_TAKEN = "this card was just given to someone else (at another desk): lend another"


def insert_card(ctx: Context, conn: Connection, member_id: str, uid: str, now: int) -> None:
    """The card's row for ``member_id`` (the caller checked nobody holds it and publishes):
    the UID encrypted, its keyed lookup and the gates' HMAC credential. Should another
    transaction have given the card away since that check (two desks at the same instant,
    on PostgreSQL), the store's unique index on held cards refuses this one: BillingError,
    and the caller's transaction rolls back whole."""
    try:
        conn.execute(
            insert(s.cards).values(
                member_id=member_id,
                uid_encrypted=ctx.keys.encrypt_uid(uid),
                uid_lookup=ctx.keys.uid_lookup(uid),
                credential=card_key(ctx.keys.credential_key, uid),
                assigned_at=now,
            )
        )
    except IntegrityError as exc:
        if "uid_lookup" not in str(exc.orig):
            raise
        log.info("event=card_taken member=%s", member_id)
        raise BillingError(CARD_TAKEN) from None


def revoke_card(ctx: Context, member_id: str, uid: str) -> None:
    """Revoke a card at once: the member's next state no longer lists it."""
    lookup = ctx.keys.uid_lookup(normalize_uid(uid))
    _revoke(ctx, member_id, s.cards.c.uid_lookup == lookup, "no such card")


def revoke_card_by_id(ctx: Context, member_id: str, card_id: int) -> None:
    """Revoke one of a member's cards by its row id (the desk never sees a UID)."""
    _revoke(ctx, member_id, s.cards.c.id == card_id, f"card {card_id}")


def _revoke(ctx: Context, member_id: str, which: ColumnElement[bool], what: str) -> None:
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(s.cards)
            .where(s.cards.c.member_id == member_id, which, s.cards.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if done.rowcount == 0:
            raise NotFound(f"member {member_id} holds {what}")
        refresh(ctx, conn, [member_id], now)


def app_private_key(ctx: Context, member_id: str) -> bytes:
    """The member app's Ed25519 seed (``pass`` plays the app); NotFound without a QR key."""
    facts = load_one(ctx, member_id)
    if facts.member.qr_private_key is None and facts.member.qr_key is not None:
        raise NotFound(f"{member_id}'s pass is on their own device: head office can't mint it")
    if facts.member.qr_private_key is None:
        raise NotFound(f"member {member_id} has no QR key (add with --qr)")
    return ctx.keys.cipher.decrypt(facts.member.qr_private_key)


def _qr_public(seed: bytes) -> str:
    """The app's public key as the contract carries it: standard base64 of the raw 32 bytes."""
    return base64.b64encode(bytes(nacl.signing.SigningKey(seed).verify_key)).decode()


def _fmt(ts: int | None) -> str | None:
    return None if ts is None else format_time(ts)
