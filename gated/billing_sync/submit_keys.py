"""Forms that act once, kept in the billing store so they hold across a restart of ``serve``
and between two ``serve`` processes.

A form that acts once carries a submit key (made when the page is shown, signed by the web
layer so a key it never made is known as such). Its first POST claims the key with one
``INSERT … ON CONFLICT DO NOTHING`` on the key's SHA-256: of two POSTs racing each other, from
one process or two, one inserts and the other finds the row. Where the action is one transaction
of the store (a sale at the desk) the claim is made in it, so a refused or interrupted action
leaves the key free; elsewhere (a payment, a refund, a plan change, which call the payment
provider between transactions) the key is claimed first, in a transaction of its own, and
freed again if the action is refused. The row keeps where the first POST's result is and what
the desk was told; a resend is answered with that, never by acting again. Keys are dropped a
day after use (the form's own age limit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.store import StoreError, digest

log = logging.getLogger("gated.billing")

# A form's submit key is good for a day after its page was shown, and its row for a day after use.
KEY_S = 24 * 3600
# A claim without a result younger than this is a POST still at work; an older one was cut
# short (serve stopped or was killed between the claim and the result).
RUNNING_S = 120

_K = s.submit_keys


@dataclass(frozen=True)
class Claimed:
    """What claiming a key found: ``new`` (this POST acts), or the first POST's ``result``
    (where it went) and ``told`` (what the desk was told); neither for a POST still at work
    (``running``) or one cut short before it recorded its result."""

    new: bool
    result: str | None = None
    told: str | None = None
    running: bool = False


class AlreadySent(Exception):
    """Raised inside an action's transaction when its submit key was used before: the
    transaction rolls back, and the caller answers with ``claimed``."""

    def __init__(self, claimed: Claimed) -> None:
        super().__init__("that form was already sent")
        self.claimed = claimed


@dataclass(frozen=True)
class Once:
    """A submit key for an action that claims it in its own transaction: ``outcome`` gives,
    from what the action made, where its result is and what the desk is told."""

    key: str
    outcome: Callable[[Any], tuple[str, str]]


def _insert_ignore(conn: Connection) -> Any:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(_K).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(_K).on_conflict_do_nothing()
    raise StoreError(f"unsupported database dialect {dialect!r}")


def claim(conn: Connection, key: str, now: int) -> Claimed:
    """Claim ``key`` in the caller's transaction (see the module's docstring). On PostgreSQL
    the insert waits for a transaction holding the same key to end: if it committed, this one
    finds its result; if it rolled back, this one claims the key."""
    # Keys used more than a day ago cannot be sent again (the web refuses their age): dropped
    # here, through the index on used_at, so the table holds about a day of forms.
    conn.execute(delete(_K).where(_K.c.used_at < now - KEY_S))
    # RETURNING, not rowcount: psycopg reports no count for an INSERT … ON CONFLICT.
    stmt = _insert_ignore(conn).returning(_K.c.key_sha256)
    if conn.execute(stmt, {"key_sha256": digest(key), "used_at": now}).first() is not None:
        return Claimed(True)
    row = conn.execute(select(_K).where(_K.c.key_sha256 == digest(key))).one()
    if row.result is not None:
        return Claimed(False, row.result, row.told)
    return Claimed(False, running=now - int(row.used_at) < RUNNING_S)


def record(conn: Connection, key: str, result: str, told: str) -> None:
    """The claimed key's action succeeded: a resend of its form goes to ``result``."""
    conn.execute(
        update(_K)
        .where(_K.c.key_sha256 == digest(key))
        .values(result=result[:300], told=told[:500])
    )


class FormKeys:
    """Submit keys, as the facade hands them out (``Billing.form_keys``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def claim(self, key: str) -> Claimed:
        """Claim ``key`` in a transaction of its own (for an action that cannot run in one)."""
        with self.ctx.engine.begin() as conn:
            return claim(conn, key, self.ctx.clock())

    def done(self, key: str, result: str, told: str) -> None:
        """Record where the claimed key's result is and what the desk was told."""
        with self.ctx.engine.begin() as conn:
            record(conn, key, result, told)

    def free(self, key: str) -> None:
        """The claimed key's action was refused: the form may be corrected and sent again."""
        with self.ctx.engine.begin() as conn:
            conn.execute(delete(_K).where(_K.c.key_sha256 == digest(key), _K.c.result.is_(None)))
