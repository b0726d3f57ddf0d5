"""Members on the web: e-mail sign-in, sessions, and what a signed-in member may read about
their own membership. The member app calls this through ``Billing.member_access()``; every
query here is scoped to one member id, so a session can only ever reach its own rows.

Secrets (session tokens, sign-in links and codes) are returned to the caller once and stored
only as SHA-256 digests; none is ever logged.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import members
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.invoices import pay_link
from gated.billing_sync.notices import render
from gated.billing_sync.pass_keys import PassKeys
from gated.billing_sync.publishing import queue_mail
from gated.billing_sync.store import digest, one_read, read_connection, token_usable
from gated.contract import format_time

log = logging.getLogger("gated.billing.member_access")

SIGNIN_TTL_S = 15 * 60
# Wrong codes one sign-in survives: with 10^6 codes, 5 guesses succeed once in 200,000 tries.
CODE_ATTEMPTS = 5
# Statuses in which the plan renews on its own at paid-through.
_RENEWING = ("active", "grace", "pending")


def _code_digest(flow: str, code: str) -> str:
    # Salted with the flow id, which only the browser that asked holds: the store's copy of a
    # six-digit code cannot be found by trying all million.
    return digest(f"{flow}:{code}")


@dataclass(frozen=True)
class MemberSession:
    """A live session: whose it is and when its member last signed in."""

    member_id: str
    signed_in_at: int
    expires_at: int


class MemberAccess:
    """Sign-in, sessions and the member's own data, over the billing facade's store."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.engine = ctx.engine
        self.reader = ctx.reader
        self.clock = ctx.clock

    # --- sign-in -------------------------------------------------------------------------------

    def start_signin(self, email: str, flow: str, link_base: str) -> bool:
        """Queue a sign-in mail (a link under ``link_base`` and a six-digit code) for the member
        with this address, ahead of every other notice. Returns False, having stored and sent
        nothing, when no member has the address; the caller must not tell the two apart."""
        m = s.members
        with self.reader.connect() as conn:
            member = conn.execute(
                select(m.c.id, m.c.name, m.c.email)
                .where(func.lower(m.c.email) == email.strip().lower(), m.c.erased.is_(False))
                .order_by(m.c.created_at, m.c.id)
                .limit(1)
            ).first()
        if member is None:
            return False
        now = self.clock()
        link_token = secrets.token_urlsafe(32)
        code = f"{secrets.randbelow(10**6):06d}"
        notice = render(
            "signin",
            member.email,
            member.id,
            name=member.name,
            code=code,
            link=f"{link_base}{link_token}",
            minutes=SIGNIN_TTL_S // 60,
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert(s.signin_tokens).values(
                    member_id=member.id,
                    flow_sha256=digest(flow),
                    link_sha256=digest(link_token),
                    code_sha256=_code_digest(flow, code),
                    attempts=0,
                    created_at=now,
                    expires_at=now + SIGNIN_TTL_S,
                )
            )
            queue_mail(conn, notice, now)
        log.info("event=signin_mail_queued member=%s", member.id)
        return True

    def redeem_code(self, flow: str, code: str) -> str | None:
        """The member a correct, unused, unexpired code signs in (using it up), else None. Each
        wrong code counts against the sign-in; after ``CODE_ATTEMPTS`` it is dead."""
        t = s.signin_tokens
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t).where(t.c.flow_sha256 == digest(flow)).with_for_update()
            ).first()
            if (
                row is None
                or row.used_at is not None
                or row.expires_at <= now
                or row.attempts >= CODE_ATTEMPTS
            ):
                return None
            if not hmac.compare_digest(row.code_sha256, _code_digest(flow, code)):
                conn.execute(update(t).where(t.c.id == row.id).values(attempts=t.c.attempts + 1))
                return None
            used = conn.execute(
                update(t).where(t.c.id == row.id, t.c.used_at.is_(None)).values(used_at=now)
            ).rowcount
        return str(row.member_id) if used == 1 else None

    def link_usable(self, token: str) -> bool:
        """Whether a sign-in link would still sign in (for the page its GET shows)."""
        return token_usable(self.reader, s.signin_tokens, "link_sha256", token, self.clock())

    def redeem_link(self, token: str) -> str | None:
        """The member an unused, unexpired link signs in (using it and its code up), else None."""
        t = s.signin_tokens
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.id, t.c.member_id)
                .where(
                    t.c.link_sha256 == digest(token), t.c.used_at.is_(None), t.c.expires_at > now
                )
                .with_for_update()
            ).first()
            if row is None:
                return None
            used = conn.execute(
                update(t).where(t.c.id == row.id, t.c.used_at.is_(None)).values(used_at=now)
            ).rowcount
        return str(row.member_id) if used == 1 else None

    # --- sessions ------------------------------------------------------------------------------

    def open_session(self, member_id: str, user_agent: str) -> str:
        """A new session for a member who just signed in; returns its token (for the cookie)."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        lifetime = self.ctx.config.app.session_days * 86_400
        with self.engine.begin() as conn:
            conn.execute(
                insert(s.web_sessions).values(
                    token_sha256=digest(token),
                    member_id=member_id,
                    created_at=now,
                    signed_in_at=now,
                    expires_at=now + lifetime,
                    user_agent=user_agent[:200],
                )
            )
        log.info("event=session_opened member=%s", member_id)
        return token

    def session(self, token: str) -> MemberSession | None:
        """The live session a cookie's token names, or None (unknown, revoked, expired, or the
        member erased)."""
        w, m = s.web_sessions, s.members
        # The clock's offset (read from the store once per request) on the same connection.
        with one_read(self.reader), read_connection(self.reader) as conn:
            row = conn.execute(
                select(w.c.member_id, w.c.signed_in_at, w.c.expires_at)
                .join(m, m.c.id == w.c.member_id)
                .where(
                    w.c.token_sha256 == digest(token),
                    w.c.revoked_at.is_(None),
                    w.c.expires_at > self.clock(),
                    m.c.erased.is_(False),
                )
            ).first()
        if row is None:
            return None
        return MemberSession(str(row.member_id), int(row.signed_in_at), int(row.expires_at))

    def end_session(self, token: str) -> None:
        """Sign one browser out."""
        w = s.web_sessions
        with self.engine.begin() as conn:
            conn.execute(
                update(w)
                .where(w.c.token_sha256 == digest(token), w.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )

    def end_all_sessions(self, member_id: str) -> int:
        """Sign the member out on every device and revoke their pass key (a lost phone);
        returns how many sessions ended."""
        w = s.web_sessions
        with self.engine.begin() as conn:
            ended = conn.execute(
                update(w)
                .where(w.c.member_id == member_id, w.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            ).rowcount
        log.info("event=sessions_ended member=%s count=%d", member_id, ended)
        PassKeys(self.ctx).revoke(member_id)
        return int(ended)

    # --- the member's own data -----------------------------------------------------------------

    def membership(self, member_id: str) -> dict[str, Any]:
        """The member's status, plan, money owed and next charge, for the member app."""
        return self.membership_and_member(member_id)[0]

    def membership_and_member(self, member_id: str) -> tuple[dict[str, Any], Any]:
        """``membership`` and the member's row it was read from (their page's visits need when
        they joined and their sites, which need not be read again)."""
        # One read of the member's facts serves the whole page: the subscription, plan and open
        # invoices come from it, not from reading them again; the count of cards is not shown.
        with one_read(self.reader), read_connection(self.reader) as conn:
            facts, info = members.member_read(conn, member_id, self.ctx.clock(), cards=False)
        row, plan_row = facts.sub, facts.plan
        if plan_row is None:
            row = None
        open_rows = facts.open_invoices
        status = info["status"]
        plan = None
        next_charge = None
        if row is not None:
            price = int(plan_row.price)
            gross = price + eng.tax_of(price, int(plan_row.tax_rate_bp))
            plan = {
                "name": plan_row.name,
                "price": gross,
                "currency": plan_row.currency,
                "period_months": int(plan_row.period_months),
                "auto_renew": bool(plan_row.auto_renew),
            }
            if row.next_retry_at is not None and info["owed"] > 0:
                next_charge = {"at": format_time(int(row.next_retry_at)), "amount": info["owed"]}
            elif (
                status in _RENEWING
                and plan_row.auto_renew
                and row.paid_through is not None
                and (row.cancel_at is None or row.paid_through < row.cancel_at)
            ):
                next_charge = {"at": format_time(int(row.paid_through)), "amount": gross}
        page = {
            "member_id": member_id,
            "name": info["name"],
            "email": info["email"],
            "status": status,
            "published_status": (info["published"] or {}).get("status"),
            "plan": plan,
            "currency": plan["currency"] if plan else self.ctx.config.currency,
            "paid_through": info["paid_through"],
            "valid_until": (info["published"] or {}).get("valid_until"),
            "owed": info["owed"],
            "needs_new_card": info["needs_new_card"],
            "next_retry_at": info["next_retry_at"],
            "cancel_at": info["cancel_at"],
            "freeze": info["freeze"],
            "has_payer": info["payer_id"] is not None,
            "next_charge": next_charge,
            "open_invoices": [
                {
                    "id": int(r.id),
                    "owed": int(r.total - r.amount_paid),
                    "currency": r.currency,
                    "due_at": format_time(int(r.due_at)),
                    "pay_url": pay_link(self.ctx, int(r.id)),
                }
                for r in open_rows
                if r.total > r.amount_paid
            ],
        }
        return page, facts.member

    def invoices(self, member_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The member's newest invoices, itemized."""
        inv = s.invoices
        with read_connection(self.reader) as conn:
            rows = conn.execute(
                select(inv)
                .where(inv.c.member_id == member_id)
                .order_by(inv.c.created_at.desc(), inv.c.id.desc())
                .limit(limit)
            ).all()
            lines = self._lines(conn, [int(r.id) for r in rows])
        return [_invoice(r, lines.get(int(r.id), [])) for r in rows]

    def invoice(self, member_id: str, invoice_id: int) -> dict[str, Any] | None:
        """One of the member's invoices, itemized; None when there is no such invoice *of this
        member* (another member's id looks exactly like one that does not exist)."""
        inv = s.invoices
        with read_connection(self.reader) as conn:
            row = conn.execute(
                select(inv).where(inv.c.id == invoice_id, inv.c.member_id == member_id)
            ).first()
            if row is None:
                return None
            lines = self._lines(conn, [invoice_id])
            cn = s.credit_notes
            notes = [
                {"id": int(n.id), "number": n.number, "amount": int(n.amount)}
                for n in conn.execute(
                    select(cn.c.id, cn.c.number, cn.c.amount)
                    .where(cn.c.invoice_id == invoice_id)
                    .order_by(cn.c.id)
                )
            ]
        # The credit notes that lowered it, each with its PDF (/app/credit-notes/ID.pdf).
        return {**_invoice(row, lines.get(invoice_id, [])), "credit_notes": notes}

    @staticmethod
    def _lines(conn: Any, invoice_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        ln = s.invoice_lines
        out: dict[int, list[dict[str, Any]]] = {}
        if not invoice_ids:
            return out
        for r in conn.execute(
            select(
                ln.c.invoice_id,
                ln.c.kind,
                ln.c.description,
                ln.c.quantity,
                ln.c.unit_amount,
                ln.c.amount,
                ln.c.tax_rate_bp,
            )
            .where(ln.c.invoice_id.in_(invoice_ids))
            .order_by(ln.c.id)
        ):
            out.setdefault(int(r.invoice_id), []).append(
                {
                    "kind": r.kind,
                    "description": r.description,
                    "quantity": int(r.quantity),
                    "unit_amount": int(r.unit_amount),
                    "amount": int(r.amount),
                    "tax_rate_bp": int(r.tax_rate_bp),
                }
            )
        return out


def _invoice(row: Any, lines: list[dict[str, Any]]) -> dict[str, Any]:
    period = None
    if row.period_start is not None and row.period_end is not None:
        period = {
            "start": format_time(int(row.period_start)),
            "end": format_time(int(row.period_end)),
        }
    return {
        "id": int(row.id),
        "number": row.number,
        "kind": row.kind,
        "status": row.status,
        "currency": row.currency,
        "period": period,
        "subtotal": int(row.subtotal),
        "tax": int(row.tax),
        "total": int(row.total),
        "paid": int(row.amount_paid),
        "owed": int(row.total - row.amount_paid) if row.status == "open" else 0,
        "created_at": format_time(int(row.created_at)),
        "due_at": format_time(int(row.due_at)),
        "paid_at": format_time(int(row.paid_at)) if row.paid_at is not None else None,
        "lines": lines,
    }
