"""The daemon's reader path in-process: counting, passage, fire, exits, failing closed.

A real Gate (cache, writer thread, policy) with the real Door on gpiozero's MockFactory; credentials
arrive the way a hardware reader delivers them (``Gate._on_read``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.cache.store import CacheStore
from gated.config import load_gate_config
from gated.daemon import Gate
from gated.door import Door
from gated.members import read_members_file
from gated.policy.credential import Credential
from tests.gatefixture import write_config

UID = "04A1B2C3D4E5F6"
PASSAGE_PIN = 19
FIRE_PIN = 13


async def make_gate(
    tmp_path: Path, door_extra: str = "", policy: str = ""
) -> tuple[Gate, MockFactory]:
    config = write_config(
        tmp_path, extra=f"[policy]\n{policy}\n[door]\npulse_ms = 100\n{door_extra}\n"
    )
    cfg = load_gate_config(config)
    members = tmp_path / "members.json"
    members.write_text(json.dumps([{"member_id": "m_1", "status": "active", "cards": [UID]},
                                   {"member_id": "m_2", "status": "suspended", "cards": ["04AA"]}]))  # fmt: skip
    store = CacheStore(cfg.cache_path)
    store.apply_states(
        read_members_file(
            members,
            bytes.fromhex((tmp_path / "keys" / "credential.key").read_text().strip()),
            default_site="downtown",
            first_version=1,
        )
    )
    store.close()
    factory = MockFactory()
    if FIRE_PIN and "fire_input_pin" in door_extra:
        factory.pin(FIRE_PIN).drive_low()  # fire loop closed = no fire (normally closed contact)
    gate = Gate(cfg, pin_factory=factory)
    gate.door = Door(cfg.door, asyncio.get_running_loop(), gate.on_door_event, pin_factory=factory)
    return gate, factory


@pytest.fixture
async def gate_env(tmp_path: Path) -> AsyncIterator[tuple[Gate, MockFactory, Path]]:
    gate, factory = await make_gate(tmp_path, policy="daily_limit = 2")
    yield gate, factory, tmp_path
    gate.door.close()
    gate.writer.close()
    factory.close()


async def events(gate: Gate) -> list[dict[str, Any]]:
    return await asyncio.wrap_future(gate.writer.submit(lambda s: s.recent_events(100)))


async def recorded(gate: Gate, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """Member m_1's (kind, reason) events, once there are ``count`` of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [(e["kind"], e["reason"]) for e in await events(gate) if e["member_id"] == "m_1"]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.01)


async def test_reader_entries_count_toward_daily_limit(
    gate_env: tuple[Gate, MockFactory, Path],
) -> None:
    gate, _, _ = gate_env
    for _ in range(2):
        gate._on_read(Credential("card", UID, "sim-1"))
    gate._on_read(Credential("card", UID, "sim-1"))
    evs = await events(gate)
    assert [e["reason"] for e in evs if e["member_id"] == "m_1"] == ["ok", "ok", "daily_limit"]
    assert all(e["source"] == "reader" for e in evs)
    # Counters were committed with the events: a restart keeps them.
    counters = await asyncio.wrap_future(gate.writer.submit(lambda s: s.load_counters()))
    assert counters["m_1"].entries == 2


async def test_exit_reader_lets_a_suspended_member_out(
    gate_env: tuple[Gate, MockFactory, Path],
) -> None:
    gate, _, _ = gate_env
    gate._on_read(Credential("card", "04AA", "sim-1", direction="out"))
    gate._on_read(Credential("card", "04AA", "sim-1", direction="in"))
    kinds = [(e["kind"], e["reason"]) for e in await events(gate)]
    assert kinds == [("exit", "ok"), ("deny", "suspended")]


async def test_a_fault_while_deciding_fails_closed(
    gate_env: tuple[Gate, MockFactory, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, _, _ = gate_env

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("gated.daemon.decide", broken)
    gate._on_read(Credential("card", UID, "sim-1"))  # must not raise into the reader
    assert gate.rejected["decision_error"] == 1
    assert gate.door.relay_energized is False


async def test_entry_counts_only_on_passage(tmp_path: Path) -> None:
    gate, factory = await make_gate(
        tmp_path, door_extra=f"passage_sensor_pin = {PASSAGE_PIN}", policy="daily_limit = 1"
    )
    try:
        passage = factory.pin(PASSAGE_PIN)
        gate._on_read(Credential("card", UID, "sim-1"))
        await recorded(gate, 1)  # pulse_ms = 100: nobody walked through
        gate._on_read(Credential("card", UID, "sim-1"))  # still allowed: the first did not count
        assert gate.door.relay_energized
        passage.drive_low()  # someone passes
        passage.drive_high()
        await recorded(gate, 2)
        gate._on_read(Credential("card", UID, "sim-1"))
        reasons = await recorded(gate, 3)
        assert reasons == [("entry", "not_passed"), ("entry", "ok"), ("deny", "daily_limit")]
    finally:
        gate.door.close()
        gate.writer.close()
        factory.close()


async def test_fire_opens_for_everyone_and_is_an_event(tmp_path: Path) -> None:
    gate, factory = await make_gate(tmp_path, door_extra=f"fire_input_pin = {FIRE_PIN}")
    try:
        factory.pin(FIRE_PIN).drive_high()  # the fire panel opens its contact
        await asyncio.sleep(0.05)
        assert gate.context.fire is True and gate.door.relay_energized
        gate._on_read(Credential("card", "04AA", "sim-1"))  # suspended, but there is a fire
        evs = await events(gate)
        assert ("fire", "active") in [(e["kind"], e["reason"]) for e in evs]
        assert evs[-1]["kind"] == "entry" and evs[-1]["member_id"] == "m_2"
        counters = await asyncio.wrap_future(gate.writer.submit(lambda s: s.load_counters()))
        assert "m_2" not in counters  # a fire opening never counts as a visit
    finally:
        gate.door.close()
        gate.writer.close()
        factory.close()


async def test_new_records_are_frozen_without_a_collection_while_a_snapshot_holds_it_off(
    gate_env: tuple[Gate, MockFactory, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every few thousand new members the gate moves its records out of the collector's reach.
    While a snapshot has the collector off, its young generations hold everything the snapshot
    made, and collecting them there cost a badge ~70 ms: then the records are only frozen."""
    import gc

    import gated.daemon as daemon
    from gated.cache.index import member_row

    gate = gate_env[0]
    collected: list[int] = []
    monkeypatch.setattr(daemon, "FREEZE_EVERY", 10)
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)

    def state(i: int) -> dict[str, Any]:
        return {
            "type": "member_state",
            "member_id": f"m_{i}",
            "sites": ["downtown"],
            "version": 100 + i,
            "status": "active",
            "credentials": [],
            "issued_at": "2026-11-26T00:00:00Z",
        }

    def rows(first: int) -> list[dict[str, Any]]:
        return [member_row(state(i)) for i in range(first, first + 10)]

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        applied = await asyncio.wrap_future(gate.apply_rows(rows(10)))
    finally:
        if was_enabled:
            gc.enable()
    assert len(applied) == 10 and gate.index.version_of("m_19") == 119
    assert collected == []  # frozen, not collected
    applied = await asyncio.wrap_future(gate.apply_rows(rows(20)))
    assert len(applied) == 10 and gate.index.version_of("m_29") == 129
    assert collected == [1]  # with the collector on, the young garbage goes first
