"""The daemon's reader path in-process: counting, passage, fire, exits, failing closed.

A real Gate (cache, writer thread, policy) with the real Door on gpiozero's MockFactory; credentials
arrive through the readers' path, held to a simulated reader (``SimReader.present``) as a card is
held to a hardware one.
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
from gated.payloads import GateEvent, GateStatus
from tests.doorpins import RelayEdges, edge_factory
from tests.gatefixture import write_config

UID = "04A1B2C3D4E5F6"
READERS = """
[[readers]]
kind = "sim"
id = "sim-1"
[[readers]]
kind = "sim"
id = "sim-out"
direction = "out"
"""
PASSAGE_PIN = 19
FIRE_PIN = 13


async def make_gate(
    tmp_path: Path, door_extra: str = "", policy: str = ""
) -> tuple[Gate, MockFactory]:
    config = write_config(
        tmp_path,
        extra=f"[policy]\n{policy}\n[door]\npulse_ms = 100\n{door_extra}\n",
        readers=READERS,
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
    factory = edge_factory()
    if FIRE_PIN and "fire_input_pin" in door_extra:
        factory.pin(FIRE_PIN).drive_low()  # fire loop closed = no fire (normally closed contact)
    gate = Gate(cfg, pin_factory=factory)
    gate.door = Door(cfg.door, asyncio.get_running_loop(), gate.on_door_event, pin_factory=factory)
    readers = gate.start_readers()
    await asyncio.sleep(0)  # each reader task starts and takes its emit
    gate._tasks.extend(readers)
    return gate, factory


def present(gate: Gate, uid: str, reader: str = "sim-1") -> None:
    """A card held to a simulated reader: read, emitted and decided as from hardware."""
    gate.sim_readers[reader].present("card", uid)


async def close(gate: Gate, factory: MockFactory) -> None:
    for task in gate._tasks:
        task.cancel()
    await asyncio.gather(*gate._tasks, return_exceptions=True)
    gate.door.close()
    gate.writer.close()
    factory.close()


@pytest.fixture
async def gate_env(tmp_path: Path) -> AsyncIterator[tuple[Gate, MockFactory, Path]]:
    gate, factory = await make_gate(tmp_path, policy="daily_limit = 2")
    yield gate, factory, tmp_path
    await close(gate, factory)


async def events(gate: Gate) -> list[dict[str, Any]]:
    return await asyncio.wrap_future(gate.writer.submit(lambda s: s.recent_events(100)))


async def test_reader_entries_count_toward_daily_limit(
    gate_env: tuple[Gate, MockFactory, Path],
) -> None:
    gate, _, _ = gate_env
    for _ in range(2):
        present(gate, UID)
    present(gate, UID)
    evs = await events(gate)
    assert [e["reason"] for e in evs if e["member_id"] == "m_1"] == ["ok", "ok", "daily_limit"]
    assert all(e["source"] == "reader" for e in evs)
    # Built as plain dicts on the hot path, they are exactly the contract's GateEvent.
    for e in evs:
        assert GateEvent.model_validate(e).model_dump() == e
    # So is the status it publishes (a dict too: the gate does not import the models).
    for state in ("online", "offline"):
        status = gate.published_status(state, 3)
        assert GateStatus.model_validate(status).model_dump() == status
    assert status["members"] == 2 and [r["id"] for r in status["readers"]] == ["sim-1", "sim-out"]
    # Counters were committed with the events: a restart keeps them.
    counters = await asyncio.wrap_future(gate.writer.submit(lambda s: s.load_counters()))
    assert counters["m_1"].entries == 2


async def test_exit_reader_lets_a_suspended_member_out(
    gate_env: tuple[Gate, MockFactory, Path],
) -> None:
    gate, _, _ = gate_env
    present(gate, "04AA", "sim-out")
    present(gate, "04AA")
    kinds = [(e["kind"], e["reason"]) for e in await events(gate)]
    assert kinds == [("exit", "ok"), ("deny", "suspended")]


async def test_a_fault_while_deciding_fails_closed(
    gate_env: tuple[Gate, MockFactory, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, _, _ = gate_env

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("gated.daemon.decide", broken)
    present(gate, UID)  # must not raise into the reader
    assert gate.rejected["decision_error"] == 1
    assert gate.door.relay_energized is False


async def next_event(tail: asyncio.Queue[dict[str, Any]]) -> tuple[str, str]:
    async with asyncio.timeout(5):
        event = await tail.get()
    return event["kind"], event["reason"]


async def test_entry_counts_only_on_passage(tmp_path: Path) -> None:
    gate, factory = await make_gate(
        tmp_path, door_extra=f"passage_sensor_pin = {PASSAGE_PIN}", policy="daily_limit = 1"
    )
    try:
        passage = factory.pin(PASSAGE_PIN)
        tail: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gate.tails.add(tail)
        present(gate, UID)
        # pulse_ms = 100 ends and nobody walked through
        assert await next_event(tail) == ("entry", "not_passed")
        present(gate, UID)  # still allowed: the first did not count
        passage.drive_low()  # someone passes
        passage.drive_high()
        assert await next_event(tail) == ("entry", "ok")
        present(gate, UID)
        assert await next_event(tail) == ("deny", "daily_limit")
        reasons = [(e["kind"], e["reason"]) for e in await events(gate) if e["member_id"] == "m_1"]
        assert reasons == [("entry", "not_passed"), ("entry", "ok"), ("deny", "daily_limit")]
    finally:
        await close(gate, factory)


async def test_the_relay_edge_signals_inside_the_decision(tmp_path: Path) -> None:
    """The seam for kill-right-after-the-door tests: the relay's edge reaches the test while the
    decision is still running, before its event is recorded (the door never waits for the disk),
    and the pulse's end is an edge too."""
    gate, factory = await make_gate(tmp_path)
    try:
        at_edge: list[tuple[int, int]] = []
        edges = RelayEdges(
            factory,
            on_open=lambda: at_edge.append((sum(gate.decisions.values()), tail.qsize())),
        )
        tail: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gate.tails.add(tail)
        present(gate, UID)
        await edges.opened()
        # At the edge nothing of this decision was counted or recorded yet.
        assert at_edge == [(0, 0)] and sum(gate.decisions.values()) == 1
        assert await next_event(tail) == ("entry", "ok")
        await edges.closed()  # pulse_ms = 100 later
        assert edges.edges == [True, False]
        assert gate.door.relay_energized is False
    finally:
        await close(gate, factory)


