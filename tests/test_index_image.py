"""The index image: a start loads the saved index only when it was made from this cache at its
current member generation, for this site and key, and is whole; anything else (missing, stale,
torn, from another cache, site or key) is refused and the index is rebuilt from SQLite, the
source of truth, so a gate never answers from a stale image."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.cache import image as image_module
from gated.cache.image import (
    IMAGE_NAME,
    ImageKeeper,
    ImageRefused,
    image_tag,
    load_image,
    save_image,
)
from gated.cache.index import KEY_ENTRY, SLOT, MemberIndex
from gated.cache.live import LiveIndex
from gated.cache.store import CacheStore, CacheWriter
from gated.contract import card_key, erased_state
from gated.policy.decide import Member
from tests.test_compact_index import IDS, Reference, check, fields, members, random_key

KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
ISSUED = "2026-11-26T08:00:00Z"
TAG = image_tag("downtown", KEY)


def state(member_id: str, version: int, status: str = "active", **extra: Any) -> dict[str, Any]:
    if status == "erased":
        return erased_state(member_id, ["downtown"], version, ISSUED)
    return {
        "type": "member_state", "member_id": member_id, "sites": ["downtown"],
        "version": version, "status": status, "role": "member", "valid_from": None,
        "valid_until": "2040-01-01T00:00:00Z", "plan": "full", "schedule": [], "zones": [],
        "credentials": [card_key(KEY, f"04{version:012X}")], "qr_key": None,
        "daily_limit": None, "issued_at": ISSUED, **extra,
    }  # fmt: skip


def varied_states() -> list[dict[str, Any]]:
    """Every shape the image must keep: schedules, zones, limits, qr keys, two cards, exact and
    null times, a tombstone."""
    return [
        state("m_1", 1),
        state("m_2", 2, "suspended", schedule=[{"days": ["mon"], "start": "09:00", "end": "16:00"}]),
        state("m_3", 3, zones=["spa"], daily_limit=2, qr_key="cXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXE="),
        state("m_4", 4, valid_from="2026-01-01T00:00:00.250000Z", valid_until=None),
        state("m_5", 5, credentials=[card_key(KEY, "04AA"), card_key(KEY, "04BB")]),
        state("m_6", 6, "erased"),
    ]  # fmt: skip


def everything(index: MemberIndex) -> tuple[Any, ...]:
    return (
        index.count,
        index.max_version,
        index.digest,
        index.generation,
        {i: fields(m) for i, m in index.by_id.items()},
        {k: fields(m) for k, m in index.by_key.items()},
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = CacheStore(tmp_path / "cache.db")
    s.apply_states(varied_states())
    yield s
    s.close()


def saved(store: CacheStore, tag: bytes = TAG) -> tuple[Path, MemberIndex]:
    """An image of the store's rows, beside it, and the index it was made from."""
    image = store.path.with_name(IMAGE_NAME)
    image.unlink(missing_ok=True)
    index = store.load_index(image, tag)
    assert not store.loaded_from_image
    assert save_image(index, image, store.generation()[0], tag)
    return image, index


def test_a_start_loads_the_image_made_at_the_cache_generation(store: CacheStore) -> None:
    image, from_rows = saved(store)
    loaded = store.load_index(image, TAG)
    assert store.loaded_from_image
    assert everything(loaded) == everything(from_rows)
    assert (
        loaded.by_id["m_4"].valid_from == 1767225600.25 and loaded.by_id["m_4"].valid_until is None
    )
    assert loaded.by_id["m_2"].schedule == ((1, 540, 960),)
    # and it goes on taking changes as an index built from the rows does
    for index in (loaded, from_rows):
        assert index.put(Member("m_5", 9, "active", credentials=b"\x07" * 32))
        assert not index.put(Member("m_1", 1, "frozen"))
    assert everything(loaded) == everything(from_rows)
    assert loaded.by_key.get(b"\x07" * 32) is not None


