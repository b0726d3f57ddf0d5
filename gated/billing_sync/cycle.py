"""The billing cycle: finish what a crash left open, then, batch by batch, review every member
whose time has come: renew, retry, settle slow payments, move statuses.

Each batch is three transactions on one connection: plan (invoices and attempts committed with
their idempotency keys), the gateway calls between them, and booking the results
(``charging``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.charging import Batch, Charge, CycleReport, attempts_for, execute
from gated.billing_sync.context import Context
from gated.billing_sync.facts import (
    Facts,
    Rows,
    charge_methods,
    derive_facts,
    hold_dependants,
    read_rows,
)
from gated.billing_sync.household import merge_renewals, on_invoice, partners
from gated.billing_sync.invoices import InvoiceSpec, NewInvoice
from gated.billing_sync.next_invoice import bill_overdue, create_renewals
from gated.billing_sync.notices import format_day
from gated.billing_sync.prices import apply_price_changes
from gated.billing_sync.publishing import refresh
from gated.billing_sync.refunds import resume_refunds, write_off_below_minimum
from gated.billing_sync.reminders import anything, queue_reminders
from gated.billing_sync.renewals import renewal_terms
from gated.billing_sync.store import bulk, longest_hold, many

log = logging.getLogger("gated.billing")
# A slow payment (SEPA) still processing is looked up at most this often: its webhook normally
# settles it, the lookup is the backstop.
PROCESSING_POLL_S = 3600


# The next batch of members due for review, oldest first: built once, fetched in one call.
_DUE = (
    select(s.subscriptions.c.member_id)
    .where(s.subscriptions.c.review_at <= bindparam("now"))
    .order_by(s.subscriptions.c.review_at)
    .limit(bindparam("size"))
)


# The fewest members a batch shrinks to while it holds the write lock too long (BatchSize).
MIN_BATCH = 20


@dataclass
class BatchSize:
    """How many members the cycle's next batch reviews: ``limit`` (``batch_size``), or fewer
    while a batch's write transactions held SQLite's write lock for longer than ``hold_s``
    (``batch_hold_ms``), sized from the last batch's members per second of hold; it grows back
    at most twofold a batch. A hold stretches on a busy host (the cycle waits for a core while
    holding the lock), so it is sized by time, not by count alone."""

    limit: int
    hold_s: float
    size: int = 0

    def __post_init__(self) -> None:
        self.size = self.limit

    def observe(self, held_s: float | None, reviewed: int) -> None:
        """The last batch reviewed ``reviewed`` members and held the lock ``held_s`` at
        most (None: no lock, as on PostgreSQL)."""
        if held_s is None or reviewed == 0:
            return
        fits = int(reviewed * self.hold_s / max(held_s, 1e-6))
        self.size = max(min(MIN_BATCH, self.limit), min(self.limit, fits, 2 * self.size))


@dataclass
class Pace:
    """The rests that keep a cycle busy for at most ``share`` of its wall time: after a batch
    that took ``busy`` seconds of wall time, ``busy * (1 - share) / share`` (at 0.5 as long
    again), taken before the next batch starts (none after the last). Wall time, not CPU time:
    a batch that waits for a core or a lock on a loaded host rests longer too, and the members'
    requests it competed with get the host for that long. A cycle takes at most ``1 / share``
    times its busy time (twice at 0.5)."""

    share: float
    owed: float = 0.0

    def batch_took(self, busy: float) -> None:
        """The last batch's wall time, in seconds."""
        self.owed = busy * (1 - self.share) / self.share if self.share < 1 else 0.0

    def rest(self, stopping: threading.Event, report: CycleReport) -> None:
        """Rest what the last batch owes (a stop ends the rest at once)."""
        if self.owed > 0:
            began = time.monotonic()
            stopping.wait(self.owed)
            report.rested_s += time.monotonic() - began
            self.owed = 0.0


