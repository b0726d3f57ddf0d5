"""The in-memory member index: the only thing the hot path reads.

A million members must fit in a Pi Zero's memory and never stall the loop, so the index holds no
Python object per member: each member is a slot, one fixed-width record in one buffer (version,
validity, an interned *profile* of the fields many members share: status, role, plan, schedule,
zones, daily limit; where its id, card keys and qr key sit in shared byte buffers), read by one
``struct`` call, and two open-addressing tables find a slot by card key or by id (see
:class:`_Table`). A lookup makes one :class:`~gated.policy.decide.Member` for the decision to
read; nothing keeps it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import itertools
import json
import operator
import sqlite3
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

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


# --- the compact index ------------------------------------------------------------------------

# A member's profile: (status, role, plan, schedule, zones, daily_limit), the fields many members
# share, interned once for the process (every index, and the writer's thread, use the same ids).
Profile = tuple[str, str, str | None, tuple[Window, ...], frozenset[str], int | None]
_profile_ids: dict[Profile, int] = {}
_profiles: list[Profile] = []
_profile_erased: list[bool] = []
# Raw column values → profile id, so a row's schedule and zones text is decoded once per profile.
_profile_by_text: dict[tuple[Any, ...], int] = {}
# The load's profile column (a JSON array of the six) → profile id.
_profile_by_json: dict[str, int] = {}
_profile_lock = threading.Lock()  # the writer's thread and the loop both intern


def _intern_profile(profile: Profile) -> int:
    pid = _profile_ids.get(profile)
    if pid is None:
        with _profile_lock:
            pid = _profile_ids.get(profile)
            if pid is None:
                pid = len(_profiles)
                _profiles.append(profile)
                _profile_erased.append(profile[0] == "erased")
                _profile_ids[profile] = pid
    return pid


def _profile_of_row(
    status: str, role: str, plan: Any, schedule: str, zones: str, limit: Any
) -> int:
    text = (status, role, plan, schedule, zones, limit)
    pid = _profile_by_text.get(text)
    if pid is None:
        pid = _intern_profile(
            (
                sys.intern(status),
                sys.intern(role),
                _intern_str(plan),
                _schedule(schedule),
                _zones(zones),
                limit,
            )
        )
        _profile_by_text[text] = pid
    return pid


# What the writer's thread makes of a row for the loop to put: (member_id, version, profile id,
# valid_from, valid_until, card keys, qr_key).
Record = tuple[str, int, int, float | None, float | None, bytes, bytes | None]


def record_from_row(row: tuple[Any, ...]) -> Record:
    """Index columns (:data:`MEMBER_COLUMNS` order) → a :data:`Record`."""
    (member_id, version, status, role, valid_from, valid_until, plan, schedule, zones, creds,
     qr_key, daily_limit) = row  # fmt: skip
    pid = _profile_of_row(status, role, plan, schedule, zones, daily_limit)
    return (member_id, version, pid, valid_from, valid_until, creds or b"", qr_key)


def record_of(member: Member) -> Record:
    """A :class:`Member` (as tests and tools build them) → a :data:`Record`."""
    pid = _intern_profile(
        (
            member.status,
            member.role,
            member.plan,
            member.schedule,
            member.zones,
            member.daily_limit,
        )
    )
    return (member.member_id, member.version, pid, member.valid_from, member.valid_until,
            member.credentials, member.qr_key)  # fmt: skip


# Validity times: whole Unix seconds in 32 bits (to 2106); null and anything else (a fraction,
# before 1970) are marked and kept exactly in a small side dict.
_NO_TIME = 0xFFFFFFFF
_EXACT_TIME = 0xFFFFFFFE

# A slot's record, read whole by one unpack_from: version, profile id, valid_from, valid_until
# (time codes), id offset and length in the id buffer, first card key entry and key count, qr_key
# entry (-1: none). 35 bytes, little-endian and unaligned on every machine.
SLOT = struct.Struct("<QIIIIBIHi")
_SLOT_SIZE = SLOT.size
_FROM_AT, _UNTIL_AT, _ID_AT = 12, 16, 20  # byte offsets of fields written or read alone
_unpack_slot = SLOT.unpack_from
_pack_slot = SLOT.pack
_pack_slot_into = SLOT.pack_into
_unpack_version = struct.Struct("<Q").unpack_from
# The head of a record, what decide() reads (version, profile id, valid_from, valid_until): the
# badge's lookup makes four numbers, not nine (~0.1 µs).
_unpack_policy = struct.Struct("<QIII").unpack_from
_VERSION_COLUMN = struct.Struct(f"<Q{_SLOT_SIZE - 8}x")  # a record's version alone
_unpack_id = struct.Struct("<IB").unpack_from
_pack_u32_into = struct.Struct("<I").pack_into
# A card key entry: the 32-byte key, then the slot it was written for.
KEY_ENTRY = struct.Struct("<32sI")
_KEY_SIZE = KEY_ENTRY.size
_pack_key_entry = KEY_ENTRY.pack
_unpack_key_slot = struct.Struct("<I").unpack_from

# The columns :meth:`MemberIndex.load_table` reads, encoded by SQLite: ids as bytes, times as
# 32-bit codes (the exact values of the rare others are read after), and each member's digest
# input ("member_id:version", as :func:`digest_term` hashes it).
_TIME_CODE = (
    "CASE WHEN {0} IS NULL THEN 4294967295 WHEN {0} >= 0 AND {0} < 4294967294 AND "
    "{0} = CAST({0} AS INTEGER) THEN CAST({0} AS INTEGER) ELSE 4294967294 END"
)
_LOAD_SQL = (
    "SELECT CAST(member_id AS BLOB), version, "
    "json_array(status, role, plan, schedule, zones, daily_limit), "
    f"({_TIME_CODE.format('valid_from')}) << 32 | ({_TIME_CODE.format('valid_until')}), "
    "coalesce(credentials, x''), qr_key, CAST(member_id || ':' || version AS BLOB) FROM members"
)
_EXACT_TIMES_SQL = (
    f"SELECT member_id, CASE WHEN ({_TIME_CODE.format('valid_from')}) = 4294967294 "
    f"THEN valid_from END, CASE WHEN ({_TIME_CODE.format('valid_until')}) = 4294967294 "
    f"THEN valid_until END FROM members WHERE ({_TIME_CODE.format('valid_from')}) = 4294967294 "
    f"OR ({_TIME_CODE.format('valid_until')}) = 4294967294"
)
_HIGH_WORD = (32).__rrshift__  # x >> 32 (SQLite's 64 bits are signed: masked after)
_LOW_WORD = (0xFFFFFFFF).__and__
_MINUS_ONE = (-1).__add__
_FIVE_BITS = 5
_sha256_digest = operator.methodcaller("digest")
_term_from_digest = functools.partial(int.from_bytes, byteorder="big")

# Member(*fields) without the Python-level __new__ a named tuple's constructor runs (~0.5 µs).
_new_member: Callable[[type[Member], tuple[Any, ...]], Member] = tuple.__new__

_NOT_FOUND: tuple[int, Member | None] = (-1, None)
_EMPTY = -1  # a table cell never used
_GONE = -2  # a cell whose entry was removed (probing goes on past it)
# Old-table cells moved per change while a table grows: ~16 cells are ~3 µs, so a slice of 32
# changes stays near 0.1 ms, and a growth finishes long before the new table half fills.
MIGRATE_STEP = 16
_MASK64 = (1 << 64) - 1

# The tables' hashes are the same in every process (Python's own ``hash`` of bytes is salted per
# process), so a saved index image (gated.cache.image) can keep its tables as they are. A card
# key is an HMAC-SHA256 output, uniformly random already: its first bytes, read as a
# little-endian number, pick its cell (~0.08 µs against ~0.2 µs for a CRC-32 and a mix, on the
# hot path). Member ids are often sequential and of any length: CRC-32 of their UTF-8 bytes,
# spread by a multiplicative (Fibonacci) mix so its low bits, which pick the cell, depend on
# every input bit. Keys made by anything but the HMAC (tools, tests) must be as random, or they
# share cells and the probes grow.
_crc32 = zlib.crc32
_FIB = 0x9E3779B97F4A7C15
_from_bytes = int.from_bytes


def key_hash(key: bytes | bytearray | memoryview) -> int:
    """The table hash of a 32-byte card key: its first bytes (see above)."""
    return _from_bytes(key, "little") & _MASK64


def table_hash(raw: bytes | bytearray | memoryview) -> int:
    """The table hash of a member id's UTF-8 bytes."""
    return (_crc32(raw) * _FIB >> 32) & 0xFFFFFFFF


