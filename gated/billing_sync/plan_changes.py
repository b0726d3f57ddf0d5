"""A member moving to another plan: an upgrade now, prorated, or any change at the next renewal.

An upgrade now (a plan that costs at least as much per period, with the same period, currency
and tax rate) takes effect at once (the gates get the new plan's zones and schedule) and bills
one ``plan_change`` invoice: the new plan for the days of the paid period left, less a credit
for the old price over the same days (``engine.proration``), charged at once through the same
crash-safe protocol as a renewal. The plan change and its invoice are one transaction, so a
crash leaves either both or neither, and the charge resumes as any other. A cheaper plan, or one
with another period, takes effect at the renewal (``subscriptions.next_plan_id``): the renewal
bills the new plan and nothing is prorated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import Facts, load_facts, load_one
from gated.billing_sync.invoices import create_invoice
from gated.billing_sync.notices import format_day
from gated.billing_sync.publishing import refresh
from gated.billing_sync.renewals import member_price


class PlanChangeRefused(BillingError, ValueError):
    """A plan change the rules do not allow; the message says why and what to do instead."""


@dataclass(frozen=True)
class PlanChange:
    """What a plan change costs, before it is made (``quote``) and as it was made."""

    member_id: str
    old_plan: str
    new_plan: str
    # "now" (an upgrade, prorated) or "renewal" (the renewal bills the new plan).
    when: str
    effective_at: int
    currency: str
    old_price: int
    new_price: int
    tax_rate_bp: int
    days_left: int = 0
    period_days: int = 0
    credit: int = 0
    charge: int = 0

    @property
    def net(self) -> int:
        """The invoice's net amount: the charge less the credit."""
        return self.charge - self.credit

    @property
    def tax(self) -> int:
        """The tax on ``net``."""
        return eng.tax_of(self.net, self.tax_rate_bp)

    @property
    def total(self) -> int:
        """What is charged now (0 for a change at renewal)."""
        return self.net + self.tax

    def as_dict(self) -> dict[str, Any]:
        """The quote as plain values (JSON, the CLI, the member app)."""
        return {
            "member_id": self.member_id,
            "old_plan": self.old_plan,
            "new_plan": self.new_plan,
            "when": self.when,
            "effective": format_day(self.effective_at),
            "currency": self.currency,
            "old_price": self.old_price,
            "new_price": self.new_price,
            "days_left": self.days_left,
            "period_days": self.period_days,
            "credit": self.credit,
            "charge": self.charge,
            "net": self.net,
            "tax": self.tax,
            "total": self.total,
        }


def quote(ctx: Context, member_id: str, plan_id: str, at_renewal: bool = False) -> PlanChange:
    """What moving ``member_id`` to ``plan_id`` costs, now or at the renewal; refused (with the
    reason) where the change is not allowed. Nothing is written."""
    now = ctx.clock()
    f = load_one(ctx, member_id)
    with ctx.reader.connect() as conn:
        return _quote(conn, f, plan_id, at_renewal, now)[0]


def change_plan(
    ctx: Context, member_id: str, plan_id: str, at_renewal: bool = False
) -> tuple[PlanChange, CycleReport]:
    """Move ``member_id`` to ``plan_id``: an upgrade now, billed prorated and charged at once,
    or any change at the next renewal. Returns what it cost and what the charge did."""
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        # Read and quoted inside the write: nothing can change before the change is made.
        f = load_facts(conn, [member_id], now).get(member_id)
        if f is None:
            raise NotFound(f"no member {member_id!r}")
        change, new = _quote(conn, f, plan_id, at_renewal, now)
        sub = s.subscriptions
        if change.when == "renewal":
            conn.execute(
                update(sub).where(sub.c.member_id == member_id).values(next_plan_id=plan_id)
            )
            return change, CycleReport()
        conn.execute(
            update(sub)
            .where(sub.c.member_id == member_id)
            .values(plan_id=plan_id, next_plan_id=None, price=None, review_at=now)
        )
        if change.net > 0:
            days = f"{change.days_left} of {change.period_days} days"
            lines = [
                ("proration", f"{f.plan.name}, unused {days}", 1, -change.credit),
                ("proration", f"{new.name}, {days}", 1, change.charge),
            ]
            on_new = Facts(f.member, f.sub, new, f.account, [])
            create_invoice(ctx, conn, on_new, "plan_change", lines, change.tax_rate_bp, now, None)
        refresh(ctx, conn, [member_id], now)
    return change, run_cycle(ctx, member_ids=[member_id])