def run_cycle(ctx: Context, member_ids: Sequence[str] | None = None) -> CycleReport:
    """One billing cycle: finish interrupted attempts, then review every member whose time has
    come (or just ``member_ids``): renew, retry, settle slow payments, move statuses."""
    report = CycleReport()
    # Before anything is billed: a renewal from a price change's day on pays the new price.
    apply_price_changes(ctx)
    # Lines sold on the next invoice that no renewal took in time: billed alone, and their
    # members reviewed (charged) below.
    bill_overdue(ctx, ctx.clock())
    resume(ctx, report, member_ids)
    resume_refunds(ctx, member_ids)
    sizing = BatchSize(ctx.config.batch_size, ctx.config.batch_hold_ms / 1000)
    pace = Pace(ctx.cycle_share)
    seen: set[str] = set()
    while not ctx.stopping.is_set():
        now = ctx.clock()
        if member_ids is None and not anything(ctx, _DUE.params(now=now, size=1)):
            break  # nothing due: no write transaction (see reminders.anything)
        pace.rest(ctx.stopping, report)
        if ctx.stopping.is_set():
            break
        began = time.monotonic()
        now = ctx.clock()
        # One connection for the batch's three transactions, so that SQLite's data_version
        # tells whether anyone else wrote in between (see Batch).
        with ctx.engine.connect() as conn:
            with conn.begin():
                if member_ids is None:
                    due = list(
                        conn.execute(_DUE, {"now": now, "size": sizing.size}).scalars().all()
                    )
                    # A household is reviewed in one batch, so that it renews on one invoice.
                    due += partners(conn, due, now)
                else:
                    due = list(member_ids)
                if not due or seen.issuperset(due):
                    if due:
                        log.warning("event=cycle_stuck members=%d", len(due))
                    break
                seen.update(due)
                charges, batch = plan_charges(ctx, conn, due, now, report)
            execute(ctx, charges, report, conn, batch)
            sizing.observe(longest_hold(conn), len(due))
        report.batches += 1
        pace.batch_took(time.monotonic() - began)
        if member_ids is not None:
            break
    if member_ids is None:
        queue_reminders(ctx, ctx.clock())
    if ctx.stopping.is_set():
        log.info("event=cycle_interrupted reason=stopping reviewed=%d", report.reviewed)
    ctx.notify_published()
    return report


# A plan change booked for the renewal (a downgrade) takes effect as the renewal is billed.
_SWITCH_PLAN = (
    update(s.subscriptions)
    .where(s.subscriptions.c.member_id == bindparam("mid"))
    .values(plan_id=bindparam("plan"), next_plan_id=None, price=None)
)


def switch_plan(rows: Rows, f: Facts, member_id: str) -> None:
    """``f`` (and the batch's row) on the plan booked for the renewal, as ``_SWITCH_PLAN``
    leaves the store: the renewal bills it and the gates get its zones and schedule."""
    row = rows.members[member_id]
    row = row._replace(plan_id=row.next_plan_id, next_plan_id=None, price=None)
    rows.members[member_id] = row
    f.member = f.sub = row
    f.plan = rows.plans[row.plan_id]
    f.account = f.account._replace(renews=bool(f.plan.auto_renew))


