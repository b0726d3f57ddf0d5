"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), as authenticator apps make them:
HMAC-SHA1, 30-second steps, 6 digits. Small enough to keep here and test against the RFC's vectors."""

from __future__ import annotations

import base64
import hmac
import secrets
from urllib.parse import quote, urlencode

STEP_S = 30
DIGITS = 6
# Steps either side of now a code may come from (a phone's clock a little off).
WINDOW = 1


def new_secret() -> bytes:
    """A fresh 160-bit seed (RFC 4226's recommended length)."""
    return secrets.token_bytes(20)


def b32(secret: bytes) -> str:
    """The seed as authenticator apps take it typed in: base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def hotp(secret: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226: the code for one counter value."""
    mac = hmac.new(secret, counter.to_bytes(8, "big"), digest).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{value % 10**digits:0{digits}d}"


def code_at(secret: bytes, unix: float, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 6238: the code at a Unix time."""
    return hotp(secret, int(unix // STEP_S), digits, digest)


def matching_step(secret: bytes, code: str, now: float, last_step: int | None) -> int | None:
    """The step a code belongs to (within ``WINDOW`` of now), or None. A step at or before
    ``last_step`` never matches: each code works once."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    current = int(now // STEP_S)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(hotp(secret, step), code):
            return step
    return None


def provisioning_uri(secret: bytes, account: str, issuer: str) -> str:
    """The ``otpauth://`` address an authenticator app reads from the enrolment QR code."""
    label = quote(f"{issuer}:{account}")
    query = urlencode({"secret": b32(secret), "issuer": issuer, "digits": DIGITS, "period": STEP_S})
    return f"otpauth://totp/{label}?{query}"
