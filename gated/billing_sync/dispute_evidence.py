"""Evidence for a disputed payment: the member's accepted contract (when they joined online),
the disputed invoice and the member's others, the receipts sent, and their visits during the
period the payment was for; reviewed with ``disputes evidence ID`` and then submitted to the
provider (``--submit``) in its dispute-evidence fields."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.signup import contract
from gated.contract import format_time

# Visits are looked at over the disputed invoice's period, or this long before the dispute when
# the invoice has none (an extra, a freeze fee).
VISIT_WINDOW_S = 90 * 86_400
# Stripe's text evidence fields hold up to 20,000 characters.
TEXT_LIMIT = 20_000


def evidence(ctx: Context, dispute_id: str) -> dict[str, Any]:
    """Everything we hold that speaks to a disputed payment, as one document."""
    d, p, inv, ev = s.disputes, s.payments, s.invoices, s.gate_events
    with ctx.reader.connect() as conn:
        dispute = conn.execute(select(d).where(d.c.id == dispute_id)).first()
        if dispute is None:
            raise NotFound(f"no dispute {dispute_id!r}")
        if dispute.member_id is None or dispute.payment_ref is None:
            raise BillingError(f"dispute {dispute_id} names no payment of ours")
        member = conn.execute(select(s.members).where(s.members.c.id == dispute.member_id)).one()
        payment = conn.execute(select(p).where(p.c.reference == dispute.payment_ref)).first()
        disputed = (
            conn.execute(select(inv).where(inv.c.id == payment.invoice_id)).first()
            if payment is not None
            else None
        )
        invoices = conn.execute(
            select(inv).where(inv.c.member_id == member.id).order_by(inv.c.id)
        ).all()
        lines = conn.execute(
            select(s.invoice_lines).where(
                s.invoice_lines.c.invoice_id == (disputed.id if disputed is not None else -1)
            )
        ).all()
        opened = int(dispute.opened_at or dispute.closed_at or ctx.clock())
        if disputed is not None and disputed.period_start is not None:
            since, until = int(disputed.period_start), int(disputed.period_end)
        else:
            since, until = opened - VISIT_WINDOW_S, opened
        visits = conn.execute(
            select(ev.c.at, ev.c.site, ev.c.gate)
            .where(ev.c.member_id == member.id, ev.c.kind == "entry")
            .where(ev.c.reason.is_distinct_from("not_passed"))
            .where(ev.c.at >= since, ev.c.at < until)
            .order_by(ev.c.at)
        ).all()
        n = s.notifications
        receipts = conn.execute(
            select(n.c.created_at, n.c.to_addr, n.c.subject, n.c.sent_at)
            .where(n.c.member_id == member.id, n.c.kind == "receipt")
            .order_by(n.c.id)
        ).all()
    return {
        "dispute": {
            "id": dispute.id,
            "status": dispute.status,
            "payment": dispute.payment_ref,
            "amount": dispute.amount,
            "currency": dispute.currency,
            "opened_at": _time(dispute.opened_at),
        },
        "member": {
            "id": member.id,
            "name": member.name,
            "email": member.email,
            "member_since": _time(member.created_at),
        },
        "contract": contract(ctx, member.id),
        "invoice": None
        if disputed is None
        else {
            "id": disputed.id,
            "kind": disputed.kind,
            "period": [_time(disputed.period_start), _time(disputed.period_end)],
            "total": int(disputed.total),
            "currency": disputed.currency,
            "lines": [(ln.description, int(ln.amount)) for ln in lines],
        },
        "invoices": [
            {
                "id": i.id,
                "kind": i.kind,
                "status": i.status,
                "total": int(i.total),
                "created_at": _time(i.created_at),
                "paid_at": _time(i.paid_at),
            }
            for i in invoices
        ],
        "receipts": [
            {
                "at": _time(r.created_at),
                "to": r.to_addr,
                "subject": r.subject,
                "sent": bool(r.sent_at),
            }
            for r in receipts
        ],
        "visits": {
            "from": _time(since),
            "until": _time(until),
            "count": len(visits),
            "entries": [{"at": _time(v.at), "site": v.site, "gate": v.gate} for v in visits],
        },
    }


def provider_fields(doc: dict[str, Any]) -> dict[str, str]:
    """The evidence as the provider's dispute-evidence text fields (Stripe's names)."""
    member, inv, visits = doc["member"], doc["invoice"], doc["visits"]
    fields = {
        "customer_name": member["name"],
        "product_description": (
            f"Gym membership: invoice {inv['id']} ({inv['kind']}), period"
            f" {inv['period'][0]} to {inv['period'][1]}: "
            + "; ".join(f"{d} {a / 100:.2f}" for d, a in inv["lines"])
            if inv
            else "Gym membership"
        ),
        "access_activity_log": (
            f"{visits['count']} entries through the member's own credentials from"
            f" {visits['from']} until {visits['until']}:\n"
            + "\n".join(f"{e['at']} {e['site']} {e['gate']}" for e in visits["entries"])
        )[:TEXT_LIMIT],
        "uncategorized_text": (
            f"Member since {member['member_since']}. Invoices: "
            + "; ".join(
                f"{i['id']} {i['kind']} {i['status']} {i['total'] / 100:.2f}"
                for i in doc["invoices"]
            )
            + f". Receipts sent: {len(doc['receipts'])}."
        )[:TEXT_LIMIT],
    }
    if member["email"]:
        fields["customer_email_address"] = member["email"]
    if inv and inv["period"][0]:
        fields["service_date"] = inv["period"][0][:10]
    c = doc["contract"]
    if c is not None:
        fields["cancellation_policy_disclosure"] = (
            f"Terms {c['terms_version']} (SHA-256 {c['terms_sha256']}) accepted on"
            f" {c['accepted_at']} from {c['client_address']}:\n{c['terms_text']}"
        )[:TEXT_LIMIT]
    return fields


def submit(ctx: Context, dispute_id: str) -> dict[str, str]:
    """Send the evidence to the provider for an open dispute; returns the fields sent."""
    doc = evidence(ctx, dispute_id)
    if doc["dispute"]["status"] != "open":
        raise BillingError(f"dispute {dispute_id} is {doc['dispute']['status']}: too late")
    fields = provider_fields(doc)
    ctx.gateway.submit_dispute_evidence(dispute_id, fields)
    return fields


def _time(ts: int | None) -> str | None:
    return format_time(int(ts)) if ts is not None else None
