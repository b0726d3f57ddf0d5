"""The member app's pass key: the Ed25519 public key a member's device registers so its own
codes open the gates (DESIGN "Head office on the web", the pass).

A device proves it holds the private key by signing a fresh, single-use challenge issued to
the member (``challenge``); ``register`` then publishes the key as the member's ``qr_key``
with the next version, which replaces any key head office held (``gated-billing pass`` can no
longer mint for the member) and the previous device's key at every gate. Registering needs a
sign-in from the last 15 minutes and is allowed once per 24 hours unless staff allow another
(``allow``); each registration mails the member. ``revoke`` (sign out everywhere) publishes no
key at all. Every change is a row of the audit log (``pass_key_registered``, ``pass_key_revoked``,
``pass_key_allowed``), which the 24-hour rule reads too; it names keys by fingerprint only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from typing import Any

import nacl.exceptions
import nacl.signing
from sqlalchemy import func, insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.audit import Actor, record
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import load_facts
from gated.billing_sync.publishing import queue_notice, refresh
from gated.contract import format_time

log = logging.getLogger("gated.billing.pass_keys")

RECENT_SIGNIN_S = 15 * 60
CHALLENGE_TTL_S = 5 * 60
KEY_INTERVAL_S = 24 * 3600
# What a device signs to prove possession: a domain prefix that no GQ1 code starts with, so a
# registration's signature can never be shown at a gate, nor a code's used to register.
PROOF_PREFIX = "gated-pass-key-v1"
REGISTERED, REVOKED, ALLOWED = "pass_key_registered", "pass_key_revoked", "pass_key_allowed"


class KeyRefused(BillingError):
    """A registration the rules refuse; ``reason`` is a stable code for API clients."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def proof_message(member_id: str, nonce: str) -> bytes:
    """The bytes a device signs with its new key to register it."""
    return f"{PROOF_PREFIX}.{member_id}.{nonce}".encode()


def fingerprint(qr_key: str | None) -> str | None:
    """A key as the audit log names it: the first 16 hex digits of SHA-256 of its raw bytes
    (as a ``kid``)."""
    return None if qr_key is None else hashlib.sha256(base64.b64decode(qr_key)).hexdigest()[:16]


def decode_public_key(text: str) -> bytes:
    """A raw 32-byte Ed25519 public key from standard or URL-safe base64."""
    try:
        bare = text.replace("-", "+").replace("_", "/").rstrip("=")
        raw = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyRefused("bad_key", "the public key is not base64") from exc
    if len(raw) != 32:
        raise KeyRefused("bad_key", "the public key must be a raw 32-byte Ed25519 key")
    return raw


def challenge(ctx: Context, member_id: str) -> str:
    """A fresh single-use nonce for ``member_id`` to sign (valid ``CHALLENGE_TTL_S``)."""
    now = ctx.clock()
    nonce = secrets.token_urlsafe(24)
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(s.pass_key_nonces).values(
                nonce=nonce, member_id=member_id, created_at=now, expires_at=now + CHALLENGE_TTL_S
            )
        )
    return nonce


def register(
    ctx: Context,
    member_id: str,
    *,
    signed_in_at: int,
    public_key: str,
    nonce: str,
    signature: str,
    address: str | None = None,
    user_agent: str | None = None,
) -> int:
    """Make ``public_key`` the member's pass key and publish it; returns the new version.
    KeyRefused (with a reason code) when a rule says no."""
    now = ctx.clock()
    if now - signed_in_at > RECENT_SIGNIN_S:
        raise KeyRefused(
            "signin_too_old",
            "sign in again: making a device your pass needs a sign-in from the last 15 minutes",
        )
    raw = decode_public_key(public_key)
    # The challenge is used up first, in its own transaction: a wrong signature spends it too.
    n = s.pass_key_nonces
    with ctx.engine.begin() as conn:
        used = conn.execute(
            update(n)
            .where(
                n.c.nonce == nonce[:64],
                n.c.member_id == member_id,
                n.c.used_at.is_(None),
                n.c.expires_at > now,
            )
            .values(used_at=now)
        ).rowcount
    if used != 1:
        raise KeyRefused(
            "bad_proof", "the challenge is unknown, used or expired: ask for a new one"
        )
    try:
        sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        nacl.signing.VerifyKey(raw).verify(proof_message(member_id, nonce), sig)
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError) as exc:
        raise KeyRefused(
            "bad_proof", "the signature does not prove possession of this key"
        ) from exc
    qr_key = base64.b64encode(raw).decode()
    a, m = s.audit_log, s.members
    with ctx.engine.begin() as conn:
        # The member row is locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes),
        # so two registrations at once cannot both pass the 24-hour rule.
        row = conn.execute(
            select(m.c.erased, m.c.qr_key).where(m.c.id == member_id).with_for_update()
        ).first()
        if row is None or row.erased:
            raise NotFound(f"no member {member_id}")
        last = conn.execute(
            select(a.c.id, a.c.at)
            .where(a.c.member_id == member_id, a.c.action == REGISTERED)
            .order_by(a.c.id.desc())
            .limit(1)
        ).first()
        if last is not None and now - int(last.at) < KEY_INTERVAL_S:
            # An allowance counts for the next registration after it (rows in log order).
            allowed = conn.execute(
                select(a.c.id).where(
                    a.c.member_id == member_id, a.c.action == ALLOWED, a.c.id > last.id
                )
            ).first()
            if allowed is None:
                raise KeyRefused(
                    "too_soon",
                    "a device became your pass less than 24 hours ago: try again after "
                    f"{format_time(int(last.at) + KEY_INTERVAL_S)}, or ask the front desk",
                )
        conn.execute(
            update(m).where(m.c.id == member_id).values(qr_key=qr_key, qr_private_key=None)
        )
        record(
            ctx,
            Actor("member", member_id, "member", address or "unknown"),
            REGISTERED,
            member_id,
            {"qr_key": [fingerprint(row.qr_key), fingerprint(qr_key)]},
            {},
            conn,
        )
        facts = load_facts(conn, [member_id], now)
        refresh(ctx, conn, [member_id], now, facts=facts)
        queue_notice(ctx, conn, facts[member_id], "pass_key", at=format_time(now))
        version = int(
            conn.execute(
                select(s.member_states.c.version).where(s.member_states.c.member_id == member_id)
            ).scalar_one()
        )
    ctx.notify_published()
    log.info("event=pass_key_registered member=%s version=%d", member_id, version)
    return version


