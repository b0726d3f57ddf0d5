"""Charging: the crash-safe protocol that turns committed attempts into money, and what follows
from a gateway's answer (booking the payment, dunning after a decline, the notices).

The protocol (DESIGN.md, crash safety): (1) commit the invoice and an attempt row with its
idempotency key; (2) create the PaymentIntent unconfirmed; (3) commit its id; (4) confirm; (5)
commit the result. A restart first finishes every attempt left in (1)-(4) (``cycle.resume``):
re-create under the same key if no id was committed (an unconfirmed intent never charges),
otherwise retrieve by id and confirm only if the provider says it is still unconfirmed. The
crash tests kill the process at each step through ``gateway.FaultyGateway``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, bindparam, func, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.facts import (
    Facts,
    Rows,
    dependants,
    derive_facts,
    extended,
    read_rows,
    reread_rows,
)
from gated.billing_sync.gateway import ChargeResult, GatewayError, GatewayUnavailable
from gated.billing_sync.household import periods_paid
from gated.billing_sync.invoices import apply_payments, pay_link
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.publishing import queue_notice, queue_notices, refresh
from gated.billing_sync.store import bulk, fetch, in_list, insert_ids, many

log = logging.getLogger("gated.billing")
T = TypeVar("T")


# The statements run for every batch, built once (see facts.py).
_INV, _ATT = s.invoices, s.payment_attempts
_ATTEMPT_STATES = select(_ATT.c.id, _ATT.c.state).where(_ATT.c.id.in_(in_list())).with_for_update()
# Locked before booking on them (PostgreSQL), in one order, as a credit note or a write-off
# locks its invoice before writing: an attempt's row is locked first, then its invoice, and no
# rollup row before either, so the two wait for each other instead of deadlocking.
_INVOICES = select(_INV).where(_INV.c.id.in_(in_list())).order_by(_INV.c.id).with_for_update()
_SET_ATTEMPT_REF = (
    update(_ATT)
    .where(_ATT.c.id == bindparam("aid"), _ATT.c.state == "new")
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
    # Seconds the cycle rested between batches (``Context.cycle_share``), and its batches.
    rested_s: float = 0.0
    batches: int = 0


@dataclass
class Charge:
    """One committed attempt on its way through the protocol: what to charge, the intent once
    created, and the gateway's answer once there is one."""

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


@dataclass
class Batch:
    """A cycle's batch between its transactions, all on one connection: the rows its members'
    facts came from, kept as the batch itself changes them, and SQLite's ``data_version`` then.
    If no other connection has committed since, the batch's last transaction reuses the rows
    instead of reading them again (see ``record_results``)."""

    rows: Rows
    data_version: int | None
    # The invoices the batch charges, by id, as the store holds them before the charges.
    invoices: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, conn: Connection, rows: Rows) -> Batch:
        """A batch planned from ``rows``, just read on ``conn``."""
        return cls(rows, data_version(conn))

    def unchanged(self, conn: Connection, charges: list[Charge]) -> bool:
        """Whether nobody else has written since the batch was planned (and these charges are
        the batch's own)."""
        return (
            all(c.invoice_id in self.invoices for c in charges)
            and self.rows.members.keys() >= {c.member_id for c in charges}
            and data_version(conn) == self.data_version is not None
        )


def attempt_key(invoice_id: int, number: int) -> str:
    """The idempotency key of an invoice's ``number``-th automatic attempt (from 1)."""
    return f"inv{invoice_id}-a{number}"


