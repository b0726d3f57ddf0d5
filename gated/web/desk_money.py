"""Money back and plan changes on a member's console page (managers and owners, by the
permission table): a refund of what was paid on an invoice, a credit note on what is still open,
a write-off of a debt, and a plan change (an upgrade now with its proration shown before it is
confirmed, or any change from the renewal). Each is one call of the billing service, the same
as ``gated-billing invoice refund|credit|write-off`` and ``members change-plan``, run by
``desk_members`` inside the audit log like every member action."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gated.billing_sync.audit import Entry
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.staff import StaffMember

AMOUNT = re.compile(r"([0-9]{1,7})(?:[.,]([0-9]{1,2}))?")
INVOICE_ID = re.compile(r"[0-9]{1,12}")
PLAN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# What a member-page action does with the form, given the facade and the audit entry; it
# answers the line the desk is told after it (None: the action's own words).
Action = Callable[[Any, str, dict[str, str], Entry], str | None]


def amount(text: str) -> int | None:
    """``49.90`` → 4990 minor units; "" → None (all of it); BillingError otherwise."""
    text = text.strip()
    if not text:
        return None
    found = AMOUNT.fullmatch(text)
    if not found or int(found[1] + (found[2] or "").ljust(2, "0")) <= 0:
        raise BillingError("enter an amount like 49.90, or leave it empty for all of it")
    return int(found[1] + (found[2] or "").ljust(2, "0"))


def _reason(form: dict[str, str], default: str) -> str:
    return " ".join(form.get("reason", "").split())[:200] or default


def _invoice(billing: Any, member_id: str, form: dict[str, str]) -> dict[str, Any]:
    """The form's invoice, when it is one of this member's (another's is no invoice)."""
    text = form.get("invoice", "")
    found = None
    if INVOICE_ID.fullmatch(text):
        found = billing.member_access().invoice(member_id, int(text))
    if found is None:
        raise NotFound("choose an invoice of this member")
    return dict(found)


def _refund(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str:
    invoice_id = _invoice(billing, member_id, form)["id"]
    out = billing.refund(invoice_id, amount(form.get("amount", "")), None, _reason(form, "refund"))
    entry.detail.update(
        invoice=invoice_id, refunded=out.refunded, waiting=out.waiting, credited=out.credited
    )
    return f"Refund booked: {out.line()}."


def _credit(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str:
    invoice_id = _invoice(billing, member_id, form)["id"]
    out = billing.credit(invoice_id, amount(form.get("amount", "")), None, _reason(form, "credit"))
    entry.detail.update(invoice=invoice_id, credited=out.credited)
    return f"Credit note booked: {out.line()}."


def _write_off(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str:
    invoice = _invoice(billing, member_id, form)
    done = billing.write_off(invoice["id"], _reason(form, "bad debt"))
    entry.detail.update(invoice=invoice["id"], written_off=done)
    return f"Written off: {format_amount(done, invoice['currency'])} of invoice {invoice['id']}."


def _change_plan(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str:
    plan_id = form.get("plan", "")
    if not PLAN_ID.fullmatch(plan_id):
        raise BillingError("choose a plan")
    at_renewal = form.get("when") == "renewal"
    made, report = billing.change_plan(member_id, plan_id, at_renewal)
    entry.detail.update(plan=plan_id, when=made.when, charged=made.total)
    if made.when == "renewal":
        return f"The plan changes to {made.new_plan} on {made.as_dict()['effective']}."
    if report.failed:
        return (
            f"The plan is now {made.new_plan}; the card on file was declined for"
            f" {format_amount(made.total, made.currency)}: take a payment."
        )
    return f"The plan is now {made.new_plan}."


def _payment_plan(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str:
    """Arrears onto instalments from today, or, for a member on a plan, its rest split again
    (``gated-billing payment-plan start|change``)."""
    text = form.get("instalments", "")
    if not text.isdigit() or len(text) > 2:
        raise BillingError("choose how many instalments")
    count = int(text)
    change = any(
        i["kind"] == "instalment" and i["owed"] > 0
        for i in billing.member_access().invoices(member_id, 100)
    )
    book = billing.change_payment_plan if change else billing.start_payment_plan
    plan, _ = book(member_id, count)
    entry.detail.update(instalments=count, total=plan.total, change=change)
    first = plan.instalments[0]
    return (
        f"Payment plan {'changed' if change else 'started'}:"
        f" {format_amount(plan.total, plan.currency)} in {count} instalments, the first"
        f" ({format_amount(first.total, plan.currency)}) on {format_day(first.due_at)}."
    )


# path segment → (permission, audit action, what it does, what the desk is told after)
ACTIONS: dict[str, tuple[str, str, Action, str]] = {
    "refund": ("refund", "refund", _refund, "Refund booked."),
    "credit": ("refund", "credit", _credit, "Credit note booked."),
    "write-off": ("write_off", "write_off", _write_off, "Written off."),
    "payment-plan": ("payment_plan", "payment_plan", _payment_plan, "Payment plan booked."),
    "plan": ("change_plan", "change_plan", _change_plan, "Plan changed."),
}


def page_part(
    billing: Any, staff: StaffMember, m: dict[str, Any], query: dict[str, str]
) -> dict[str, Any]:
    """What the member's page shows of this for ``staff``'s role: the invoices to act on, the
    plans to change to and, asked with ``?plan=ID&when=now|renewal``, that change's quote (or
    why not) before it is confirmed."""
    part: dict[str, Any] = {}
    if staff.may("refund") or staff.may("write_off") or staff.may("payment_plan"):
        part["invoices"] = billing.member_access().invoices(m["member_id"], 24)
    if not staff.may("change_plan") or not m["plan"] or m["status"] in ("cancelled", "expired"):
        return part
    part["plans"] = [p for p in billing.plans() if p.auto_renew and p.id != m["plan"]]
    plan_id = query.get("plan", "")
    if not plan_id:
        return part
    part["chosen"] = plan_id[:64]
    part["at_renewal"] = query.get("when") == "renewal"
    if not PLAN_ID.fullmatch(plan_id):
        part["refused"] = "choose a plan"
        return part
    try:
        change = billing.plan_change_quote(m["member_id"], plan_id, part["at_renewal"])
    except BillingError as exc:
        part["refused"] = str(exc).replace("(use --at-renewal)", "(choose “at the renewal”)")
        return part
    part["quote"] = change.as_dict()
    return part