class _Table:
    """Open addressing with linear probing: a hash → an entry number; the index keeps the keys
    and checks each candidate's full key (``matches``).

    It grows by doubling before it is half full, incrementally: the old table stays readable and
    :data:`MIGRATE_STEP` of its cells move to the new one with each change (:meth:`step`), so
    no call ever rehashes a million entries while a badge waits. Lookups try the new table, then
    the old one while it is still being emptied.
    """

    __slots__ = ("cells", "cursor", "filled", "hash_of", "live", "old")

    def __init__(self, capacity: int, hash_of: Callable[[int], int]) -> None:
        self.cells = self._cells(capacity)
        self.filled = 0  # cells of ``cells`` not _EMPTY
        self.live = 0  # entries in both tables
        self.old: array[int] | None = None
        self.cursor = 0
        self.hash_of = hash_of  # an entry's hash, for moving it

    @staticmethod
    def _cells(entries: int) -> array[int]:
        size = 8
        while size < 2 * entries + 2:
            size <<= 1
        return array("i", [_EMPTY]) * size

    def find(self, h: int, key: Any, matches: Callable[[int, Any], bool]) -> int:
        """The entry for ``key`` (hash ``h``), or -1."""
        cells = self.cells
        mask = len(cells) - 1
        i = h & mask
        while (e := cells[i]) != _EMPTY:
            if e >= 0 and matches(e, key):
                return e
            i = (i + 1) & mask
        old = self.old
        if old is not None:
            mask = len(old) - 1
            i = h & mask
            while (e := old[i]) != _EMPTY:
                if e >= 0 and matches(e, key):
                    return e
                i = (i + 1) & mask
        return -1

    def add(self, h: int, entry: int) -> None:
        """Add an entry (the caller has removed any entry with the same key)."""
        if 2 * (self.filled + 1) > len(self.cells):
            self._grow()
        self._place(h, entry)
        self.live += 1

    def _place(self, h: int, entry: int) -> None:
        cells = self.cells
        mask = len(cells) - 1
        i = h & mask
        while (e := cells[i]) >= 0:
            i = (i + 1) & mask
        if e == _EMPTY:
            self.filled += 1
        cells[i] = entry

    def remove(self, h: int, entry: int) -> None:
        """Remove an entry that is in the table."""
        for cells in (self.cells, self.old):
            if cells is None:
                break
            mask = len(cells) - 1
            i = h & mask
            while (e := cells[i]) != _EMPTY:
                if e == entry:
                    cells[i] = _GONE
                    self.live -= 1
                    return
                i = (i + 1) & mask
        raise KeyError(entry)

    def _grow(self) -> None:
        if self.old is not None:
            self.step(len(self.old))  # a growth before the last one ended (rare): end it now
        self.old = self.cells
        self.cells = self._cells(max(self.live, 1) * 2)
        self.filled = 0
        self.cursor = 0

    def step(self, cells: int = MIGRATE_STEP) -> None:
        """Move the next ``cells`` cells of the old table, if a growth is under way."""
        old = self.old
        if old is None:
            return
        end = min(self.cursor + cells, len(old))
        hash_of = self.hash_of
        for i in range(self.cursor, end):
            e = old[i]
            if e >= 0:
                old[i] = _GONE
                self._place(hash_of(e), e)
        self.cursor = end
        if end == len(old):
            self.old = None

    def entries(self) -> Iterator[int]:
        for cells in (self.cells, self.old):
            if cells is not None:
                yield from (e for e in cells if e >= 0)


