"""The billing service: the imperative shell around the pure engine.

It loads each member's facts from the store in bulk, asks ``engine`` what is due and what the
status is, charges through the ``PaymentGateway`` under the crash-safe protocol, and writes every
change of what the gates must know into ``member_states`` and the status outbox with the next
head-office version.

Charging protocol (DESIGN.md, crash safety): (1) commit the invoice and an attempt row with its
idempotency key; (2) create the PaymentIntent unconfirmed; (3) commit its id; (4) confirm; (5)
commit the result. A restart first finishes every attempt left in (1)–(4): re-create under the same
key if no id was committed (an unconfirmed intent never charges), otherwise retrieve by id and
confirm only if the provider says it is still unconfirmed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar, cast

import nacl.signing
import orjson
from sqlalchemy import Connection, Engine, Row, bindparam, delete, func, insert, or_, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.errors import BillingError, InvoiceClosed, NotFound
from gated.billing_sync.gateway import (
    ChargeResult,
    GatewayError,
    GatewayUnavailable,
    IntentState,
    PaymentGateway,
)
from gated.billing_sync.keys import Keys
from gated.billing_sync.notices import Notice, format_amount, render
from gated.billing_sync.store import (
    bulk,
    fetch,
    get_meta,
    insert_ids,
    insert_ignore,
    many,
    next_versions,
    reading,
    set_meta,
)
from gated.config import BillingConfig
from gated.contract import (
    MEMBER_ID_RE,
    card_key,
    digest_hex,
    digest_term,
    erased_state,
    format_time,
    normalize_uid,
)

log = logging.getLogger("gated.billing")
T = TypeVar("T")

FINAL_ATTEMPT_STATES = ("succeeded", "failed", "requires_action")
OPEN_ATTEMPT_STATES = ("new", "created", "processing")
PROCESSING_POLL_S = 3600
# A member's payer, joined to the member: made once, as an alias builds its columns anew.
_PAYER = s.members.alias("payer")


def _in(name: str = "ids") -> Any:
    """An IN list given when the statement runs (``fetch(conn, stmt, {"ids": [...]})``)."""
    return bindparam(name, expanding=True)


# The statements a billing cycle runs for every batch, built once: building one and working out
# its cache key cost ~0.1-0.2 ms each, about as much as running some of them on 500 members.
_M, _SUB, _INV, _ATT, _MS = (
    s.members,
    s.subscriptions,
    s.invoices,
    s.payment_attempts,
    s.member_states,
)
# One row per member with its subscription (the two tables share no column name, so the row
# serves as both) and what a payer contributes: e-mail and the card to charge.
_LOAD_MEMBERS = (
    select(
        _M,
        _SUB,
        _PAYER.c.email.label("payer_email"),
        _PAYER.c.customer_ref.label("payer_customer"),
        _PAYER.c.payment_method.label("payer_method"),
    )
    .join(_SUB, _SUB.c.member_id == _M.c.id, isouter=True)
    .join(_PAYER, _PAYER.c.id == _M.c.payer_id, isouter=True)
    .where(_M.c.id.in_(_in()))
)
_ALL_PLANS = select(s.plans)
_OPEN_INVOICES = (
    select(
        _INV, select(_ATT.c.id).where(_ATT.c.invoice_id == _INV.c.id).exists().label("attempted")
    )
    .where(_INV.c.member_id.in_(_in()), _INV.c.status == "open")
    .order_by(_INV.c.due_at)
)
_IN_FLIGHT = select(_ATT.c.member_id).where(
    _ATT.c.member_id.in_(_in()), _ATT.c.state.in_(OPEN_ATTEMPT_STATES)
)
_DISPUTED = select(s.disputes.c.member_id).where(
    s.disputes.c.member_id.in_(_in()), s.disputes.c.status == "open"
)
_FREEZES = (
    select(s.freezes.c.member_id, s.freezes.c.starts_at, s.freezes.c.ends_at)
    .where(s.freezes.c.member_id.in_(_in()), s.freezes.c.ends_at > bindparam("now"))
    .order_by(s.freezes.c.starts_at.desc())
)
_ATTEMPT_STATES = select(_ATT.c.id, _ATT.c.state).where(_ATT.c.id.in_(_in())).with_for_update()
_INVOICES = select(_INV).where(_INV.c.id.in_(_in()))
_STATES = select(_MS).where(_MS.c.member_id.in_(_in()))
_SUB_STATUS = select(_SUB.c.member_id, _SUB.c.status).where(_SUB.c.member_id.in_(_in()))
_CREDENTIALS = (
    select(s.cards.c.member_id, s.cards.c.credential)
    .where(s.cards.c.member_id.in_(_in()), s.cards.c.revoked_at.is_(None))
    .order_by(s.cards.c.credential)
)
_SET_ATTEMPT_REF = (
    update(_ATT)
    .where(_ATT.c.id == bindparam("aid"))
    .values(gateway_ref=bindparam("ref"), state="created", updated_at=bindparam("now"))
)
_SET_ATTEMPT_RESULT = (
    update(_ATT)
    .where(_ATT.c.id == bindparam("aid"))
    .values(
        state=bindparam("st"),
        decline_code=bindparam("dc"),
        decline_class=bindparam("cl"),
        updated_at=bindparam("now"),
    )
)
_SET_INVOICE_PAID = (
    update(_INV)
    .where(_INV.c.id == bindparam("iid"))
    .values(amount_paid=bindparam("ap"), status=bindparam("st"), paid_at=bindparam("pa"))
)
_EXTEND_PAID_THROUGH = (
    update(_SUB)
    .where(
        _SUB.c.member_id == bindparam("mid"),
        or_(_SUB.c.paid_through.is_(None), _SUB.c.paid_through < bindparam("pe")),
    )
    .values(paid_through=bindparam("pe"))
)
_SET_SUB_STATUS = (
    update(_SUB)
    .where(_SUB.c.member_id == bindparam("mid"))
    .values(
        status=bindparam("st"),
        paid_through=bindparam("pt"),
        review_at=bindparam("rev"),
        first_failure_at=bindparam("ffa"),
        next_retry_at=bindparam("nra"),
        retries_done=bindparam("rd"),
        needs_new_card=bindparam("nnc"),
    )
)
# A member's published state: a first one is inserted, later ones replace it.
_STATE_VALUES: dict[str, Any] = {
    "version": bindparam("v"),
    "status": bindparam("st"),
    "sites": bindparam("si"),
    "payload": bindparam("p"),
}
_NEW_STATES = insert(_MS).values(member_id=bindparam("mid"), **_STATE_VALUES)
_SET_STATES = update(_MS).where(_MS.c.member_id == bindparam("mid")).values(**_STATE_VALUES)


def crashpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: ``GATED_BILLING_CRASHPOINT=name`` kills this
    process with SIGKILL at that step, exactly as a power cut or OOM kill would."""
    if os.environ.get("GATED_BILLING_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def db_clock(engine: Engine) -> Callable[[], int]:
    """The injected clock of a deployment: system time plus the offset that ``gated-billing clock
    advance`` stores (0 in production), read on every call so a running ``serve`` follows it."""

    reader = reading(engine)

    def now() -> int:
        with reader.connect() as conn:
            offset = int(get_meta(conn, "clock_offset_s", 0))
        return int(datetime.now(UTC).timestamp()) + offset

    return now


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


@dataclass
class Facts:
    """One member's row, subscription, plan and derived engine account."""

    member: Any
    sub: Any
    plan: Any
    account: eng.Account
    open_invoices: list[Any]
    email_to: str | None = None
    # (customer, payment method) to charge: a dependant is charged to the payer.
    method: tuple[str | None, str | None] = (None, None)


class _InvoiceSpec(NamedTuple):
    member_id: str
    kind: str
    currency: str
    lines: list[tuple[str, str, int, int]]
    tax_rate_bp: int
    due_at: int
    period: tuple[int, int] | None

    @property
    def subtotal(self) -> int:
        return sum(q * unit for _, _, q, unit in self.lines)


class _Rows(NamedTuple):
    """What ``_load`` reads for a batch of members, before their engine accounts are derived."""

    # Member id -> the member's row joined with their subscription and their payer's contact.
    members: dict[str, Any]
    plans: dict[str, Any]
    open_invoices: dict[str, list[Any]]
    in_flight: set[str]
    disputed: set[str]
    freezes: dict[str, tuple[int, int]]


@dataclass
class _Batch:
    """A cycle's batch between its transactions, all on one connection: the rows its members'
    facts came from, kept as the batch itself changes them, and SQLite's ``data_version`` then.
    If no other connection has committed since, the batch's last transaction reuses the rows
    instead of reading them again (see ``record_results``)."""

    rows: _Rows
    data_version: int | None
    # The invoices the batch charges, by id, as the store holds them before the charges.
    invoices: dict[int, Any] = field(default_factory=dict)

    def unchanged(self, conn: Connection, charges: list[_Charge]) -> bool:
        """Whether nobody else has written since the batch was planned (and these charges are
        the batch's own)."""
        return (
            all(c.invoice_id in self.invoices for c in charges)
            and self.rows.members.keys() >= {c.member_id for c in charges}
            and _data_version(conn) == self.data_version is not None
        )


class _NewInvoice(NamedTuple):
    """A renewal invoice the batch created: what booking a payment reads of an invoice."""

    id: int
    member_id: str
    kind: str
    total: int
    amount_paid: int
    period_end: int | None


@dataclass
class CycleReport:
    """What one billing cycle did."""

    reviewed: int = 0
    renewals: int = 0
    retries: int = 0
    succeeded: int = 0
    failed: int = 0
    processing: int = 0
    resumed: int = 0
    errors: int = 0


@dataclass
class _Charge:
    attempt_id: int
    invoice_id: int
    member_id: str
    key: str
    amount: int
    currency: str
    customer_ref: str | None
    payment_method: str | None
    gateway_ref: str | None = None
    result: ChargeResult | None = None
    # Set when the member pays on the pay page: the confirmation is on-session.
    return_url: str | None = None


class Billing:
    """The billing service over one store, one gateway and the head-office keys."""

    def __init__(
        self,
        engine: Engine,
        config: BillingConfig,
        gateway: PaymentGateway,
        keys: Keys,
        clock: Callable[[], int],
    ) -> None:
        self.engine = engine
        # For the read-only work (see ``store.reading``).
        self.reader = reading(engine)
        self.config = config
        self.gateway = gateway
        self.keys = keys
        self.clock = clock
        self.rules = eng.Rules.from_config(config.dunning)
        self.published_hook: Callable[[], None] | None = None
        # Set when the service is stopping: a running cycle makes no new gateway call and ends
        # after its batch; attempts it leaves open are finished by the next cycle's resume().
        self.stopping = threading.Event()

    # --- plans and members --------------------------------------------------------------------

    def add_plan(self, plan: PlanSpec) -> None:
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
        }
        with self.engine.begin() as conn:
            done = conn.execute(update(s.plans).where(s.plans.c.id == plan.id).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(s.plans).values(id=plan.id, **values))

    def plans(self) -> list[Row[Any]]:
        with self.reader.connect() as conn:
            return list(conn.execute(select(s.plans).order_by(s.plans.c.id)))

    def add_member(
        self,
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
        it is paid). A dependant (``payer_id``) is charged to the payer's payment method."""
        if not MEMBER_ID_RE.match(member_id):
            raise BillingError("a member id is 1-64 of A-Z a-z 0-9 _ -")
        if role not in ("member", "staff"):
            raise BillingError("role is member or staff")
        member_sites = list(sites or self.config.sites)
        unknown = set(member_sites) - set(self.config.sites)
        if unknown:
            raise BillingError(
                f"unknown site(s) {sorted(unknown)}; billing.toml lists {self.config.sites}"
            )
        now = self.clock()
        start = now if start_at is None else start_at
        with self.reader.connect() as conn:
            if conn.execute(select(s.plans.c.id).where(s.plans.c.id == plan_id)).first() is None:
                raise NotFound(f"no plan {plan_id!r} (add it with `gated-billing plans add`)")
            if conn.execute(select(s.members.c.id).where(s.members.c.id == member_id)).first():
                raise BillingError(f"member {member_id} already exists")
            if (
                payer_id
                and conn.execute(select(s.members.c.id).where(s.members.c.id == payer_id)).first()
                is None
            ):
                raise NotFound(f"no payer {payer_id!r}")
        customer_ref = None
        if payment_method and not payer_id:
            customer_ref = self.gateway.create_customer(member_id, email, name)
            payment_method = self.gateway.attach_payment_method(customer_ref, payment_method)
        qr_private = nacl.signing.SigningKey.generate().encode() if with_qr else None
        with self.engine.begin() as conn:
            conn.execute(
                insert(s.members).values(
                    id=member_id,
                    name=name,
                    email=email,
                    sites=json.dumps(member_sites),
                    role=role,
                    payer_id=payer_id,
                    customer_ref=customer_ref,
                    payment_method=payment_method,
                    qr_private_key=self.keys.cipher.encrypt(qr_private) if qr_private else None,
                    qr_key=_qr_public(qr_private) if qr_private else None,
                    erased=False,
                    created_at=now,
                )
            )
            conn.execute(
                insert(s.subscriptions).values(
                    member_id=member_id,
                    plan_id=plan_id,
                    started_at=start,
                    paid_through=start,
                    status="pending",
                    retries_done=0,
                    needs_new_card=False,
                    review_at=now,
                )
            )
            self._refresh(conn, [member_id], now)
        return self.run_cycle(member_ids=[member_id])

    def set_payment_method(self, member_id: str, payment_method: str) -> CycleReport:
        """Save a new card for the member (or their payer) and retry what is owed right away."""
        facts = self._facts_one(member_id)
        payer = facts.member.payer_id or member_id
        payer_facts = self._facts_one(payer)
        customer_ref = payer_facts.member.customer_ref or self.gateway.create_customer(
            payer, payer_facts.member.email, payer_facts.member.name
        )
        pm = self.gateway.attach_payment_method(customer_ref, payment_method)
        return self._new_card(payer, customer_ref, pm)

    def _new_card(self, payer_id: str, customer_ref: str, pm: str) -> CycleReport:
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(s.members)
                .where(s.members.c.id == payer_id)
                .values(customer_ref=customer_ref, payment_method=pm)
            )
            billed = [payer_id, *self._dependants(conn, [payer_id])]
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id.in_(many(billed)))
                .values(needs_new_card=False, next_retry_at=now, review_at=now)
            )
        return self.run_cycle(member_ids=billed)

    def member(self, member_id: str) -> dict[str, Any]:
        """Everything about one member for ``members show`` (no card UIDs)."""
        facts = self._facts_one(member_id)
        with self.reader.connect() as conn:
            state = conn.execute(
                select(s.member_states.c.payload).where(s.member_states.c.member_id == member_id)
            ).scalar()
            n_cards = conn.execute(
                select(func.count()).where(
                    s.cards.c.member_id == member_id, s.cards.c.revoked_at.is_(None)
                )
            ).scalar_one()
        sub = facts.sub
        return {
            "member_id": member_id,
            "name": facts.member.name,
            "email": facts.member.email,
            "sites": json.loads(facts.member.sites),
            "role": facts.member.role,
            "payer_id": facts.member.payer_id,
            "plan": sub.plan_id if sub else None,
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

    def list_members(self, status: str | None = None) -> list[Row[Any]]:
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
        with self.reader.connect() as conn:
            return list(conn.execute(q))

    def erase(self, member_id: str) -> None:
        """Erase a member's personal data and cards; the gates get the signed tombstone. Invoices
        stay (bookkeeping), stripped of nothing but the link to a name."""
        now = self.clock()
        self._facts_one(member_id)
        with self.engine.begin() as conn:
            conn.execute(delete(s.cards).where(s.cards.c.member_id == member_id))
            conn.execute(
                update(s.members)
                .where(s.members.c.id == member_id)
                .values(
                    name="",
                    email=None,
                    qr_private_key=None,
                    qr_key=None,
                    payment_method=None,
                    erased=True,
                )
            )
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id == member_id)
                .values(status="cancelled", review_at=None, next_retry_at=None, cancel_at=now)
            )
            self._refresh(conn, [member_id], now)

    # --- cards and QR ----------------------------------------------------------------------------

    def assign_card(self, member_id: str, uid: str) -> None:
        """Enrol a card: the UID is stored encrypted, the gates get its HMAC credential."""
        uid = normalize_uid(uid)
        facts = self._facts_one(member_id)
        if facts.member.erased:
            raise BillingError(f"member {member_id} is erased")
        lookup = self.keys.uid_lookup(uid)
        now = self.clock()
        with self.engine.begin() as conn:
            holder = conn.execute(
                select(s.cards.c.member_id).where(
                    s.cards.c.uid_lookup == lookup, s.cards.c.revoked_at.is_(None)
                )
            ).scalar()
            if holder is not None:
                raise BillingError(f"this card is already assigned to {holder}")
            conn.execute(
                insert(s.cards).values(
                    member_id=member_id,
                    uid_encrypted=self.keys.encrypt_uid(uid),
                    uid_lookup=lookup,
                    credential=card_key(self.keys.credential_key, uid),
                    assigned_at=now,
                )
            )
            self._refresh(conn, [member_id], now)

    def revoke_card(self, member_id: str, uid: str) -> None:
        """Revoke a card at once: the member's next state no longer lists it."""
        lookup = self.keys.uid_lookup(normalize_uid(uid))
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(s.cards)
                .where(
                    s.cards.c.member_id == member_id,
                    s.cards.c.uid_lookup == lookup,
                    s.cards.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            if done.rowcount == 0:
                raise NotFound(f"member {member_id} holds no such card")
            self._refresh(conn, [member_id], now)

    def app_private_key(self, member_id: str) -> bytes:
        """The member app's Ed25519 seed (``pass`` plays the app); NotFound without a QR key."""
        facts = self._facts_one(member_id)
        if facts.member.qr_private_key is None:
            raise NotFound(f"member {member_id} has no QR key (add with --qr)")
        return self.keys.cipher.decrypt(facts.member.qr_private_key)

    # --- gates ------------------------------------------------------------------------------------

    def add_gate(self, site: str, gate: str) -> str:
        """Issue a new bearer token for a gate's snapshot fetches (shown once, stored hashed)."""
        if site not in self.config.sites:
            raise BillingError(f"unknown site {site!r}; billing.toml lists {self.config.sites}")
        if not MEMBER_ID_RE.match(gate):
            raise BillingError("a gate id is 1-64 of A-Z a-z 0-9 _ -")
        token = "gt_" + secrets.token_urlsafe(32)
        digest = _sha256(token)
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(s.gates)
                .where(s.gates.c.site == site, s.gates.c.gate == gate)
                .values(token_sha256=digest, created_at=now, revoked_at=None)
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(s.gates).values(
                        site=site, gate=gate, token_sha256=digest, created_at=now
                    )
                )
        return token

    def revoke_gate(self, site: str, gate: str) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(s.gates)
                .where(s.gates.c.site == site, s.gates.c.gate == gate)
                .values(revoked_at=self.clock())
            )
        if done.rowcount == 0:
            raise NotFound(f"no gate {site}/{gate}")

    def gate_for_token(self, token: str) -> tuple[str, str] | None:
        """The (site, gate) a bearer token belongs to, or None (unknown or revoked)."""
        with self.reader.connect() as conn:
            row = conn.execute(
                select(s.gates.c.site, s.gates.c.gate).where(
                    s.gates.c.token_sha256 == _sha256(token), s.gates.c.revoked_at.is_(None)
                )
            ).first()
        return None if row is None else (row.site, row.gate)

    # --- freezes, cancellations, extras, payments --------------------------------------------------

    def freeze(self, member_id: str, months: int, start_at: int | None = None) -> CycleReport:
        """Freeze a current member for 1-3 months: denied meanwhile, contract extended by as
        long, the plan's monthly freeze fee billed now."""
        now = self.clock()
        facts = self._facts_one(member_id)
        if facts.sub is None or facts.plan is None:
            raise BillingError(f"member {member_id} has no subscription")
        eng.check_freeze(facts.sub.status, facts.account.owed, months)
        start = now if start_at is None else start_at
        end = eng.add_months(start, months)
        fee = int(facts.plan.freeze_fee) * months
        with self.engine.begin() as conn:
            if conn.execute(
                select(s.freezes.c.id).where(
                    s.freezes.c.member_id == member_id, s.freezes.c.ends_at > now
                )
            ).first():
                raise eng.FreezeRefused("a freeze is already booked")
            conn.execute(
                insert(s.freezes).values(
                    member_id=member_id, starts_at=start, ends_at=end, fee=fee, created_at=now
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
            if fee:
                lines = [
                    (
                        "freeze_fee",
                        f"Freeze fee, {months} month(s)",
                        months,
                        int(facts.plan.freeze_fee),
                    )
                ]
                self._create_invoice(
                    conn, facts, "freeze", lines, int(facts.plan.tax_rate_bp), now, None
                )
            self._queue(
                conn,
                facts,
                "freeze",
                start=_fmt(start),
                end=_fmt(end),
                amount=format_amount(fee, facts.plan.currency),
            )
            self._refresh(conn, [member_id], now)
        return self.run_cycle(member_ids=[member_id])

    def unfreeze(self, member_id: str) -> None:
        """End the current freeze now (or drop a booked one); the unused time comes off the
        extension."""
        now = self.clock()
        with self.engine.begin() as conn:
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
            self._refresh(conn, [member_id], now)

    def cancel(self, member_id: str) -> int:
        """Cancel at the end of the paid period or the minimum term; returns that date."""
        now = self.clock()
        facts = self._facts_one(member_id)
        if facts.sub is None or facts.plan is None:
            raise BillingError(f"member {member_id} has no subscription")
        when = eng.cancel_date(
            facts.sub.paid_through, facts.sub.started_at, facts.plan.min_term_months, now
        )
        with self.engine.begin() as conn:
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id == member_id)
                .values(cancel_at=when, review_at=now)
            )
            self._refresh(conn, [member_id], now)
        return when

    def charge_extra(
        self,
        member_id: str,
        kind: str,
        description: str,
        amount: int,
        tax_rate_bp: int | None = None,
    ) -> CycleReport:
        """Bill an extra (personal training, a class pack) on its own invoice and charge it now."""
        if amount <= 0:
            raise BillingError("an extra needs a positive amount (minor units)")
        now = self.clock()
        facts = self._facts_one(member_id)
        if facts.plan is None:
            raise BillingError(f"member {member_id} has no subscription")
        rate = int(facts.plan.tax_rate_bp) if tax_rate_bp is None else tax_rate_bp
        with self.engine.begin() as conn:
            invoice_id = self._create_invoice(
                conn, facts, "extra", [("extra", description, 1, amount)], rate, now, None
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
        return self.run_cycle(member_ids=[member_id])

    def record_payment(
        self,
        member_id: str,
        amount: int | None = None,
        method: str = "front_desk",
        reference: str | None = None,
    ) -> int:
        """A payment taken outside the gateway (front desk, bank transfer): applied to the oldest
        open invoices first; the member is active again and published at once. Returns the amount
        applied. An invoice with a charge still in flight (a SEPA debit takes days to settle) is
        left to that charge: taking it here as well would take the money twice."""
        now = self.clock()
        a = s.payment_attempts
        with self.engine.begin() as conn:
            facts = self._load(conn, [member_id], now).get(member_id)
            if facts is None:
                raise NotFound(f"no member {member_id!r}")
            in_flight = set(
                conn.execute(
                    select(a.c.invoice_id).where(
                        a.c.member_id == member_id, a.c.state.in_(OPEN_ATTEMPT_STATES)
                    )
                ).scalars()
            )
            payable = [
                i for i in facts.open_invoices if i.total > i.amount_paid and i.id not in in_flight
            ]
            owed = sum(int(i.total - i.amount_paid) for i in payable)
            busy = ", ".join(map(str, sorted(in_flight)))
            if owed <= 0:
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
            left = amount
            for inv in payable:
                if left <= 0:
                    break
                part = min(left, int(inv.total - inv.amount_paid))
                self._apply_payment(
                    conn, inv, part, method, reference and f"{reference}:{inv.id}", now
                )
                left -= part
            self._refresh(conn, [member_id], now)
        self._notify_published()
        return amount

    # --- pay links -------------------------------------------------------------------------------

    def pay_link(self, invoice_id: int) -> str:
        """The page where a member pays an invoice on-session (sent when the bank wants them to
        authenticate): ``{public_url}/pay/{invoice}.{token}``, the token a keyed MAC."""
        base = self.config.http.public_url.rstrip("/")
        return f"{base}/pay/{invoice_id}.{self.keys.pay_token(invoice_id)}"

    def invoice_for_pay_token(self, token: str) -> int | None:
        """The invoice a pay-link token names, or None for a token we did not issue."""
        number, _, mac = token.partition(".")
        if not re.fullmatch(r"[0-9]{1,12}", number):
            return None
        invoice_id = int(number)
        ok = hmac.compare_digest(mac.encode(), self.keys.pay_token(invoice_id).encode())
        return invoice_id if ok else None

    def invoice(self, invoice_id: int) -> dict[str, Any]:
        """One invoice with its lines and the member's name, for the pay page."""
        inv, ln = s.invoices, s.invoice_lines
        with self.reader.connect() as conn:
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
            "member_id": row.member_id,
            "name": row.name,
            "status": row.status,
            "currency": row.currency,
            "total": int(row.total),
            "paid": int(row.amount_paid),
            "owed": int(row.total - row.amount_paid) if row.status == "open" else 0,
            "lines": [dict(line._mapping) for line in lines],
        }

    def pay_invoice(self, invoice_id: int, submit_key: str, return_url: str) -> ChargeResult:
        """Charge what is open on an invoice now, on-session, with the card on file.

        ``submit_key`` comes from the page's form: submitting the same form twice makes one
        attempt (its idempotency key), and no second attempt starts while one for the invoice is
        still open. The result is recorded like any charge's (a success makes the member active
        and is published at once); ``requires_action`` with an ``action_url`` is left open until
        the member comes back (``pay_returned``) or the webhook says.
        """
        a, inv_t = s.payment_attempts, s.invoices
        key = f"pay{invoice_id}-{submit_key}"
        now = self.clock()
        with self.engine.begin() as conn:
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
                        a.c.invoice_id == invoice_id, a.c.state.in_(OPEN_ATTEMPT_STATES)
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
                methods = self._methods(conn, [attempt.member_id])
        if attempt is None:
            return ChargeResult("", "processing")  # another payment of this invoice is under way
        if not mine:
            # The same form again: answer with what became of the first submission.
            state = "processing" if attempt.state in ("new", "created") else attempt.state
            return ChargeResult(
                attempt.gateway_ref or "", cast(IntentState, state), attempt.decline_code
            )
        customer, pm = methods.get(attempt.member_id, (None, None))
        charge = _Charge(
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
        self._execute([charge], report)
        self._notify_published()
        if charge.result is None:
            raise BillingError("the payment provider could not be reached; try again shortly")
        log.info(
            "event=pay_link_charge invoice=%s member=%s state=%s",
            invoice_id,
            attempt.member_id,
            charge.result.state,
        )
        return charge.result

    def pay_returned(self, invoice_id: int) -> None:
        """The member is back from their bank's page: look up and record what became of the
        invoice's on-session attempts that are still open."""
        a = s.payment_attempts
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(a).where(
                    a.c.invoice_id == invoice_id,
                    a.c.idempotency_key.startswith(f"pay{invoice_id}-"),
                    a.c.state == "created",
                )
            ).all()
        for r in rows:
            try:
                result = self.gateway.retrieve_intent(r.gateway_ref)
            except GatewayError as exc:
                log.warning("event=pay_return_lookup_failed attempt=%s error=%s", r.id, exc)
                continue
            if result.state in ("requires_confirmation", "requires_action"):
                continue
            self.intent_update(r.gateway_ref, result)

    # --- the cycle ---------------------------------------------------------------------------------

    def run_cycle(self, member_ids: Sequence[str] | None = None) -> CycleReport:
        """One billing cycle: finish interrupted attempts, then review every member whose time has
        come (or just ``member_ids``): renew, retry, settle slow payments, move statuses."""
        report = CycleReport()
        self.resume(report, member_ids)
        size = self.config.batch_size
        seen: set[str] = set()
        while not self.stopping.is_set():
            now = self.clock()
            # One connection for the batch's three transactions, so that SQLite's data_version
            # tells whether anyone else wrote in between (see _Batch).
            with self.engine.connect() as conn:
                with conn.begin():
                    if member_ids is None:
                        due = list(
                            conn.execute(
                                select(s.subscriptions.c.member_id)
                                .where(s.subscriptions.c.review_at <= now)
                                .order_by(s.subscriptions.c.review_at)
                                .limit(size)
                            ).scalars()
                        )
                    else:
                        due = list(member_ids)
                    if not due or seen.issuperset(due):
                        if due:
                            log.warning("event=cycle_stuck members=%d", len(due))
                        break
                    seen.update(due)
                    charges, batch = self._plan_charges(conn, due, now, report)
                self._execute(charges, report, conn, batch)
            if member_ids is not None:
                break
        if self.stopping.is_set():
            log.info("event=cycle_interrupted reason=stopping reviewed=%d", report.reviewed)
        self._notify_published()
        return report

    def resume(self, report: CycleReport, member_ids: Sequence[str] | None = None) -> None:
        """Finish attempts a crash left open, before anything else, and look up slow payments
        (SEPA) at most hourly: their webhook normally settles them, this is the backstop."""
        a = s.payment_attempts
        due = or_(a.c.state != "processing", a.c.updated_at <= self.clock() - PROCESSING_POLL_S)
        q = select(a).where(a.c.state.in_(OPEN_ATTEMPT_STATES), due).order_by(a.c.id)
        if member_ids is not None:
            q = q.where(a.c.member_id.in_(many(member_ids)))
        with self.reader.connect() as conn:
            rows = list(conn.execute(q))
            methods = self._methods(conn, {r.member_id for r in rows})
        if not rows:
            return
        charges = []
        for r in rows:
            customer, pm = methods.get(r.member_id, (None, None))
            charges.append(
                _Charge(
                    r.id,
                    r.invoice_id,
                    r.member_id,
                    r.idempotency_key,
                    r.amount,
                    r.currency,
                    customer,
                    pm,
                    r.gateway_ref,
                )
            )
        report.resumed += sum(1 for r in rows if r.state != "processing")
        self._execute(charges, report)

    def _plan_charges(
        self, conn: Connection, due: list[str], now: int, report: CycleReport
    ) -> tuple[list[_Charge], _Batch]:
        """Decide per member: renewal invoices and retries become attempts (committed with their
        idempotency keys before any gateway call); everyone reviewed gets a fresh status."""
        rows = self._read(conn, due, now)
        batch = _Batch(rows, _data_version(conn))
        facts = self._derive(rows)
        renewals: list[_InvoiceSpec] = []
        retries: list[dict[str, Any]] = []
        to_charge: list[str] = []
        for member_id, f in sorted(facts.items()):
            report.reviewed += 1
            acct = f.account
            if f.sub is None or f.member.erased:
                continue
            if f.plan is not None and eng.renewal_due(acct, now):
                start = int(f.sub.paid_through)
                end = eng.add_months(start, int(f.plan.period_months))
                label = f"{f.plan.name} {_day(start)} to {_day(end)}"
                renewals.append(
                    _InvoiceSpec(
                        member_id,
                        "renewal",
                        f.plan.currency,
                        [("membership", label, 1, int(f.plan.price))],
                        int(f.plan.tax_rate_bp),
                        start,
                        (start, end),
                    )
                )
                report.renewals += 1
            elif eng.first_charge_due(acct):
                pass
            elif eng.retry_due(acct, now):
                retries.append({"mid": member_id, "rd": acct.retries_done + 1})
                report.retries += 1
            else:
                continue
            to_charge.append(member_id)
        new_ids = self._create_invoices(conn, renewals, now)
        if retries:
            bulk(
                conn,
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id == bindparam("mid"))
                .values(retries_done=bindparam("rd"), next_retry_at=None),
                retries,
            )
            for r in retries:  # the batch's rows stay what the store holds
                row = rows.members[r["mid"]]
                rows.members[r["mid"]] = row._replace(retries_done=r["rd"], next_retry_at=None)
        # The open invoices were loaded in this transaction; the renewals were just created.
        new = {sp.member_id: (i, sp) for i, sp in zip(new_ids, renewals, strict=True)}
        open_invoices: list[tuple[int, str, int, str, bool]] = []
        for member_id in to_charge:
            owing = [
                (int(i.due_at), int(i.id), int(i.total - i.amount_paid), i.currency, False)
                for i in facts[member_id].open_invoices
                if i.total > i.amount_paid
            ]
            batch.invoices.update((int(i.id), i) for i in facts[member_id].open_invoices)
            if member_id in new:
                invoice_id, sp = new[member_id]
                subtotal = sp.subtotal
                total = subtotal + eng.tax_of(subtotal, sp.tax_rate_bp)
                owing.append((sp.due_at, invoice_id, total, sp.currency, True))
                period_end = sp.period[1] if sp.period else None
                batch.invoices[invoice_id] = _NewInvoice(
                    invoice_id, member_id, sp.kind, total, 0, period_end
                )
            owing.sort(key=lambda o: o[0])
            open_invoices.extend((o[1], member_id, o[2], o[3], o[4]) for o in owing)
        charges = self._attempts_for(conn, open_invoices, facts, now)
        # Members being charged are refreshed from the charge's result (record_results); if no
        # result comes back, resume() finishes the attempt on the next cycle.
        # The others' facts are as loaded: nothing above wrote to them.
        charging = set(to_charge)
        rest = {m: f for m, f in facts.items() if m not in charging}
        self._refresh(conn, list(rest), now, facts=rest)
        return charges, batch

    def _attempts_for(
        self,
        conn: Connection,
        invoices: list[tuple[int, str, int, str, bool]],
        facts: dict[str, Facts],
        now: int,
    ) -> list[_Charge]:
        """One new attempt (with its idempotency key) per open invoice: ``invoices`` are (invoice
        id, member id, amount still owed, currency, created in this transaction) in charging
        order, ``facts`` the members' facts loaded in this transaction."""
        if not invoices:
            return []
        a = s.payment_attempts
        earlier = [i[0] for i in invoices if not i[4]]
        counts: dict[int, int] = {}
        if earlier:
            counts = dict(
                conn.execute(
                    select(a.c.invoice_id, func.count())
                    .where(a.c.invoice_id.in_(many(earlier)))
                    .group_by(a.c.invoice_id)
                ).all()
            )
        params: list[dict[str, Any]] = [
            {
                "invoice_id": invoice_id,
                "member_id": member_id,
                "idempotency_key": f"inv{invoice_id}-a{counts.get(invoice_id, 0) + 1}",
                "amount": amount,
                "currency": currency,
                "state": "new",
                "created_at": now,
                "updated_at": now,
            }
            for invoice_id, member_id, amount, currency, _ in invoices
        ]
        ids = insert_ids(conn, a, params)
        out = []
        for attempt_id, p in zip(ids, params, strict=True):
            customer, pm = facts[p["member_id"]].method
            out.append(
                _Charge(
                    attempt_id,
                    p["invoice_id"],
                    p["member_id"],
                    p["idempotency_key"],
                    p["amount"],
                    p["currency"],
                    customer,
                    pm,
                )
            )
        return out

    def _execute(
        self,
        charges: list[_Charge],
        report: CycleReport,
        conn: Connection | None = None,
        batch: _Batch | None = None,
    ) -> None:
        """Steps 2-5 of the charging protocol for a batch of committed attempts. The cycle passes
        the connection its batch was planned on, and the batch."""
        if not charges:
            return
        # 2. create intents for attempts that have none yet (an unconfirmed intent charges nothing)
        to_create = []
        for c in charges:
            if c.gateway_ref is not None:
                continue
            if c.payment_method is None:
                c.result = ChargeResult("", "failed", "no_payment_method", None)
                continue
            to_create.append(c)

        def create(c: _Charge) -> str:
            assert c.payment_method is not None
            return self.gateway.create_intent(
                customer_ref=c.customer_ref,
                payment_method=c.payment_method,
                amount=c.amount,
                currency=c.currency,
                idempotency_key=c.key,
                metadata={"member_id": c.member_id, "invoice": str(c.invoice_id), "attempt": c.key},
            )

        created: set[int] = set()
        for c, ref in zip(to_create, self._gateway_calls(create, to_create), strict=True):
            if isinstance(ref, GatewayError):
                report.errors += 1
                log.warning("event=create_intent_failed attempt=%s error=%s", c.key, ref)
            else:
                c.gateway_ref = ref
                created.add(c.attempt_id)
        crashpoint("after_create")
        # 3. commit the intent ids before anything can charge
        if created:
            # One clock reading for the batch: a deployment's clock is a database query.
            now = self.clock()
            with self._transaction(conn) as tx:
                bulk(
                    tx,
                    _SET_ATTEMPT_REF,
                    [
                        {"aid": c.attempt_id, "ref": c.gateway_ref}
                        for c in charges
                        if c.attempt_id in created
                    ],
                    {"now": now},
                )
        crashpoint("after_commit_ref")
        # 4. confirm (or, for an intent from before a restart, look first)
        to_confirm = [c for c in charges if c.gateway_ref is not None and c.result is None]

        def confirm(c: _Charge) -> ChargeResult:
            assert c.gateway_ref is not None
            fresh = c.attempt_id in created
            result = None if fresh else self.gateway.retrieve_intent(c.gateway_ref)
            if result is None or result.state == "requires_confirmation":
                result = self.gateway.confirm_intent(c.gateway_ref, c.key, return_url=c.return_url)
            return result

        for c, res in zip(to_confirm, self._gateway_calls(confirm, to_confirm), strict=True):
            if isinstance(res, GatewayError):
                report.errors += 1
                log.warning("event=confirm_failed attempt=%s error=%s", c.key, res)
            else:
                c.result = res
        crashpoint("after_confirm")
        # 5. commit the results and what follows from them
        done = [c for c in charges if c.result is not None]
        if done:
            with self._transaction(conn) as tx:
                self.record_results(tx, done, report, batch)

    @contextmanager
    def _transaction(self, conn: Connection | None) -> Iterator[Connection]:
        """A transaction on ``conn``, or on a connection of its own."""
        if conn is None:
            with self.engine.begin() as own:
                yield own
        else:
            with conn.begin():
                yield conn

    def _gateway_calls(
        self, call: Callable[[_Charge], T], charges: list[_Charge]
    ) -> list[T | GatewayError]:
        """``call`` for each charge, in order, with up to the gateway's ``concurrency`` in flight
        at once: a provider answers over the network, one call at a time that is ~2-3 charges a
        second, far below what its rate limit allows (the gateway paces the calls itself). A
        GatewayError is returned in its charge's place; anything else is raised once the calls
        already under way have ended, and the rest are not made (their attempts stay open for
        the next cycle's resume())."""

        def one(c: _Charge) -> T | GatewayError:
            if self.stopping.is_set():
                return GatewayUnavailable("not sent: the service is stopping")
            try:
                return call(c)
            except GatewayError as exc:
                return exc

        workers = min(self.gateway.concurrency, len(charges))
        if workers <= 1:
            return [one(c) for c in charges]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="gateway")
        try:
            return list(pool.map(one, charges))
        finally:
            # On an error or Ctrl-C, the calls not yet under way are not made at all.
            pool.shutdown(wait=True, cancel_futures=True)

    def record_results(
        self,
        conn: Connection,
        charges: list[_Charge],
        report: CycleReport,
        batch: _Batch | None = None,
    ) -> None:
        """Store gateway answers once: an attempt already final is left alone, whatever arrives
        later or twice (webhooks repeat and reorder). ``batch``: see ``_Batch``."""
        now = self.clock()
        # The batch, if nobody else has written since it was planned.
        kept = batch if batch is not None and batch.unchanged(conn, charges) else None
        invoices: dict[int, Any]
        if kept is not None:
            # None of its attempts can be final, and its invoices are as it kept them.
            current: dict[int, str] = {}
            invoices = kept.invoices
        else:
            # Locked (PostgreSQL; SQLite has one writer anyway) so that a webhook and the cycle
            # reporting the same charge at once book it once: the second waits, then sees it
            # final.
            ids = {"ids": [c.attempt_id for c in charges]}
            current = dict(fetch(conn, _ATTEMPT_STATES, ids))
            ids = {"ids": list({c.invoice_id for c in charges})}
            invoices = {r.id: r for r in fetch(conn, _INVOICES, ids)}
        updates: list[dict[str, Any]] = []
        payments: list[tuple[Any, int, str, str | None]] = []
        outcomes: list[tuple[_Charge, Any, eng.DeclineClass | None]] = []
        for c in charges:
            res = c.result
            assert res is not None
            if current.get(c.attempt_id) in FINAL_ATTEMPT_STATES:
                continue
            if res.state == "requires_confirmation" or res.action_url is not None:
                # Not final yet: the member is authenticating on the bank's page; the return to
                # the pay page or the webhook records what came of it.
                continue
            decline_class: eng.DeclineClass | None = None
            if res.state == "failed":
                decline_class = eng.classify_decline(res.decline_code, res.advice_code)
            elif res.state == "requires_action":
                decline_class = "auth"
            updates.append(
                {"aid": c.attempt_id, "st": res.state, "dc": res.decline_code, "cl": decline_class}
            )
            current[c.attempt_id] = res.state
            inv = invoices.get(c.invoice_id)
            if inv is None:
                continue
            if res.state == "succeeded":
                payments.append((inv, c.amount, "card", c.gateway_ref))
            outcomes.append((c, inv, decline_class))
        if not updates:
            return
        bulk(conn, _SET_ATTEMPT_RESULT, updates, {"now": now})
        renewed = self._apply_payments(conn, payments, now, extend=False)
        # One load after the money is booked; dunning changes below are made to these facts in
        # place so the refresh can reuse them (and write the paid-through the renewals moved).
        members = list({c.member_id for c, _, _ in outcomes})
        if kept is not None:
            # The store holds the batch's rows as kept: read again only the invoices and
            # attempts the payments changed.
            rows = self._reread(conn, kept.rows, members, now)
        else:
            rows = self._read(conn, members, now)
        facts = self._derive(_extended(rows, renewed))
        receipts: list[tuple[Facts, str, dict[str, Any]]] = []
        for c, inv, decline_class in outcomes:
            f = facts.get(c.member_id)
            assert c.result is not None
            if f is None:
                continue
            if c.result.state == "succeeded":
                report.succeeded += 1
                receipts.append(
                    (
                        f,
                        "receipt",
                        {"amount": format_amount(c.amount, c.currency), "invoice": str(inv.id)},
                    )
                )
            elif c.result.state == "processing":
                report.processing += 1
            else:
                report.failed += 1
                assert decline_class is not None
                self._after_failure(conn, f, inv, c, c.result, decline_class, now)
        self._queue_many(conn, receipts)
        self._refresh(conn, list(facts), now, facts=facts)

    def _after_failure(
        self,
        conn: Connection,
        f: Facts,
        inv: Row[Any],
        c: _Charge,
        res: ChargeResult,
        decline_class: eng.DeclineClass,
        now: int,
    ) -> None:
        acct = eng.after_failure(f.account, decline_class, now, self.rules)
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == c.member_id)
            .values(
                first_failure_at=acct.first_failure_at,
                next_retry_at=acct.next_retry_at,
                needs_new_card=acct.needs_new_card,
            )
        )
        f.account = acct
        values = {
            "amount": format_amount(c.amount, c.currency),
            "invoice": str(inv.id),
            "reason": (res.decline_code or "declined").replace("_", " "),
        }
        if decline_class == "hard":
            self._queue(conn, f, "new_card", **values)
        elif decline_class == "auth":
            link = self.pay_link(int(inv.id))
            self._queue(conn, f, "pay_link", link=link, **values)
        elif f.account.retries_done == 0:
            self._queue(conn, f, "failure", retry_on=_day(acct.next_retry_at), **values)
        else:
            step = (
                f"We will try again on {_day(acct.next_retry_at)}."
                if acct.next_retry_at
                else "We will not try this card again: please pay at the front desk."
            )
            self._queue(conn, f, "retry", next_step=step, **values)

    # --- webhooks (payment provider events) ---------------------------------------------------------

    def webhook_known(self, event_id: str) -> bool:
        """Whether a provider event was already processed."""
        with self.reader.connect() as conn:
            row = conn.execute(
                select(s.webhook_events.c.id).where(s.webhook_events.c.id == event_id)
            ).first()
        return row is not None

    def webhook_done(self, event_id: str, event_type: str) -> None:
        """Record a processed provider event by id (a concurrent duplicate is ignored)."""
        with self.engine.begin() as conn:
            insert_ignore(
                conn,
                s.webhook_events,
                [{"id": event_id, "type": event_type, "received_at": self.clock()}],
            )

    def intent_update(self, intent_id: str, result: ChargeResult) -> bool:
        """A provider event about a PaymentIntent; applied only if the attempt is not final."""
        a = s.payment_attempts
        with self.engine.begin() as conn:
            row = conn.execute(
                select(a).where(a.c.gateway_ref == intent_id).with_for_update()
            ).first()
            if row is None or row.state in FINAL_ATTEMPT_STATES:
                return False
            customer, pm = self._methods(conn, {row.member_id}).get(row.member_id, (None, None))
            charge = _Charge(
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
            self.record_results(conn, [charge], CycleReport())
        self._notify_published()
        return True

    def dispute_opened(self, dispute_id: str, intent_id: str | None) -> None:
        """A chargeback: the member is suspended until it closes (unless it already closed)."""
        member_id = self._member_for_intent(intent_id)
        now = self.clock()
        with self.engine.begin() as conn:
            insert_ignore(
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
            if member_id:
                self._refresh(conn, [member_id], now)
        self._notify_published()

    def dispute_closed(self, dispute_id: str, intent_id: str | None, outcome: str) -> None:
        """A dispute closed: the suspension lifts; a lost dispute reopens the money it took."""
        member_id = self._member_for_intent(intent_id)
        now = self.clock()
        d = s.disputes
        with self.engine.begin() as conn:
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
            if outcome == "lost" and intent_id:
                self._reverse_payment(conn, intent_id, now)
            if member_id:
                self._refresh(conn, [member_id], now)
        self._notify_published()

    def payment_method_attached(self, customer_ref: str, payment_method: str) -> None:
        """A member added a card on the provider's side: use it and retry what is owed."""
        with self.reader.connect() as conn:
            payer = conn.execute(
                select(s.members.c.id).where(s.members.c.customer_ref == customer_ref)
            ).scalar()
        if payer is not None:
            self._new_card(payer, customer_ref, payment_method)

    def payment_method_detached(self, payment_method: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(s.members)
                .where(s.members.c.payment_method == payment_method)
                .values(payment_method=None)
            )

    def _member_for_intent(self, intent_id: str | None) -> str | None:
        if not intent_id:
            return None
        with self.reader.connect() as conn:
            return conn.execute(
                select(s.payment_attempts.c.member_id).where(
                    s.payment_attempts.c.gateway_ref == intent_id
                )
            ).scalar()

    def _reverse_payment(self, conn: Connection, reference: str, now: int) -> None:
        p = s.payments
        row = conn.execute(select(p).where(p.c.reference == reference)).first()
        if row is None:
            return
        conn.execute(
            insert(p).values(
                invoice_id=row.invoice_id,
                member_id=row.member_id,
                amount=-row.amount,
                method="chargeback",
                reference=f"{reference}:chargeback",
                at=now,
            )
        )
        conn.execute(
            update(s.invoices)
            .where(s.invoices.c.id == row.invoice_id)
            .values(
                amount_paid=s.invoices.c.amount_paid - row.amount,
                status="open",
                paid_at=None,
                due_at=now,
            )
        )

    # --- gate events ---------------------------------------------------------------------------------

    def record_gate_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Attendance intake: each event stored once by ``event_id``; returns how many were new."""
        now = self.clock()
        rows = []
        for ev in events:
            try:
                at = int(datetime.fromisoformat(str(ev["at"]).replace("Z", "+00:00")).timestamp())
            except (KeyError, ValueError):
                continue
            rows.append(
                {
                    "event_id": str(ev["event_id"]),
                    "site": str(ev["site"]),
                    "gate": str(ev["gate"]),
                    "at": at,
                    "kind": str(ev["kind"]),
                    "member_id": ev.get("member_id"),
                    "reason": ev.get("reason"),
                    "payload": json.dumps(ev, sort_keys=True),
                    "received_at": now,
                }
            )
        with self.engine.begin() as conn:
            return insert_ignore(conn, s.gate_events, rows)

    # --- republishing --------------------------------------------------------------------------------

    def republish_all(self) -> int:
        """Give every member a new version (after a key rotation); returns how many."""
        now = self.clock()
        with self.reader.connect() as conn:
            ids = list(conn.execute(select(s.members.c.id).order_by(s.members.c.id)).scalars())
        for i in range(0, len(ids), self.config.batch_size):
            with self.engine.begin() as conn:
                self._refresh(conn, ids[i : i + self.config.batch_size], now, force=True)
        self._notify_published()
        return len(ids)

    def rotate_credential_key(self, new_key: bytes) -> int:
        """Re-derive every card's credential under ``new_key`` and republish everyone."""
        self.keys.credential_key = new_key
        with self.engine.begin() as conn:
            rows = conn.execute(select(s.cards.c.id, s.cards.c.uid_encrypted)).all()
            if rows:
                conn.execute(
                    update(s.cards)
                    .where(s.cards.c.id == bindparam("cid"))
                    .values(credential=bindparam("cred")),
                    [
                        {
                            "cid": r.id,
                            "cred": card_key(new_key, self.keys.decrypt_uid(r.uid_encrypted)),
                        }
                        for r in rows
                    ],
                )
        return self.republish_all()

    # --- internals: facts, statuses, publishing -------------------------------------------------------

    def _facts_one(self, member_id: str) -> Facts:
        with self.reader.connect() as conn:
            facts = self._load(conn, [member_id], self.clock())
        if member_id not in facts:
            raise NotFound(f"no member {member_id!r}")
        return facts[member_id]

    def _methods(
        self, conn: Connection, member_ids: Iterable[str]
    ) -> dict[str, tuple[str | None, str | None]]:
        """(customer, payment method) to charge per member: a dependant is charged to the payer."""
        m, payer = s.members, _PAYER
        rows = conn.execute(
            select(
                m.c.id,
                m.c.customer_ref,
                m.c.payment_method,
                payer.c.customer_ref.label("pc"),
                payer.c.payment_method.label("ppm"),
            )
            .join(payer, payer.c.id == m.c.payer_id, isouter=True)
            .where(m.c.id.in_(many(list(member_ids))))
        ).all()
        return {r.id: _charge_method(r.customer_ref, r.payment_method, r.pc, r.ppm) for r in rows}

    def _dependants(self, conn: Connection, payer_ids: Sequence[str]) -> list[str]:
        return list(
            conn.execute(
                select(s.members.c.id).where(
                    s.members.c.payer_id.in_(many(payer_ids)), s.members.c.erased.is_(False)
                )
            ).scalars()
        )

    def _load(self, conn: Connection, ids: Sequence[str], now: int) -> dict[str, Facts]:
        """Bulk-load members, subscriptions, plans, open invoices, attempts, disputes and freezes
        into engine Accounts: a handful of queries per batch, not per member."""
        return self._derive(self._read(conn, ids, now))

    def _read(self, conn: Connection, ids: Sequence[str], now: int) -> _Rows:
        if not ids:
            return _Rows({}, {}, {}, set(), set(), {})
        batch = {"ids": ids}
        members = {r.id: r for r in fetch(conn, _LOAD_MEMBERS, batch)}
        plans = {r.id: r for r in fetch(conn, _ALL_PLANS)}
        open_inv, in_flight = self._invoices_and_attempts(conn, ids)
        disputed = {r.member_id for r in fetch(conn, _DISPUTED, batch)}
        freezes: dict[str, tuple[int, int]] = {}
        for r in fetch(conn, _FREEZES, {"ids": ids, "now": now}):
            freezes[r.member_id] = (r.starts_at, r.ends_at)
        return _Rows(members, plans, open_inv, in_flight, disputed, freezes)

    def _invoices_and_attempts(
        self, conn: Connection, ids: Sequence[str]
    ) -> tuple[dict[str, list[Any]], set[str]]:
        """Open invoices by member, and the members with an attempt not yet final."""
        batch = {"ids": ids}
        open_inv: dict[str, list[Any]] = {}
        for r in fetch(conn, _OPEN_INVOICES, batch):
            open_inv.setdefault(r.member_id, []).append(r)
        return open_inv, {r.member_id for r in fetch(conn, _IN_FLIGHT, batch)}

    def _reread(self, conn: Connection, rows: _Rows, ids: Sequence[str], now: int) -> _Rows:
        """``rows`` (read earlier in this batch, and kept) as they are now for ``ids``, with
        invoices and attempts read again. Only valid while nobody else has written since."""
        wanted = set(ids)
        members = {m: rows.members[m] for m in ids}
        open_inv, in_flight = self._invoices_and_attempts(conn, ids)
        freezes = {m: w for m, w in rows.freezes.items() if m in wanted and w[1] > now}
        return _Rows(members, rows.plans, open_inv, in_flight, rows.disputed & wanted, freezes)

    def _derive(self, rows: _Rows) -> dict[str, Facts]:
        """Facts with the engine's Accounts, from what ``_read`` read."""
        out: dict[str, Facts] = {}
        plans, open_inv, in_flight = rows.plans, rows.open_invoices, rows.in_flight
        disputed, freezes = rows.disputed, rows.freezes
        no_invoices: list[Any] = []
        for member_id, row in rows.members.items():
            invs = open_inv.get(member_id, no_invoices)
            if invs:
                owed = sum(int(i.total - i.amount_paid) for i in invs)
                overdue_since: int | None = min(int(i.due_at) for i in invs)
                open_renewal = any(i.kind == "renewal" for i in invs)
                uncharged = any(not i.attempted for i in invs)
            else:  # most members of a batch
                owed, overdue_since, open_renewal, uncharged = 0, None, False, False
            if row.member_id is None:
                sub_row = plan_row = None
                acct = eng.Account(
                    owed=owed,
                    overdue_since=overdue_since,
                    freeze=freezes.get(member_id),
                    disputed=member_id in disputed,
                    processing=member_id in in_flight,
                    open_renewal=open_renewal,
                    uncharged=uncharged,
                    activated=False,
                )
            else:
                sub_row = row
                plan_row = plans.get(row.plan_id)
                paid_through = row.paid_through
                acct = eng.Account(
                    paid_through=paid_through,
                    owed=owed,
                    overdue_since=overdue_since,
                    first_failure_at=row.first_failure_at,
                    next_retry_at=row.next_retry_at,
                    retries_done=int(row.retries_done),
                    needs_new_card=bool(row.needs_new_card),
                    freeze=freezes.get(member_id),
                    cancel_at=row.cancel_at,
                    disputed=member_id in disputed,
                    processing=member_id in in_flight,
                    open_renewal=open_renewal,
                    uncharged=uncharged,
                    previous=cast(eng.BillingStatus, row.status),
                    activated=paid_through is not None and paid_through > row.started_at,
                    renews=plan_row is None or bool(plan_row.auto_renew),
                )
            method = _charge_method(
                row.customer_ref, row.payment_method, row.payer_customer, row.payer_method
            )
            email_to = row.email or row.payer_email
            out[member_id] = Facts(row, sub_row, plan_row, acct, invs, email_to, method)
        return out

    def _refresh(
        self,
        conn: Connection,
        ids: Sequence[str],
        now: int,
        *,
        force: bool = False,
        facts: dict[str, Facts] | None = None,
    ) -> None:
        """Recompute statuses and review times, settle dunning state, and publish every member
        (and dependant) whose MemberState changed. ``facts`` may be passed when the caller has
        just loaded them and kept them current."""
        if facts is None:
            facts = self._load(conn, ids, now)
        changed_payers: list[str] = []
        sub_updates = []
        own: dict[str, str] = {}
        for member_id, f in facts.items():
            if f.sub is None:
                continue
            acct = f.account
            if acct.owed == 0 and (
                acct.first_failure_at or acct.next_retry_at or acct.needs_new_card
            ):
                acct = eng.after_settled(acct)
                f.account = acct
            status: str = eng.status_at(acct, now, self.rules)
            if f.member.erased:
                status = "cancelled"
            own[member_id] = status
            if status != f.sub.status:
                changed_payers.append(member_id)
                if status == "suspended" and f.plan is not None:
                    self._queue(
                        conn, f, "suspension", amount=format_amount(acct.owed, f.plan.currency)
                    )
                elif status == "expired" and f.plan is not None:
                    self._queue(conn, f, "expired", plan=f.plan.name, end=_day(acct.paid_through))
            sub_updates.append(
                {
                    "mid": member_id,
                    "st": status,
                    "rev": eng.next_review(acct, now, self.rules),
                    "ffa": acct.first_failure_at,
                    "nra": acct.next_retry_at,
                    "rd": acct.retries_done,
                    "nnc": acct.needs_new_card,
                    "pt": acct.paid_through,
                }
            )
        if sub_updates:
            bulk(conn, _SET_SUB_STATUS, sub_updates)
        self._publish(conn, facts, own, now, force)
        if changed_payers:
            deps = [d for d in self._dependants(conn, changed_payers) if d not in facts]
            if deps:
                self._refresh(conn, deps, now)

    def _publish(
        self, conn: Connection, facts: dict[str, Facts], own: dict[str, str], now: int, force: bool
    ) -> None:
        if not facts:
            return
        batch = {"ids": list(facts)}
        current = {r.member_id: r for r in fetch(conn, _STATES, batch)}
        payers = {f.member.payer_id for f in facts.values() if f.member.payer_id}
        payer_status: dict[str, str] = {}
        if payers:
            payer_status = dict(fetch(conn, _SUB_STATUS, {"ids": list(payers)}))
        payer_status.update({k: v for k, v in own.items() if k in payers})
        creds: dict[str, list[str]] = {}
        for r in fetch(conn, _CREDENTIALS, batch):
            creds.setdefault(r.member_id, []).append(r.credential)
        issued_at = format_time(now)
        plan_json: dict[str, tuple[list[Any], list[str]]] = {}
        changed: list[tuple[str, list[str], str, dict[str, Any], Any]] = []
        outbox = []
        manifest_delta: dict[str, list[tuple[str, int | None, bool, int, bool]]] = {}
        for member_id, f in facts.items():
            if f.sub is None and not f.member.erased:
                continue
            sites, sites_json = _sites(f.member.sites)
            if f.member.erased:
                body = erased_state(member_id, sites, 0, issued_at)
            else:
                status = own.get(member_id, f.sub.status if f.sub else "pending")
                payer = payer_status.get(f.member.payer_id) if f.member.payer_id else None
                published = eng.published_status(status, payer)  # type: ignore[arg-type]
                until = eng.valid_until(f.account, status, self.rules)  # type: ignore[arg-type]
                plan = f.plan
                if plan is not None and plan.id not in plan_json:
                    plan_json[plan.id] = (json.loads(plan.schedule), json.loads(plan.zones))
                schedule, zones = plan_json[plan.id] if plan is not None else ([], [])
                body = {
                    "type": "member_state",
                    "member_id": member_id,
                    "sites": sites,
                    "version": 0,
                    "status": published,
                    "role": f.member.role,
                    "valid_from": _iso(f.sub.started_at) if f.sub else None,
                    "valid_until": _iso(until) if until is not None else None,
                    "plan": plan.id if plan else None,
                    "schedule": schedule if f.member.role != "staff" else [],
                    "zones": zones,
                    "credentials": creds.get(member_id, []),
                    "qr_key": f.member.qr_key,
                    "daily_limit": plan.daily_limit if plan else None,
                    "issued_at": issued_at,
                }
            old = current.get(member_id)
            if old is not None and not force and _same_state(old.payload, body):
                continue
            changed.append((member_id, sites, sites_json, body, old))
        if not changed:
            return
        first = next_versions(conn, len(changed))
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for offset, (member_id, sites, sites_json, body, old) in enumerate(changed):
            version = first + offset
            body["version"] = version
            # Stored unsigned and in any key order: the publisher and the snapshot serialize
            # canonically when they sign.
            payload = orjson.dumps(body).decode()
            row = {
                "mid": member_id,
                "v": version,
                "st": body["status"],
                "si": sites_json,
                "p": payload,
            }
            (inserts if old is None else updates).append(row)
            same_sites = old is not None and old.sites == sites_json
            old_sites = sites if same_sites else json.loads(old.sites) if old is not None else []
            for site in set(old_sites) | set(sites):
                manifest_delta.setdefault(site, []).append(
                    (
                        member_id,
                        int(old.version) if old is not None and site in old_sites else None,
                        old is not None and old.status != "erased",
                        version,
                        site in sites and body["status"] != "erased",
                    )
                )
            outbox.append(
                {
                    "version": version,
                    "member_id": member_id,
                    "sites": sites_json if same_sites else json.dumps(sorted({*old_sites, *sites})),
                    "payload": payload,
                    "created_at": now,
                }
            )
        bulk(conn, _NEW_STATES, inserts)
        bulk(conn, _SET_STATES, updates)
        bulk(conn, insert(s.status_outbox), outbox)
        self._update_manifests(conn, manifest_delta)

    def _update_manifests(
        self, conn: Connection, deltas: dict[str, list[tuple[str, int | None, bool, int, bool]]]
    ) -> None:
        sm = s.site_manifests
        for site, changes in deltas.items():
            row = conn.execute(select(sm).where(sm.c.site == site)).first()
            count = int(row._mapping["count"]) if row else 0
            acc = int(row.digest, 16) if row else 0
            max_version = int(row.max_version) if row else 0
            for member_id, old_version, old_live, new_version, new_live in changes:
                if old_version is not None and old_live:
                    acc ^= digest_term(member_id, old_version)
                    count -= 1
                if new_live:
                    acc ^= digest_term(member_id, new_version)
                    count += 1
                max_version = max(max_version, new_version)
            values = {"count": count, "digest": digest_hex(acc), "max_version": max_version}
            if row is None:
                conn.execute(insert(sm).values(site=site, published_max_version=0, **values))
            else:
                conn.execute(update(sm).where(sm.c.site == site).values(**values))

    def _create_invoice(
        self,
        conn: Connection,
        f: Facts,
        kind: str,
        lines: list[tuple[str, str, int, int]],
        tax_rate_bp: int,
        due_at: int,
        period: tuple[int, int] | None,
    ) -> int:
        """One itemized invoice for a member (see ``_create_invoices``)."""
        currency = f.plan.currency if f.plan is not None else self.config.currency
        spec = _InvoiceSpec(f.member.id, kind, currency, lines, tax_rate_bp, due_at, period)
        return self._create_invoices(conn, [spec], self.clock())[0]

    def _create_invoices(self, conn: Connection, specs: list[_InvoiceSpec], now: int) -> list[int]:
        """Itemized invoices: each line net, then one tax line (rate in basis points)."""
        if not specs:
            return []
        heads = []
        for sp in specs:
            subtotal = sp.subtotal
            tax = eng.tax_of(subtotal, sp.tax_rate_bp)
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
                }
            )
        ids = insert_ids(conn, s.invoices, heads)
        rows: list[dict[str, Any]] = []
        for invoice_id, sp, head in zip(ids, specs, heads, strict=True):
            rows.extend(
                {
                    "invoice_id": invoice_id,
                    "kind": k,
                    "description": d,
                    "quantity": q,
                    "unit_amount": unit,
                    "amount": q * unit,
                    "tax_rate_bp": sp.tax_rate_bp,
                }
                for k, d, q, unit in sp.lines
            )
            if head["tax"]:
                rows.append(
                    {
                        "invoice_id": invoice_id,
                        "kind": "tax",
                        "description": f"Tax {sp.tax_rate_bp / 100:g} %",
                        "quantity": 1,
                        "unit_amount": head["tax"],
                        "amount": head["tax"],
                        "tax_rate_bp": sp.tax_rate_bp,
                    }
                )
        bulk(conn, insert(s.invoice_lines), rows)
        return ids

    def _apply_payment(
        self,
        conn: Connection,
        inv: Row[Any],
        amount: int,
        method: str,
        reference: str | None,
        now: int,
    ) -> None:
        self._apply_payments(conn, [(inv, amount, method, reference)], now)

    def _apply_payments(
        self,
        conn: Connection,
        items: list[tuple[Row[Any], int, str, str | None]],
        now: int,
        *,
        extend: bool = True,
    ) -> dict[str, int]:
        """Book money against invoices (one item per invoice); a fully paid renewal moves
        paid-through forward. Callers refresh the members afterwards. Returns the end of each
        renewal paid in full, by member: with ``extend=False`` paid-through is not written here,
        and the caller must refresh the members from facts extended to these ends
        (``_extended``): the refresh writes paid-through with the status."""
        if not items:
            return {}
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
        for inv, amount, _, _ in items:
            paid = int(inv.amount_paid) + amount
            full = paid >= int(inv.total)
            inv_updates.append(
                {
                    "iid": inv.id,
                    "ap": paid,
                    "st": "paid" if full else "open",
                    "pa": now if full else None,
                }
            )
            if full and inv.kind == "renewal" and inv.period_end is not None:
                renewed.append({"mid": inv.member_id, "pe": inv.period_end})
        bulk(conn, _SET_INVOICE_PAID, inv_updates)
        if extend:
            bulk(conn, _EXTEND_PAID_THROUGH, renewed)
        return {r["mid"]: r["pe"] for r in renewed}

    def _queue(self, conn: Connection, f: Facts, kind: str, **values: Any) -> None:
        """Render one notice into the outbox."""
        self._queue_many(conn, [(f, kind, values)])

    def _queue_many(self, conn: Connection, items: list[tuple[Facts, str, dict[str, Any]]]) -> None:
        """Render notices into the outbox; a dependant's go to the payer, and members without an
        e-mail address get none."""
        rows = []
        now = self.clock()  # once: a deployment's clock is a database query
        for f, kind, values in items:
            if not f.email_to:
                continue
            n: Notice = render(kind, f.email_to, f.member.id, name=f.member.name, **values)
            rows.append(
                {
                    "member_id": n.member_id,
                    "kind": n.kind,
                    "to_addr": n.to_addr,
                    "subject": n.subject,
                    "body": n.body,
                    "created_at": now,
                    "attempts": 0,
                }
            )
        if rows:
            bulk(conn, insert(s.notifications), rows)

    def _notify_published(self) -> None:
        if self.published_hook is not None:
            self.published_hook()

    # --- clock ---------------------------------------------------------------------------------------

    def advance_clock(self, seconds: float) -> int:
        """Move the injected clock forward (demos, tests); returns the new offset in seconds."""
        if seconds < 0:
            raise BillingError("the clock only moves forward")
        with self.engine.begin() as conn:
            offset = int(get_meta(conn, "clock_offset_s", 0)) + int(seconds)
            set_meta(conn, "clock_offset_s", offset)
        return offset