async def test_fire_opens_for_everyone_and_is_an_event(tmp_path: Path) -> None:
    gate, factory = await make_gate(tmp_path, door_extra=f"fire_input_pin = {FIRE_PIN}")
    try:
        edges = RelayEdges(factory)
        fire_loop = factory.pin(FIRE_PIN)
        fire_loop.drive_low()  # the loop is closed: no fire (the pin's pull-up read open before)
        assert gate.context.fire is False and not gate.door.relay_energized
        fire_loop.drive_high()  # the fire panel opens its contact
        await edges.opened()
        assert gate.context.fire is True and gate.door.relay_energized
        present(gate, "04AA")  # suspended, but there is a fire
        evs = await events(gate)
        assert ("fire", "active") in [(e["kind"], e["reason"]) for e in evs]
        assert evs[-1]["kind"] == "entry" and evs[-1]["member_id"] == "m_2"
        counters = await asyncio.wrap_future(gate.writer.submit(lambda s: s.load_counters()))
        assert "m_2" not in counters  # a fire opening never counts as a visit
    finally:
        await close(gate, factory)


async def test_new_records_are_frozen_without_a_collection_while_a_snapshot_holds_it_off(
    gate_env: tuple[Gate, MockFactory, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every few thousand new members the gate moves its records out of the collector's reach.
    While a snapshot has the collector off, its young generations hold everything the snapshot
    made, and collecting them there cost a badge ~70 ms: then the records are only frozen."""
    import gc

    import gated.cache.live as live
    from gated.cache.index import member_row

    gate = gate_env[0]
    collected: list[int] = []
    monkeypatch.setattr(live, "FREEZE_EVERY", 10)
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