def test_a_member_change_after_the_image_is_applied_over_it(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An image older than the rows (a gate killed before its save) is brought up to them from
    the rows changed since, not rebuilt from every row."""
    image, _ = saved(store)
    old_generation = store.generation()[1]
    store.apply_states([state("m_1", 7, "suspended")])
    with caplog.at_level(logging.INFO, "gated.cache"):
        index = store.load_index(image, TAG)
    assert store.loaded_from_image and store.image_generation == old_generation
    assert index.by_id["m_1"].status == "suspended"
    assert "rows_changed_since=1" in caplog.text
    assert everything(index) == everything(store.load_index())


def test_an_image_older_than_the_change_log_is_rebuilt(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache made by a release without the change log starts its log at its first open by
    this one: an image from before that cannot be brought up to the rows."""
    image, _ = saved(store)
    store.apply_states([state("m_1", 7, "suspended")])
    store.set("members_log_from", store.generation()[1])
    with caplog.at_level(logging.INFO, "gated.cache"):
        index = store.load_index(image, TAG)
    assert not store.loaded_from_image and index.by_id["m_1"].status == "suspended"
    assert "event=index_image_refused" in caplog.text and "stale" in caplog.text


def test_an_upsert_refused_as_not_newer_leaves_the_image_current(store: CacheStore) -> None:
    image, _ = saved(store)
    assert store.apply_states([state("m_1", 1, "suspended")]) == []
    store.load_index(image, TAG)
    assert store.loaded_from_image


def test_a_change_by_any_writer_of_the_rows_is_applied_over_the_image(store: CacheStore) -> None:
    """The generation and the change log are kept by triggers: a technician's sqlite3 shell
    counts too, and a row deleted by hand leaves the index."""
    image, _ = saved(store)
    other = sqlite3.connect(store.path)
    other.execute("UPDATE members SET status = 'frozen' WHERE member_id = 'm_1'")
    # a lower version too: the row is the truth, whatever its version
    other.execute("UPDATE members SET status = 'frozen', version = 2 WHERE member_id = 'm_5'")
    other.commit()
    other.close()
    index = store.load_index(image, TAG)
    assert store.loaded_from_image and index.by_id["m_1"].status == "frozen"
    assert (index.by_id["m_5"].status, index.version_of("m_5")) == ("frozen", 2)
    assert everything(index) == everything(store.load_index())
    image, _ = saved(store)
    other = sqlite3.connect(store.path)
    other.execute("DELETE FROM members WHERE member_id = 'm_1'")
    other.commit()
    other.close()
    index = store.load_index(image, TAG)
    assert "m_1" not in index.by_id and store.loaded_from_image
    assert everything(index) == everything(store.load_index())


CHANGE_IDS = ["m_1", "m_2", "m_3", "m_4"]
changes = st.lists(
    st.one_of(
        # a state through the store, as the sync applies one (only if newer)
        st.tuples(
            st.just("state"),
            st.sampled_from(CHANGE_IDS),
            st.integers(1, 12),
            st.sampled_from(["active", "frozen", "erased"]),
            st.integers(0, 5),  # the card
            st.booleans(),  # a second card
        ),
        # a technician's edits: any version (lower too), a status, a row deleted
        st.tuples(
            st.just("sql"),
            st.sampled_from(CHANGE_IDS),
            st.integers(1, 12),
            st.sampled_from(["active", "suspended", "erased"]),
            st.integers(0, 5),
            st.booleans(),
        ),
        st.tuples(st.just("delete"), st.sampled_from(CHANGE_IDS)),
    ),
    max_size=12,
)


def _cards(member_id: str, card: int, two: bool) -> list[str]:
    """A member's cards, never another member's: with a card held by two rows, a build from the
    rows gives it to the later row, and a running gate (and so its image) to the last change
    applied, so the two agree only on cards held once."""
    n = CHANGE_IDS.index(member_id)
    return [card_key(KEY, f"04{n:02X}{card:010X}")] + (
        [card_key(KEY, f"05{n:012X}")] if two else []
    )


def _apply_changes(store: CacheStore, ops: list[tuple[Any, ...]]) -> None:
    other = sqlite3.connect(store.path)
    for op in ops:
        if op[0] == "state":
            _, member_id, version, status, card, two = op
            cards = _cards(member_id, card, two)
            store.apply_states([state(member_id, version, status, credentials=cards)])
        elif op[0] == "sql":
            _, member_id, version, status, card, two = op
            creds = b"".join(bytes.fromhex(k) for k in _cards(member_id, card, two))
            other.execute(
                "UPDATE members SET version = ?, status = ?, credentials = ? WHERE member_id = ?",
                (version, status, creds, member_id),
            )
        else:
            other.execute("DELETE FROM members WHERE member_id = ?", (op[1],))
        other.commit()
    other.close()


@settings(max_examples=25, deadline=None)
@given(changes, changes)
def test_an_image_brought_up_to_the_rows_equals_a_build_from_the_rows(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]
) -> None:
    """Rows changed in any way after the image was saved (states, edits by hand, rows
    deleted), then a start (as after a kill -9): the index equals one built from every row."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = CacheStore(Path(tmp) / "cache.db")
        _apply_changes(store, before)
        image, _ = saved(store)
        _apply_changes(store, after)
        loaded = store.load_index(image, TAG)
        assert store.loaded_from_image
        fresh = store.load_index()
        assert everything(loaded) == everything(fresh)
        for member_id in [*CHANGE_IDS, "nobody"]:
            assert loaded.version_of(member_id) == fresh.version_of(member_id)
        store.close()


@pytest.mark.parametrize("cut", [0, 5, 12, 100, -13, -1])
def test_a_torn_image_is_refused(store: CacheStore, cut: int) -> None:
    image, from_rows = saved(store)
    data = image.read_bytes()
    image.write_bytes(data[:cut])
    assert everything(store.load_index(image, TAG)) == everything(from_rows)
    assert not store.loaded_from_image


def test_a_flipped_byte_anywhere_is_refused(store: CacheStore) -> None:
    image, from_rows = saved(store)
    data = image.read_bytes()
    for at in range(0, len(data), max(1, len(data) // 97)):
        image.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])
        with pytest.raises(ImageRefused):
            load_image(image, store.generation()[0], store.generation()[1], TAG)
    assert everything(store.load_index(image, TAG)) == everything(from_rows)


def test_a_missing_image_is_rebuilt_from_the_rows(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "gated.cache"):
        index = store.load_index(store.path.with_name(IMAGE_NAME), TAG)
    assert not store.loaded_from_image and index.count == 5
    assert "event=index_image_missing" in caplog.text


def test_an_image_from_another_cache_is_refused(store: CacheStore, tmp_path: Path) -> None:
    """Two caches with the same rows and generation: each image names its own cache."""
    image, _ = saved(store)
    other = CacheStore(tmp_path / "other" / "cache.db")
    other.apply_states(varied_states())
    assert other.generation()[1] == store.generation()[1]
    shutil.copy(image, other.path.with_name(IMAGE_NAME))
    with pytest.raises(ImageRefused, match="another cache"):
        load_image(other.path.with_name(IMAGE_NAME), *other.generation(), TAG)
    other.load_index(other.path.with_name(IMAGE_NAME), TAG)
    assert not other.loaded_from_image
    other.close()


@pytest.mark.parametrize(
    "tag", [image_tag("uptown", KEY), image_tag("downtown", bytes(32))], ids=["site", "key"]
)
def test_an_image_for_another_site_or_key_is_refused(store: CacheStore, tag: bytes) -> None:
    image, _ = saved(store)
    with pytest.raises(ImageRefused, match="another site or credential key"):
        load_image(image, *store.generation(), tag)
    store.load_index(image, tag)
    assert not store.loaded_from_image


def test_an_unreadable_image_is_rebuilt_from_the_rows(store: CacheStore) -> None:
    image, from_rows = saved(store)
    image.unlink()
    image.mkdir()  # open() fails with an OSError other than a missing file
    assert everything(store.load_index(image, TAG)) == everything(from_rows)
    assert not store.loaded_from_image


def format_2_image(index: MemberIndex, path: Path, cache_id: bytes, tag: bytes) -> None:
    """``index`` written as the release before slot records wrote its image (format 2): every
    slot field in an array of its own, the card keys and their slots apart; the same header,
    tables and framing."""
    copy = image_module._begin(index, cache_id, tag)
    fields = list(zip(*SLOT.iter_unpack(index._slots), strict=True)) or [()] * 9
    version, profile, valid_from, valid_until, idoff, idlen, kstart, kcount, qr = fields
    entries = list(KEY_ENTRY.iter_unpack(index._keys))
    parts: list[array[int] | bytearray] = [
        array("Q", version), array("I", profile), array("I", valid_from),
        array("I", valid_until), array("I", idoff), array("B", idlen), index._idbuf,
        array("I", kstart), array("H", kcount), array("i", qr), index._qrbuf,
        bytearray(b"".join(key for key, _ in entries)), array("I", [s for _, s in entries]),
        *copy.parts[len(image_module._SECTIONS) :],
    ]  # fmt: skip
    header = {k: v for k, v in copy.header.items() if k != "qr_held"}
    header["format"] = 2
    header["parts"] = [
        [image_module._typecode(p), len(p) * (p.itemsize if isinstance(p, array) else 1)]
        for p in parts
    ]
    assert image_module._write(image_module._Copy(index, index.changes, header, parts), path, 0o600)


def test_an_image_of_the_previous_format_is_rebuilt_not_misread(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An image a gate saved before its upgrade names this cache, its generation, site and key,
    and its checksum holds: only its format tells that its parts are laid out otherwise."""
    image, from_rows = saved(store)
    format_2_image(from_rows, image, store.generation()[0], TAG)
    with pytest.raises(ImageRefused, match="format 2, this release reads 3"):
        load_image(image, *store.generation(), TAG)
    with caplog.at_level(logging.INFO, "gated.cache"):
        rebuilt = store.load_index(image, TAG)
    assert not store.loaded_from_image and "event=index_image_refused" in caplog.text
    assert everything(rebuilt) == everything(from_rows)
    # The rebuilt index is saved in this release's format, which the next start loads.
    assert save_image(rebuilt, image, store.generation()[0], TAG)
    assert everything(store.load_index(image, TAG)) == everything(from_rows)
    assert store.loaded_from_image


