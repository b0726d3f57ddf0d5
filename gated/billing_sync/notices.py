"""Member notices: rendered from templates into the notification outbox, delivered by SMTP."""

from __future__ import annotations

import logging
import re
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from functools import cache, lru_cache
from string import Template
from typing import Any, NamedTuple

from sqlalchemy import Engine, select, update

from gated.billing_sync import schema
from gated.billing_sync.store import reading
from gated.config import SmtpConfig

log = logging.getLogger("gated.billing.notices")

# kind → (subject, body); $placeholders come from the service (amounts already formatted).
TEMPLATES: dict[str, tuple[str, str]] = {
    "receipt": (
        "Receipt for invoice $invoice",
        "Hello $name,\n\nthank you: we received $amount for invoice $invoice.\n",
    ),
    "failure": (
        "Your payment of $amount did not go through",
        "Hello $name,\n\nwe could not charge $amount for invoice $invoice ($reason).\n$next_step\n",
    ),
    "retry": (
        "We tried your payment again",
        "Hello $name,\n\nour new attempt to charge $amount for invoice $invoice failed "
        "($reason). $next_step\n",
    ),
    "new_card": (
        "Please give us a new card",
        "Hello $name,\n\nyour bank refused $amount for invoice $invoice ($reason) and asked us "
        "not to try this card again. Please add a new card at the front desk or online.\n",
    ),
    "pay_link": (
        "Please confirm your payment",
        "Hello $name,\n\nyour bank wants you to confirm the payment of $amount for invoice "
        "$invoice: $link\n",
    ),
    "suspension": (
        "Your membership is suspended",
        "Hello $name,\n\nyour membership is suspended because $amount is still open. "
        "Pay at the front desk or online and the gates let you in again at once.\n",
    ),
    "dispute": (
        "Your bank disputes a payment",
        "Hello $name,\n\nyour bank has disputed the payment of $amount for invoice $invoice. "
        "Your membership is suspended until the dispute is settled; if the payment was yours, "
        "please tell your bank, or come by the front desk.\n",
    ),
    "chargeback": (
        "A payment was taken back",
        "Hello $name,\n\nyour bank has taken back the payment of $amount for invoice $invoice, "
        "so $amount is open again. Your membership stays suspended until it is paid at the "
        "front desk or with a new card.\n",
    ),
    "freeze": (
        "Your membership is frozen",
        "Hello $name,\n\nyour membership is frozen from $start until $end; your contract runs "
        "that much longer. Fee: $amount.\n",
    ),
    "expired": (
        "Your $plan has ended",
        "Hello $name,\n\nyour $plan ran until $end and has now ended; the gates no longer let "
        "you in. Come by the front desk to start a new one.\n",
    ),
    "pass_key": (
        "A new device is your pass",
        "Hello $name,\n\na device became your pass in the member app at $at. Codes from any "
        "other device no longer open the gates.\n\nIf this was not you, open the member app, "
        'choose "Sign out everywhere" and talk to the front desk.\n',
    ),
    "signin": (
        "Your sign-in code",
        "Hello $name,\n\nyour code to sign in is $code\n\nOr open this link and press the "
        "button on the page: $link\n\nThe code and the link work once, for $minutes minutes. "
        "If you did not ask to sign in, ignore this mail: nothing changes.\n",
    ),
    "email_change": (
        "Confirm your new e-mail address",
        "Hello $name,\n\nto use this address for your membership, open this link and press the "
        "button on the page: $link\n\nThe link works once, for $hours hours. If you did not ask "
        "for this, ignore this mail: nothing changes.\n",
    ),
}
# Notices that carry a credential: delivered first (``priority`` 0), and their body is blanked
# once the mail server has it, so the outbox never keeps a usable code or link.
SECRET_KINDS = frozenset({"signin", "email_change"})
SENT_SECRET_BODY = "(this mail carried a link or code, which is not kept)"


# Notices about the card and the money: a dependant's go to the payer who owns the card.
PAYER_NOTICES: frozenset[str] = frozenset(
    {"receipt", "failure", "retry", "new_card", "pay_link", "suspension", "dispute", "chargeback"}
)


class Notice(NamedTuple):
    """A rendered notice ready for the outbox."""

    member_id: str | None
    kind: str
    to_addr: str
    subject: str
    body: str


def render(kind: str, to_addr: str, member_id: str | None, **values: Any) -> Notice:
    """Fill a template; a missing placeholder is a programming error (KeyError)."""
    subject, body = _templates(kind)
    return Notice(member_id, kind, to_addr, subject.format_map(values), body.format_map(values))


@cache
def _templates(kind: str) -> tuple[str, str]:
    subject, body = TEMPLATES[kind]
    return _format_string(subject), _format_string(body)


def _format_string(template: str) -> str:
    """A ``$placeholder`` template as the ``str.format`` string that fills it the same way: a
    cycle renders a receipt per renewal, and ``format_map`` does it in a quarter of the time
    ``Template.substitute`` takes (its regular expression calls back into Python per field)."""

    def field(m: re.Match[str]) -> str:
        if m["escaped"] is not None:
            return "$"
        name = m["named"] or m["braced"]
        if name is None:
            raise ValueError(f"bad placeholder in notice template: {template!r}")
        return "{" + name + "}"

    return Template.pattern.sub(field, template.replace("{", "{{").replace("}", "}}"))


@lru_cache(maxsize=1024)  # a cycle's receipts repeat a few plan prices
def format_amount(amount: int, currency: str) -> str:
    """Minor units to a human amount: 4990 EUR → ``49.90 EUR``."""
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d} {currency}"


def format_day(ts: int | None) -> str:
    """A day as notices and invoice lines write it (``2026-12-01``, UTC); ``-`` for none."""
    return "-" if ts is None else _date(ts // 86_400)


@lru_cache(maxsize=1024)  # invoice labels and notices repeat a few days per cycle
def _date(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def deliver(engine: Engine, smtp: SmtpConfig, now: int, limit: int = 200) -> int:
    """Send queued notices over SMTP, sign-in mails first; a row is marked sent only after the
    server accepted it. Returns how many were sent. A failing server leaves the rest queued for the next round."""
    n = schema.notifications
    with reading(engine).connect() as conn:
        rows = conn.execute(
            select(n.c.id, n.c.kind, n.c.to_addr, n.c.subject, n.c.body)
            .where(n.c.sent_at.is_(None))
            .order_by(n.c.priority, n.c.id)
            .limit(limit)
        ).all()
    if not rows:
        return 0
    password = smtp.password_file.read_text().strip() if smtp.password_file else None
    sent = 0
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.username and password:
                client.login(smtp.username, password)
            for row in rows:
                msg = EmailMessage()
                msg["From"] = smtp.sender
                msg["To"] = row.to_addr
                msg["Subject"] = row.subject
                msg.set_content(row.body)
                client.send_message(msg)
                done: dict[str, Any] = {"sent_at": now}
                if row.kind in SECRET_KINDS:
                    done["body"] = SENT_SECRET_BODY
                with engine.begin() as conn:
                    conn.execute(update(n).where(n.c.id == row.id).values(**done))
                sent += 1
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("event=smtp_failed sent=%d error=%s", sent, type(exc).__name__)
    return sent
