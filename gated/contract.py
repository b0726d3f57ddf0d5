"""The wire contract between head office and gates.

Topics, canonical JSON, Ed25519 signing and verifying, the gate's checks of signed objects, card
keys and the manifest digest. Both the gate and the billing side import this module; it depends on
nothing of ours but the error root. The payloads as pydantic models are in :mod:`gated.payloads`,
which the gate does not import.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, get_args

import nacl.exceptions
import nacl.signing
import orjson

from gated.errors import GatedError

if TYPE_CHECKING:  # key files are read with cryptography; a gate imports it only when it must
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

TOPIC_ROOT = "gated/v1"
MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Versions above 2^53 are refused alone, like any malformed state: they are stored as SQLite
# integers (64-bit signed: one at 2^63 failed the whole batch it came in) and are exact in every
# JSON reader head office or an integrator may use (JavaScript's numbers stop at 2^53).
MAX_VERSION = 2**53
# Untrusted JSON (MQTT payloads, control-socket requests, snapshot lines) is refused above these
# before it is parsed: a member state is ~0.5 KiB and 4 levels deep. Python's json recurses per
# level (100k nested brackets raise RecursionError), orjson stops at 1024, and re-serializing a
# 1,000-deep object to check its signature recurses again.
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32

Status = Literal[
    "pending",
    "active",
    "grace",
    "pending_cancel",
    "suspended",
    "frozen",
    "cancelled",
    "collections",
    "expired",
    "payer_suspended",
    "erased",
]
STATUSES: tuple[str, ...] = get_args(Status)
SignedType = Literal["member_state", "manifest", "snapshot_trailer", "gate_command"]
EventKind = Literal[
    "entry",
    "deny",
    "exit",
    "door_forced",
    "door_held",
    "door_closed",
    "fire",
    "lockdown",
    "reader_fault",
    "reader_ok",
    "stale_cache",
    "clock_unsynced",
]


class ContractError(GatedError, ValueError):
    """A payload that does not follow the contract."""


class SignatureError(ContractError):
    """A signature that is missing, from an untrusted key, or does not verify."""


class PayloadError(ContractError):
    """Untrusted input refused before or while it is parsed; ``reason`` is the counted reason
    (``oversized``, ``too_deep``, ``malformed``, ``wrong_member_id``, ``version_out_of_range``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- time -----------------------------------------------------------------------------------


def format_time(value: datetime | float) -> str:
    """RFC 3339 UTC with a ``Z``, second precision: ``2026-11-26T08:00:00Z``."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits → two characters
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_ids = random.Random()  # seeded from the OS; ids need uniqueness, not secrecy


def new_ulid(now: float | None = None) -> str:
    """A ULID (48-bit millisecond time + 80 random bits, Crockford base32): event ids sort by
    time and never collide between gates. A few µs, and no GIL release on the hot path (as
    os.urandom would)."""
    ms = int((time.time() if now is None else now) * 1000) & 0xFFFFFFFFFFFF
    value = (ms << 80) | _ids.getrandbits(80)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time; a time without an offset is refused."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise ContractError(f"not an RFC 3339 time: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ContractError(f"time without a UTC offset: {text!r}")
    return parsed.astimezone(UTC)


def parse_timestamp(text: str | None) -> float | None:
    """RFC 3339 text (or None) to Unix seconds (or None)."""
    return None if text is None else parse_time(text).timestamp()


# --- canonical JSON and signatures -----------------------------------------------------------


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """UTF-8, keys sorted, no whitespace: the bytes that are signed."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _canonical_fast(obj: Mapping[str, Any]) -> bytes:
    """:func:`canonical_json` by orjson, ~6x faster: the same bytes for every object head office
    signs. Where orjson cannot encode a value (an integer past 64 bits) it is the slow form;
    where the two could still differ, :meth:`Verifier.verify` checks the slow form too."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return canonical_json(obj)


# A JSON string (escapes included), or an unterminated one up to the end: matching to the end
# instead of failing keeps the scan linear on input made of quotes and backslashes.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Braces are counted as brackets: a mismatched pair is the parser's to refuse, not this scan's.
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


@functools.cache
def _nested_at_most(depth: int) -> re.Pattern[bytes]:
    """Matches a string of brackets nested at most ``depth`` deep (possessive: linear time, and
    a deeper string fails as soon as the scan passes ``depth``)."""
    pattern = b""
    for _ in range(depth):
        pattern = rb"(?:\[" + pattern + rb"\])*+"
    return re.compile(pattern)


def json_depth_exceeds(data: bytes, max_depth: int) -> bool:
    """Whether the brackets of ``data`` nest deeper than ``max_depth`` (outside strings), found
    without parsing, at C speed, and not at all when there are too few brackets to go that deep
    (every real payload). Unbalanced brackets count as too deep where they open more than
    ``max_depth``; the parser refuses the rest."""
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(_BRACES_AS_BRACKETS, _NOT_BRACKETS)
    # Empty pairs (the leaves, one level) go first: a wide payload is then little to match.
    brackets = brackets.replace(b"[]", b"")
    return _nested_at_most(max_depth - 1).fullmatch(brackets) is None


def loads_bounded(
    data: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse untrusted JSON: the one parser for MQTT payloads, control-socket requests and
    snapshot lines. Size and nesting are checked before parsing; strict UTF-8, no NaN.
    Raises PayloadError (reason ``oversized``, ``too_deep`` or ``malformed``), never anything
    else."""
    if len(data) > max_bytes:
        raise PayloadError("oversized", f"larger than {max_bytes} bytes")
    if json_depth_exceeds(data, max_depth):
        raise PayloadError("too_deep", f"nested deeper than {max_depth}")
    try:
        return orjson.loads(data)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise PayloadError("malformed", "not JSON") from exc


def member_payload(payload: bytes, member_id: str) -> tuple[dict[str, Any], int]:
    """The checks a gate makes on a member topic's payload before any signature work: a JSON
    object naming ``member_id`` (the topic's) with an integer version in 1..MAX_VERSION.
    Returns (object, version). Raises PayloadError with the reason to count."""
    obj = loads_bounded(payload)
    if not isinstance(obj, dict):
        raise PayloadError("malformed", "not a JSON object")
    version = obj.get("version")
    if type(version) is not int:
        raise PayloadError("malformed", "no integer version")
    if obj.get("member_id") != member_id:
        raise PayloadError("wrong_member_id", "member_id differs from the topic")
    if not 1 <= version <= MAX_VERSION:
        raise PayloadError("version_out_of_range", f"version outside 1..2^53: {version}")
    return obj, version


def member_version(payload: bytes, member_id: str, held: int = 0) -> int | None:
    """:func:`member_payload`'s checks in the order that drops an old state cheapest (a gate
    receives every retained state again at each reconnect): the version, or None when it is not
    above ``held`` (the version the cache holds). Such a state is dropped before its nesting is
    counted: nothing reads it further, so its depth cannot matter. Anything refused raises the
    PayloadError :func:`member_payload` raises, with the same reason."""
    if len(payload) <= MAX_JSON_BYTES:
        try:
            obj = orjson.loads(payload)  # orjson stops at 1,024 levels by itself
        except (ValueError, TypeError):
            obj = None
        if type(obj) is dict:
            version = obj.get("version")
            if (
                type(version) is int
                and obj.get("member_id") == member_id
                and 1 <= version <= MAX_VERSION
            ):
                if version <= held:
                    return None
                if not json_depth_exceeds(payload, MAX_JSON_DEPTH):
                    return version
    member_payload(payload, member_id)  # raises, naming the reason in member_payload's order
    raise PayloadError("malformed", "not a member state")  # not reached


def compact_json(obj: Mapping[str, Any]) -> bytes:
    """The wire form of every MQTT payload: compact, one line (same as canonical)."""
    return canonical_json(obj)


def key_id(public_key_raw: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


class Signer:
    """Signs contract objects with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        raw_private = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._key = nacl.signing.SigningKey(raw_private)
        self.public_key_raw = bytes(self._key.verify_key)
        self.kid = key_id(self.public_key_raw)

    @classmethod
    def from_pem_file(cls, path: str | Path) -> Signer:
        return cls(load_private_key(path))

    def sign(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``obj`` with ``kid`` set and ``sig`` over its canonical form."""
        if obj.get("type") not in ("member_state", "manifest", "snapshot_trailer", "gate_command"):
            raise ContractError(f"cannot sign an object of type {obj.get('type')!r}")
        body = {k: v for k, v in obj.items() if k != "sig"}
        body["kid"] = self.kid
        signature = self._key.sign(canonical_json(body)).signature
        body["sig"] = base64.b64encode(signature).decode()
        return body


class Verifier:
    """Verifies contract objects against a set of trusted public keys (by ``kid``)."""

    def __init__(self, public_keys_raw: Iterable[bytes]) -> None:
        self._keys = {key_id(raw): nacl.signing.VerifyKey(raw) for raw in public_keys_raw}
        if not self._keys:
            raise ContractError("no trusted public keys")

    @classmethod
    def from_pem_files(cls, paths: Iterable[str | Path]) -> Verifier:
        return cls(load_public_key_raw(p) for p in paths)

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, obj: Mapping[str, Any], expected_type: SignedType) -> dict[str, Any]:
        """Check type, kid and signature; return the object without ``sig``.

        Raises SignatureError (or ContractError for the wrong type).
        """
        if obj.get("type") != expected_type:
            raise ContractError(f"expected type {expected_type!r}, got {obj.get('type')!r}")
        body = {k: v for k, v in obj.items() if k != "sig"}
        sig = obj.get("sig")
        if not isinstance(sig, str):
            raise SignatureError("missing signature")
        kid = body.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None  # a list kid is unhashable
        if key is None:
            raise SignatureError(f"untrusted key id {kid!r}")
        try:
            signature = base64.b64decode(sig, validate=True)
            signed = _canonical_fast(body)
            try:
                key.verify(signed, signature)
            except nacl.exceptions.BadSignatureError:
                # canonical_json is the definition; verify by it whenever the forms differ.
                slow = canonical_json(body)
                if slow == signed:
                    raise
                key.verify(slow, signature)
        except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError) as exc:
            raise SignatureError("bad signature") from exc
        return body


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ContractError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ContractError(f"{path}: not an Ed25519 public key")
    return key


