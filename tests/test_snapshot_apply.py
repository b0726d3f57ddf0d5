"""A snapshot applied to the gate in-process: into an empty cache through a new index swapped in
at once, into a cache that holds members through the index slices; the same result either way,
and all or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.cache.index import MemberIndex, member_from_state, member_row
from gated.cache.store import CacheStore
from gated.config import load_gate_config
from gated.contract import card_key, erased_state, site_digest
from gated.daemon import Gate
from tests.gatefixture import write_config

KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
ISSUED = "2026-11-26T08:00:00Z"


def state(i: int, version: int, status: str = "active", cards: int = 1) -> dict[str, Any]:
    if status == "erased":
        return erased_state(f"m_{i}", ["downtown"], version, ISSUED)
    return {
        "type": "member_state",
        "member_id": f"m_{i}",
        "sites": ["downtown"],
        "version": version,
        "status": status,
        "role": "member",
        "valid_from": None,
        "valid_until": "2030-01-01T00:00:00Z",
        "plan": "full",
        "schedule": [],
        "zones": [],
        "credentials": [card_key(KEY, f"04{i:06X}{c:06X}") for c in range(cards)],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": ISSUED,
    }


def snapshot_states() -> list[dict[str, Any]]:
    """A snapshot with what a row-by-row apply must get right: tombstones, members with several
    cards, and the same member twice (newer first, then newer last)."""
    states = [state(i, 10 + i, cards=1 + i % 3) for i in range(300)]
    states[7] = state(7, 17, "erased")
    states += [state(5, 2, "suspended"), state(9, 400, "frozen"), state(300, 401, "erased")]
    return states


@pytest.fixture
async def gate(tmp_path: Path) -> AsyncIterator[Gate]:
    factory = MockFactory()
    g = Gate(load_gate_config(write_config(tmp_path)), pin_factory=factory)
    yield g
    g.writer.close()
    factory.close()


def expected_index(states: list[dict[str, Any]]) -> MemberIndex:
    index = MemberIndex()
    for s in states:
        index.put(member_from_state(s))
    return index


def same_index(a: MemberIndex, b: MemberIndex) -> None:
    assert (a.count, a.max_version, a.digest) == (b.count, b.max_version, b.digest)
    assert {m: (x.version, x.status, x.credentials) for m, x in a.by_id.items()} == {
        m: (x.version, x.status, x.credentials) for m, x in b.by_id.items()
    }
    assert {k: m.member_id for k, m in a.by_key.items()} == {
        k: m.member_id for k, m in b.by_key.items()
    }


def rows_of(states: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (member_row(s) for s in states)


async def stored(gate: Gate) -> dict[str, tuple[int, str]]:
    def read(store: CacheStore) -> dict[str, tuple[int, str]]:
        rows = store.conn.execute("SELECT member_id, version, status FROM members")
        return {m: (v, s) for m, v, s in rows}

    return await asyncio.wrap_future(gate.writer.submit(read))


async def test_an_empty_gate_gets_the_index_a_row_by_row_apply_gives(gate: Gate) -> None:
    states = snapshot_states()
    before = gate.index
    applied = await asyncio.wrap_future(gate.apply_snapshot(rows_of(states)))
    assert gate.index is not before  # built on the writer's thread, swapped in whole
    same_index(gate.index, expected_index(states))
    newest: dict[str, tuple[int, str]] = {}
    for s in states:
        if s["version"] > newest.get(s["member_id"], (0, ""))[0]:
            newest[s["member_id"]] = (s["version"], s["status"])
    assert gate.index.digest == site_digest(
        (m, v) for m, (v, status) in newest.items() if status != "erased"
    )
    assert await stored(gate) == newest
    # Newer-only, as the store counts it: the older duplicate of m_5 is not applied.
    assert applied == len(states) - 1
    member = gate.index.by_key.get(bytes.fromhex(card_key(KEY, "04000004000001")))  # 2nd card
    assert member is not None and member.member_id == "m_4"


async def test_a_gate_with_members_gets_the_same_through_slices(gate: Gate) -> None:
    states = snapshot_states()
    first = [state(1, 1), state(2, 5000, "suspended")]
    await asyncio.wrap_future(gate.apply_rows(rows_of(first)))
    before = gate.index
    applied = await asyncio.wrap_future(gate.apply_snapshot(rows_of(states)))
    assert gate.index is before
    same_index(gate.index, expected_index(first + states))
    assert applied == len(states) - 2  # m_5's older duplicate, m_2 older than the cache's


@pytest.mark.parametrize("members", [False, True], ids=["empty", "with members"])
async def test_a_snapshot_failing_midway_leaves_cache_and_index_as_they_were(
    gate: Gate, members: bool
) -> None:
    if members:
        await asyncio.wrap_future(gate.apply_rows(rows_of([state(1, 1)])))
    before, digest, rows_before = gate.index, gate.index.digest, await stored(gate)

    def failing() -> Iterator[dict[str, Any]]:
        yield from rows_of(snapshot_states()[:200])
        raise ValueError("a malformed state in a later piece")

    with pytest.raises(ValueError):
        await asyncio.wrap_future(gate.apply_snapshot(failing()))
    assert gate.index is before and gate.index.digest == digest
    assert gate.index.count == (1 if members else 0) and len(gate.index.by_key) == gate.index.count
    assert await stored(gate) == rows_before
    # and the cache takes the next snapshot
    await asyncio.wrap_future(gate.apply_snapshot(rows_of(snapshot_states())))
    assert gate.index.max_version == 401
