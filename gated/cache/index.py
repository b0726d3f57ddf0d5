"""The in-memory member index: the only thing the hot path reads.

A million members must fit in a Pi's memory and never stall the loop, so a record is a slotted
:class:`~gated.policy.decide.Member`, card keys are raw 32-byte digests, and the values many
members share (statuses, plans, schedules, zone sets) are interned.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import orjson

from gated.contract import (
    MAX_VERSION,
    MEMBER_ID_RE,
    STATUSES,
    ContractError,
    digest_hex,
    digest_term,
    parse_timestamp,
)
from gated.policy.decide import Member, Window, compile_schedule

K = TypeVar("K")
V = TypeVar("V")

_schedules: dict[str, tuple[Window, ...]] = {}
_zone_sets: dict[str, frozenset[str]] = {}


def _intern_str(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


def _schedule(text: str) -> tuple[Window, ...]:
    compiled = _schedules.get(text)
    if compiled is None:
        compiled = _schedules[text] = compile_schedule(json.loads(text))
    return compiled


def _zones(text: str) -> frozenset[str]:
    zones = _zone_sets.get(text)
    if zones is None:
        zones = _zone_sets[text] = frozenset(json.loads(text))
    return zones


_OPTIONAL_TEXT = ("kid", "valid_from", "valid_until", "plan", "qr_key")
_WINDOW_KEYS = {"days", "start", "end"}


def member_row(state: Mapping[str, Any]) -> dict[str, Any]:
    """A MemberState (already verified or trusted) → the columns the cache stores, and the
    member's :func:`digest_term` (``digest_term``, not stored: a SHA-256 made here, in the sync's
    verifier processes, rather than on the daemon's writer thread as each row is applied).

    It checks everything :class:`~gated.contract.MemberState` checks, and more strictly (no
    coercion: ``"5"`` is not a version), without building a model: the sync runs it for every
    state, and the model costs twice the rest of this. Raises ContractError for values the
    gate cannot use (bad hex keys, bad times, wrong types).
    """
    try:
        keys = state.get("credentials") or []
        if not isinstance(keys, list):
            raise TypeError("credentials is not a list")
        credentials = (
            bytes.fromhex(keys[0]) if len(keys) == 1 else b"".join(bytes.fromhex(k) for k in keys)
        )
        qr_key = base64.b64decode(state["qr_key"], validate=True) if state.get("qr_key") else None
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ContractError("credentials must be hex card keys and qr_key base64") from exc
    if len(credentials) % 32 or (qr_key is not None and len(qr_key) != 32):
        raise ContractError("card keys and qr_key must be 32 bytes")
    # The hot path trusts these types; a signed but ill-typed state must stop here, not at a badge.
    version, daily_limit = state.get("version"), state.get("daily_limit")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise ContractError("version must be an integer in 1..2^53")
    if daily_limit is not None and (
        not isinstance(daily_limit, int) or isinstance(daily_limit, bool) or daily_limit < 0
    ):
        raise ContractError("daily_limit must be a non-negative integer or null")
    if state.get("status") not in STATUSES or state.get("role", "member") not in (
        "member",
        "staff",
        None,
    ):
        raise ContractError("unknown status or role")
    member_id = state.get("member_id")
    if not isinstance(member_id, str) or not MEMBER_ID_RE.match(member_id):
        raise ContractError("bad member_id")
    sites = state.get("sites")
    if not isinstance(sites, list) or not all(type(s) is str for s in sites):
        raise ContractError("sites must be a list of strings")
    for field in _OPTIONAL_TEXT:
        if type(state.get(field, "")) not in (str, type(None)):
            raise ContractError(f"{field} must be text or null")
    if type(state.get("issued_at")) is not str:
        raise ContractError("issued_at must be text")
    # Empty schedules and zone lists (any time, every zone: most members) skip their checks and
    # encoding: ~1 µs of the ~6 a state costs here, in the processes every sync waits for.
    schedule = state.get("schedule") or []
    try:
        if schedule and (
            not isinstance(schedule, list)
            or not all(
                type(w) is dict
                and w.keys() == _WINDOW_KEYS
                and type(w["start"]) is str
                and type(w["end"]) is str
                for w in schedule
            )
        ):
            raise ValueError("schedule windows are objects of days, start and end")
        if schedule:
            compile_schedule(schedule)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ContractError("schedule windows need days (mon…sun), start and end as HH:MM") from exc
    zones = state.get("zones") or []
    if zones and (not isinstance(zones, list) or not all(isinstance(z, str) for z in zones)):
        raise ContractError("zones must be a list of strings")
    return {
        "member_id": member_id,
        "version": version,
        "status": state["status"],
        "role": state.get("role") or "member",
        "valid_from": parse_timestamp(state.get("valid_from")),
        "valid_until": parse_timestamp(state.get("valid_until")),
        "plan": state.get("plan"),
        "schedule": orjson.dumps(schedule, option=orjson.OPT_SORT_KEYS).decode()
        if schedule
        else "[]",
        "zones": orjson.dumps(sorted(zones)).decode() if zones else "[]",
        "credentials": credentials,
        "qr_key": qr_key,
        "daily_limit": daily_limit,
        "issued_at": state.get("issued_at"),
        "digest_term": digest_term(member_id, version),
    }


def member_from_row(row: tuple[Any, ...]) -> Member:
    """Columns (member_id, version, status, role, valid_from, valid_until, plan, schedule, zones,
    credentials, qr_key, daily_limit) → the compact record."""
    (member_id, version, status, role, valid_from, valid_until, plan, schedule, zones, creds,
     qr_key, daily_limit) = row  # fmt: skip
    return Member(
        member_id,
        version,
        sys.intern(status),
        sys.intern(role),
        valid_from,
        valid_until,
        _intern_str(plan),
        _schedule(schedule),
        _zones(zones),
        creds or b"",
        qr_key,
        daily_limit,
    )


def card_keys(credentials: bytes) -> list[bytes]:
    """Split concatenated card keys; a single key is returned as the same object."""
    if len(credentials) == 32:
        return [credentials]
    return [credentials[i : i + 32] for i in range(0, len(credentials), 32)]


MEMBER_COLUMNS = (
    "member_id, version, status, role, valid_from, valid_until, plan, schedule, zones, "
    "credentials, qr_key, daily_limit"
)


def member_from_state(state: Mapping[str, Any]) -> Member:
    row = member_row(state)
    return member_from_row(tuple(row[c.strip()] for c in MEMBER_COLUMNS.split(",")))


SHARDS = 256
_SHARD_MASK = SHARDS - 1


class ShardedDict(Generic[K, V]):
    """A dict split in :data:`SHARDS` by the key's hash, so that it never grows all at once.

    A dict doubles its table when it fills, rehashing every entry in one call that holds the GIL:
    5 ms at 87,000 members, in the middle of a snapshot, with a badge waiting. Split in 256, each
    part grows on its own (the slowest of 100,000 inserts took ~0.1 ms, against 2-5 ms), and
    the whole takes no more memory (each part still grows by the same rule). A lookup costs a
    Python call more than a bare dict, ~1 µs; the index's own loops reach the parts directly.
    """

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[K, V]] = [{} for _ in range(SHARDS)]

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._shards[hash(key) & _SHARD_MASK].get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _SHARD_MASK][key]

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) & _SHARD_MASK][key] = value

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & _SHARD_MASK][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _SHARD_MASK]

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __iter__(self) -> Iterator[K]:
        return itertools.chain.from_iterable(self._shards)

    def values(self) -> Iterator[V]:
        return itertools.chain.from_iterable(s.values() for s in self._shards)

    def items(self) -> Iterator[tuple[K, V]]:
        return itertools.chain.from_iterable(s.items() for s in self._shards)


class MemberIndex:
    """Members by card key and by id, with the site digest kept up to date in O(1) per change.

    Erased members stay in ``by_id`` as tombstones (no credentials) so their version is never
    forgotten; they are not counted and not in the digest.
    """

    __slots__ = ("_digest", "by_id", "by_key", "count", "max_version")

    def __init__(self) -> None:
        self.by_key: ShardedDict[bytes, Member] = ShardedDict()
        self.by_id: ShardedDict[str, Member] = ShardedDict()
        self.count = 0
        self.max_version = 0
        self._digest = 0

    def version_of(self, member_id: str) -> int:
        """The highest version this gate holds for a member id (0 if never seen)."""
        member = self.by_id.get(member_id)
        return 0 if member is None else member.version

    @property
    def digest(self) -> str:
        return digest_hex(self._digest)

    def put(self, member: Member, term: int | None = None) -> bool:
        """Apply a record if newer than what is held; True if it changed the index. ``term`` is
        the member's :func:`digest_term` if the caller made it already (off the loop)."""
        member_id = member.member_id
        ids = self.by_id._shards[hash(member_id) & _SHARD_MASK]
        key_shards = self.by_key._shards
        old = ids.get(member_id)
        if old is not None:
            if member.version <= old.version:
                return False
            for key in card_keys(old.credentials):
                shard = key_shards[hash(key) & _SHARD_MASK]
                if shard.get(key) is old:
                    del shard[key]
            if old.status != "erased":
                self.count -= 1
                self._digest ^= digest_term(member_id, old.version)
        ids[member_id] = member
        if member.status != "erased":
            self.count += 1
            self._digest ^= digest_term(member_id, member.version) if term is None else term
            for key in card_keys(member.credentials):
                key_shards[hash(key) & _SHARD_MASK][key] = member
        if member.version > self.max_version:
            self.max_version = member.version
        return True

    def load(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Bulk-load member rows at start-up (unique ids, an empty index): ``put`` without the
        version comparison and removal work, for ~2x faster start with a big site."""
        id_shards = self.by_id._shards
        key_shards = self.by_key._shards
        acc = self._digest
        count = self.count
        max_version = self.max_version
        for row in rows:
            member = member_from_row(row)
            member_id = member.member_id
            id_shards[hash(member_id) & _SHARD_MASK][member_id] = member
            if member.version > max_version:
                max_version = member.version
            if member.status == "erased":
                continue
            count += 1
            acc ^= digest_term(member.member_id, member.version)
            creds = member.credentials
            if len(creds) == 32:
                key_shards[hash(creds) & _SHARD_MASK][creds] = member
            else:
                for key in card_keys(creds):
                    key_shards[hash(key) & _SHARD_MASK][key] = member
        self._digest = acc
        self.count = count
        self.max_version = max_version

    def __iter__(self) -> Iterator[Member]:
        return self.by_id.values()

    def __len__(self) -> int:
        return self.count