# An Ed25519 SubjectPublicKeyInfo in DER is this fixed prefix and the raw 32-byte key (RFC 8410).
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC_KEY_RE = re.compile(
    r"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----"
)


def load_public_key_raw(path: str | Path) -> bytes:
    """The raw 32 bytes of a SubjectPublicKeyInfo PEM Ed25519 public key (as
    ``public_key_raw(load_public_key(path))``), read without cryptography: a gate verifies with
    PyNaCl, and cryptography's OpenSSL bindings were ~9 MiB of its RSS (BENCHMARKS.md)."""
    text = Path(path).read_bytes().decode("ascii", errors="replace")
    match = _PEM_PUBLIC_KEY_RE.search(text)
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True) if match else b""
    except binascii.Error:
        der = b""
    if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise ContractError(f"{path}: not an Ed25519 public key (PEM)")
    return der[12:]


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- credentials ------------------------------------------------------------------------------

_UID_SEPARATORS = re.compile(r"[\s:\-]")
_HEX_RE = re.compile(r"^[0-9A-F]+$")


def normalize_uid(text: str) -> str:
    """Upper-case hex without separators (``04:a1:b2`` → ``04A1B2``); ContractError if not hex."""
    uid = _UID_SEPARATORS.sub("", text).upper()
    if not uid or len(uid) % 2 or not _HEX_RE.match(uid):
        raise ContractError("a card UID is an even number of hex digits")
    return uid


