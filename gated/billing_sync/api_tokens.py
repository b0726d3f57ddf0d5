"""API tokens for integrators: an owner issues one with a name, a role and sites; the token is
returned once and only its SHA-256 is stored; it reads the staff JSON API's GET routes as a
staff account of that role and those sites would (``gated.web.api_tokens``), and never changes
anything. Revoking one ends it at once."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.permissions import ROLES
from gated.billing_sync.staff import ALL_SITES, StaffMember
from gated.billing_sync.store import digest

log = logging.getLogger("gated.billing.api_tokens")

PREFIX = "gat_"
# How stale ``last_used_at`` may get before a use writes it again (not a write per request).
TOUCH_S = 60


def _sites(ctx: Context, sites: Sequence[str]) -> list[str]:
    chosen = sorted(set(sites)) or [ALL_SITES]
    if ALL_SITES in chosen:
        return [ALL_SITES]
    unknown = [site for site in chosen if site not in ctx.config.sites]
    if unknown:
        raise BillingError(f"unknown site {unknown[0]!r}; billing.toml lists {ctx.config.sites}")
    return chosen


def create(
    ctx: Context, name: str, role: str, sites: Sequence[str], created_by: str
) -> tuple[int, str]:
    """A new token: (its id, the token, shown once)."""
    name = " ".join(name.split())[:100]
    if not name:
        raise BillingError("give the token a name (who or what uses it)")
    if role not in ROLES:
        raise BillingError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    site_list = _sites(ctx, sites)
    token = PREFIX + secrets.token_urlsafe(32)
    with ctx.engine.begin() as conn:
        made = conn.execute(
            insert(s.api_tokens).values(
                name=name,
                token_sha256=digest(token),
                role=role,
                sites=json.dumps(site_list),
                created_at=ctx.clock(),
                created_by=created_by[:64],
            )
        ).inserted_primary_key
    assert made is not None
    token_id = made[0]
    log.info("event=api_token_created token_id=%s role=%s", token_id, role)
    return int(token_id), token


def revoke(ctx: Context, token_id: int) -> None:
    """End a token at once; NotFound for an unknown or already revoked one."""
    t = s.api_tokens
    with ctx.engine.begin() as conn:
        done = conn.execute(
            update(t)
            .where(t.c.id == token_id, t.c.revoked_at.is_(None))
            .values(revoked_at=ctx.clock())
        ).rowcount
    if done == 0:
        raise NotFound(f"no live API token {token_id}")
    log.info("event=api_token_revoked token_id=%s", token_id)


def tokens(ctx: Context) -> list[dict[str, Any]]:
    """Every token, newest first (never the token itself, which is not kept)."""
    t = s.api_tokens
    with ctx.reader.connect() as conn:
        rows = conn.execute(
            select(
                t.c.id,
                t.c.name,
                t.c.role,
                t.c.sites,
                t.c.created_at,
                t.c.created_by,
                t.c.last_used_at,
                t.c.revoked_at,
            ).order_by(t.c.id.desc())
        ).all()
    return [{**r._asdict(), "sites": json.loads(r.sites)} for r in rows]


def check(ctx: Context, token: str) -> StaffMember | None:
    """The account a live token reads as (id ``token-N``, its role and sites), or None."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    t = s.api_tokens
    now = ctx.clock()
    with ctx.reader.connect() as conn:
        row = conn.execute(
            select(t).where(t.c.token_sha256 == digest(token), t.c.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    if row.last_used_at is None or row.last_used_at < now - TOUCH_S:
        with ctx.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == row.id).values(last_used_at=now))
    return StaffMember(
        id=f"token-{row.id}",
        name=str(row.name),
        role=str(row.role),
        sites=tuple(json.loads(row.sites)),
        must_change_password=False,
        totp_enrolled=True,
        disabled=False,
        created_at=int(row.created_at),
    )
