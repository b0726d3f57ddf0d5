"""What ``gatectl`` can ask of a running gate: the control socket's commands.

Each command reads or drives the gate through :class:`ControlledGate`, the small part of the
gate it needs; ``daemon.py`` hands in the real gate. A refusal is a :class:`ControlError`, whose
message goes back to the technician as one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from gated.cache.index import MemberIndex, member_from_row
from gated.cache.store import CacheWriter
from gated.config import GateConfig
from gated.contract import ContractError, format_time, normalize_uid
from gated.control.channel import Caller, ControlError, Result
from gated.errors import GatedError
from gated.policy.credential import Credential
from gated.policy.decide import Member, MemberCounters
from gated.readers.base import Reader
from gated.readers.sim import SimReader

log = logging.getLogger("gated.control")

Command = Callable[[dict[str, Any], Caller], Awaitable[Result]]


class SyncControl(Protocol):
    """The head-office link, as far as the control socket drives it."""

    def stats(self) -> dict[str, Any]: ...

    async def resync(self, reason: str, operator: str | None) -> dict[str, Any]: ...


class ControlledGate(Protocol):
    """The part of the gate the control commands read and drive."""

    @property
    def config(self) -> GateConfig: ...
    @property
    def index(self) -> MemberIndex: ...
    @property
    def writer(self) -> CacheWriter: ...
    @property
    def counters(self) -> dict[str, MemberCounters]: ...
    @property
    def rejected(self) -> Counter[str]: ...
    @property
    def readers(self) -> Sequence[Reader]: ...
    @property
    def sim_readers(self) -> Mapping[str, SimReader]: ...
    @property
    def tails(self) -> set[asyncio.Queue[dict[str, Any]]]: ...
    @property
    def sync(self) -> SyncControl | None: ...

    def hash_credential(self, credential: str) -> bytes: ...
    def on_credential(
        self, credential: Credential, *, source: str = ..., operator: str | None = ...
    ) -> dict[str, Any]: ...
    def status(self, outbox_depth: int) -> dict[str, Any]: ...
    async def outbox_depth(self) -> int: ...
    def pulse(self, *, source: str, operator: str | None) -> None: ...
    async def set_lockdown(self, on: bool, *, source: str, operator: str | None) -> None: ...
    async def next_card(self, reader_id: str | None) -> Credential: ...
    async def doctor(self) -> list[dict[str, str]]: ...


class ControlCommands:
    """Routes one control-socket request to its command (``handle`` is the server's handler)."""

    def __init__(self, gate: ControlledGate) -> None:
        self.gate = gate
        self.commands: dict[str, Command] = {
            "status": self.status,
            "readers": self.readers,
            "cache_stats": self.cache_stats,
            "cache_lookup": self.cache_lookup,
            "badge": self.badge,
            "events_tail": self.events_tail,
            "door_pulse": self.door_pulse,
            "lockdown": self.lockdown,
            "antipassback_reset": self.antipassback_reset,
            "enroll": self.enroll,
            "resync": self.resync,
            "cache_refresh": self.cache_refresh,
            "doctor": self.doctor,
        }

    async def handle(self, cmd: str, args: dict[str, Any], caller: Caller) -> Result:
        """Run ``cmd``; an unknown one is refused and counted."""
        command = self.commands.get(cmd)
        if command is None:
            self.gate.rejected["control_unknown_command"] += 1
            raise ControlError(f"unknown command {cmd!r}; try: {', '.join(sorted(self.commands))}")
        return await command(args, caller)

    async def status(self, args: dict[str, Any], caller: Caller) -> Result:
        gate = self.gate
        status = gate.status(await gate.outbox_depth())
        if gate.sync is not None:
            status["sync"] = gate.sync.stats()
        return status

    async def readers(self, args: dict[str, Any], caller: Caller) -> Result:
        return {
            "readers": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "direction": r.direction,
                    "state": r.health.state,
                    "detail": r.health.detail,
                    "last_read_at": format_time(r.health.last_read_at)
                    if r.health.last_read_at
                    else None,
                    "reads": r.health.reads,
                    "errors": r.health.errors,
                    "rejected": r.health.rejected,
                }
                for r in self.gate.readers
            ]
        }

    async def cache_stats(self, args: dict[str, Any], caller: Caller) -> Result:
        gate = self.gate
        stats = await asyncio.wrap_future(gate.writer.submit(lambda s: s.stats()))
        by_status = Counter(m.status for m in gate.index.by_id.values())
        return {
            **stats,
            "members": gate.index.count,
            "tombstones": by_status.pop("erased", 0),
            "card_keys": len(gate.index.by_key),
            "max_version": gate.index.max_version,
            "digest": gate.index.digest,
            "by_status": dict(sorted(by_status.items())),
            "durability": gate.config.durability,
        }

    async def cache_lookup(self, args: dict[str, Any], caller: Caller) -> Result:
        gate = self.gate
        member: Member | None
        if args.get("card"):
            try:
                uid = normalize_uid(str(args["card"]))
            except ContractError as exc:
                raise ControlError(str(exc)) from exc
            key = gate.hash_credential("card:" + uid)
            member = gate.index.by_key.get(key)
            lookup = {"card_key_prefix": key.hex()[:12]}
        elif args.get("member"):
            member = gate.index.by_id.get(str(args["member"]))
            lookup = {"member_id": str(args["member"])}
        else:
            raise ControlError("give a card UID or a member id")
        if member is None:
            return {"found": False, **lookup}
        member_id = member.member_id
        state = await asyncio.wrap_future(gate.writer.submit(lambda s: s.member_state(member_id)))
        counters = gate.counters.get(member_id)
        return {
            "found": True,
            **lookup,
            "member": state or {},
            "counters": None
            if counters is None
            else {
                "day": counters.day,
                "entries": counters.entries,
                "inside_since": counters.inside_since,
            },
        }

    async def badge(self, args: dict[str, Any], caller: Caller) -> Result:
        sims = self.gate.sim_readers
        reader_id = args.get("reader")
        if reader_id is None:
            if not sims:
                raise ControlError("no sim reader configured")
            reader = next(iter(sims.values()))
        else:
            found = sims.get(str(reader_id))
            if found is None:
                raise ControlError(
                    f"no sim reader {reader_id!r} (configured: {', '.join(sims) or 'none'})"
                )
            reader = found
        if args.get("card"):
            try:
                credential = reader.read("card", normalize_uid(str(args["card"])))
            except ContractError as exc:
                raise ControlError(str(exc)) from exc
        elif args.get("qr"):
            credential = reader.read("qr", str(args["qr"]))
        else:
            raise ControlError("give --card UID or --qr CODE")
        return self.gate.on_credential(credential, source="control", operator=caller.operator)

    async def events_tail(self, args: dict[str, Any], caller: Caller) -> Result:
        limit = int(args.get("limit", 20))
        tails = self.gate.tails
        recent = await asyncio.wrap_future(
            self.gate.writer.submit(lambda s: s.recent_events(limit))
        )
        if not args.get("follow"):
            return {"events": recent}
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for ev in recent:
            queue.put_nowait(ev)
        tails.add(queue)

        async def follow() -> AsyncIterator[dict[str, Any]]:
            try:
                while True:
                    yield await queue.get()
            finally:
                tails.discard(queue)

        return follow()

    async def door_pulse(self, args: dict[str, Any], caller: Caller) -> Result:
        self.gate.pulse(source="control", operator=caller.operator)
        return {"pulsed": True, "pulse_ms": self.gate.config.door.pulse_ms}

    async def lockdown(self, args: dict[str, Any], caller: Caller) -> Result:
        on = args.get("on")
        if not isinstance(on, bool):
            raise ControlError("lockdown takes on or off")
        await self.gate.set_lockdown(on, source="control", operator=caller.operator)
        return {"lockdown": on}

    async def antipassback_reset(self, args: dict[str, Any], caller: Caller) -> Result:
        gate = self.gate
        member_id = str(args.get("member", ""))
        if member_id not in gate.index.by_id:
            raise ControlError(f"unknown member {member_id!r}")
        c = gate.counters.get(member_id)
        if c is not None and c.inside_since is not None:
            c.inside_since = None
            snapshot = MemberCounters(c.day, c.entries, None)
            await asyncio.wrap_future(
                gate.writer.submit(lambda s: s.put_counters(member_id, snapshot))
            )
        log.info("event=antipassback_reset member=%s operator=%s", member_id, caller.operator)
        return {"member_id": member_id, "reset": True}

    async def enroll(self, args: dict[str, Any], caller: Caller) -> Result:
        reader_id = args.get("reader")
        hardware = [r for r in self.gate.readers if r.kind != "sim"]
        if reader_id is not None and reader_id not in {r.id for r in hardware}:
            raise ControlError(f"no card reader {reader_id!r}")
        if not hardware:
            raise ControlError("no card reader configured to enrol from")
        try:
            async with asyncio.timeout(float(args.get("timeout", 30))):
                credential = await self.gate.next_card(reader_id)
        except TimeoutError as exc:
            raise ControlError("no card presented before the timeout") from exc
        log.info("event=enroll reader=%s operator=%s", credential.reader_id, caller.operator)
        value = credential.value
        return {
            "reader_id": credential.reader_id,
            "uid": None if value.startswith("w26:") else value,
            "wiegand": value if value.startswith("w26:") else None,
        }

    async def cache_refresh(self, args: dict[str, Any], caller: Caller) -> Result:
        """Pick up rows another process (``gated members import``) committed to the cache."""
        gate = self.gate
        above = gate.index.max_version
        rows = await asyncio.wrap_future(gate.writer.submit(lambda s: s.rows_above(above)))
        for row in rows:
            gate.index.put(member_from_row(row))
        return {"applied": len(rows), "max_version": gate.index.max_version}

    async def resync(self, args: dict[str, Any], caller: Caller) -> Result:
        sync = self.gate.sync
        if sync is None:
            raise ControlError("no [mqtt] section: this gate runs from its local cache alone")
        try:
            return await sync.resync(reason="operator", operator=caller.operator)
        except GatedError as exc:  # a refused snapshot, no broker: one line for the technician
            raise ControlError(str(exc)) from exc

    async def doctor(self, args: dict[str, Any], caller: Caller) -> Result:
        return {"checks": await self.gate.doctor()}