def test_a_slot_record_holds_every_field_at_its_limits(tmp_path: Path) -> None:
    """The widest values a slot's record keeps (a 2^53 version, a 255-byte id, times past 2106
    and before 1970, many cards), read back the same from an image."""
    index = MemberIndex()
    cards = b"".join(random_key(i) for i in range(40))
    big = Member("i" * 255, 2**53, "active", valid_from=-1.0, valid_until=2.0**40,
                 credentials=cards, qr_key=b"q" * 32, daily_limit=65_536)  # fmt: skip
    index.put(big)
    index.put(Member("m_1", 1, "active", valid_from=0.0, valid_until=2.0**32 - 3))
    image = tmp_path / IMAGE_NAME
    assert save_image(index, image, b"c" * 16, TAG)
    for held in (index, load_image(image, b"c" * 16, 0, TAG)):
        assert fields(held.by_id["i" * 255]) == fields(big)
        assert all(
            held.by_key[cards[i : i + 32]].member_id == big.member_id for i in range(0, 1280, 32)
        )
        assert (held.by_id["m_1"].valid_from, held.by_id["m_1"].valid_until) == (0, 2**32 - 3)
        assert held.qr_held == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.just("put"), members), max_size=40),
    st.lists(st.tuples(st.just("put"), members), max_size=20),
    st.sampled_from([2**64 - 1, 0, 3]),
)
def test_an_image_answers_as_the_dict_reference(
    before: list[tuple[str, object]], after: list[tuple[str, object]], mask: int
) -> None:
    """Any sequence of upserts and erasures, saved and loaded (tables part-way through a growth
    included, collisions forced by the hash mask), then more: the same answers as the
    reference."""
    import tempfile

    index, ref = MemberIndex(hash_mask=mask), Reference()
    check(index, ref, before)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / IMAGE_NAME
        index.generation = len(before)
        assert save_image(index, image, b"c" * 16, TAG)
        loaded = load_image(image, b"c" * 16, len(before), TAG)
    check(
        loaded,
        ref,
        [*after, *(("id", i) for i in IDS), *(("key", k) for k, _ in ref.by_key.items())],
    )