def revoke(ctx: Context, member_id: str, actor: Actor) -> bool:
    """Publish the member with no pass key (a lost phone); False when they had none."""
    now = ctx.clock()
    m = s.members
    with ctx.engine.begin() as conn:
        old = conn.execute(select(m.c.qr_key).where(m.c.id == member_id)).scalar()
        if old is None:
            return False
        conn.execute(update(m).where(m.c.id == member_id).values(qr_key=None, qr_private_key=None))
        record(ctx, actor, REVOKED, member_id, {"qr_key": [fingerprint(old), None]}, {}, conn)
        refresh(ctx, conn, [member_id], now)
    ctx.notify_published()
    log.info("event=pass_key_revoked member=%s", member_id)
    return True


def allow(ctx: Context, member_id: str, actor: Actor) -> None:
    """Staff let the member register one more device now, whatever the 24-hour rule says."""
    with ctx.engine.begin() as conn:
        row = conn.execute(select(s.members.c.erased).where(s.members.c.id == member_id)).first()
        if row is None or row.erased:
            raise NotFound(f"no member {member_id}")
        record(ctx, actor, ALLOWED, member_id, {}, {}, conn)
    log.info("event=pass_key_allowed member=%s actor=%s", member_id, actor.id)


def pass_info(ctx: Context, member_id: str) -> dict[str, Any]:
    """The member's current pass key and when the last device registered one."""
    with ctx.reader.connect() as conn:
        key = conn.execute(select(s.members.c.qr_key).where(s.members.c.id == member_id)).scalar()
        last = conn.execute(
            select(func.max(s.audit_log.c.at)).where(
                s.audit_log.c.member_id == member_id, s.audit_log.c.action == REGISTERED
            )
        ).scalar()
    return {
        "qr_key": key,
        "registered_at": format_time(int(last)) if last is not None else None,
    }


class PassKeys:
    """The pass-key operations over one billing context (``Billing.pass_keys()``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def challenge(self, member_id: str) -> str:
        """A fresh single-use nonce for the member's device to sign."""
        return challenge(self.ctx, member_id)

    def register(
        self,
        member_id: str,
        *,
        signed_in_at: int,
        public_key: str,
        nonce: str,
        signature: str,
        address: str | None = None,
        user_agent: str | None = None,
    ) -> int:
        """Make a device's key the member's pass (see ``register``); returns the version."""
        return register(
            self.ctx,
            member_id,
            signed_in_at=signed_in_at,
            public_key=public_key,
            nonce=nonce,
            signature=signature,
            address=address,
            user_agent=user_agent,
        )

    def revoke(self, member_id: str, actor: Actor | None = None) -> bool:
        """Publish the member with no pass key; False when they had none. ``actor``: the
        member themselves (sign out everywhere) unless given."""
        return revoke(self.ctx, member_id, actor or Actor("member", member_id, "member", "unknown"))

    def allow(self, member_id: str, actor: Actor) -> None:
        """Let the member register one more device now (staff)."""
        allow(self.ctx, member_id, actor)

    def info(self, member_id: str) -> dict[str, Any]:
        """The member's current pass key and when it was registered."""
        return pass_info(self.ctx, member_id)
