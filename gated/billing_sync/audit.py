"""The audit log: who changed a member's money, status, cards or access, from where, and which
fields went from what to what. The console records its staff actions and the CLI its commands
(as the Unix user) through ``audited``, one way for both.

Only account fields are compared (status, plan, dates, amounts, card counts), and ``detail``
holds ids, so a row carries no name, address or card UID; erasing a member blanks the values in
that member's rows (``redact_member``), keeping which fields changed.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import NotFound

# The account fields an action may change, as ``members.member`` reports them (the facade hands
# that reader in: the log knows no module that writes what it records, so none imports it back).
FIELDS = (
    "status",
    "plan",
    "paid_through",
    "owed",
    "cards",
    "freeze",
    "cancel_at",
    "needs_new_card",
    "payment_method_set",
)


@dataclass(frozen=True)
class Actor:
    """Who acts: a staff account (``kind`` "staff", its role, the client address) or a shell
    user (``kind`` "cli")."""

    kind: str
    id: str
    role: str
    address: str

    @classmethod
    def unix_user(cls) -> Actor:
        """The user running this process (and who ran sudo, when that is how)."""
        uid = os.getuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        sudo = os.environ.get("SUDO_USER")
        who = f"{name} (sudo {sudo})" if sudo and sudo != name else name
        return cls("cli", who[:64], "shell", "local")


@dataclass
class Entry:
    """What ``audited`` fills in while the action runs: ids worth keeping (an invoice, a card
    row, a gate), and whether to record at all (an action that changed nothing may say so)."""

    detail: dict[str, Any] = field(default_factory=dict)


MemberReader = Callable[[Context, str], dict[str, Any]]


def snapshot(ctx: Context, member_id: str | None, read: MemberReader) -> dict[str, Any]:
    """A member's account fields now, as ``read`` reports them ({} for none, or an unknown
    member)."""
    if member_id is None:
        return {}
    try:
        m = read(ctx, member_id)
    except NotFound:
        return {}
    with ctx.reader.connect() as conn:
        pm = conn.execute(
            select(s.members.c.payment_method).where(s.members.c.id == member_id)
        ).scalar()
    m["payment_method_set"] = pm is not None
    return {k: m.get(k) for k in FIELDS}


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{field: [before, after]}`` for the fields that differ."""
    return {
        k: [before.get(k), after.get(k)]
        for k in FIELDS
        if (k in before or k in after) and before.get(k) != after.get(k)
    }


def record(
    ctx: Context,
    actor: Actor,
    action: str,
    member_id: str | None,
    changed: Mapping[str, list[Any]],
    detail: Mapping[str, Any],
    conn: Connection | None = None,
) -> None:
    """Append one row (inside ``conn``'s transaction when given, so the row and the change it
    records commit together)."""
    row = insert(s.audit_log).values(
        at=ctx.clock(),
        actor_kind=actor.kind,
        actor=actor.id[:64],
        role=actor.role,
        action=action,
        member_id=member_id,
        changes=json.dumps(changed, sort_keys=True),
        detail=json.dumps(detail, sort_keys=True),
        address=actor.address[:64],
    )
    if conn is not None:
        conn.execute(row)
        return
    with ctx.engine.begin() as own:
        own.execute(row)


@contextmanager
def audited(
    ctx: Context,
    actor: Actor,
    action: str,
    member_id: str | None,
    read: MemberReader,
    *,
    account: bool = True,
) -> Iterator[Entry]:
    """Run an action and record it with the member's fields (as ``read`` reports them) before
    and after. An action that raises is not recorded (it did not happen). ``account=False``
    is for an action that cannot change those fields (contact details): the same row, without
    reading the member twice (most of such a request's work)."""
    before = snapshot(ctx, member_id if account else None, read)
    entry = Entry()
    yield entry
    after = snapshot(ctx, member_id if account else None, read)
    record(ctx, actor, action, member_id, changes(before, after), entry.detail)


def entries(
    ctx: Context, *, member_id: str | None = None, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    """The newest rows first (older than ``before_id``, for paging), optionally of one member."""
    a = s.audit_log
    q = select(a).order_by(a.c.id.desc()).limit(limit)
    if member_id is not None:
        q = q.where(a.c.member_id == member_id)
    if before_id is not None:
        q = q.where(a.c.id < before_id)
    with ctx.reader.connect() as conn:
        rows = conn.execute(q).all()
    return [
        {**r._asdict(), "changes": json.loads(r.changes), "detail": json.loads(r.detail)}
        for r in rows
    ]


def count(ctx: Context) -> int:
    """How many rows the log holds."""
    with ctx.reader.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.audit_log)).scalar_one())


def redact_member(conn: Connection, member_id: str) -> None:
    """Erasure: blank the before/after values of a member's rows, keeping the field names."""
    a = s.audit_log
    rows = conn.execute(select(a.c.id, a.c.changes).where(a.c.member_id == member_id)).all()
    for row in rows:
        names = json.loads(row.changes)
        conn.execute(
            update(a)
            .where(a.c.id == row.id)
            .values(changes=json.dumps({k: [None, None] for k in names}, sort_keys=True))
        )
