"""Gates as head office knows them: bearer tokens for their snapshot fetches (shown once,
stored hashed) and the attendance events they send, each stored once.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.store import digest, insert_ignore
from gated.contract import MEMBER_ID_RE


def add_gate(ctx: Context, site: str, gate: str) -> str:
    """Issue a new bearer token for a gate's snapshot fetches (shown once, stored hashed)."""
    if site not in ctx.config.sites:
        raise BillingError(f"unknown site {site!r}; billing.toml lists {ctx.config.sites}")
    if not MEMBER_ID_RE.match(gate):
        raise BillingError("a gate id is 1-64 of A-Z a-z 0-9 _ -")
    token = "gt_" + secrets.token_urlsafe(32)
    hashed = digest(token)
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(s.gates)
            .where(s.gates.c.site == site, s.gates.c.gate == gate)
            .values(token_sha256=hashed, created_at=now, revoked_at=None)
        )
        if done.rowcount == 0:
            conn.execute(
                insert(s.gates).values(site=site, gate=gate, token_sha256=hashed, created_at=now)
            )
    return token


def revoke_gate(ctx: Context, site: str, gate: str) -> None:
    """Revoke a gate's token at once; NotFound for an unknown gate."""
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(s.gates)
            .where(s.gates.c.site == site, s.gates.c.gate == gate)
            .values(revoked_at=ctx.clock())
        )
    if done.rowcount == 0:
        raise NotFound(f"no gate {site}/{gate}")


def gate_for_token(ctx: Context, token: str) -> tuple[str, str] | None:
    """The (site, gate) a bearer token belongs to, or None (unknown or revoked)."""
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(s.gates.c.site, s.gates.c.gate).where(
                s.gates.c.token_sha256 == digest(token), s.gates.c.revoked_at.is_(None)
            )
        ).first()
    return None if row is None else (row.site, row.gate)


def record_gate_events(ctx: Context, events: Iterable[dict[str, Any]]) -> int:
    """Attendance intake: each event stored once by ``event_id``; returns how many were new."""
    now = ctx.clock()
    rows = []
    accepted: list[dict[str, Any]] = []
    for ev in events:
        try:
            at = int(datetime.fromisoformat(str(ev["at"]).replace("Z", "+00:00")).timestamp())
        except (KeyError, ValueError):
            continue
        rows.append(
            {
                "event_id": str(ev["event_id"]),
                "site": str(ev["site"]),
                "gate": str(ev["gate"]),
                "at": at,
                "kind": str(ev["kind"]),
                "member_id": ev.get("member_id"),
                "reason": ev.get("reason"),
                "payload": json.dumps(ev, sort_keys=True),
                "received_at": now,
            }
        )
        accepted.append(ev)
    with ctx.engine.begin() as conn:
        new = insert_ignore(conn, s.gate_events, rows)
    if ctx.gate_events_hook is not None and accepted:
        ctx.gate_events_hook(accepted)
    return new
