"""Staff accounts for the console: roles scoped to sites, argon2 passwords, TOTP with recovery
codes, and sessions apart from members'. The CLI (``gated-billing staff``) and the console call
this through ``Billing.staff_access()``.

Secrets (passwords, session tokens, TOTP seeds, recovery codes) are returned to the caller once;
the store keeps an argon2 hash, SHA-256 digests, or (the TOTP seed, which must be read back) the
seed encrypted with the card key. None is ever logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import InvalidToken
from sqlalchemy import Row, insert, select, update

from gated.billing_sync import schema as s
from gated.billing_sync import totp
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.permissions import ROLES, TOTP_REQUIRED, allowed
from gated.billing_sync.store import digest
from gated.contract import MEMBER_ID_RE

log = logging.getLogger("gated.billing.staff")

ALL_SITES = "*"
MIN_PASSWORD = 10
SESSION_S = 12 * 3600  # one working day: a desk browser left open signs itself out overnight
SETUP_SESSION_S = 15 * 60
RECOVERY_CODES = 8

_hasher = PasswordHasher()
# Checked against when the account does not exist, so an unknown name costs the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class StaffMember:
    """A staff account as the console and the CLI see it (no secrets)."""

    id: str
    name: str
    role: str
    sites: tuple[str, ...]
    must_change_password: bool
    totp_enrolled: bool
    disabled: bool
    created_at: int

    @property
    def needs_totp(self) -> bool:
        return self.role in TOTP_REQUIRED

    @property
    def needs_setup(self) -> bool:
        """A password to change or a required second factor to enrol before any other page."""
        return self.must_change_password or (self.needs_totp and not self.totp_enrolled)

    def may(self, action: str) -> bool:
        """Whether this account's role allows ``action`` (the permission table)."""
        return allowed(self.role, action)

    def covers(self, sites: Sequence[str]) -> bool:
        """Whether this account may act at one of ``sites`` (a member's or a gate's)."""
        return ALL_SITES in self.sites or any(site in self.sites for site in sites)


@dataclass(frozen=True)
class StaffSession:
    """A live staff session: whose, and whether it only opens the setup page."""

    staff: StaffMember
    setup_only: bool
    expires_at: int


def _member(row: Row[Any]) -> StaffMember:
    return StaffMember(
        id=str(row.id),
        name=str(row.name),
        role=str(row.role),
        sites=tuple(json.loads(row.sites)),
        must_change_password=bool(row.must_change_password),
        totp_enrolled=row.totp_enrolled_at is not None,
        disabled=row.disabled_at is not None,
        created_at=int(row.created_at),
    )


def new_password() -> str:
    """A one-time password to hand over (changed at the first sign-in)."""
    return secrets.token_urlsafe(12)


def check_new_password(password: str) -> None:
    """BillingError when a password chosen by a person is too weak to keep."""
    if len(password) < MIN_PASSWORD:
        raise BillingError(f"a password has at least {MIN_PASSWORD} characters")


