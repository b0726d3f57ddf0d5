"""Member notices: rendered from templates into the notification outbox, delivered by SMTP."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import smtplib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from functools import cache, lru_cache
from string import Template
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, or_, select, update

from gated.billing_sync import schema
from gated.billing_sync.config import SmtpConfig
from gated.errors import GatedError

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
    "signup_failed": (
        "Your first payment did not go through",
        "Hello $name,\n\nthe first payment of the membership you joined online, $amount for "
        "invoice $invoice, did not go through ($reason). The gates let you in for a few days "
        "while it is sorted out. $next_step You can also pay in the member app or at the front "
        "desk.\n",
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
        "Hello $name,\n\nyour membership is suspended because $amount is still open "
        "(invoice $invoice). "
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
    "upcoming_charge": (
        "Your next payment: $amount on $date",
        "Hello $name,\n\nyour $plan renews on $date, and we will charge $amount to your card "
        "on file then. Nothing to do if your card is up to date; to change it, use the member "
        "app or the front desk.\n",
    ),
    "card_expiring": (
        "Your card expires soon",
        "Hello $name,\n\nthe card we charge for your membership expires at the end of $expiry. "
        "Please add your new card in the member app or at the front desk before your next "
        "payment on $date.\n",
    ),
    "price_change": (
        "The price of your $plan changes",
        "Hello $name,\n\nfrom $date, your $plan costs $new instead of $old. "
        "You do not need to do anything; if you do not wish to continue, you can cancel before "
        "then in the member app or at the front desk.\n",
    ),
    "cancellation": (
        "Your cancellation is confirmed",
        "Hello $name,\n\nwe have your cancellation of the $plan. Your membership runs until "
        "$end; nothing more is charged after that. You can keep training until then.\n",
    ),
    "collections": (
        "Your unpaid balance has gone to collections",
        "Hello $name,\n\n$amount has been unpaid since $since (invoice $invoice) despite our "
        "reminders, so your membership has ended and the debt has gone to collections. Pay at "
        "the front desk or online to settle it.\n",
    ),
    "refund": (
        "We refunded $amount",
        "Hello $name,\n\nwe have refunded $amount of invoice $invoice $how.\n$credit_note",
    ),
    "freeze": (
        "Your membership is frozen",
        "Hello $name,\n\nyour membership is frozen from $start until $end; your contract runs "
        "that much longer. Fee: $amount.\n$fee_rule",
    ),
    "unfreeze": (
        "Your freeze has ended",
        "Hello $name,\n\n$what The days it did not use no longer extend your contract.\n$returned",
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
    "welcome": (
        "Welcome: your membership is active",
        "Hello $name,\n\nthank you for joining. Your membership ($plan) is active and the gates "
        "let you in.\n\nYour pass is in the member app: open this link on your phone, sign in "
        'with your e-mail address and choose "Use this device as my pass": $link\n\nThe pass '
        "shows a fresh QR code every few seconds; hold it to the gate's scanner. It works "
        "without a network too.\n",
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
    {
        "receipt",
        "failure",
        "retry",
        "signup_failed",
        "new_card",
        "pay_link",
        "suspension",
        "dispute",
        "chargeback",
        "upcoming_charge",
        "card_expiring",
        "price_change",
        "collections",
        "refund",
    }
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


# Notices a sender claims at once, and for how long (wall-clock seconds) before another sender
# may take over the ones it has not marked sent: far longer than sending a chunk takes (each
# SMTP step times out after 10 s), so a live sender never loses its claim.
CLAIM_CHUNK = 20
CLAIM_LEASE_S = 600
# A notice the server refused for now (4xx) waits this long before it is tried again, and is
# given up as failed after this many tries.
RETRY_AFTER_S = 300
MAX_TRIES = 12


# Renders a document a mail carries, by its reference in the outbox (an invoice's id, ``cn``
# and a credit note's id): (file name, bytes). See documents.document_pdf.
Documents = Callable[[str], tuple[str, bytes]]


def deliver(
    engine: Engine,
    smtp: SmtpConfig,
    now: int,
    limit: int = 200,
    documents: Documents | None = None,
) -> int:
    """Send up to ``limit`` queued notices over SMTP; returns how many were sent.

    A notice naming documents (a receipt its invoices, a refund its credit notes) carries their
    PDFs, rendered by ``documents`` as it is sent; one that cannot be rendered is logged and the
    mail goes without it.

    Sign-in mails go first. Each chunk of notices is first claimed (a random token and a
    lease), so two processes delivering at once (``serve`` and ``run`` from cron) never send the same notice: each sends
    only what it claimed. A row is marked sent only after the server accepted it. A recipient
    the server refuses for good (5xx) is a bounce: that notice is marked failed with the
    server's answer, the address is marked bounced on the members who have it, later notices
    to it wait (failed) for a corrected address, and the queue goes on with the next notice.
    One refused for now (4xx) is tried again later. A server that fails as a whole releases the
    rest of the claim for the next round. A sender killed between the server's answer and the
    mark sends that one notice again after the lease.
    """
    token = secrets.token_hex(16)
    password = smtp.password_file.read_text().strip() if smtp.password_file else None
    sent = 0
    client: smtplib.SMTP | None = None
    try:
        while sent < limit:
            rows = _claim(engine, token, min(CLAIM_CHUNK, limit - sent))
            if not rows:
                break
            for row in rows:
                if row.bounced:
                    _mark(engine, row.id, token, failed_at=now, error=BOUNCED)
                    continue
                if client is None:
                    client = smtplib.SMTP(smtp.host, smtp.port, timeout=10)
                    if smtp.starttls:
                        client.starttls()
                    if smtp.username and password:
                        client.login(smtp.username, password)
                msg = EmailMessage()
                msg["From"] = smtp.sender
                msg["To"] = row.to_addr
                msg["Subject"] = row.subject
                msg.set_content(row.body)
                if row.invoice_ids and documents is not None:
                    _attach(msg, documents, row.invoice_ids)
                try:
                    client.send_message(msg)
                except smtplib.SMTPRecipientsRefused as exc:
                    code, answer = next(iter(exc.recipients.values()))
                    _refused(engine, row, token, code, answer, now)
                    continue
                except smtplib.SMTPDataError as exc:  # this message refused after its data
                    _refused(engine, row, token, exc.smtp_code, exc.smtp_error, now)
                    continue
                done: dict[str, Any] = {"sent_at": now}
                if row.kind in SECRET_KINDS:
                    done["body"] = SENT_SECRET_BODY
                _mark(engine, row.id, token, **done)
                sent += 1
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("event=smtp_failed sent=%d error=%s", sent, type(exc).__name__)
    finally:
        _release(engine, token)
        if client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()
    return sent


def _attach(msg: EmailMessage, documents: Documents, refs: str) -> None:
    for ref in refs.split(","):
        try:
            name, pdf = documents(ref)
        except GatedError as exc:
            log.warning("event=attachment_failed document=%s error=%s", ref, type(exc).__name__)
            continue
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=name)


# The error of a notice not sent because its address bounced before.
BOUNCED = "not sent: the address bounced before (correct it with gated-billing members edit)"


def _refused(
    engine: Engine, row: Any, token: str, code: int, answer: bytes | str, now: int
) -> None:
    """The server refused one notice: for good (5xx), a bounce that marks the address; for now
    (4xx), tried again after ``RETRY_AFTER_S``, up to ``MAX_TRIES`` times."""
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
    error = f"{code} {text}"
    n, m = schema.notifications, schema.members
    tries = int(row.attempts) + 1
    log.warning("event=notice_refused notice=%s code=%s tries=%d", row.id, code, tries)
    with engine.begin() as conn:
        if code < 500 and tries < MAX_TRIES:
            # No claim, but a lease in the future: nobody takes it before then.
            values: dict[str, Any] = {"claimed_until": int(time.time()) + RETRY_AFTER_S}
        else:
            values = {"claimed_until": None, "failed_at": now}
            if code >= 500:
                conn.execute(
                    update(m)
                    .where(m.c.email == row.to_addr, m.c.email_bounced_at.is_(None))
                    .values(email_bounced_at=now)
                )
        conn.execute(
            update(n)
            .where(n.c.id == row.id, n.c.claim == token)
            .values(claim=None, attempts=tries, error=error, **values)
        )


def _claim(engine: Engine, token: str, count: int) -> list[Any]:
    """Claim up to ``count`` unsent notices no live sender holds, oldest first; returns them,
    each with whether its address bounced before.
    The rows chosen are locked (PostgreSQL: another sender skips them; SQLite has one writer)
    and the UPDATE checks the conditions again, so no row is ever taken twice. (One UPDATE with
    ``id IN (SELECT ... LIMIT n)`` took more than n rows on PostgreSQL.)"""
    n, m = schema.notifications, schema.members
    wall = int(time.time())
    free = and_(
        n.c.sent_at.is_(None),
        n.c.failed_at.is_(None),
        or_(n.c.claimed_until.is_(None), n.c.claimed_until < wall),
    )
    bounced = (
        select(m.c.id)
        .where(m.c.email == n.c.to_addr, m.c.email_bounced_at.is_not(None))
        .exists()
        .label("bounced")
    )
    with engine.begin() as conn:
        chosen = select(n.c.id).where(free).order_by(n.c.priority, n.c.id).limit(count)
        if conn.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        ids = list(conn.execute(chosen).scalars())
        if not ids:
            return []
        conn.execute(
            update(n)
            .where(n.c.id.in_(ids), free)
            .values(claim=token, claimed_until=wall + CLAIM_LEASE_S)
        )
        return list(
            conn.execute(
                select(
                    n.c.id,
                    n.c.kind,
                    n.c.to_addr,
                    n.c.subject,
                    n.c.body,
                    n.c.attempts,
                    n.c.invoice_ids,
                    bounced,
                )
                .where(n.c.claim == token, n.c.sent_at.is_(None))
                .order_by(n.c.priority, n.c.id)
            )
        )


def _mark(engine: Engine, notice_id: int, token: str, **values: Any) -> None:
    """Record what became of a claimed notice and let go of it."""
    n = schema.notifications
    with engine.begin() as conn:
        conn.execute(
            update(n)
            .where(n.c.id == notice_id, n.c.claim == token)
            .values(claim=None, claimed_until=None, **values)
        )


def _release(engine: Engine, token: str) -> None:
    """Let go of every notice this sender still holds (unsent), for the next round."""
    n = schema.notifications
    with engine.begin() as conn:
        conn.execute(update(n).where(n.c.claim == token).values(claim=None, claimed_until=None))