def attempts_for(
    conn: Connection,
    invoices: list[tuple[int, str, int, str, bool]],
    facts: dict[str, Facts],
    now: int,
) -> list[Charge]:
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
            "idempotency_key": attempt_key(invoice_id, counts.get(invoice_id, 0) + 1),
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
            Charge(
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


def execute(
    ctx: Context,
    charges: list[Charge],
    report: CycleReport,
    conn: Connection | None = None,
    batch: Batch | None = None,
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

    def create(c: Charge) -> str:
        assert c.payment_method is not None
        return ctx.gateway.create_intent(
            customer_ref=c.customer_ref,
            payment_method=c.payment_method,
            amount=c.amount,
            currency=c.currency,
            idempotency_key=c.key,
            metadata={"member_id": c.member_id, "invoice": str(c.invoice_id), "attempt": c.key},
        )

    created: set[int] = set()
    for c, ref in zip(to_create, gateway_calls(ctx, create, to_create), strict=True):
        if isinstance(ref, GatewayError):
            report.errors += 1
            log.warning("event=create_intent_failed attempt=%s error=%s", c.key, ref)
        else:
            c.gateway_ref = ref
            created.add(c.attempt_id)
    # 3. commit the intent ids before anything can charge
    if created:
        # One clock reading for the batch: a deployment's clock is a database query.
        now = ctx.clock()
        with ctx.transaction(conn) as tx:
            # Only an attempt still new takes its id. Another request may have finished it
            # meanwhile under the same idempotency key (a member saving a card resumes their
            # open attempts, the page's own charge among them): writing "created" over its
            # result left a booked payment's attempt open for good. Those are looked up below
            # before anything is confirmed, as a resumed attempt is.
            ids = {"ids": sorted(created)}
            created = {aid for aid, st in fetch(tx, _ATTEMPT_STATES, ids) if st == "new"}
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
    # 4. confirm (or, for an intent from before a restart, look first)
    to_confirm = [c for c in charges if c.gateway_ref is not None and c.result is None]

    def confirm(c: Charge) -> ChargeResult:
        assert c.gateway_ref is not None
        fresh = c.attempt_id in created
        result = None if fresh else ctx.gateway.retrieve_intent(c.gateway_ref)
        if result is None or result.state == "requires_confirmation":
            result = ctx.gateway.confirm_intent(c.gateway_ref, c.key, return_url=c.return_url)
        return result

    for c, res in zip(to_confirm, gateway_calls(ctx, confirm, to_confirm), strict=True):
        if isinstance(res, GatewayError):
            report.errors += 1
            log.warning("event=confirm_failed attempt=%s error=%s", c.key, res)
        else:
            c.result = res
    # 5. commit the results and what follows from them
    done = [c for c in charges if c.result is not None]
    if done:
        with ctx.transaction(conn) as tx:
            record_results(ctx, tx, done, report, batch)


def gateway_calls(
    ctx: Context, call: Callable[[Charge], T], charges: list[Charge]
) -> list[T | GatewayError]:
    """``call`` for each charge, in order, with up to the gateway's ``concurrency`` in flight
    at once: a provider answers over the network, one call at a time that is ~2-3 charges a
    second, far below what its rate limit allows (the gateway paces the calls itself). A
    GatewayError is returned in its charge's place; anything else is raised once the calls
    already under way have ended, and the rest are not made (their attempts stay open for
    the next cycle's resume())."""

    def one(c: Charge) -> T | GatewayError:
        if ctx.stopping.is_set():
            return GatewayUnavailable("not sent: the service is stopping")
        try:
            return call(c)
        except GatewayError as exc:
            return exc

    workers = min(ctx.gateway.concurrency, len(charges))
    if workers <= 1:
        return [one(c) for c in charges]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="gateway")
    try:
        return list(pool.map(one, charges))
    finally:
        # On an error or Ctrl-C, the calls not yet under way are not made at all.
        pool.shutdown(wait=True, cancel_futures=True)


def record_results(
    ctx: Context,
    conn: Connection,
    charges: list[Charge],
    report: CycleReport,
    batch: Batch | None = None,
) -> None:
    """Store gateway answers once: an attempt already final is left alone, whatever arrives
    later or twice (webhooks repeat and reorder). ``batch``: see ``Batch``."""
    now = ctx.clock()
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
    outcomes: list[tuple[Charge, Any, eng.DeclineClass | None]] = []
    for c in charges:
        res = c.result
        assert res is not None
        if not applies(current.get(c.attempt_id), res):
            continue
        if res.state == "requires_confirmation" or res.action_url is not None:
            # Not final yet: the member is authenticating on the bank's page; the return to
            # the pay page or the webhook records what came of it.
            continue
        if res.state == "requires_action" and c.return_url is not None:
            # On-session, the member authenticates in the page (Stripe.js): likewise.
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
            if int(inv.amount_paid) >= int(inv.total):
                # Paid meanwhile (at the desk, by another attempt): the money is booked all the
                # same, so our books hold what the provider took; the invoice shows it overpaid.
                log.warning("event=overpaid invoice=%s attempt=%s", inv.id, c.key)
            payments.append((inv, c.amount, res.method, c.gateway_ref))
        outcomes.append((c, inv, decline_class))
    if not updates:
        return
    bulk(conn, _SET_ATTEMPT_RESULT, updates, {"now": now})
    renewed = apply_payments(conn, payments, now, extend=False)
    # One load after the money is booked; dunning changes below are made to these facts in
    # place so the refresh can reuse them (and write the paid-through the renewals moved).
    who = {c.member_id for c, _, _ in outcomes}
    households = [int(inv.id) for _, inv, _ in outcomes if getattr(inv, "household", False)]
    for on_it in periods_paid(conn, households).values():
        # Everyone on a household invoice gets the standing it now implies.
        who.update(on_it)
    members = list(who)
    if kept is not None and kept.rows.members.keys() >= who:
        # The store holds the batch's rows as kept: read again only the invoices and
        # attempts the payments changed.
        rows = reread_rows(conn, kept.rows, members, now)
    else:
        rows = read_rows(conn, members, now)
    facts = derive_facts(extended(rows, renewed))
    receipts: list[tuple[Facts, str, dict[str, Any]]] = []
    # Payers whose card was declined for good by a charge of this batch.
    dead: set[str] = set()
    for c, inv, decline_class in outcomes:
        f = facts.get(c.member_id)
        assert c.result is not None
        if f is None:
            continue
        if c.result.state == "succeeded":
            report.succeeded += 1
            # Named by the number the batch holds, given as the invoice was issued; a sign-up's
            # draft, numbered as it was paid just now, is looked up (queue_notices).
            named = {"invoice": inv.number} if inv.number else {"invoices": [inv.id]}
            values = {"amount": format_amount(c.amount, c.currency), **named, "attach": [inv.id]}
            receipts.append((f, "receipt", values))
        elif c.result.state == "processing":
            report.processing += 1
        else:
            report.failed += 1
            assert decline_class is not None
            after_failure(ctx, conn, f, inv, c, c.result, decline_class, now)
            if decline_class == "hard":
                dead.add(f.member.payer_id or c.member_id)
    if dead:
        card_declined_for_good(conn, dead, facts)
    queue_notices(ctx, conn, receipts)
    refresh(ctx, conn, list(facts), now, facts=facts)


def card_declined_for_good(
    conn: Connection, owners: set[str], facts: dict[str, Facts] | None = None
) -> None:
    """The cards of ``owners`` may not be charged again (a hard decline, a lost chargeback),
    whichever member of the household the charge was for: the owner and every dependant they
    pay for wait for a new card (``facts`` of the batch kept in step, for its refresh)."""
    household = sorted({*owners, *dependants(conn, sorted(owners))})
    conn.execute(
        update(s.subscriptions)
        .where(s.subscriptions.c.member_id.in_(many(household)))
        .values(needs_new_card=True)
    )
    for member_id in household:
        f = (facts or {}).get(member_id)
        if f is not None:
            f.account = f.account._replace(needs_new_card=True)


def applies(stored: str | None, result: ChargeResult) -> bool:
    """Whether a gateway answer changes an attempt stored in state ``stored``: one not yet
    final takes any answer; a final one only a success it did not have. A payment the provider
    took is always booked, even after the attempt was recorded as declined or waiting on the
    member (3-D Secure finished in the page after we stopped waiting); a success booked once
    is never booked again, and nothing overturns it."""
    if stored not in s.FINAL_ATTEMPT_STATES:
        return True
    return result.state == "succeeded" and stored != "succeeded"


def after_failure(
    ctx: Context,
    conn: Connection,
    f: Facts,
    inv: Row[Any],
    c: Charge,
    res: ChargeResult,
    decline_class: eng.DeclineClass,
    now: int,
) -> None:
    """Dunning after a declined charge: the retry schedule, a new card asked for, or a pay
    link for a bank that wants the member to authenticate, with the notice that says so.
    An online sign-up not yet paid has no membership to chase: its page says what happened."""
    if f.sub is None:
        return
    acct = eng.after_failure(f.account, decline_class, now, ctx.rules)
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
        "invoices": [inv.id],
        "reason": (res.decline_code or "declined").replace("_", " "),
    }
    if decline_class == "hard":
        queue_notice(ctx, conn, f, "new_card", **values)
    elif decline_class == "auth":
        link = pay_link(ctx, int(inv.id))
        queue_notice(ctx, conn, f, "pay_link", link=link, **values)
    else:
        step = (
            f"We will try again on {format_day(acct.next_retry_at)}."
            if acct.next_retry_at
            else "We will not try this card again: please pay at the front desk."
        )
        # The invoice's own first attempt is a failure, not a failed retry, even when it was
        # charged at a retry of the member's schedule.
        kind = "failure" if c.key == attempt_key(c.invoice_id, 1) else "retry"
        queue_notice(
            ctx, conn, f, signup_failed_or(conn, c.invoice_id, kind), next_step=step, **values
        )


def signup_failed_or(conn: Connection, invoice_id: int, kind: str) -> str:
    """``signup_failed`` for an online sign-up's own first payment (a debit refused after the
    membership started), else ``kind``; a later retry of it is a retry."""
    a = s.payment_attempts
    signup = select(s.signups.c.member_id).where(s.signups.c.invoice_id == invoice_id).exists()
    attempts = select(func.count()).where(a.c.invoice_id == invoice_id).scalar_subquery()
    return "signup_failed" if conn.execute(select(signup & (attempts == 1))).scalar() else kind


def data_version(conn: Connection) -> int | None:
    """SQLite's count of commits by other connections, as this connection last saw it (None on
    other databases): unchanged, nobody else has written since."""
    if conn.dialect.name != "sqlite":
        return None
    return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