# Members' periods start and end on shared days: a batch formats a handful of distinct times.
_iso = lru_cache(maxsize=4096)(format_time)


def _extended(rows: _Rows, renewed: dict[str, int]) -> _Rows:
    """``rows`` with each renewal paid in full moving paid-through forward to its end, as
    ``_EXTEND_PAID_THROUGH`` would in the store."""
    i = -1
    for member_id, end in renewed.items():
        row = rows.members.get(member_id)
        if row is not None and (row.paid_through is None or row.paid_through < end):
            # row._replace() goes through all 27 fields by name (2.0 us); slices take 0.65 us.
            if i < 0:
                i = row._fields.index("paid_through")
            rows.members[member_id] = row._make((*row[:i], end, *row[i + 1 :]))
    return rows


def _data_version(conn: Connection) -> int | None:
    """SQLite's count of commits by other connections, as this connection last saw it (None on
    other databases): unchanged, nobody else has written since."""
    if conn.dialect.name != "sqlite":
        return None
    return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())


def _charge_method(
    customer: str | None, method: str | None, payer_customer: str | None, payer_method: str | None
) -> tuple[str | None, str | None]:
    """(customer, payment method) to charge: a dependant's payer's, when the member has a payer
    with either on file, else the member's own."""
    if payer_method or payer_customer:
        return payer_customer, payer_method
    return customer, method


@lru_cache(maxsize=1024)  # members share a few site lists
def _sites(stored: str) -> tuple[list[str], str]:
    """A member's sites as a list and as the JSON the states and the outbox store (never mutated:
    the list is shared by every member with the same sites)."""
    sites = json.loads(stored)
    return sites, json.dumps(sites)


def _same_state(old_payload: str, new: dict[str, Any]) -> bool:
    """Equal apart from the version and issue time (``new`` has version 0 until one is taken)."""
    old = orjson.loads(old_payload)
    old["version"] = new["version"]
    old["issued_at"] = new["issued_at"]
    return bool(old == new)


def _qr_public(seed: bytes) -> str:
    """The app's public key as the contract carries it: standard base64 of the raw 32 bytes."""
    return base64.b64encode(bytes(nacl.signing.SigningKey(seed).verify_key)).decode()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fmt(ts: int | None) -> str | None:
    return None if ts is None else format_time(ts)


def _day(ts: int | None) -> str:
    return "-" if ts is None else _date(ts // 86_400)


@lru_cache(maxsize=1024)  # invoice labels and notices repeat a few days per cycle
def _date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
