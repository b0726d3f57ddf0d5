"""The compact member index against a plain-dict reference: the same answers for any sequence of
upserts, erasures and lookups, with real hashes and with every key and id forced to collide."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gated.cache.index import MEMBER_COLUMNS, MIGRATE_STEP, MemberIndex, _Table, digest_term
from gated.cache.store import SCHEMA
from gated.contract import digest_hex
from gated.policy.decide import Member

IDS = [f"m_{i}" for i in range(6)] + ["x", "a-very-long-member-id_" + "9" * 40]
KEYS = [bytes([i]) * 32 for i in range(8)] + [b"\x01" * 8 + b"\x02" * 24]  # same first 8 bytes


def random_key(i: int) -> bytes:
    """A card key as random as the HMAC's (the card table takes a key's first bytes as its
    hash): SHA-256 of the number."""
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


TIMES = [None, 0.0, 1_700_000_000.0, 2_208_988_800.0, 1_700_000_000.5, -5.0, 2.0**33]  # 2040: 2.2e9


@dataclass
class Reference:
    """What the index did before it was compact: dicts of whole records."""

    by_id: dict[str, Member] = field(default_factory=dict)
    by_key: dict[bytes, Member] = field(default_factory=dict)
    digest: int = 0
    max_version: int = 0

    def put(self, m: Member) -> bool:
        old = self.by_id.get(m.member_id)
        if old is not None:
            if m.version <= old.version:
                return False
            for i in range(0, len(old.credentials), 32):
                key = old.credentials[i : i + 32]
                if self.by_key.get(key) is old:
                    del self.by_key[key]
            if old.status != "erased":
                self.digest ^= digest_term(old.member_id, old.version)
        self.by_id[m.member_id] = m
        if m.status != "erased":
            self.digest ^= digest_term(m.member_id, m.version)
            for i in range(0, len(m.credentials), 32):
                self.by_key[m.credentials[i : i + 32]] = m
        self.max_version = max(self.max_version, m.version)
        return True


def fields(m: Member | None) -> tuple[object, ...] | None:
    if m is None:
        return None
    creds = b"" if m.status == "erased" else m.credentials
    return (m.member_id, m.version, m.status, m.role, m.valid_from, m.valid_until, m.plan,
            m.schedule, m.zones, creds, m.qr_key, m.daily_limit)  # fmt: skip


members = st.builds(
    Member,
    member_id=st.sampled_from(IDS),
    version=st.integers(1, 30) | st.just(2**53),
    status=st.sampled_from(["active", "erased", "suspended", "frozen"]),
    role=st.sampled_from(["member", "staff"]),
    valid_from=st.sampled_from(TIMES),
    valid_until=st.sampled_from(TIMES),
    plan=st.sampled_from([None, "full", "offpeak"]),
    schedule=st.sampled_from([(), ((31, 540, 960),)]),
    zones=st.sampled_from([frozenset(), frozenset({"gym"})]),
    credentials=st.lists(st.sampled_from(KEYS), max_size=3).map(b"".join),
    qr_key=st.sampled_from([None, b"q" * 32, b"r" * 32]),
    daily_limit=st.sampled_from([None, 0, 2]),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), members),
        st.tuples(st.just("key"), st.sampled_from([*KEYS, b"short"])),
        st.tuples(st.just("id"), st.sampled_from([*IDS, "nobody"])),
    ),
    max_size=80,
)


def check(index: MemberIndex, ref: Reference, sequence: list[tuple[str, object]]) -> None:
    for op, arg in sequence:
        if op == "put":
            assert isinstance(arg, Member)
            assert index.put(arg) == ref.put(arg)
        elif op == "key":
            assert isinstance(arg, bytes)
            assert fields(index.by_key.get(arg)) == fields(ref.by_key.get(arg))
            # The hot path's own lookup (its probe written out, the found key reused).
            assert fields(index.member_of_key(arg)) == fields(ref.by_key.get(arg))
            # The decision's lookup: what decide() reads, the id and qr key left for after.
            slot, seen = index.card_lookup(arg)
            expected = ref.by_key.get(arg)
            if expected is None:
                assert (slot, seen) == (-1, None)
            else:
                assert seen is not None and (seen.member_id, seen.qr_key) == ("", None)
                assert seen._replace(member_id=expected.member_id, qr_key=expected.qr_key,
                                     credentials=expected.credentials) == expected  # fmt: skip
                assert seen.credentials == arg
                assert fields(index.member(slot, seen.credentials)) == fields(expected)
            assert (arg in index.by_key) == (arg in ref.by_key)
        else:
            assert isinstance(arg, str)
            assert fields(index.by_id.get(arg)) == fields(ref.by_id.get(arg))
    live = [m for m in ref.by_id.values() if m.status != "erased"]
    assert (index.count, index.max_version, index.digest) == (
        len(live),
        ref.max_version,
        digest_hex(ref.digest),
    )
    assert {k: fields(m) for k, m in index.by_key.items()} == {
        k: fields(m) for k, m in ref.by_key.items()
    }
    assert {i: fields(m) for i, m in index.by_id.items()} == {
        i: fields(m) for i, m in ref.by_id.items()
    }
    assert len(index.by_key) == len(ref.by_key) and len(index.by_id) == len(ref.by_id)
    for member_id in [*IDS, "nobody"]:
        held = ref.by_id.get(member_id)
        assert index.version_of(member_id) == (held.version if held else 0)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_compact_index_answers_as_the_dict_reference(sequence: list[tuple[str, object]]) -> None:
    check(MemberIndex(), Reference(), sequence)


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from([0, 1, 3]))
def test_same_answers_when_hashes_collide(sequence: list[tuple[str, object]], mask: int) -> None:
    """hash_mask 0 puts every key and id in one probe chain; 1 and 3 in a few."""
    check(MemberIndex(hash_mask=mask), Reference(), sequence)


def test_an_erased_member_holds_no_card_even_one_its_state_names() -> None:
    """A tombstone drops the member's cards, whatever its credentials say: a card of an erased
    member is unknown, and a later member may take it."""
    index = MemberIndex()
    key = random_key(1)
    index.put(Member("m_1", 1, "active", credentials=key))
    index.put(Member("m_1", 2, "erased", credentials=key))
    assert index.member_of_key(key) is None and key not in index.by_key
    assert len(index.by_key) == 0 and index.count == 0 and index.version_of("m_1") == 2
    index.put(Member("m_2", 3, "active", credentials=key))
    assert index.member_of_key(key) == index.by_id["m_2"]


def test_validity_in_2040_and_null_round_trip() -> None:
    index = MemberIndex()
    until_2040 = 2_208_988_800.0  # 2040-01-01T00:00:00Z
    index.put(Member("m_1", 1, "active", valid_from=None, valid_until=until_2040))
    index.put(Member("m_2", 1, "active", valid_from=1.25, valid_until=2.0**40))
    assert (index.by_id["m_1"].valid_from, index.by_id["m_1"].valid_until) == (None, until_2040)
    assert (index.by_id["m_2"].valid_from, index.by_id["m_2"].valid_until) == (1.25, 2.0**40)
    index.put(Member("m_2", 2, "active", valid_from=None, valid_until=None))
    assert (index.by_id["m_2"].valid_from, index.by_id["m_2"].valid_until) == (None, None)


def test_tables_grow_a_step_at_a_time_and_stay_readable() -> None:
    """A table that doubles moves at most MIGRATE_STEP old cells per change: no change rehashes
    everything (a badge would wait behind it), and every member stays reachable by card and id
    while the move is under way."""
    index = MemberIndex()
    growths = 0
    for i in range(20_000):
        table = index._ktab
        before = table.old, table.cursor
        index.put(Member(f"m_{i}", 1, "active", credentials=random_key(i)))
        if table.old is not None:
            if table.old is before[0]:
                assert table.cursor - before[1] <= MIGRATE_STEP
            else:
                growths += 1
                assert table.cursor == 0  # the growth itself moved nothing
            j = i // 2
            assert index.by_key[random_key(j)].member_id == f"m_{j}"
            assert index.by_id[f"m_{j}"].version == 1
    assert growths >= 5
    assert index.count == len(index.by_key) == 20_000


def test_table_growth_with_removals_keeps_every_entry() -> None:
    table = _Table(0, lambda e: e * 7919)
    held: set[int] = set()
    for e in range(5000):
        table.add(e * 7919, e)
        held.add(e)
        if e % 3 == 0:
            table.remove((e // 2) * 7919, e // 2) if e // 2 in held else None
            held.discard(e // 2)
        table.step(MIGRATE_STEP)
    same = lambda entry, key: entry == key  # noqa: E731
    assert all(table.find(e * 7919, e, same) == e for e in held)
    assert table.live == len(held) == sorted(table.entries()).__len__()


SCHEDULES = ["[]", '[{"days":["mon","tue"],"end":"16:00","start":"09:00"}]']
rows = st.lists(
    st.tuples(
        st.sampled_from(IDS),
        st.integers(1, 2**53),
        st.sampled_from(["active", "erased", "suspended"]),
        st.sampled_from(["member", "staff"]),
        st.sampled_from(TIMES),
        st.sampled_from(TIMES),
        st.sampled_from([None, "full", "off\\u001fpeak"]),
        st.sampled_from(SCHEDULES),
        st.sampled_from(["[]", '["gym"]']),
        st.lists(st.sampled_from(KEYS), max_size=3).map(b"".join) | st.none(),
        st.sampled_from([None, b"q" * 32]),
        st.sampled_from([None, 0, 3]),
    ),
    unique_by=lambda r: r[0],
    max_size=len(IDS),
)


@settings(max_examples=100, deadline=None)
@given(rows, st.sampled_from([2**64 - 1, 0]), st.sampled_from([1, 3, 4096]))
def test_start_up_load_equals_putting_each_row(
    table: list[tuple[object, ...]], mask: int, chunk: int
) -> None:
    """load_table (columns encoded by SQLite, chunks filled a column at a time) builds the index
    that putting the same rows in the same order builds: times exact (2040, null, fractions,
    before 1970, past 2106), several cards, a card held twice, tombstones."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    conn.executemany(f"INSERT INTO members ({MEMBER_COLUMNS}) VALUES ({','.join('?' * 12)})", table)
    loaded = MemberIndex(len(table), hash_mask=mask)
    loaded.load_table(conn, chunk)
    expected = MemberIndex(hash_mask=mask)
    expected.load(conn.execute(f"SELECT {MEMBER_COLUMNS} FROM members ORDER BY rowid"))
    assert (loaded.count, loaded.max_version, loaded.digest) == (
        expected.count,
        expected.max_version,
        expected.digest,
    )
    assert dict(loaded.by_id.items()).keys() == dict(expected.by_id.items()).keys()
    for member_id, member in expected.by_id.items():
        assert fields(loaded.by_id[member_id]) == fields(member)
    assert {k: fields(m) for k, m in loaded.by_key.items()} == {
        k: fields(m) for k, m in expected.by_key.items()
    }
    # and it goes on taking changes as any index does
    for member_id in IDS:
        loaded.put(Member(member_id, 2**53 + 1, "active", credentials=KEYS[0]))
    assert loaded.by_key[KEYS[0]].member_id == IDS[-1] and loaded.count == len(IDS)