# --- the keeper at run time -----------------------------------------------------------------


class Holder:
    def __init__(self, index: MemberIndex) -> None:
        self.index = index


def test_the_gate_saves_its_index_as_it_changes_and_a_restart_loads_it(tmp_path: Path) -> None:
    """Rows applied through the live index move its generation with the cache's; the keeper saves
    it once settled, and the next start loads that image and answers the same."""
    db = tmp_path / "cache.db"
    image = db.with_name(IMAGE_NAME)

    async def run() -> tuple[Any, ...]:
        store = CacheStore(db)
        holder = Holder(store.load_index(image, TAG))
        keeper = ImageKeeper(image, store.generation()[0], TAG, None)
        writer = CacheWriter(store)
        live = LiveIndex(writer, holder)
        await asyncio.wrap_future(live.apply_snapshot(iter([])))  # an empty cache's first load
        await asyncio.wrap_future(live.apply_states(varied_states()))
        pending = live.apply_states([state("m_1", 8, "frozen")])
        assert not live.settled()
        assert not keeper.maybe_save(holder.index, live, now=0.0)  # rows still on their way
        await asyncio.wrap_future(pending)
        assert live.settled()
        assert keeper.maybe_save(holder.index, live, now=0.0)
        keeper.save_at_stop(holder.index, live)  # waits for the background save
        assert keeper.saves == 1
        writer.close()
        return everything(holder.index)

    held = asyncio.run(run())
    store = CacheStore(db)
    assert everything(store.load_index(image, TAG)) == held
    assert store.loaded_from_image
    store.close()


