"""A member's own data, for the member app: visits per month (granted entries at the gates,
counted as the attendance reports count them, in each site's time zone), the whole record as
one JSON document to download, and a request for erasure. Erasure itself stays a staff act
(``gated-billing members erase``): a request is a row of the audit log (``erasure_requested``,
by the member, from their address) that staff list with ``members erasure-requests``.

Every query here is scoped to one member id, so a session can only ever reach its own rows.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from gated.billing_sync import audit, members, signup
from gated.billing_sync import schema as s
from gated.billing_sync.audit import Actor
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.member_access import MemberAccess
from gated.billing_sync.reports import granted_entry
from gated.billing_sync.store import read_connection
from gated.contract import format_time

log = logging.getLogger("gated.billing.member_data")

ERASURE_REQUESTED = "erasure_requested"
# Staff may refuse a request (an open debt, a dispute) with a reason the member sees in their
# data; a later request is open again.
ERASURE_REFUSED = "erasure_refused"
# What erasure keeps, in the words the member reads before asking (members.erase does this).
RETAINED = (
    "Invoices and payments stay as bookkeeping law requires, with the contract you signed, "
    "under your member number and without your name. The gates' record of entries stays under "
    "your member number only. Your name, e-mail address, phone, emergency contact, photo, cards "
    "and pass key are deleted, and the gates forget you."
)
# Gate events in one download: years of daily visits fit; a runaway gate's flood does not.
MAX_EVENTS = 20_000


class MemberData:
    """A member's visits, their data as one document, and their request for erasure."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _zone(self, site: str) -> ZoneInfo:
        return ZoneInfo(self.ctx.config.site(site).timezone)

    def visits_by_month(
        self, member_id: str, months: int = 12, *, member: Any = None
    ) -> list[dict[str, Any]]:
        """Entries per calendar month (the site's local time), newest first: the last
        ``months`` months up to this one, zeros included, none before the member joined.
        ``member``: the member's row (with ``created_at`` and ``sites``) when the caller has
        read it already."""
        ev, m = s.gate_events, s.members
        now = self.ctx.clock()
        with read_connection(self.ctx.reader) as conn:
            row = member
            if row is None:
                row = conn.execute(
                    select(m.c.created_at, m.c.sites).where(m.c.id == member_id)
                ).first()
            if row is None:
                return []
            created = int(row.created_at)
            start = max(created, now - (months + 1) * 31 * 86_400)
            rows = conn.execute(
                select(ev.c.at, ev.c.site).where(
                    ev.c.member_id == member_id, granted_entry(), ev.c.at >= start
                )
            ).all()
        counts: dict[str, int] = {}
        for r in rows:
            month = datetime.fromtimestamp(r.at, self._zone(r.site)).strftime("%Y-%m")
            counts[month] = counts.get(month, 0) + 1
        # The months are named in the member's (first) site's time zone.
        sites = json.loads(row.sites)
        zone = self._zone(sites[0]) if sites else ZoneInfo("UTC")
        shown = _months_back(now, months, since=created, zone=zone)
        return [{"month": month, "visits": counts.get(month, 0)} for month in shown]

    def export(self, member_id: str) -> dict[str, Any]:
        """Everything head office holds about the member, as one JSON-ready document: profile,
        membership, the signed contract, invoices itemized, every gate event, and the audit
        log's rows about their account (staff named by role only). No card UIDs, no keys."""
        info = members.member(self.ctx, member_id)
        m, cards, ev = s.members, s.cards, s.gate_events
        with self.ctx.reader.connect() as conn:
            row = conn.execute(
                select(m.c.phone, m.c.emergency_contact, m.c.created_at, m.c.qr_key).where(
                    m.c.id == member_id
                )
            ).one()
            card_rows = conn.execute(
                select(cards.c.assigned_at, cards.c.revoked_at)
                .where(cards.c.member_id == member_id)
                .order_by(cards.c.assigned_at)
            ).all()
            events = conn.execute(
                select(ev.c.at, ev.c.site, ev.c.gate, ev.c.kind, ev.c.reason)
                .where(ev.c.member_id == member_id)
                .order_by(ev.c.at.desc())
                .limit(MAX_EVENTS)
            ).all()
        access = MemberAccess(self.ctx)
        return {
            "exported_at": format_time(self.ctx.clock()),
            "profile": {
                "member_id": member_id,
                "name": info["name"],
                "email": info["email"],
                "phone": row.phone,
                "emergency_contact": row.emergency_contact,
                "sites": info["sites"],
                "joined_at": format_time(int(row.created_at)),
                "payer_id": info["payer_id"],
            },
            "membership": access.membership(member_id),
            "contract": signup.contract(self.ctx, member_id),
            "invoices": access.invoices(member_id, limit=10_000),
            "cards": [
                {
                    "assigned_at": format_time(int(c.assigned_at)),
                    "revoked_at": None if c.revoked_at is None else format_time(int(c.revoked_at)),
                }
                for c in card_rows
            ],
            "pass_key": row.qr_key,
            "visits_by_month": self.visits_by_month(member_id, months=24),
            "gate_events": [
                {
                    "at": format_time(int(e.at)),
                    "site": e.site,
                    "gate": e.gate,
                    "kind": e.kind,
                    "reason": e.reason,
                }
                for e in events
            ],
            "audit": [
                _own_view(r) for r in audit.entries(self.ctx, member_id=member_id, limit=10_000)
            ],
        }

    def erasure_requested_at(self, member_id: str) -> str | None:
        """When the member asked for the erasure still open (RFC 3339), or None."""
        a = s.audit_log
        with self.ctx.reader.connect() as conn:
            last = conn.execute(
                select(a.c.at, a.c.action)
                .where(
                    a.c.member_id == member_id,
                    a.c.action.in_((ERASURE_REQUESTED, ERASURE_REFUSED)),
                )
                .order_by(a.c.id.desc())
                .limit(1)
            ).first()
        return None if last is None or last.action != ERASURE_REQUESTED else format_time(last.at)

    def request_erasure(self, member_id: str, address: str) -> bool:
        """Record the member's request for erasure for staff. Returns False, recording nothing
        new, when one is already waiting (a reload or a second click)."""
        with self.ctx.reader.connect() as conn:
            erased = conn.execute(
                select(s.members.c.erased).where(s.members.c.id == member_id)
            ).scalar()
        if erased is None or erased:
            raise BillingError(f"member {member_id} is erased or unknown")
        if self.erasure_requested_at(member_id) is not None:
            return False
        audit.record(
            self.ctx,
            Actor("member", member_id, "member", address or "unknown"),
            ERASURE_REQUESTED,
            member_id,
            {},
            {},
        )
        log.info("event=erasure_requested member=%s", member_id)
        return True

    def erasure_requests(self) -> list[dict[str, Any]]:
        """Requests staff have still to act on (the member is not erased yet, and no refusal
        came after the request), oldest first."""
        a, m = s.audit_log, s.members
        with self.ctx.reader.connect() as conn:
            rows = conn.execute(
                select(a.c.id, a.c.member_id, a.c.at, a.c.address, a.c.action)
                .join(m, m.c.id == a.c.member_id)
                .where(a.c.action.in_((ERASURE_REQUESTED, ERASURE_REFUSED)))
                .where(m.c.erased.is_(False))
                .order_by(a.c.id)
            ).all()
        # Each member's first request after their last refusal (a repeated request is the same).
        waiting: dict[str, Any] = {}
        for r in rows:
            if r.action == ERASURE_REFUSED:
                waiting.pop(r.member_id, None)
            else:
                waiting.setdefault(r.member_id, r)
        return [
            {"member_id": r.member_id, "requested_at": format_time(int(r.at)), "address": r.address}
            for r in sorted(waiting.values(), key=lambda r: (r.at, r.id))
        ]

    def refuse_erasure(self, member_id: str, actor: Actor, reason: str) -> None:
        """Refuse the member's open request for erasure, with the reason (kept in the audit log,
        so the member reads it in their data: write no one's personal details in it)."""
        reason = " ".join(reason.split())[:300]
        if not reason:
            raise BillingError("say why the erasure is refused")
        if self.erasure_requested_at(member_id) is None:
            raise NotFound(f"member {member_id} has no open request for erasure")
        audit.record(self.ctx, actor, ERASURE_REFUSED, member_id, {}, {"reason": reason})
        log.info("event=erasure_refused member=%s", member_id)


def _own_view(row: dict[str, Any]) -> dict[str, Any]:
    """An audit row as the member sees it: staff by role, not by account."""
    member = row["actor_kind"] == "member"
    return {
        "at": format_time(int(row["at"])),
        "by": "you" if member else row["role"],
        "action": row["action"],
        "changes": row["changes"],
        "detail": row["detail"],
        "address": row["address"] if member else None,
    }


def _months_back(now: int, months: int, since: int, zone: ZoneInfo) -> list[str]:
    """``YYYY-MM`` of the ``months`` months up to ``now``'s (in ``zone``), newest first, none
    before the month of ``since``."""
    day = datetime.fromtimestamp(now, zone)
    first = datetime.fromtimestamp(since, zone).strftime("%Y-%m")
    year, month = day.year, day.month
    out: list[str] = []
    for _ in range(months):
        label = f"{year:04d}-{month:02d}"
        if label < first:
            break
        out.append(label)
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out
