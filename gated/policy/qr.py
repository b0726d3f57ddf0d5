"""Rotating QR verification (DESIGN "Rotating QR").

A code is ``GQ1.<member_id>.<unix_ts>.<nonce>.<sig>``, signed by the member app's Ed25519 key whose
public half is the member's ``qr_key``. The gate holds no secret that can mint a code. Nonces are
single use per gate: only an accepted code uses its nonce up, and the daemon keeps used nonces on
disk for twice the window. The door opens before a nonce reaches the disk (nothing on the hot
path waits for it), so a gate killed at that instant would forget it: after a (re)start a gate
therefore refuses every code minted before it started (``not_before``) as ``qr_expired``. The
member's app shows a fresh code every few seconds; the member waits for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import nacl.exceptions
import nacl.signing

from gated.contract import ContractError, parse_qr_code
from gated.policy.decide import Member


class QrCheck(NamedTuple):
    """The member the code names (None if unknown or unreadable), the fault found (None when the
    code is good), and the (member_id, nonce) pair to spend if the decision allows."""

    member: Member | None
    fault: str | None
    nonce: tuple[str, str] | None


class QrVerifier:
    """Checks codes against cached members; remembers spent nonces until they can't matter."""

    def __init__(self, window_s: float, not_before: float = 0.0) -> None:
        self.window_s = window_s
        # The gate's start: a code minted before it may have been spent by a gate killed
        # before the nonce was written, so it is treated like one outside the window.
        self.not_before = not_before
        self._spent: dict[tuple[str, str], float] = {}

    def check(self, code: str, lookup: Callable[[str], Member | None], now: float) -> QrCheck:
        """Run every check in DESIGN order; ``now`` is the gate's trusted time."""
        try:
            member_id, ts, nonce, signed, signature = parse_qr_code(code)
        except ContractError:
            return QrCheck(None, "qr_malformed", None)
        member = lookup(member_id)
        if member is None or member.status == "erased":
            return QrCheck(None, "unknown_credential", None)
        if member.qr_key is None:
            return QrCheck(member, "qr_bad_signature", None)
        try:
            nacl.signing.VerifyKey(member.qr_key).verify(signed, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return QrCheck(member, "qr_bad_signature", None)
        if abs(now - ts) > self.window_s or ts < self.not_before:
            return QrCheck(member, "qr_expired", None)
        pair = (member_id, nonce)
        expires = self._spent.get(pair)
        if expires is not None and expires > now:
            return QrCheck(member, "qr_replayed", None)
        return QrCheck(member, None, pair)

    def spend(self, pair: tuple[str, str], now: float) -> float:
        """Mark a nonce used (call only when the decision allowed); returns when it may be
        forgotten, for the caller to store."""
        expires = now + 2 * self.window_s
        self._spent[pair] = expires
        if len(self._spent) > 4096:
            self.prune(now)
        return expires

    def restore(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Load spent nonces (member_id, nonce, expires_at) kept on disk."""
        for member_id, nonce, expires in rows:
            self._spent[(member_id, nonce)] = expires

    def prune(self, now: float) -> None:
        self._spent = {k: v for k, v in self._spent.items() if v > now}