def test_rows_written_behind_the_gates_back_are_never_saved_as_current(tmp_path: Path) -> None:
    """Another process changes a member while the gate runs, then the gate applies a row: the
    gate's index lacks the other change, so the keeper saves nothing until a restart, which
    rebuilds from the rows and sees both."""
    db = tmp_path / "cache.db"
    image = db.with_name(IMAGE_NAME)

    async def run() -> None:
        store = CacheStore(db)
        store.apply_states(varied_states())
        holder = Holder(store.load_index(image, TAG))
        keeper = ImageKeeper(image, store.generation()[0], TAG, None)
        writer = CacheWriter(store)
        live = LiveIndex(writer, holder)
        other = CacheStore(db)
        other.apply_states([state("m_2", 9, "active")])
        other.close()
        await asyncio.wrap_future(live.apply_states([state("m_1", 8, "frozen")]))
        assert not live.settled()
        assert not keeper.maybe_save(holder.index, live, now=0.0)
        keeper.save_at_stop(holder.index, live)
        writer.close()
        assert keeper.saves == 0 and not image.exists()

    asyncio.run(run())
    store = CacheStore(db)
    index = store.load_index(image, TAG)
    assert (index.by_id["m_1"].status, index.by_id["m_2"].version) == ("frozen", 9)
    store.close()


