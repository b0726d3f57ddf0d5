"""Signed GateCommands from an operator: checked, remembered, then run.

A gate runs a command only if it verifies against a command key (never the head-office key), names
this site and gate, has not expired, lives at most MAX_COMMAND_TTL_S, and has not run before (its
id is remembered in the cache before it runs, so a crash mid-command never runs it twice). The
staff console's desk key, which lives on the internet-facing head office, may only open a door or
lock a site down (and lift it), for a minute at most. Every
refusal is counted by reason and logged; nothing raises out of :meth:`RemoteCommands.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import aiomqtt

from gated.cache.store import CacheWriter
from gated.clock import TrustedClock, issued_too_far_ahead
from gated.contract import (
    Command,
    ContractError,
    PayloadError,
    SignatureError,
    Verifier,
    check_command,
    loads_bounded,
    parse_time,
)
from gated.errors import GatedError

log = logging.getLogger("gated.sync")

MAX_COMMAND_TTL_S = 300.0
DESK_ACTIONS = frozenset({"pulse", "lockdown_on", "lockdown_off"})
MAX_DESK_COMMAND_TTL_S = 60.0


class CommandedGate(Protocol):
    """What a remote command can drive on the gate."""

    @property
    def clock(self) -> TrustedClock: ...
    @property
    def writer(self) -> CacheWriter: ...

    def pulse(self, *, source: str, operator: str | None) -> None: ...
    async def set_lockdown(self, on: bool, *, source: str, operator: str | None) -> None: ...


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _log_refusal(reason: str, command_id: str) -> None:
    log.warning("event=command_refused reason=%s id=%s", reason, command_id)


class RemoteCommands:
    """Checks and runs the commands for one gate; ``counts`` is what ``gatectl status`` shows.
    ``resync(command_id)`` and ``announce()`` (publish the gate's status now) start that work
    without waiting for it."""

    def __init__(
        self,
        site: str,
        gate_id: str,
        verifier: Verifier | None,
        desk_verifier: Verifier | None,
        gate: CommandedGate,
        resync: Callable[[str], object],
        announce: Callable[[], object],
        log_refusal: Callable[[str, str], None] | None = None,
    ) -> None:
        """``log_refusal(reason, command_id)`` logs a refusal (the sync aggregates them, so a
        flood of forged commands cannot fill the log); by default each is logged."""
        self.site = site
        self.gate_id = gate_id
        self.verifier = verifier
        self.desk_verifier = desk_verifier
        self.gate = gate
        self._resync = resync
        self._announce = announce
        self._log_refusal = log_refusal or _log_refusal
        self._running: set[str] = set()
        self.counts: Counter[str] = Counter()

    async def handle(self, payload: bytes) -> None:
        """Check one command message and run it; refusals and failures are counted, not raised."""
        command_id = "?"
        try:
            if self.verifier is None and self.desk_verifier is None:
                raise _Refused("no_command_key")
            try:
                obj = loads_bounded(payload)
            except PayloadError as exc:
                raise _Refused(exc.reason) from exc
            if not isinstance(obj, dict):
                raise _Refused("malformed")
            command_id = str(obj.get("id", "?"))[:40]
            # The key decides what a command may do: the offline command key anything, the
            # desk key only DESK_ACTIONS for a minute (checked in _check).
            desk = self.desk_verifier is not None and obj.get("kid") in self.desk_verifier.kids
            verifier = self.desk_verifier if desk else self.verifier
            if verifier is None:
                raise _Refused("bad_signature")
            command, not_after = await self._check(verifier, obj, desk=desk)
            await self._remember(command.id, not_after)
            await self._run(command)
            self.counts["run"] += 1
        except _Refused as refused:
            self.counts[f"refused_{refused.reason}"] += 1
            self._log_refusal(refused.reason, command_id)
        except (sqlite3.Error, GatedError, aiomqtt.MqttError) as exc:
            self.counts["failed"] += 1
            log.error("event=command_failed id=%s error=%s", command_id, exc)

    async def _check(
        self, verifier: Verifier, obj: dict[str, Any], *, desk: bool
    ) -> tuple[Command, float]:
        """The command and its ``not_after`` (Unix time), or _Refused with the reason."""
        try:
            body = await asyncio.to_thread(verifier.verify, obj, "gate_command")
            command = check_command(body)
            issued_at = parse_time(command.issued_at).timestamp()
            not_after = parse_time(command.not_after).timestamp()
        except SignatureError as exc:
            raise _Refused("bad_signature") from exc
        except ContractError as exc:
            raise _Refused("malformed") from exc
        if command.site != self.site or command.gate != self.gate_id:
            raise _Refused("misaddressed")
        now = self.gate.clock.now()
        if not_after <= now:
            raise _Refused("expired")
        if issued_too_far_ahead(issued_at, now):
            raise _Refused("issued_in_future")
        if not 0 < not_after - issued_at <= (MAX_DESK_COMMAND_TTL_S if desk else MAX_COMMAND_TTL_S):
            raise _Refused("lifetime_too_long")
        if desk and command.action not in DESK_ACTIONS:
            raise _Refused("not_allowed_for_desk_key")
        return command, not_after

    async def _remember(self, command_id: str, not_after: float) -> None:
        """Refuse a replay; remember the id (committed) before the command runs."""
        if command_id in self._running:
            raise _Refused("replayed")
        self._running.add(command_id)
        writer = self.gate.writer
        try:
            if await asyncio.wrap_future(writer.submit(lambda s: s.command_seen(command_id))):
                raise _Refused("replayed")
            await asyncio.wrap_future(
                writer.submit(lambda s: s.remember_command(command_id, not_after))
            )
        finally:
            self._running.discard(command_id)

    async def _run(self, command: Command) -> None:
        log.info("event=command action=%s id=%s", command.action, command.id)
        gate = self.gate
        # The event names who asked: the signed args.operator (a staff member at the console)
        # when present, else the command id.
        named = command.args.get("operator")
        operator = named[:64] if isinstance(named, str) and named else command.id
        if command.action == "pulse":
            gate.pulse(source="command", operator=operator)
        elif command.action in ("lockdown_on", "lockdown_off"):
            await gate.set_lockdown(
                command.action == "lockdown_on", source="command", operator=operator
            )
            # The console shows lockdown from the retained status: say so now, not at the next
            # heartbeat.
            self._announce()
        elif command.action == "resync":
            self._resync(command.id)
        else:  # message: for the technician reading the log
            text = str(command.args.get("text", ""))[:200]
            log.info("event=command_message id=%s text=%r", command.id, text)
