"""The member cache: versioned upserts, tombstones, card keys only on disk, group commit,
durability, and nothing committed lost to a kill -9."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.cache.index import MemberIndex, member_from_state
from gated.cache.store import CacheStore, CacheWriter
from gated.contract import ContractError, card_key, erased_state, site_digest
from gated.members import read_members_file

REPO = Path(__file__).resolve().parent.parent
CREDENTIAL_KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
ISSUED = "2026-11-26T08:00:00Z"
TIMEOUT = 10  # seconds to wait on a writer future; a hang fails instead of blocking the run


def state(
    member_id: str, version: int, status: str = "active", uid: str | None = None
) -> dict[str, Any]:
    if status == "erased":
        return erased_state(member_id, ["downtown"], version, ISSUED)
    return {
        "type": "member_state",
        "member_id": member_id,
        "sites": ["downtown"],
        "version": version,
        "status": status,
        "role": "member",
        "valid_from": None,
        "valid_until": None,
        "plan": None,
        "schedule": [],
        "zones": [],
        "credentials": [card_key(CREDENTIAL_KEY, uid or f"04{version:012X}")],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": ISSUED,
    }


def key_of(s: dict[str, Any]) -> bytes:
    return bytes.fromhex(s["credentials"][0])


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = CacheStore(tmp_path / "cache.db")
    yield s
    s.close()


def stored(store: CacheStore) -> dict[str, tuple[int, str]]:
    return {
        m: (v, st)
        for m, v, st in store.conn.execute("SELECT member_id, version, status FROM members")
    }


# --- version ordering -------------------------------------------------------------------------


def test_index_applies_only_newer_versions() -> None:
    index = MemberIndex()
    v2 = state("m_1", 2, uid="04AA")
    assert index.put(member_from_state(v2))
    assert not index.put(member_from_state(state("m_1", 1, "suspended", uid="04AA")))  # older
    assert not index.put(member_from_state(state("m_1", 2, "suspended", uid="04AA")))  # equal
    assert index.by_id["m_1"].status == "active"
    assert index.by_key[key_of(v2)].version == 2

    v3 = state("m_1", 3, uid="04BB")  # a new card replaces the old one
    assert index.put(member_from_state(v3))
    assert key_of(v2) not in index.by_key
    assert index.by_key[key_of(v3)].version == 3
    assert (index.count, index.max_version) == (1, 3)


def test_tombstone_is_never_resurrected_by_an_older_state() -> None:
    index = MemberIndex()
    active = state("m_1", 5, uid="04AA")
    index.put(member_from_state(active))
    index.put(member_from_state(state("m_2", 6)))
    assert index.put(member_from_state(state("m_1", 7, "erased")))
    assert key_of(active) not in index.by_key
    assert index.by_id["m_1"].status == "erased"
    assert index.version_of("m_1") == 7
    assert len(index) == 1
    assert index.digest == site_digest([("m_2", 6)])

    assert not index.put(member_from_state(active))  # the old message comes back: ignored
    assert not index.put(member_from_state(state("m_1", 7, uid="04AA")))
    assert key_of(active) not in index.by_key
    assert index.by_id["m_1"].status == "erased"

    assert index.put(member_from_state(state("m_1", 8, uid="04CC")))  # re-joined for real
    assert len(index) == 2
    assert index.digest == site_digest([("m_1", 8), ("m_2", 6)])


def test_card_moved_to_another_member_stays_with_them() -> None:
    index = MemberIndex()
    index.put(member_from_state(state("m_1", 1, uid="04AA")))
    moved = state("m_2", 2, uid="04AA")  # the front desk gave the card to m_2
    index.put(member_from_state(moved))
    assert index.by_key[key_of(moved)].member_id == "m_2"
    index.put(member_from_state({**state("m_1", 3), "credentials": []}))  # m_1's update
    assert index.by_key[key_of(moved)].member_id == "m_2"
    index.put(member_from_state(state("m_2", 4, "erased")))
    assert key_of(moved) not in index.by_key


def test_one_bad_state_fails_its_batch(store: CacheStore) -> None:
    bad = {**state("m_2", 2), "credentials": ["not hex"]}
    with pytest.raises(ContractError):
        store.apply_states([state("m_1", 1), bad])
    assert stored(store) == {}
    assert store.apply_states([state("m_1", 1)])  # and the store is usable after it


def test_store_applies_only_newer_versions_and_keeps_tombstones(store: CacheStore) -> None:
    applied = store.apply_states([state("m_1", 5), state("m_2", 6)])
    assert [r["member_id"] for r in applied] == ["m_1", "m_2"]
    assert store.apply_states([state("m_1", 4, "suspended"), state("m_1", 5, "frozen")]) == []
    assert [r["version"] for r in store.apply_states([state("m_1", 7, "erased")])] == [7]
    assert store.apply_states([state("m_1", 6)]) == []  # older than the tombstone
    assert stored(store) == {"m_1": (7, "erased"), "m_2": (6, "active")}
    assert store.max_version() == 7


def test_tombstone_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    first = CacheStore(path)
    first.apply_states([state("m_1", 5), state("m_1", 9, "erased"), state("m_2", 3)])
    first.close()

    again = CacheStore(path)
    assert again.apply_states([state("m_1", 8)]) == []
    index = again.load_index()
    again.close()
    assert index.version_of("m_1") == 9
    assert index.by_id["m_1"].status == "erased"
    assert not index.put(member_from_state(state("m_1", 8)))
    assert (len(index), index.max_version) == (1, 9)
    assert index.digest == site_digest([("m_2", 3)])


ops = st.lists(
    st.tuples(
        st.sampled_from(["m_a", "m_b", "m_c", "m_d"]),
        st.integers(1, 12),
        st.sampled_from(["active", "erased", "suspended"]),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_index_and_store_agree_with_a_model(sequence: list[tuple[str, int, str]]) -> None:
    """Whatever order updates arrive in: the first state seen at each member's highest version
    is held, by the index, by the store and by an index loaded back from the store."""
    model: dict[str, tuple[int, str]] = {}
    for member_id, version, status in sequence:
        if version > model.get(member_id, (0, ""))[0]:
            model[member_id] = (version, status)
    live = [(m, v) for m, (v, status) in model.items() if status != "erased"]

    index = MemberIndex()
    with tempfile.TemporaryDirectory() as tmp:
        store = CacheStore(Path(tmp) / "cache.db")
        for member_id, version, status in sequence:
            s = state(member_id, version, status, uid=f"{ord(member_id[-1]):02X}{version:04X}")
            index.put(member_from_state(s))
            store.apply_states([s])
        assert stored(store) == model
        loaded = store.load_index()
        store.close()

    for idx in (index, loaded):
        assert {m: (r.version, r.status) for m, r in idx.by_id.items()} == model
        assert len(idx) == len(live)
        assert idx.digest == site_digest(live)
        assert idx.max_version == max((v for v, _ in model.values()), default=0)
        # only live members are reachable by card, each by its current card
        assert {r.member_id for r in idx.by_key.values()} == {m for m, _ in live}
        for key, record in idx.by_key.items():
            assert key in record.credentials


# --- card keys only ---------------------------------------------------------------------------

UIDS = ["04A1B2C3D4E5F6", "04b7c8d9e0f1a2", "DE:AD:BE:EF", "0a-1b-2c-3d-4e-5f-60"]


def test_no_raw_uid_reaches_the_disk(tmp_path: Path) -> None:
    members = [
        {"member_id": "m_1001", "cards": [UIDS[0], UIDS[1]]},
        {"member_id": "m_1002", "cards": [UIDS[2]], "status": "frozen"},
        {"member_id": "m_1003", "cards": [UIDS[3]], "plan": "offpeak"},
    ]
    path = tmp_path / "members.json"
    path.write_text(json.dumps(members))
    states = read_members_file(path, CREDENTIAL_KEY, default_site="downtown", first_version=1)
    assert "04A1B2C3D4E5F6" not in json.dumps(states).upper()

    store = CacheStore(tmp_path / "state" / "cache.db")
    store.apply_states(states)
    store.set("note", "written after the members")  # another commit in the WAL
    files = sorted((tmp_path / "state").glob("cache.db*"))
    data = b"".join(p.read_bytes() for p in files)
    index = store.load_index()
    store.close()
    data += b"".join(p.read_bytes() for p in (tmp_path / "state").glob("cache.db*"))

    # the scan would see the members: their ids and card keys are in there
    assert b"m_1003" in data
    assert bytes.fromhex(card_key(CREDENTIAL_KEY, UIDS[3])) in data
    for text in UIDS:
        uid = text.replace(":", "").replace("-", "").upper()
        for needle in (uid.encode(), uid.lower().encode(), text.encode(), bytes.fromhex(uid)):
            assert needle not in data, f"raw UID {uid[:4]}… found on disk"
    # and the gate finds each card by its key
    for text, member_id in zip(UIDS, ["m_1001", "m_1001", "m_1002", "m_1003"], strict=True):
        assert index.by_key[bytes.fromhex(card_key(CREDENTIAL_KEY, text))].member_id == member_id


# --- durability -------------------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "level"), [("crash", 1), ("power", 2)])
def test_durability_pragma(tmp_path: Path, durability: Any, level: int) -> None:
    store = CacheStore(tmp_path / "cache.db", durability)
    try:
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


# --- the writer thread ------------------------------------------------------------------------


def blocked_writer(store: CacheStore) -> tuple[CacheWriter, threading.Event, Future[None]]:
    """A writer whose thread is held inside a first op, so what is submitted next queues up."""
    writer = CacheWriter(store)
    started, release = threading.Event(), threading.Event()

    def hold(s: CacheStore) -> None:
        started.set()
        assert release.wait(TIMEOUT)

    first = writer.submit(hold)
    assert started.wait(TIMEOUT)
    return writer, release, first


def put(key: str) -> Any:
    return lambda s: s.set(key, key)


def test_writer_group_commits(store: CacheStore) -> None:
    writer, release, first = blocked_writer(store)
    futures = [writer.submit(put(f"k{i}")) for i in range(50)]
    release.set()
    for f in [first, *futures]:
        f.result(TIMEOUT)
    assert writer.commits == 2  # the held op, then all fifty together
    writer.close()
    check = CacheStore(store.path)
    assert [check.get(f"k{i}") for i in range(50)] == [f"k{i}" for i in range(50)]
    check.close()


@pytest.mark.parametrize(
    "error", [ValueError, KeyError, sqlite3.IntegrityError, OverflowError, RuntimeError]
)
def test_failing_op_does_not_undo_its_neighbours(store: CacheStore, error: type[Exception]) -> None:
    writer, release, first = blocked_writer(store)

    def half_then_fail(s: CacheStore) -> None:
        s.set("bad", "half written")
        raise error("boom")

    before = writer.submit(put("before"))
    bad = writer.submit(half_then_fail)
    after = writer.submit(put("after"))
    release.set()
    first.result(TIMEOUT)
    before.result(TIMEOUT)
    after.result(TIMEOUT)
    with pytest.raises(error):
        bad.result(TIMEOUT)
    assert writer.commits == 2  # one batch for the three, committed
    # the writer goes on after a failure
    writer.submit(put("later")).result(TIMEOUT)
    writer.close()

    check = CacheStore(store.path)
    assert (check.get("before"), check.get("after"), check.get("later")) == (
        "before",
        "after",
        "later",
    )
    assert check.get("bad") is None  # the failing op's own write is rolled back
    check.close()


def test_close_commits_what_is_queued(store: CacheStore) -> None:
    writer, release, first = blocked_writer(store)
    futures = [writer.submit(put(f"q{i}")) for i in range(10)]
    release.set()
    writer.close()
    assert all(f.done() and f.exception() is None for f in [first, *futures])
    check = CacheStore(store.path)
    assert check.get("q9") == "q9"
    check.close()


# --- kill -9 ----------------------------------------------------------------------------------

IDS = 3000


def test_crash_loses_nothing_committed(tmp_path: Path) -> None:
    """A child bulk-upserts and reports each commit; SIGKILL it at random points, several times.
    The reopened cache is intact and holds every version the child reported."""
    path = tmp_path / "cache.db"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    reported = 0
    for round_ in range(6):
        batch = rng.choice([50, 200, 700, 1500])
        lines_before_kill = rng.randint(1, 12)
        child = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "cache_crash_child.py"),
                str(path),
                str(batch),
                str(IDS),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            for _ in range(lines_before_kill):
                line = child.stdout.readline()
                assert line.endswith(b"\n"), child.stderr.read() if child.stderr else b""
                reported = max(reported, int(line))
        finally:
            child.send_signal(signal.SIGKILL)
            rest, _ = child.communicate(timeout=TIMEOUT)
        assert child.returncode == -signal.SIGKILL
        # lines already in the pipe were printed after their commit too
        for line in rest.splitlines(keepends=True):
            if line.endswith(b"\n"):
                reported = max(reported, int(line))

        context = f"seed {seed}, round {round_}, reported {reported}"
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context
            versions = dict(conn.execute("SELECT member_id, version FROM members"))
        finally:
            conn.close()
        assert max(versions.values()) >= reported, context
        # every version up to the last reported one is there, or a newer one for the same member
        for v in range(max(1, reported - IDS + 1), reported + 1):
            assert versions.get(f"m_{v % IDS}", 0) >= v, f"{context}: version {v} lost"

    store = CacheStore(path)
    index = store.load_index()
    assert index.max_version == store.max_version() >= reported
    store.close()


@pytest.mark.parametrize(
    "field,value",
    [
        ("daily_limit", "3"),
        ("daily_limit", True),
        ("version", "7"),
        ("status", "vip"),
        ("role", "admin"),
        ("schedule", [{"days": ["mon"], "start": "99:99", "end": "10:00"}]),
        ("schedule", [{"days": ["funday"], "start": "09:00", "end": "10:00"}]),
        ("zones", "main"),
        ("member_id", "bad id!"),
        ("sites", "downtown"),
        ("sites", ["downtown", 7]),
        ("plan", 3),
        ("valid_until", 1767225600),
        ("valid_from", "yesterday"),
        ("issued_at", None),
        ("kid", ["k"]),
        ("qr_key", 5),
        ("credentials", {"ab" * 32: 1}),
        ("schedule", [{"days": ["mon"], "start": "09:00", "end": "10:00", "x": 1}]),
        ("schedule", [{"days": ["mon"], "start": 900, "end": "10:00"}]),
        ("schedule", {"days": ["mon"]}),
        ("zones", ["main", 7]),
        ("credentials", [5]),
        ("credentials", ["zz" * 32]),
        ("credentials", ["ab" * 31]),
    ],
)
def test_ill_typed_state_is_refused_before_the_hot_path(field: str, value: object) -> None:
    # A state can be correctly signed and still carry a type the hot path would trip over.
    from gated.cache.index import member_row
    from gated.contract import ContractError

    state = {
        "type": "member_state", "member_id": "m_1", "sites": ["downtown"], "version": 3,
        "status": "active", "role": "member", "valid_from": None, "valid_until": None,
        "plan": None, "schedule": [], "zones": [], "credentials": [], "qr_key": None,
        "daily_limit": None, "issued_at": "2026-11-26T08:00:00Z",
    }  # fmt: skip
    member_row(state)  # the well-typed state is fine
    with pytest.raises(ContractError):
        member_row({**state, field: value})


def test_trim_outbox_keeps_the_newest(store: CacheStore) -> None:
    for i in range(10):
        store.add_event({"event_id": f"e{i}", "kind": "entry"})
    assert store.trim_outbox(keep=4) == 6
    assert [e["event_id"] for e in store.recent_events(100)] == ["e6", "e7", "e8", "e9"]
    assert store.trim_outbox(keep=4) == 0