def resume(ctx: Context, report: CycleReport, member_ids: Sequence[str] | None = None) -> None:
    """Finish attempts a crash left open, before anything else, and look up slow payments
    (SEPA) at most hourly: their webhook normally settles them, this is the backstop."""
    a = s.payment_attempts
    due = or_(a.c.state != "processing", a.c.updated_at <= ctx.clock() - PROCESSING_POLL_S)
    q = select(a).where(a.c.state.in_(s.OPEN_ATTEMPT_STATES), due).order_by(a.c.id)
    if member_ids is not None:
        q = q.where(a.c.member_id.in_(many(member_ids)))
    with ctx.reader.connect() as conn:
        rows = list(conn.execute(q))
        methods = charge_methods(conn, {r.member_id for r in rows})
    if not rows:
        return
    charges = []
    for r in rows:
        customer, pm = methods.get(r.member_id, (None, None))
        charges.append(
            Charge(
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
    execute(ctx, charges, report)


def plan_charges(
    ctx: Context, conn: Connection, due: list[str], now: int, report: CycleReport
) -> tuple[list[Charge], Batch]:
    """Decide per member: renewal invoices and retries become attempts (committed with their
    idempotency keys before any gateway call); everyone reviewed gets a fresh status."""
    rows = read_rows(conn, due, now)
    if write_off_below_minimum(ctx, conn, rows, now):
        rows = read_rows(conn, due, now)
    batch = Batch.start(conn, rows)
    facts = derive_facts(rows)
    hold_dependants(conn, facts, now, ctx.rules)
    renewals: list[InvoiceSpec] = []
    retries: list[dict[str, Any]] = []
    to_charge: list[str] = []
    switches: list[dict[str, Any]] = []
    for member_id, f in sorted(facts.items()):
        report.reviewed += 1
        acct = f.account
        if f.sub is None or f.member.erased:
            continue
        retry = eng.retry_due(acct, now)
        if f.plan is not None and eng.renewal_due(acct, now):
            # What the upcoming-charge notice announced: the price changes due are applied.
            _, price = renewal_terms(f.sub, rows.plans)
            if f.sub.next_plan_id is not None:
                switches.append({"mid": member_id, "plan": f.sub.next_plan_id})
                switch_plan(rows, f, member_id)
            start = int(f.sub.paid_through)
            end = eng.period_end(int(f.sub.started_at), start, int(f.plan.period_months))
            label = f"{f.plan.name} {format_day(start)} to {format_day(end)}"
            renewals.append(
                InvoiceSpec(
                    member_id,
                    "renewal",
                    f.plan.currency,
                    [("membership", label, 1, price)],
                    int(f.plan.tax_rate_bp),
                    # Due when billed: a period billed late (it waited for the one before,
                    # paid at the desk days into it) gets its full grace from now, as its
                    # failure notice says, not a suspension the next day.
                    max(start, now),
                    (start, end),
                )
            )
            report.renewals += 1
            # During dunning the new renewal waits for the schedule's next retry (see
            # engine.first_charge_due): charging it now would ask the card off-schedule. A
            # card declined for good is not asked at all: the renewal waits for a new card.
            charge_now = retry or not (eng.in_dunning(acct) or acct.needs_new_card)
        else:
            charge_now = retry or eng.first_charge_due(acct)
        if retry:
            retries.append({"mid": member_id, "rd": acct.retries_done + 1})
            report.retries += 1
        if charge_now:
            to_charge.append(member_id)
    renewals, merged = merge_renewals(renewals, facts)
    # The members' rows were read in this transaction: their sites name the issuers.
    sites = {sp.member_id: rows.members[sp.member_id].sites for sp in renewals}
    # Products sold on the next invoice go onto it (``renewals`` gains their lines).
    created = create_renewals(conn, renewals, now, sites=sites)
    if switches:
        bulk(conn, _SWITCH_PLAN, switches)
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
    new = {sp.member_id: (c, sp) for c, sp in zip(created, renewals, strict=True)}
    if merged:
        # A dependant renewed on the payer's invoice is charged, and refreshed, with it.
        on_invoice(facts, merged, new)
        to_charge = [m for m in to_charge if m not in merged]
    minimum_for = ctx.config.dunning.minimum_for
    minimums: dict[str, int] = {}  # by currency: the configuration is asked once per batch
    open_invoices: list[tuple[int, str, int, str, bool]] = []
    for member_id in to_charge:
        earlier = facts[member_id].open_invoices
        owing = []
        if earlier:  # most members renewing owe nothing else
            owing = [
                (int(i.due_at), int(i.id), int(i.total - i.amount_paid), i.currency, False)
                for i in earlier
                # An instalment of a payment plan is charged on its day, not before.
                if i.total > i.amount_paid and i.due_at <= now
            ]
            batch.invoices.update((int(i.id), i) for i in earlier)
        if member_id in new:
            (invoice_id, number, total), sp = new[member_id]
            owing.append((sp.due_at, invoice_id, total, sp.currency, True))
            period_end = sp.period[1] if sp.period else None
            batch.invoices[invoice_id] = NewInvoice(
                invoice_id,
                member_id,
                sp.kind,
                total,
                0,
                period_end,
                number=number,
                household=bool(sp.household),
            )
        if len(owing) > 1:
            owing.sort(key=lambda o: o[0])
        # Never below the processor's minimum: a renewal billed that small is written off at
        # the member's next review (write_off_below_minimum), as a rest would be.
        for _, invoice_id, amount, currency, fresh in owing:
            minimum = minimums.get(currency)
            if minimum is None:
                minimum = minimums[currency] = minimum_for(currency)
            if amount >= minimum:
                open_invoices.append((invoice_id, member_id, amount, currency, fresh))
    charges = attempts_for(conn, open_invoices, facts, now)
    # Members being charged are refreshed from the charge's result (record_results); if no
    # result comes back, resume() finishes the attempt on the next cycle.
    # The others' facts are as loaded: nothing above wrote to them, except a renewal billed and
    # not charged (it waits for a retry or a new card). Those members are refreshed from the
    # store, so their status and next review count the new invoice (as loaded, their renewal
    # looked due still, and the cycle met them again at once).
    charging = set(to_charge)
    charging.update(d for d, payer in merged.items() if payer in charging)
    billed = sorted(m for m in new if m not in charging)
    rest = {m: f for m, f in facts.items() if m not in charging and m not in new}
    refresh(ctx, conn, list(rest), now, facts=rest)
    if billed:
        refresh(ctx, conn, billed, now)
    return charges, batch