class StaffAccess:
    """Staff accounts, their second factor and their sessions, over the billing store."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.engine = ctx.engine
        self.reader = ctx.reader
        self.clock = ctx.clock

    # --- accounts (the CLI, and owners in the console) ------------------------------------------

    def add(
        self, staff_id: str, name: str, role: str, sites: Sequence[str], password: str | None
    ) -> str:
        """A new account; returns its password (``password``, or a one-time one made here, which
        must be changed at the first sign-in)."""
        if not MEMBER_ID_RE.match(staff_id):
            raise BillingError("a staff id is 1-64 of A-Z a-z 0-9 _ -")
        if role not in ROLES:
            raise BillingError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        site_list = self._sites(sites)
        one_time = password is None
        password = password or new_password()
        if not one_time:
            check_new_password(password)
        with self.engine.begin() as conn:
            if conn.execute(select(s.staff.c.id).where(s.staff.c.id == staff_id)).first():
                raise BillingError(f"staff account {staff_id} exists (use `staff reset`)")
            conn.execute(
                insert(s.staff).values(
                    id=staff_id,
                    name=name.strip() or staff_id,
                    role=role,
                    sites=json.dumps(site_list),
                    password_hash=_hasher.hash(password),
                    must_change_password=one_time,
                    created_at=self.clock(),
                )
            )
        log.info("event=staff_added staff=%s role=%s", staff_id, role)
        return password

    def _sites(self, sites: Sequence[str]) -> list[str]:
        known = self.ctx.config.sites
        chosen = sorted(set(sites)) or [ALL_SITES]
        if ALL_SITES in chosen:
            return [ALL_SITES]
        unknown = [site for site in chosen if site not in known]
        if unknown:
            raise BillingError(f"unknown site {unknown[0]!r}; billing.toml lists {known}")
        return chosen

    def accounts(self) -> list[StaffMember]:
        """Every account, by id."""
        with self.reader.connect() as conn:
            rows = conn.execute(select(s.staff).order_by(s.staff.c.id)).all()
        return [_member(r) for r in rows]

    def get(self, staff_id: str) -> StaffMember:
        """One account; NotFound if there is none."""
        with self.reader.connect() as conn:
            row = conn.execute(select(s.staff).where(s.staff.c.id == staff_id)).first()
        if row is None:
            raise NotFound(f"no staff account {staff_id}")
        return _member(row)

    def covers_all(self, who: StaffMember, sites: Sequence[str]) -> bool:
        """Whether ``who`` covers every one of ``sites`` (an owner manages only accounts, and
        grants only sites, within their own reach)."""
        return ALL_SITES in who.sites or (ALL_SITES not in sites and set(sites) <= set(who.sites))

    def set_role(self, staff_id: str, role: str, sites: Sequence[str]) -> tuple[str, list[str]]:
        """Change an account's role and sites; returns the role and sites it had. Its sessions
        end (the next sign-in asks for TOTP if the new role needs it). BillingError when it
        would leave no enabled owner."""
        if role not in ROLES:
            raise BillingError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        site_list = self._sites(sites)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(s.staff.c.role, s.staff.c.sites)
                .where(s.staff.c.id == staff_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no staff account {staff_id}")
            if role != "owner":
                self._keep_an_owner(conn, staff_id)
            conn.execute(
                update(s.staff)
                .where(s.staff.c.id == staff_id)
                .values(role=role, sites=json.dumps(site_list))
            )
            self._end_all(conn, staff_id, self.clock())
        log.info("event=staff_role_changed staff=%s role=%s", staff_id, role)
        return str(row.role), list(json.loads(row.sites))

    def _keep_an_owner(self, conn: Any, staff_id: str) -> None:
        """BillingError when ``staff_id`` is the one enabled owner (nobody could manage staff
        in the console after it is gone)."""
        t = s.staff
        owners = conn.execute(
            select(t.c.id).where(t.c.role == "owner", t.c.disabled_at.is_(None)).with_for_update()
        ).scalars()
        if set(owners) == {staff_id}:
            raise BillingError("this is the last owner: make another owner first")

    def disable(self, staff_id: str) -> None:
        """Disable an account and end its sessions at once; BillingError for the last enabled
        owner."""
        now = self.clock()
        with self.engine.begin() as conn:
            self._keep_an_owner(conn, staff_id)
            done = conn.execute(
                update(s.staff).where(s.staff.c.id == staff_id).values(disabled_at=now)
            ).rowcount
            if done == 0:
                raise NotFound(f"no staff account {staff_id}")
            self._end_all(conn, staff_id, now)
        log.info("event=staff_disabled staff=%s", staff_id)

    def reset(self, staff_id: str, password: str | None) -> str:
        """Recovery: a new password (one-time unless given), the second factor and recovery
        codes cleared (enrolled again at the next sign-in), every session ended, the account
        enabled. Returns the password."""
        one_time = password is None
        password = password or new_password()
        if not one_time:
            check_new_password(password)
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(s.staff)
                .where(s.staff.c.id == staff_id)
                .values(
                    password_hash=_hasher.hash(password),
                    must_change_password=one_time,
                    totp_secret=None,
                    totp_enrolled_at=None,
                    totp_last_step=None,
                    recovery_codes=None,
                    disabled_at=None,
                )
            ).rowcount
            if done == 0:
                raise NotFound(f"no staff account {staff_id}")
            self._end_all(conn, staff_id, now)
        log.info("event=staff_reset staff=%s", staff_id)
        return password

    # --- signing in ---------------------------------------------------------------------------

    def check_password(self, staff_id: str, password: str) -> StaffMember | None:
        """The account a correct password opens, or None (unknown, disabled or wrong: the
        same answer, in about the same time)."""
        with self.reader.connect() as conn:
            row = conn.execute(select(s.staff).where(s.staff.c.id == staff_id)).first()
        stored = row.password_hash if row is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled_at is not None:
            return None
        return _member(row)

    def check_second_factor(self, staff_id: str, code: str) -> bool:
        """A TOTP code not used before, or an unused recovery code (struck out as it is used)."""
        code = code.strip().replace(" ", "").replace("-", "").lower()
        now = self.clock()
        t = s.staff
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.totp_secret, t.c.totp_last_step, t.c.recovery_codes)
                .where(t.c.id == staff_id, t.c.totp_enrolled_at.is_not(None))
                .with_for_update()
            ).first()
            if row is None or row.totp_secret is None:
                return False
            step = totp.matching_step(self._seed(row.totp_secret), code, now, row.totp_last_step)
            if step is not None:
                # Only a later step is stored: two requests racing with one code use it once.
                done = conn.execute(
                    update(t)
                    .where(
                        t.c.id == staff_id,
                        (t.c.totp_last_step.is_(None)) | (t.c.totp_last_step < step),
                    )
                    .values(totp_last_step=step)
                ).rowcount
                return done == 1
            codes: list[str] = json.loads(row.recovery_codes or "[]")
            hashed = digest(code)
            for i, stored in enumerate(codes):
                if stored and hmac.compare_digest(stored, hashed):
                    codes[i] = ""
                    conn.execute(
                        update(t).where(t.c.id == staff_id).values(recovery_codes=json.dumps(codes))
                    )
                    log.info("event=staff_recovery_code_used staff=%s", staff_id)
                    return True
        return False

    def _seed(self, encrypted: bytes) -> bytes:
        try:
            return self.ctx.keys.cipher.decrypt(encrypted)
        except InvalidToken as exc:
            raise BillingError("a TOTP seed does not decrypt with the card encryption key") from exc

    # --- setup: a new password, TOTP enrolment --------------------------------------------------

    def set_password(self, staff_id: str, password: str) -> None:
        """The account holder's own new password."""
        check_new_password(password)
        with self.engine.begin() as conn:
            conn.execute(
                update(s.staff)
                .where(s.staff.c.id == staff_id)
                .values(password_hash=_hasher.hash(password), must_change_password=False)
            )
        log.info("event=staff_password_changed staff=%s", staff_id)

    def totp_pending(self, staff_id: str) -> bytes:
        """The seed being enrolled (made now if there is none); for the QR code and the typed
        key. An enrolled account gets BillingError (reset it to enrol again)."""
        t = s.staff
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.totp_secret, t.c.totp_enrolled_at).where(t.c.id == staff_id)
            ).first()
            if row is None:
                raise NotFound(f"no staff account {staff_id}")
            if row.totp_enrolled_at is not None:
                raise BillingError("TOTP is already set up for this account")
            if row.totp_secret is not None:
                return self._seed(row.totp_secret)
            seed = totp.new_secret()
            conn.execute(
                update(t)
                .where(t.c.id == staff_id)
                .values(totp_secret=self.ctx.keys.cipher.encrypt(seed))
            )
        return seed

    def totp_confirm(self, staff_id: str, code: str) -> list[str] | None:
        """Finish enrolment with a code from the app: returns the recovery codes (shown once),
        or None when the code is wrong."""
        seed = self.totp_pending(staff_id)
        step = totp.matching_step(seed, code.strip(), self.clock(), None)
        if step is None:
            return None
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        with self.engine.begin() as conn:
            conn.execute(
                update(s.staff)
                .where(s.staff.c.id == staff_id, s.staff.c.totp_enrolled_at.is_(None))
                .values(
                    totp_enrolled_at=self.clock(),
                    totp_last_step=step,
                    recovery_codes=json.dumps([digest(c) for c in codes]),
                )
            )
        log.info("event=staff_totp_enrolled staff=%s", staff_id)
        return [f"{c[:5]}-{c[5:]}" for c in codes]

    # --- sessions -----------------------------------------------------------------------------

    def open_session(
        self, staff_id: str, user_agent: str, address: str, *, setup_only: bool = False
    ) -> str:
        """A new session; returns its token (for the cookie)."""
        now = self.clock()
        token = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                insert(s.staff_sessions).values(
                    token_sha256=digest(token),
                    staff_id=staff_id,
                    created_at=now,
                    expires_at=now + (SETUP_SESSION_S if setup_only else SESSION_S),
                    setup_only=setup_only,
                    user_agent=user_agent[:200],
                    address=address[:64],
                )
            )
        log.info("event=staff_session_opened staff=%s setup_only=%s", staff_id, setup_only)
        return token

    def session(self, token: str) -> StaffSession | None:
        """The live session a cookie's token names, or None (unknown, revoked, expired, or the
        account disabled)."""
        w, t = s.staff_sessions, s.staff
        with self.reader.connect() as conn:
            row = conn.execute(
                select(t, w.c.setup_only, w.c.expires_at)
                .join(t, t.c.id == w.c.staff_id)
                .where(
                    w.c.token_sha256 == digest(token),
                    w.c.revoked_at.is_(None),
                    w.c.expires_at > self.clock(),
                    t.c.disabled_at.is_(None),
                )
            ).first()
        if row is None:
            return None
        return StaffSession(_member(row), bool(row.setup_only), int(row.expires_at))

    def end_session(self, token: str) -> None:
        """Sign one browser out."""
        w = s.staff_sessions
        with self.engine.begin() as conn:
            conn.execute(
                update(w)
                .where(w.c.token_sha256 == digest(token), w.c.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )

    def end_all_sessions(self, staff_id: str) -> int:
        """Sign an account out everywhere; returns how many sessions ended."""
        with self.engine.begin() as conn:
            return self._end_all(conn, staff_id, self.clock())

    def _end_all(self, conn: Any, staff_id: str, now: int) -> int:
        w = s.staff_sessions
        return int(
            conn.execute(
                update(w)
                .where(w.c.staff_id == staff_id, w.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
        )