def load_credential_key(path: str | Path) -> bytes:
    """The credential HMAC key: 64 hex digits on one line → 32 bytes."""
    text = Path(path).read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ContractError(f"{path}: the credential key must be 64 hex digits") from exc
    if len(key) != 32:
        raise ContractError(f"{path}: the credential key must be 64 hex digits (32 bytes)")
    return key


def credential_digest(credential_key: bytes, credential: str) -> bytes:
    """HMAC-SHA256 of a credential string (``card:UID`` or ``w26:FAC:NUM``), raw 32 bytes."""
    return hmac.digest(credential_key, credential.encode(), "sha256")


class CredentialHasher:
    """:func:`credential_digest` for the hot path: HMAC-SHA256 from pre-keyed inner and outer
    SHA-256 states (RFC 2104), ~1 µs a card.

    ``hmac.digest`` releases the GIL around OpenSSL even for a 20-byte message, and getting it
    back while the cache writer thread runs cost a badge up to the switch interval; hashlib
    keeps it for small inputs."""

    __slots__ = ("_card", "_inner", "_outer")

    def __init__(self, credential_key: bytes) -> None:
        block = credential_key.ljust(64, b"\0")  # the key is 32 bytes: no pre-hash needed
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # The inner state with "card:" already taken in: a card read hashes only its UID.
        self._card = self._inner.copy()
        self._card.update(b"card:")

    def __call__(self, credential: str) -> bytes:
        inner = self._inner.copy()
        inner.update(credential.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def card_value(self, value: str) -> bytes:
        """The key of a card reader's value: ``self(card_credential_string(value))``, without
        building the ``card:`` string (the hot path's hash)."""
        if value.startswith("w26:"):
            return self(value)
        inner = self._card.copy()
        inner.update(value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def card_key(credential_key: bytes, uid: str) -> str:
    """The card key published for a UID: hex HMAC-SHA256(credential_key, "card:" + UID)."""
    return credential_digest(credential_key, "card:" + normalize_uid(uid)).hex()


def card_credential_string(value: str) -> str:
    """What a card reader's value is hashed as: ``w26:FAC:NUM`` as it is, a UID as ``card:UID``."""
    return value if value.startswith("w26:") else "card:" + value


def is_random_uid(uid: str) -> bool:
    """A 4-byte UID starting with 08 is a random ID that changes on every read."""
    return len(uid) == 8 and uid.startswith("08")


# --- manifest digest --------------------------------------------------------------------------


def digest_term(member_id: str, version: int) -> int:
    """One member's contribution to the site digest: SHA-256(member_id:version) as an int."""
    return int.from_bytes(hashlib.sha256(f"{member_id}:{version}".encode()).digest(), "big")


def digest_hex(value: int) -> str:
    return value.to_bytes(32, "big").hex()


@dataclass(frozen=True, slots=True)
class SiteSummary:
    """What a manifest and a snapshot trailer say of a site's states."""

    count: int
    max_version: int
    digest: str


def site_summary(states: Iterable[Mapping[str, Any]]) -> SiteSummary:
    """Count and digest over the non-erased states, and the highest version of all of them."""
    count = 0
    acc = 0
    max_version = 0
    for state in states:
        version = int(state["version"])
        max_version = max(max_version, version)
        if state["status"] != "erased":
            count += 1
            acc ^= digest_term(str(state["member_id"]), version)
    return SiteSummary(count, max_version, digest_hex(acc))


def site_digest(pairs: Iterable[tuple[str, int]]) -> str:
    """XOR of SHA-256(member_id:version) over the (non-erased) members."""
    acc = 0
    for member_id, version in pairs:
        acc ^= digest_term(member_id, version)
    return digest_hex(acc)


# --- topics -----------------------------------------------------------------------------------


def member_topic(site: str, member_id: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/members/{member_id}"


def members_wildcard(site: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/members/+"


def manifest_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/manifest"


def events_topic(site: str, gate: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/gates/{gate}/events"


def status_topic(site: str, gate: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/gates/{gate}/status"


def cmd_topic(site: str, gate: str) -> str:
    return f"{TOPIC_ROOT}/sites/{site}/gates/{gate}/cmd"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a contract topic into (site, kind, name).

    kind is ``members`` (name = member id), ``manifest`` (name = ""), or ``events``/``status``/
    ``cmd`` (name = gate id). Raises ContractError for anything else.
    """
    parts = topic.split("/")
    if parts[:3] != ["gated", "v1", "sites"] or len(parts) < 5:
        raise ContractError(f"not a gated/v1 topic: {topic!r}")
    site = parts[3]
    if len(parts) == 5 and parts[4] == "manifest":
        return site, "manifest", ""
    if len(parts) == 6 and parts[4] == "members":
        if not MEMBER_ID_RE.match(parts[5]):
            raise ContractError("bad member id in topic")
        return site, "members", parts[5]
    if len(parts) == 7 and parts[4] == "gates" and parts[6] in ("events", "status", "cmd"):
        return site, parts[6], parts[5]
    raise ContractError(f"not a gated/v1 topic: {topic!r}")


# --- reason words -----------------------------------------------------------------------------

# The words a person reads for each reason code a gate event carries (``GateEvent.reason``): the
# gate's display says them and the front desk's feed repeats them, so both sides read them here.
# Also the door's own events (``fire``).
REASON_WORDS: Final = {
    "ok": "Welcome",
    "lockdown": "Gate locked down",
    "unknown_credential": "Card not recognised: please see the front desk",
    "qr_malformed": "Code not readable: refresh it in the app",
    "qr_bad_signature": "Code not valid: refresh it in the app",
    "qr_expired": "Code expired: refresh it in the app",
    "qr_replayed": "Code already used: refresh it in the app",
    "pending": "Membership not started yet: please see the front desk",
    "suspended": "Membership suspended: payment overdue",
    "payer_suspended": "Membership on hold: the account holder's payment is overdue",
    "frozen": "Membership frozen",
    "cancelled": "Membership cancelled",
    "collections": "Account in collections: please see the front desk",
    "expired": "Membership expired",
    "not_yet_valid": "Membership not valid yet",
    "zone_denied": "Your plan does not include this area",
    "outside_schedule": "Outside your plan's hours",
    "anti_passback": "Already checked in",
    "daily_limit": "Daily visit limit reached",
    "fire": "Fire alarm: door open",
}


# --- the gate's checks of signed objects ---------------------------------------------------------
# The gate checks what head office signs with these plain functions rather than the pydantic models
# of gated.payloads: building those models costs a gate ~10 MiB of memory (pydantic's schema
# machinery and each model's validator), a sixth of what it holds with 100,000 members. They
# are stricter than the models (no coercion: ``"5"`` is not a count), and a test holds them to
# the models on every field.

_SUMMARY_TEXT = ("site", "digest", "issued_at")
_COMMAND_TEXT = ("id", "site", "gate", "issued_at", "not_after")
COMMAND_ACTIONS: Final = ("pulse", "lockdown_on", "lockdown_off", "resync", "message")


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _check_text(body: Mapping[str, Any], required: Iterable[str]) -> None:
    for name in required:
        if type(body.get(name)) is not str:
            raise ContractError(f"{name} must be text")
    if type(body.get("kid")) not in (str, type(None)) or type(body.get("sig")) not in (
        str,
        type(None),
    ):
        raise ContractError("kid and sig must be text or null")


def check_site_summary(body: Mapping[str, Any], expected_type: SignedType) -> dict[str, Any]:
    """A verified manifest or snapshot trailer's body, checked field by field (the fields of
    :class:`gated.payloads.Manifest` and :class:`~gated.payloads.SnapshotTrailer`); raises
    ContractError for anything the gate cannot use."""
    if body.get("type") != expected_type:
        raise ContractError(f"expected type {expected_type!r}")
    _check_text(
        body, (*_SUMMARY_TEXT, "sha256") if expected_type == "snapshot_trailer" else _SUMMARY_TEXT
    )
    if not _is_int(body.get("count"), 0, MAX_VERSION) or not _is_int(
        body.get("max_version"), 0, MAX_VERSION
    ):
        raise ContractError("count and max_version must be integers in 0..2^53")
    return dict(body)


class Command(NamedTuple):
    """A verified GateCommand as the gate runs it (the fields of
    :class:`gated.payloads.GateCommand`)."""

    id: str
    site: str
    gate: str
    action: str
    args: dict[str, Any]
    issued_at: str
    not_after: str


def check_command(body: Mapping[str, Any]) -> Command:
    """A verified GateCommand's body → :class:`Command`; ContractError if a field is missing or of
    the wrong kind, or the action is unknown."""
    if body.get("type") != "gate_command":
        raise ContractError("expected type 'gate_command'")
    _check_text(body, _COMMAND_TEXT)
    if body.get("action") not in COMMAND_ACTIONS:
        raise ContractError("unknown action")
    args = body.get("args", {})
    if type(args) is not dict:
        raise ContractError("args must be an object")
    return Command(
        body["id"], body["site"], body["gate"], body["action"], args, body["issued_at"],
        body["not_after"],
    )  # fmt: skip


def erased_state(member_id: str, sites: list[str], version: int, issued_at: str) -> dict[str, Any]:
    """The unsigned tombstone for an erased member (every field present, as the contract says)."""
    return {
        "type": "member_state",
        "member_id": member_id,
        "sites": sites,
        "version": version,
        "status": "erased",
        "role": "member",
        "valid_from": None,
        "valid_until": None,
        "plan": None,
        "schedule": [],
        "zones": [],
        "credentials": [],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": issued_at,
    }


# --- rotating QR codes ------------------------------------------------------------------------

QR_PREFIX = "GQ1"
# [0-9], not \d: \d also matches non-ASCII digits, and the signed bytes are ASCII.
_QR_RE = re.compile(
    r"^GQ1\.([A-Za-z0-9_-]{1,64})\.([0-9]{1,12})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{86})$"
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_qr_code(app_private_key_raw: bytes, member_id: str, ts: int, nonce: str) -> str:
    """What the member's app shows: ``GQ1.<member_id>.<unix_ts>.<nonce>.<sig>``.

    ``nonce`` is 16 hex digits; ``sig`` is base64url (no padding) of the Ed25519 signature over
    the ASCII bytes before the last dot.
    """
    if not MEMBER_ID_RE.match(member_id) or not re.fullmatch(r"[0-9a-f]{16}", nonce):
        raise ContractError("member id or nonce not in the QR code format")
    head = f"{QR_PREFIX}.{member_id}.{ts}.{nonce}"
    signature = nacl.signing.SigningKey(app_private_key_raw).sign(head.encode()).signature
    return f"{head}.{_b64url(signature)}"


def parse_qr_code(text: str) -> tuple[str, int, str, bytes, bytes]:
    """Split a code into (member_id, ts, nonce, signed_bytes, signature); ContractError if it is
    not a well-formed GQ1 code."""
    match = _QR_RE.match(text.strip())
    if not match:
        raise ContractError("not a GQ1 code")
    member_id, ts, nonce, sig = match.groups()
    try:
        signature = base64.urlsafe_b64decode(sig + "==")
    except (binascii.Error, ValueError) as exc:
        raise ContractError("bad QR signature encoding") from exc
    if len(signature) != 64:
        raise ContractError("bad QR signature length")
    head = text.strip().rsplit(".", 1)[0]
    return member_id, int(ts), nonce, head.encode(), signature


# --- snapshots --------------------------------------------------------------------------------


def build_snapshot(
    site: str, states: Iterable[Mapping[str, Any]], signer: Signer, issued_at: str
) -> bytes:
    """A site snapshot: gzip'd JSON Lines, one MemberState per line without ``sig`` (erased ones
    included), then a signed ``snapshot_trailer`` whose ``sha256`` covers every byte before it.
    ``count``, ``max_version`` and ``digest`` follow the manifest rules (digest over non-erased)."""
    import gzip

    body = bytearray()

    def written() -> Iterator[dict[str, Any]]:
        for state in states:
            line = {k: v for k, v in state.items() if k != "sig"}
            line["kid"] = signer.kid
            body.extend(canonical_json(line) + b"\n")
            yield line

    summary = site_summary(written())  # one pass: each line is summed as it is written
    trailer = signer.sign(
        {
            "type": "snapshot_trailer",
            "site": site,
            "issued_at": issued_at,
            "count": summary.count,
            "max_version": summary.max_version,
            "digest": summary.digest,
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    )
    return gzip.compress(bytes(body) + canonical_json(trailer) + b"\n", compresslevel=6)


def read_snapshot(
    data: bytes, verifier: Verifier, site: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Verify a snapshot whole and return (trailer, states). Raises ContractError/SignatureError
    for a truncated, tampered, wrongly signed or other-site snapshot; nothing is returned then."""
    trailer, body = verify_snapshot(data, verifier, site)
    return trailer, [loads_bounded(line) for line in body.splitlines() if line]


def verify_snapshot(data: bytes, verifier: Verifier, site: str) -> tuple[dict[str, Any], bytes]:
    """As :func:`read_snapshot`, returning the verified JSON Lines body unparsed."""
    import gzip
    import zlib

    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ContractError("snapshot is not valid gzip (truncated?)") from exc
    if not raw.endswith(b"\n"):
        raise ContractError("snapshot is truncated")
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    body, trailer_line = raw[:cut], raw[cut:]
    try:
        trailer_obj = loads_bounded(trailer_line)
    except PayloadError as exc:
        raise ContractError(f"snapshot trailer: {exc}") from exc
    if not isinstance(trailer_obj, dict):
        raise ContractError("snapshot trailer is not an object")
    trailer = verifier.verify(trailer_obj, "snapshot_trailer")
    try:
        check_site_summary(trailer, "snapshot_trailer")
    except ContractError as exc:
        raise ContractError(f"snapshot trailer: {exc}") from exc
    if trailer.get("site") != site:
        raise ContractError(f"snapshot is for site {trailer.get('site')!r}, not {site!r}")
    if hashlib.sha256(body).hexdigest() != trailer.get("sha256"):
        raise ContractError("snapshot body does not match its signed sha256")
    return trailer, body