def cancel_next_plan(ctx: Context, member_id: str) -> None:
    """Drop a plan change booked for the renewal; NotFound when none is."""
    f = load_one(ctx, member_id)
    if f.sub is None or f.sub.next_plan_id is None:
        raise NotFound(f"member {member_id} has no plan change booked")
    with ctx.engine.begin() as conn:
        conn.execute(
            update(s.subscriptions)
            .where(s.subscriptions.c.member_id == member_id)
            .values(next_plan_id=None)
        )


def _quote(
    conn: Connection, f: Facts, plan_id: str, at_renewal: bool, now: int
) -> tuple[PlanChange, Any]:
    """The change and the new plan's row."""
    member_id = f.member.id
    if f.member.erased:
        raise PlanChangeRefused(f"member {member_id} is erased")
    if f.sub is None or f.plan is None:
        raise PlanChangeRefused(f"member {member_id} has no subscription")
    new = conn.execute(select(s.plans).where(s.plans.c.id == plan_id)).first()
    if new is None:
        raise NotFound(f"no plan {plan_id!r}")
    old = f.plan
    if new.id == old.id:
        raise PlanChangeRefused(f"member {member_id} is on plan {plan_id} already")
    if new.currency != old.currency:
        raise PlanChangeRefused(f"plan {plan_id} is billed in {new.currency}, not {old.currency}")
    if not new.auto_renew or not old.auto_renew:
        raise PlanChangeRefused(
            "a fixed-term pass is not changed: let it end, or cancel and enrol on the new plan"
        )
    status = f.sub.status
    acct = f.account
    if acct.cancel_at is not None:
        raise PlanChangeRefused(
            f"member {member_id} has cancelled (on {format_day(acct.cancel_at)}):"
            " withdraw the cancellation first (members uncancel)"
        )
    old_price, new_price = member_price(f.sub, old), int(new.price)
    base: dict[str, Any] = {
        "member_id": member_id,
        "old_plan": old.id,
        "new_plan": new.id,
        "currency": old.currency,
        "old_price": old_price,
        "new_price": new_price,
        "tax_rate_bp": int(new.tax_rate_bp),
    }
    paid_through = acct.paid_through
    if at_renewal:
        if paid_through is None or not acct.activated:
            raise PlanChangeRefused(f"member {member_id} has no paid period to renew")
        return PlanChange(when="renewal", effective_at=int(paid_through), **base), new
    why_not_now = None
    if new.period_months != old.period_months:
        why_not_now = "a plan with another period starts at the renewal"
    elif new_price < old_price:
        why_not_now = "a cheaper plan starts at the renewal"
    elif new.tax_rate_bp != old.tax_rate_bp:
        why_not_now = "a plan taxed at another rate starts at the renewal"
    if why_not_now:
        raise PlanChangeRefused(f"{why_not_now} (use --at-renewal)")
    if status != "active" or acct.owed > 0 or acct.processing:
        raise PlanChangeRefused(
            f"only a member who is current changes plan now (status {status}, owes"
            f" {acct.owed}); at the renewal is possible (--at-renewal)"
        )
    if acct.freeze is not None:
        raise PlanChangeRefused("a freeze is running or booked: end it first (unfreeze)")
    payer = f.member.payer_id
    if payer is not None:
        payer_status = conn.execute(
            select(s.subscriptions.c.status).where(s.subscriptions.c.member_id == payer)
        ).scalar()
        if payer_status not in eng.HOUSEHOLD_STANDING:
            raise PlanChangeRefused(
                f"payer {payer} is not in good standing (status {payer_status}): nothing is"
                " charged to their card meanwhile"
            )
    assert paid_through is not None
    period = _current_period(conn, member_id, int(paid_through), int(old.period_months))
    p = eng.proration(old_price, new_price, period, now)
    change = PlanChange(
        when="now",
        effective_at=now,
        days_left=p.days_left,
        period_days=p.period_days,
        credit=p.credit,
        charge=p.charge,
        **base,
    )
    return change, new


def _current_period(
    conn: Connection, member_id: str, paid_through: int, period_months: int
) -> tuple[int, int]:
    """The paid period that ends at ``paid_through``: the last renewal paid, its length kept
    when a freeze moved its end; a period the member paid elsewhere (migrated, or signed up
    online) runs whole months back from its end."""
    inv = s.invoices
    last = conn.execute(
        select(inv.c.period_start, inv.c.period_end)
        .where(
            inv.c.member_id == member_id,
            inv.c.kind == "renewal",
            inv.c.status == "paid",
            inv.c.period_end <= paid_through,
        )
        .order_by(inv.c.period_end.desc())
        .limit(1)
    ).first()
    if last is not None and last.period_start is not None:
        length = int(last.period_end) - int(last.period_start)
    else:
        length = paid_through - eng.add_months(paid_through, -period_months)
    return paid_through - length, paid_through