def test_a_save_is_abandoned_when_the_index_changes_during_the_copy(
    store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy runs beside the loop: a put while it copies means the image would mix two
    states, so no file is left."""
    from gated.cache import image as image_module

    image = store.path.with_name(IMAGE_NAME)
    index = store.load_index(image, TAG)
    monkeypatch.setattr(image_module, "CHUNK", 8)  # many chunks: the put lands between two
    copy = image_module._begin(index, store.generation()[0], TAG)
    real_crc = image_module.zlib.crc32
    calls = 0

    def put_midway(data: Any, crc: int = 0) -> int:
        nonlocal calls
        calls += 1
        if calls == 10:
            index.put(Member("m_1", 50, "frozen"))
        return real_crc(data, crc)

    monkeypatch.setattr(image_module.zlib, "crc32", put_midway)
    assert not image_module._write(copy, image, 0o600)
    assert not image.exists() and not image.with_name(IMAGE_NAME + ".tmp").exists()


def test_a_save_that_fails_is_logged_and_the_gate_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Settled:
        def settled(self) -> bool:
            return True

    index = MemberIndex()
    index.put(Member("m_1", 1, "active"))
    keeper = ImageKeeper(tmp_path / "gone" / IMAGE_NAME, b"c" * 16, TAG, None)
    with caplog.at_level(logging.INFO, "gated.cache"):
        assert keeper.maybe_save(index, Settled(), now=0.0)
        keeper.save_at_stop(index, Settled())
    assert keeper.saves == 0 and "event=index_image_save_failed" in caplog.text


# --- the daemon -------------------------------------------------------------------------------


def test_a_restarted_gate_loads_its_image_and_never_a_stale_one(tmp_path: Path) -> None:
    """`gated members import` without a running gate saves the image the next start loads; `gated
    run` saves its image after a start from the rows and loads it at the next start; after a
    member changed and a kill -9 before any save, it loads the older image and applies the row
    changed since: the changed member is answered as the cache has it."""
    import json
    import time

    from gated.config import load_gate_config
    from tests.gatefixture import GateProcess, write_config
    from tests.sync.helpers import member

    config = write_config(tmp_path)
    gate = GateProcess(config, tmp_path)
    members = tmp_path / "members.json"
    image = tmp_path / "state" / IMAGE_NAME

    def wait_for_log(text: str) -> None:
        deadline = time.monotonic() + 20
        while text not in gate.log.read_text():
            assert time.monotonic() < deadline, gate.log.read_text()[-3000:]
            time.sleep(0.05)

    members.write_text(
        json.dumps([{"member_id": "m_1", "status": "active", "cards": ["04A1B2C3D4E5F6"]}])
    )
    out = gate.gated("members", "import", str(members), "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["index_image_saved"] is True and image.exists()
    gate.start()
    try:
        wait_for_log("event=index_image_loaded members=1")
        assert gate.badge(card="04A1B2C3D4E5F6")["allow"] is True
    finally:
        gate.stop()
    image.unlink()
    gate.log.write_text("")
    gate.start()
    try:
        wait_for_log("event=index_image_saved")  # soon after a start from the rows
        assert "event=index_image_missing" in gate.log.read_text()
    finally:
        gate.stop()
    gate.log.write_text("")
    gate.start()
    try:
        wait_for_log("event=index_image_loaded members=1")
        # A member changes in the cache, then the gate is killed before any save: its image is
        # now older than the rows.
        cfg = load_gate_config(config)
        store = CacheStore(cfg.cache_path)
        key = bytes.fromhex(cfg.keys.credential_key_file.read_text().strip())
        state = member("m_1", store.max_version() + 1, cards=["04A1B2C3D4E5F6"], key=key)
        assert store.apply_states([{**state, "sites": [cfg.site], "status": "frozen"}])
        store.close()
    finally:
        gate.kill()
    gate.log.write_text("")
    gate.start()
    try:
        wait_for_log("rows_changed_since=1")  # the image, and the one row changed since
        answer = gate.badge(card="04A1B2C3D4E5F6")
        assert (answer["allow"], answer["reason"]) == (False, "frozen")
        wait_for_log("event=index_image_saved")  # the image on disk was older: saved again
    finally:
        gate.stop()


def test_an_image_saved_while_a_table_grows_loads_whole(tmp_path: Path) -> None:
    """A table doubles a few cells per change: an image taken half-way keeps both halves, and
    the loaded index finishes the move as it takes changes."""
    index = MemberIndex()
    i = 0
    while not (index._ktab.old is not None and index._ktab.cursor > 0 and i > 1000):
        index.put(Member(f"m_{i}", 1, "active", credentials=random_key(i)))
        i += 1
    image = tmp_path / IMAGE_NAME
    assert save_image(index, image, b"c" * 16, TAG)
    loaded = load_image(image, b"c" * 16, 0, TAG)
    assert loaded._ktab.old is not None
    for j in range(i + 100):
        loaded.put(Member(f"n_{j}", 1, "active", credentials=random_key(j + 10**6)))
    for j in range(i):
        assert loaded.by_key[random_key(j)].member_id == f"m_{j}"
        assert loaded.by_id[f"m_{j}"].version == 1
    assert loaded._ktab.old is None and loaded.count == 2 * i + 100