class MemberIndex:
    """Members by card key and by id, with the site digest kept up to date in O(1) per change.

    Each member id ever seen has a slot: one :data:`SLOT` record in ``_slots``, read whole by one
    ``unpack_from`` (a random member's nine fields in nine arrays were a cache miss each). Each
    card key written has a :data:`KEY_ENTRY` in ``_keys``: the key and the slot that holds it.
    Erased members keep their slot as tombstones (no card keys) so their version is never
    forgotten; they are not counted and not in the digest. ``hash_mask`` is for tests: 0 sends
    every key and id to the same cell, so each lookup walks a chain of collisions.
    """

    __slots__ = (
        "_digest", "_exact_from", "_exact_until", "_hash_mask", "_idbuf", "_ids", "_keys",
        "_ktab", "_qrbuf", "_slots", "by_id", "by_key", "changes", "count", "generation",
        "max_version", "qr_held",
    )  # fmt: skip

    def __init__(self, capacity: int = 0, *, hash_mask: int = _MASK64) -> None:
        self._hash_mask = hash_mask
        self._slots = bytearray()  # one SLOT record per member id ever seen
        self._exact_from: dict[int, float] = {}
        self._exact_until: dict[int, float] = {}
        self._idbuf = bytearray()
        self._qrbuf = bytearray()
        self._keys = bytearray()  # one KEY_ENTRY per card key written
        self._ids = _Table(capacity, self._id_hash_of)
        self._ktab = _Table(capacity, self._key_hash_of)
        self.by_key = ByKey(self)
        self.by_id = ById(self)
        self.count = 0
        self.max_version = 0
        self.qr_held = 0  # slots with a qr_key
        self._digest = 0
        # The cache's member generation (store.py) this index holds every row of, once loaded.
        self.generation = 0
        # Calls to put, counted before each changes anything: a reader on another thread (the
        # image writer) that sees the same count before and after its copy copied no half change.
        self.changes = 0

    # -- hashing and key checks ----------------------------------------------------------------

    def _id_hash_of(self, slot: int) -> int:
        off, n = _unpack_id(self._slots, slot * _SLOT_SIZE + _ID_AT)
        return table_hash(self._idbuf[off : off + n]) & self._hash_mask

    def _key_hash_of(self, entry: int) -> int:
        off = entry * _KEY_SIZE
        return key_hash(self._keys[off : off + 32]) & self._hash_mask

    def _key_matches(self, entry: int, key: bytes) -> bool:
        return self._keys.startswith(key, entry * _KEY_SIZE)

    def _slot_of_entry(self, entry: int) -> int:
        slot: int = _unpack_key_slot(self._keys, entry * _KEY_SIZE + 32)[0]
        return slot

    # -- lookups ---------------------------------------------------------------------------------

    def slot_of_key(self, key: bytes) -> int:
        """The slot holding card ``key`` (32 bytes), or -1. The hot path: the probe is written
        out here rather than through :meth:`_Table.find` (a call less per cell, ~0.5 µs)."""
        if len(key) != 32:
            return -1
        table = self._ktab
        keys = self._keys
        h = _from_bytes(key, "little") & self._hash_mask
        cells = table.cells
        while True:
            mask = len(cells) - 1
            i = h & mask
            while (e := cells[i]) != _EMPTY:
                # startswith at an offset compares in place (a slice would copy the key first).
                if e >= 0 and keys.startswith(key, e * _KEY_SIZE):
                    slot: int = _unpack_key_slot(keys, e * _KEY_SIZE + 32)[0]
                    return slot
                i = (i + 1) & mask
            if cells is table.old or table.old is None:
                return -1
            cells = table.old

    def slot_of_id(self, member_id: str) -> int:
        """The slot of a member id (tombstones included), or -1. The sync asks this of every
        state it receives: the probe is written out as in :meth:`slot_of_key`."""
        raw = member_id.encode()
        n = len(raw)
        table = self._ids
        idbuf, slots = self._idbuf, self._slots
        h = table_hash(raw) & self._hash_mask
        cells = table.cells
        while True:
            mask = len(cells) - 1
            i = h & mask
            while (e := cells[i]) != _EMPTY:
                if e >= 0:
                    off, length = _unpack_id(slots, e * _SLOT_SIZE + _ID_AT)
                    if length == n and idbuf.startswith(raw, off):
                        return e
                i = (i + 1) & mask
            if cells is table.old or table.old is None:
                return -1
            cells = table.old

    def member(self, slot: int, key: bytes | None = None) -> Member:
        """The record a decision reads, made for this lookup: a tuple built in C (see
        :class:`~gated.policy.decide.Member`). ``key`` is the card key the slot was found by;
        a member with that one card gets it as ``credentials`` instead of a copy."""
        version, pid, vf, vu, off, length, kstart, n, q = _unpack_slot(
            self._slots, slot * _SLOT_SIZE
        )
        status, role, plan, schedule, zones, limit = _profiles[pid]
        if n != 1 or key is None:
            key = self._card_keys(kstart, n)
        # Whole seconds as ints (they compare with the float ``now`` as the same number).
        return _new_member(
            Member,
            (
                self._idbuf[off : off + length].decode(),
                version,
                status,
                role,
                vf if vf < _EXACT_TIME else self._time(vf, self._exact_from, slot),
                vu if vu < _EXACT_TIME else self._time(vu, self._exact_until, slot),
                plan,
                schedule,
                zones,
                key,
                None if q < 0 else bytes(self._qrbuf[q << 5 : (q << 5) + 32]),
                limit,
            ),
        )

    def _card_keys(self, start: int, n: int) -> bytes:
        """The ``n`` card keys from entry ``start``, concatenated."""
        keys = self._keys
        return b"".join(
            keys[off : off + 32]
            for off in range(start * _KEY_SIZE, (start + n) * _KEY_SIZE, _KEY_SIZE)
        )

    def member_of_key(self, key: bytes) -> Member | None:
        """The member holding card ``key``, or None: the hot path's lookup, in one call (the
        probe of :meth:`slot_of_key` written out again: a call less, ~0.1 µs)."""
        if len(key) != 32:
            return None
        table = self._ktab
        keys = self._keys
        h = _from_bytes(key, "little") & self._hash_mask
        cells = table.cells
        while True:
            mask = len(cells) - 1
            i = h & mask
            while (e := cells[i]) != _EMPTY:
                if e >= 0 and keys.startswith(key, e * _KEY_SIZE):
                    return self.member(_unpack_key_slot(keys, e * _KEY_SIZE + 32)[0], key)
                i = (i + 1) & mask
            if cells is table.old or table.old is None:
                return None
            cells = table.old

    def card_lookup(self, key: bytes) -> tuple[int, Member | None]:
        """The hot path's lookup: (the slot holding card ``key``, the member as ``decide()``
        reads it), or (-1, None). ``decide()`` reads neither a member's id nor its qr key, so this
        record leaves them out ("" and None): decoding the id is a cache miss and two objects a
        badge. ``credentials`` is ``key``. :meth:`member` of the slot makes the whole record,
        once the door has been driven. The probe is :meth:`slot_of_key`'s, written out."""
        if len(key) != 32:
            return _NOT_FOUND
        table = self._ktab
        keys = self._keys
        h = _from_bytes(key, "little") & self._hash_mask
        cells = table.cells
        while True:
            mask = len(cells) - 1
            i = h & mask
            while (e := cells[i]) != _EMPTY:
                if e >= 0 and keys.startswith(key, e * _KEY_SIZE):
                    slot: int = _unpack_key_slot(keys, e * _KEY_SIZE + 32)[0]
                    version, pid, vf, vu = _unpack_policy(self._slots, slot * _SLOT_SIZE)
                    status, role, plan, schedule, zones, limit = _profiles[pid]
                    # _time(), written out: most members have no valid_from, and a call for it
                    # was ~7% of a badge's lookup (cachegrind)
                    valid_from = (
                        vf
                        if vf < _EXACT_TIME
                        else None
                        if vf == _NO_TIME
                        else self._exact_from[slot]
                    )
                    valid_until = (
                        vu
                        if vu < _EXACT_TIME
                        else None
                        if vu == _NO_TIME
                        else self._exact_until[slot]
                    )
                    return slot, _new_member(
                        Member,
                        (
                            "",
                            version,
                            status,
                            role,
                            valid_from,
                            valid_until,
                            plan,
                            schedule,
                            zones,
                            key,
                            None,
                            limit,
                        ),
                    )
                i = (i + 1) & mask
            if cells is table.old or table.old is None:
                return _NOT_FOUND
            cells = table.old

    @staticmethod
    def _time(value: int, exact: dict[int, float], slot: int) -> float | None:
        if value < _EXACT_TIME:
            return value
        return None if value == _NO_TIME else exact[slot]

    def version_of(self, member_id: str) -> int:
        """The highest version this gate holds for a member id (0 if never seen)."""
        slot = self.slot_of_id(member_id)
        if slot < 0:
            return 0
        version: int = _unpack_version(self._slots, slot * _SLOT_SIZE)[0]
        return version

    @property
    def digest(self) -> str:
        return digest_hex(self._digest)

    # -- changes ---------------------------------------------------------------------------------

    @staticmethod
    def _time_code(exact: dict[int, float], slot: int, value: float | None) -> int:
        """A validity time's 32-bit code, keeping an exact value aside for ``slot``."""
        if value is None:
            code = _NO_TIME
        elif 0 <= value < _EXACT_TIME and value == int(value):
            code = int(value)
        else:
            exact[slot] = value
            return _EXACT_TIME
        exact.pop(slot, None)
        return code

    def put(self, member: Member | Record, term: int | None = None, *, force: bool = False) -> bool:
        """Apply a record if newer than what is held; True if it changed the index. ``term`` is
        the member's :func:`digest_term` if the caller made it already (off the loop). ``force``
        applies it whatever its version: the row as the cache holds it now (a start bringing an
        older image up to the rows)."""
        rec = record_of(member) if isinstance(member, Member) else member
        member_id, version, pid, valid_from, valid_until, creds, qr_key = rec
        self.changes += 1
        self._ids.step()
        self._ktab.step()
        slot = self.slot_of_id(member_id)
        if slot >= 0:
            held, old_pid, _, _, idoff, idlen, kstart, kcount, q = _unpack_slot(
                self._slots, slot * _SLOT_SIZE
            )
            if version <= held and not force:
                return False
            keys_held = self._holds_all(slot, kstart, kcount, creds)
            if not keys_held:
                self._drop_keys(slot, kstart, kcount)
            if not _profile_erased[old_pid]:
                self.count -= 1
                self._digest ^= digest_term(member_id, held)
        else:
            slot, idoff, idlen = self._new_slot(member_id)
            kstart, kcount, q = len(self._keys) // _KEY_SIZE, 0, -1
            keys_held = not creds
        if _profile_erased[pid]:
            if keys_held and kcount:
                self._drop_keys(slot, kstart, kcount)  # a tombstone holds no card
            kcount = 0
        else:
            self.count += 1
            self._digest ^= digest_term(member_id, version) if term is None else term
            if not keys_held:
                kstart, kcount = self._add_keys(slot, kstart, kcount, creds)
        _pack_slot_into(
            self._slots,
            slot * _SLOT_SIZE,
            version,
            pid,
            self._time_code(self._exact_from, slot, valid_from),
            self._time_code(self._exact_until, slot, valid_until),
            idoff,
            idlen,
            kstart,
            kcount,
            self._qr_entry(q, qr_key),
        )
        if version > self.max_version:
            self.max_version = version
        return True

    def remove(self, member_id: str) -> bool:
        """Take a member id out of the index altogether (its row was deleted from the cache, as
        only a technician does: the sync keeps tombstones). Its slot stays unused until the next
        start from the rows. True if it was held."""
        slot = self.slot_of_id(member_id)
        if slot < 0:
            return False
        self.changes += 1
        at = slot * _SLOT_SIZE
        held, pid, _, _, idoff, _, kstart, kcount, q = _unpack_slot(self._slots, at)
        self._drop_keys(slot, kstart, kcount)
        if not _profile_erased[pid]:
            self.count -= 1
            self._digest ^= digest_term(member_id, held)
        if q >= 0:
            self.qr_held -= 1
        self._exact_from.pop(slot, None)
        self._exact_until.pop(slot, None)
        self._ids.remove(table_hash(member_id.encode()) & self._hash_mask, slot)
        # An unused slot: no id (ids are never empty), no cards, version 0.
        _pack_slot_into(self._slots, at, 0, pid, _NO_TIME, _NO_TIME, idoff, 0, kstart, 0, -1)
        return True

    def recount_max_version(self) -> None:
        """Set ``max_version`` to the highest version held (after :meth:`remove`, or a forced
        put that lowered one: what a build from the rows would find)."""
        self.max_version = max((v for (v,) in _VERSION_COLUMN.iter_unpack(self._slots)), default=0)

    def _new_slot(self, member_id: str) -> tuple[int, int, int]:
        """A slot for a new member id (its record is filled by :meth:`put`): (slot, id offset,
        id length)."""
        raw = member_id.encode()
        if len(raw) > 255:
            raise ContractError("member id longer than 255 bytes")
        slot = len(self._slots) // _SLOT_SIZE
        idoff = len(self._idbuf)
        self._idbuf += raw
        # Written now, for the id table to find the id while it grows.
        self._slots += SLOT.pack(0, 0, _NO_TIME, _NO_TIME, idoff, len(raw), 0, 0, -1)
        self._ids.add(table_hash(raw) & self._hash_mask, slot)
        return slot, idoff, len(raw)

    def _qr_entry(self, q: int, qr_key: bytes | None) -> int:
        """The slot's qr_key entry after writing ``qr_key`` over entry ``q`` (-1: none)."""
        if qr_key is None:
            if q >= 0:
                self.qr_held -= 1  # its 32 bytes stay unused until the next start
            return -1
        if q >= 0:
            self._qrbuf[q * 32 : q * 32 + 32] = qr_key
            return q
        self.qr_held += 1
        self._qrbuf += qr_key
        return len(self._qrbuf) // 32 - 1

    def _holds_all(self, slot: int, start: int, n: int, creds: bytes) -> bool:
        """Whether the slot's card keys are ``creds`` already and each still leads to the slot
        (most updates change a status or a date, not a card: the keys then stay as they are)."""
        if n * 32 != len(creds):
            return False
        keys = self._keys
        for i in range(n):
            key = creds if n == 1 else creds[i * 32 : i * 32 + 32]
            if not keys.startswith(key, (start + i) * _KEY_SIZE) or self.slot_of_key(key) != slot:
                return False
        return True

    def _drop_keys(self, slot: int, start: int, n: int) -> None:
        """Take the slot's card keys out of the table, each only if this slot still holds it (a
        later member may have been given the same card)."""
        table = self._ktab
        keys = self._keys
        for entry in range(start, start + n):
            key = bytes(keys[entry * _KEY_SIZE : entry * _KEY_SIZE + 32])
            h = key_hash(key) & self._hash_mask
            found = table.find(h, key, self._key_matches)
            if found >= 0 and self._slot_of_entry(found) == slot:
                table.remove(h, found)

    def _add_keys(self, slot: int, start: int, held: int, creds: bytes) -> tuple[int, int]:
        """Write the slot's card keys (over its ``held`` old ones if they fit, else at the end)
        and put each in the table, taking it from any other member that held it (the newest
        wins). Returns the slot's first entry and count."""
        n = len(creds) // 32
        if n == 0:
            return start, 0
        entries = b"".join(KEY_ENTRY.pack(creds[i * 32 : i * 32 + 32], slot) for i in range(n))
        if n <= held:
            self._keys[start * _KEY_SIZE : (start + n) * _KEY_SIZE] = entries
        else:  # the old entries stay unused until the next start
            start = len(self._keys) // _KEY_SIZE
            self._keys += entries
        table = self._ktab
        for entry in range(start, start + n):
            key = creds[(entry - start) * 32 : (entry - start + 1) * 32]
            h = key_hash(key) & self._hash_mask
            found = table.find(h, key, self._key_matches)
            if found >= 0:
                table.remove(h, found)
            table.add(h, entry)
        return start, n

    def load(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Put member rows (:data:`MEMBER_COLUMNS` order) one by one: for tests and tools; the
        gate starts with :meth:`load_table`."""
        for row in rows:
            self.put(record_from_row(row))

    def load_table(self, conn: sqlite3.Connection, chunk: int = 4096) -> None:
        """Load every member row of the cache into this empty index at start-up, a chunk of
        rows a column at a time: SQLite encodes ids, times and digest inputs, and the records
        and the digest are made by C-level ``map`` calls, leaving only the two tables' probes
        to Python (~10x faster than a ``put`` a row)."""
        cur = conn.execute(_LOAD_SQL)
        while rows := cur.fetchmany(chunk):
            self._load_chunk(rows)
        self._ids.step(len(self._ids.old or ()))
        self._ktab.step(len(self._ktab.old or ()))
        for member_id, valid_from, valid_until in conn.execute(_EXACT_TIMES_SQL):
            at = self.slot_of_id(member_id) * _SLOT_SIZE
            if valid_from is not None:
                self._exact_from[at // _SLOT_SIZE] = valid_from
                _pack_u32_into(self._slots, at + _FROM_AT, _EXACT_TIME)
            if valid_until is not None:
                self._exact_until[at // _SLOT_SIZE] = valid_until
                _pack_u32_into(self._slots, at + _UNTIL_AT, _EXACT_TIME)

    def _load_chunk(self, rows: list[tuple[Any, ...]]) -> None:
        ids, versions, profiles, validity, creds, qrs, terms = zip(*rows, strict=True)
        n = len(rows)
        first = len(self._slots) // _SLOT_SIZE
        pids = list(map(_profile_by_json.get, profiles))
        if None in pids:
            for i, pid in enumerate(pids):
                if pid is None:
                    pids[i] = _profile_by_json[profiles[i]] = _profile_of_row(
                        *json.loads(profiles[i])
                    )
        erased = list(map(_profile_erased.__getitem__, pids))  # type: ignore[arg-type]
        live = list(map(operator.not_, erased))
        idlens = list(map(len, ids))
        idoffs = itertools.accumulate(idlens[:-1], initial=len(self._idbuf))
        self._idbuf += b"".join(ids)
        # A qr_key's entry is the count of keys up to and including it, less one; no key: -1
        # (as (entry + 1) * has - 1, so that C-level maps do the work).
        has_qr = list(map(bool, qrs))
        upto = itertools.accumulate(has_qr, initial=len(self._qrbuf) // 32)
        next(upto)
        qr_entries = map(_MINUS_ONE, map(operator.mul, upto, has_qr))
        self._qrbuf += b"".join(itertools.compress(qrs, has_qr))
        self.qr_held += sum(has_qr)
        held = list(map(operator.mul, creds, live))  # a tombstone's keys: b"" (bytes * False)
        counts = list(map(_FIVE_BITS.__rrshift__, map(len, held)))
        key_first = len(self._keys) // _KEY_SIZE
        self._slots += b"".join(
            map(
                _pack_slot,
                versions,
                pids,
                map(_LOW_WORD, map(_HIGH_WORD, validity)),
                map(_LOW_WORD, validity),
                idoffs,
                idlens,
                itertools.accumulate(counts[:-1], initial=key_first),
                counts,
                qr_entries,
            )
        )
        slot_numbers = range(first, first + n)
        if max(counts) <= 1:
            cards: Iterable[bytes] = itertools.compress(held, counts)
            holders: Iterable[int] = itertools.compress(slot_numbers, counts)
        else:
            cards = (c[k : k + 32] for c in held for k in range(0, len(c), 32))
            holders = itertools.chain.from_iterable(map(itertools.repeat, slot_numbers, counts))
        self._keys += b"".join(map(_pack_key_entry, cards, holders))
        self.count += sum(live)
        self.max_version = max(self.max_version, max(versions))
        self._digest = functools.reduce(
            operator.xor,
            map(
                _term_from_digest,
                map(_sha256_digest, map(hashlib.sha256, itertools.compress(terms, live))),
            ),
            self._digest,
        )
        # The tables: ids are unique (a UNIQUE column) so each goes to the first free cell; a
        # card key held twice goes to the later row, as :meth:`put` in row order would do.
        table = self._ids
        if 2 * (table.filled + n) > len(table.cells):
            table._grow()
            table.step(len(table.old or ()))
        cells = table.cells
        mask = len(cells) - 1
        hmask = self._hash_mask
        slot = first
        for raw in ids:
            i = ((_crc32(raw) * _FIB >> 32) & 0xFFFFFFFF) & hmask & mask
            while cells[i] >= 0:
                i = (i + 1) & mask
            cells[i] = slot
            slot += 1
        table.filled += n
        table.live += n
        table = self._ktab
        added = sum(counts)
        if 2 * (table.filled + added) > len(table.cells):
            table._grow()
            table.step(len(table.old or ()))
        cells = table.cells
        mask = len(cells) - 1
        keys = self._keys
        entry = key_first
        for c in held:
            for k in range(0, len(c), 32):
                key = c if len(c) == 32 else c[k : k + 32]
                i = _from_bytes(key, "little") & hmask & mask
                while (e := cells[i]) >= 0:
                    if keys.startswith(key, e * _KEY_SIZE):
                        break
                    i = (i + 1) & mask
                if e < 0:
                    table.filled += 1
                    table.live += 1
                cells[i] = entry
                entry += 1

    def __iter__(self) -> Iterator[Member]:
        return self.by_id.values()

    def __len__(self) -> int:
        return self.count

    def slots(self) -> int:
        """Slots written: member ids held (tombstones included) and removed ones."""
        return len(self._slots) // _SLOT_SIZE

    def holds_slot(self, slot: int) -> bool:
        """Whether the slot holds a member id (not one :meth:`remove` took out)."""
        return bool(_unpack_id(self._slots, slot * _SLOT_SIZE + _ID_AT)[1])

    def key_entries(self) -> int:
        """Card key entries written (those no member holds any more included)."""
        return len(self._keys) // _KEY_SIZE

    def key_at(self, entry: int) -> tuple[bytes, int]:
        """Card key entry ``entry``: (the key, the slot it was written for)."""
        off = entry * _KEY_SIZE
        key, slot = KEY_ENTRY.unpack_from(self._keys, off)
        return key, slot


class ByKey:
    """The index read by card key, as a read-only mapping of key → :class:`Member`."""

    __slots__ = ("_index",)

    def __init__(self, index: MemberIndex) -> None:
        self._index = index

    def get(self, key: bytes, default: Member | None = None) -> Member | None:
        slot = self._index.slot_of_key(key)
        return default if slot < 0 else self._index.member(slot, key)

    def __getitem__(self, key: bytes) -> Member:
        slot = self._index.slot_of_key(key)
        if slot < 0:
            raise KeyError("card key")
        return self._index.member(slot, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._index.slot_of_key(key) >= 0

    def __len__(self) -> int:
        return self._index._ktab.live

    def __iter__(self) -> Iterator[bytes]:
        return (key for key, _ in self.items())

    def items(self) -> Iterator[tuple[bytes, Member]]:
        index = self._index
        for e in list(index._ktab.entries()):
            key, slot = index.key_at(e)
            yield key, index.member(slot)

    def values(self) -> Iterator[Member]:
        return (member for _, member in self.items())


class ById:
    """The index read by member id (tombstones included), as a read-only mapping."""

    __slots__ = ("_index",)

    def __init__(self, index: MemberIndex) -> None:
        self._index = index

    def get(self, member_id: str, default: Member | None = None) -> Member | None:
        slot = self._index.slot_of_id(member_id)
        return default if slot < 0 else self._index.member(slot)

    def __getitem__(self, member_id: str) -> Member:
        slot = self._index.slot_of_id(member_id)
        if slot < 0:
            raise KeyError(member_id)
        return self._index.member(slot)

    def __contains__(self, member_id: object) -> bool:
        return isinstance(member_id, str) and self._index.slot_of_id(member_id) >= 0

    def __len__(self) -> int:
        return self._index._ids.live

    def __iter__(self) -> Iterator[str]:
        return (m.member_id for m in self.values())

    def items(self) -> Iterator[tuple[str, Member]]:
        return ((m.member_id, m) for m in self.values())

    def values(self) -> Iterator[Member]:
        index = self._index
        return (index.member(slot) for slot in range(index.slots()) if index.holds_slot(slot))
