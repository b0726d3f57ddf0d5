"""The turnstile daemon: readers → policy → door, the member cache, the control socket.

The hot path is :meth:`Gate.on_credential`: hash the card (or check the QR code), look the member
up in memory, ``decide()``, drive the door, then hand the event to the cache writer thread. Nothing
on it awaits the network or the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import operator
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

from gated import __version__
from gated.cache.index import MEMBER_COLUMNS, MemberIndex, member_from_row
from gated.cache.store import CacheStore, CacheWriter
from gated.cache.sync import SiteSync
from gated.clock import ClockProbe, TrustedClock
from gated.config import GateConfig
from gated.contract import (
    ContractError,
    CredentialHasher,
    GateStatus,
    card_credential_string,
    format_time,
    is_random_uid,
    load_credential_key,
    new_ulid,
    parse_time,
)
from gated.control import ControlError, ControlServer
from gated.control.commands import ControlCommands
from gated.doctor import daemon_checks
from gated.door import Door, DoorEvent
from gated.metrics import GateMetrics
from gated.outbox_guard import OutboxGuard, OutboxState
from gated.policy.credential import Credential
from gated.policy.decide import Decision, GateContext, Member, MemberCounters, decide, local_day
from gated.policy.qr import QrVerifier
from gated.readers.base import Reader
from gated.readers.registry import build_reader
from gated.readers.sim import SimReader
from gated.systemd import Notifier

log = logging.getLogger("gated.daemon")
T = TypeVar("T")

TIME_SAVE_INTERVAL_S = 60.0
# How often the outbox is counted exactly (off the hot path) to correct the ceiling's estimate.
OUTBOX_MEASURE_INTERVAL_S = 10.0
# Index updates applied per loop iteration (~3 µs each): a badge waits ~0.1 ms at most.
APPLY_SLICE = 32
INDEX_COLUMNS = tuple(c.strip() for c in MEMBER_COLUMNS.split(","))
_index_values = operator.itemgetter(*INDEX_COLUMNS)
# Members applied between two gc.freeze() calls (see Gate.freeze_new_members).
FREEZE_EVERY = 5000
# The cache writer and the executors' threads hold the GIL in Python code; a short switch interval
# lets the loop thread (decisions) take it back soon.
GIL_SWITCH_INTERVAL_S = 0.0002


def decide_in_realtime(priority: int) -> str:
    """Run the calling thread, the event loop's (every decision), under SCHED_FIFO at
    ``priority``; returns what is in effect, for status and doctor.

    A woken thread under the normal policy waits its turn behind every runnable thread of the
    board; a real-time loop runs as soon as the card is handed to it (BENCHMARKS.md, gate hot
    path). SCHED_RESET_ON_FORK: threads and processes started from here afterwards (the
    readers' threads, the verifier processes) get the normal policy, so only this thread can
    take the CPU first. The kernel still keeps 5% of each core for the rest (RT throttling).
    Needs CAP_SYS_NICE or an RLIMIT_RTPRIO of ``priority`` (the shipped unit's LimitRTPRIO=);
    without it the loop stays under the normal policy, which is logged and shown by doctor."""
    if priority <= 0:
        return "normal (realtime_priority = 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        log.warning(
            "event=realtime_unavailable priority=%d error=%r: decisions run under the normal "
            "policy (allow it with LimitRTPRIO=%d in the unit, or set realtime_priority = 0)",
            priority, exc.strerror or str(exc), priority,
        )  # fmt: skip
        return f"normal (SCHED_FIFO {priority} refused: {exc.strerror or exc})"
    log.info("event=realtime policy=SCHED_FIFO priority=%d", priority)
    return f"fifo {priority}"


class _Made(NamedTuple, Generic[T]):
    """What the writer's thread made with a commit: the write's own result, and the index records
    with their digest terms for the loop to put, or a whole new index to swap in."""

    value: T
    members: list[Member]
    terms: list[int]
    new_index: MemberIndex | None = None


def _store_and_make(
    write: Callable[[CacheStore, Callable[[dict[str, Any]], None]], T], store: CacheStore
) -> _Made[T]:
    """On the writer's thread: ``write`` with a callback that makes each applied row's index
    record as the row is stored, while a snapshot's next rows are still being made; with the
    row's digest term, that leaves the loop's index slices a third of the work."""
    members: list[Member] = []
    terms: list[int] = []

    def make(row: dict[str, Any]) -> None:
        members.append(member_from_row(_index_values(row)))
        terms.append(row["digest_term"])

    return _Made(write(store, make), members, terms)


class Gate:
    """Everything one gate holds at run time. ``run()`` serves until ``stop()``."""

    def __init__(
        self, config: GateConfig, *, pin_factory: Any = None, clock: ClockProbe | None = None
    ) -> None:
        self.config = config
        self._pin_factory = pin_factory
        self.credential_key = load_credential_key(config.keys.credential_key_file)
        self.hash_credential = CredentialHasher(self.credential_key)
        self.started_at = time.time()
        self.decisions: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.readers: list[Reader] = []
        self.sim_readers: dict[str, SimReader] = {}
        self.tails: set[asyncio.Queue[dict[str, Any]]] = set()
        self._enroll: tuple[str | None, asyncio.Future[Credential]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.sync: SiteSync | None = None  # when [mqtt] is configured
        self.last_head_office_at: float | None = None
        self.clock_synchronized: bool | None = None
        self.stale = False
        self._unfrozen = 0
        # How the loop thread is scheduled (decide_in_realtime, once run() starts).
        self.scheduling = "normal (not started)"

        store = CacheStore(config.cache_path, config.durability)
        gc.disable()  # a million new objects would trigger hundreds of collections while loading
        self.index: MemberIndex = store.load_index()
        self.counters: dict[str, MemberCounters] = store.load_counters()
        # Head-office time is not saved: only a plausible clock's time is (DESIGN "Time").
        self.clock = TrustedClock(store.get("last_good_time"), clock)
        self.last_head_office_at = store.get("last_head_office_at")
        self.qr = QrVerifier(config.policy.qr_window_s)
        self.qr.restore(store.load_nonces(self.clock.now()))
        self.context = GateContext(
            site=config.site,
            gate=config.gate,
            zones=frozenset(config.zones),
            tz=config.tz,
            anti_passback_s=config.policy.anti_passback_s,
            daily_limit=config.policy.daily_limit,
            lockdown=bool(store.get("lockdown", False)),
        )
        self.outbox = OutboxGuard(
            config.outbox_warn_events,
            config.outbox_max_events,
            store.outbox_depth(),
            int(store.get("outbox_dropped", 0)),
            self._outbox_alarm,
        )
        self.writer = CacheWriter(store)
        self.clock.listen(lambda kind, reason: self.event(kind, reason=reason))
        self.metrics = GateMetrics(self)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        # A million long-lived records: keep them out of the collector's generations so a full
        # collection never walks them during a badge.
        gc.collect()
        gc.freeze()
        gc.enable()

    # --- the hot path ----------------------------------------------------------------------

    def on_credential(
        self, credential: Credential, *, source: str = "reader", operator: str | None = None
    ) -> dict[str, Any]:
        """Decide one read and drive the door; returns what ``gatectl badge --json`` prints."""
        enroll = self._enroll
        if enroll is not None and source == "reader" and credential.kind == "card":
            wanted, future = enroll
            if wanted in (None, credential.reader_id) and not future.done():
                future.set_result(credential)
                return {"allow": False, "reason": "enrolment", "member_id": None, "latency_us": 0}
        now = self.clock.now()
        fault: str | None = None
        nonce: tuple[str, str] | None = None
        member: Member | None
        if credential.kind == "card":
            if is_random_uid(credential.value):
                self.rejected["random_uid"] += 1
                member = None
            else:
                key = self.hash_credential(card_credential_string(credential.value))
                member = self.index.by_key.get(key)
        else:
            member, fault, nonce = self.qr.check(credential.value, self.index.by_id.get, now)
            if fault == "unknown_credential":
                fault = None
        counters = self.counters.get(member.member_id) if member is not None else None
        decision = decide(member, credential, self.context, now, counters, fault)
        door = self.door
        passage = (
            decision.allow
            and source == "reader"
            and credential.direction == "in"
            and door.has_passage_sensor
        )
        if decision.allow:
            if passage:
                driven = door.grant(
                    on_passage=lambda passed: self._after_passage(
                        credential, member, decision, latency_us, passed
                    )
                )
            else:
                driven = door.grant()
        else:
            driven = door.deny()
        latency_us = (driven - credential.at) // 1000
        self.decisions[decision.reason] += 1
        self.metrics.decided(decision.allow, decision.reason, latency_us)
        if decision.allow and nonce is not None:
            expires = self.qr.spend(nonce, now)
            m_id, n = nonce
            self.writer.post(lambda s: s.spend_nonce(m_id, n, expires))
        if not passage:
            self._record_decision(
                credential, member, decision, latency_us, now, source, operator, count=True
            )
        return {
            "allow": decision.allow,
            "reason": decision.reason,
            "member_id": member.member_id if member is not None else None,
            "latency_us": latency_us,
            "message": decision.message,
        }

    def _on_read(self, credential: Credential) -> None:
        """The emit callback every reader gets. A fault in deciding fails closed: the door stays
        shut, the fault is logged and counted, and the reader keeps reading."""
        try:
            self.on_credential(credential)
        except Exception:
            self.rejected["decision_error"] += 1
            log.exception(
                "event=decision_error reader=%s kind=%s", credential.reader_id, credential.kind
            )
            self.door.deny()

    def _record_decision(
        self,
        credential: Credential,
        member: Member | None,
        decision: Decision,
        latency_us: int,
        now: float,
        source: str,
        operator: str | None,
        *,
        count: bool,
    ) -> None:
        if not decision.allow:
            kind = "deny"
        elif credential.direction == "out":
            kind = "exit"
        else:
            kind = "entry"
        event = self.event(
            kind,
            member_id=member.member_id if member is not None else None,
            credential_kind=credential.kind,
            reader_id=credential.reader_id,
            direction=credential.direction,
            reason=decision.reason,
            latency_us=latency_us,
            source=source,
            operator=operator,
            now=now,
            record=False,
        )
        counters = None
        # Operator actions never count toward attendance, limits or anti-passback; neither does
        # a door opened by the fire alarm.
        if (
            count
            and decision.allow
            and member is not None
            and source == "reader"
            and not self.context.fire
        ):
            counters = self._count(member.member_id, credential.direction, now)
        mid = member.member_id if member is not None else ""
        keep = self.outbox.admit()  # at the ceiling the counters still count; the row is dropped

        def write(store: CacheStore) -> None:
            if keep:
                store.add_event(event)
            if counters is not None:
                store.put_counters(mid, counters)

        self.writer.post(write)
        self._publish_local(event)

    def _count(self, member_id: str, direction: str, now: float) -> MemberCounters:
        c = self.counters.get(member_id)
        if c is None:
            c = self.counters[member_id] = MemberCounters()
        if direction == "out":
            c.inside_since = None
        else:
            day = local_day(now, self.context.tz)
            if c.day != day:
                c.day, c.entries = day, 0
            c.entries += 1
            c.inside_since = now
        return MemberCounters(c.day, c.entries, c.inside_since)

    def _after_passage(
        self,
        credential: Credential,
        member: Member | None,
        decision: Decision,
        latency_us: int,
        passed: bool,
    ) -> None:
        """With a passage sensor an entry counts only when someone walks through."""
        if passed:
            self._record_decision(
                credential,
                member,
                decision,
                latency_us,
                self.clock.now(),
                "reader",
                None,
                count=True,
            )
        else:
            not_passed = Decision(True, "not_passed", "Not passed")
            self._record_decision(
                credential,
                member,
                not_passed,
                latency_us,
                self.clock.now(),
                "reader",
                None,
                count=False,
            )

    # --- events ----------------------------------------------------------------------------

    def event(
        self,
        kind: str,
        *,
        member_id: str | None = None,
        credential_kind: str | None = None,
        reader_id: str | None = None,
        direction: str | None = None,
        reason: str | None = None,
        latency_us: int | None = None,
        source: str = "reader",
        operator: str | None = None,
        now: float | None = None,
        record: bool = True,
    ) -> dict[str, Any]:
        """Build a GateEvent (and, unless ``record`` is off, queue it in the outbox)."""
        event = {
            "event_id": new_ulid(),
            "site": self.config.site,
            "gate": self.config.gate,
            "at": format_time(self.clock.now() if now is None else now),
            "kind": kind,
            "member_id": member_id,
            "credential_kind": credential_kind,
            "reader_id": reader_id,
            "direction": direction,
            "reason": reason,
            "latency_us": latency_us,
            "source": source,
            "operator": operator,
        }
        if record:
            if self.outbox.admit():
                self.writer.post(lambda s: s.add_event(event))
            self._publish_local(event)
        return event

    def _publish_local(self, event: dict[str, Any]) -> None:
        if event["kind"] not in ("entry", "deny", "exit"):
            log.info(
                "event=%s reason=%s source=%s operator=%s",
                event["kind"],
                event["reason"],
                event["source"],
                event["operator"],
            )
        for q in self.tails:
            if q.qsize() < 1000:
                q.put_nowait(event)
        if self.sync is not None:
            self.sync.notify_event()

    def on_door_event(self, ev: DoorEvent) -> None:
        if ev.kind == "fire":
            self.context.fire = ev.detail == "active"
        self.metrics.door_event(ev.kind, ev.detail)
        self.event(ev.kind, reason=ev.detail, source="reader")

    def _outbox_alarm(self, state: OutboxState, depth: int) -> None:
        """Once per crossing: the journal, and `gatectl events tail -f` (the alarm is not queued:
        the outbox is what is full; head office sees outbox_depth in the gate's status)."""
        level = {"ok": logging.INFO, "warn": logging.WARNING, "full": logging.ERROR}[state]
        log.log(
            level,
            "event=outbox_%s depth=%d warn=%d max=%d dropped=%d",
            state, depth, self.outbox.warn, self.outbox.ceiling, self.outbox.dropped,
        )  # fmt: skip
        alarm = self.event(f"outbox_{state}", reason=f"depth {depth}", record=False)
        for q in self.tails:
            if q.qsize() < 1000:
                q.put_nowait(alarm)

    # --- head office -------------------------------------------------------------------------

    def apply_states(self, states: list[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """Store member states (verified or locally trusted) and then apply them to the index.

        Returns a Future resolved with the rows that were newer, once they are committed and
        visible to decisions.
        """
        return self._commit_then_index(lambda s, each: s.apply_states(states, each))

    def apply_rows(self, rows: Iterable[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """As :meth:`apply_states`, for rows ``member_row`` already made (in the sync's verifier
        processes, so the writer thread holds the GIL less while decisions run)."""
        return self._commit_then_index(lambda s, each: s.apply_rows(rows, each))

    def apply_snapshot(self, rows: Iterable[dict[str, Any]]) -> Future[int]:
        """Store a verified snapshot's rows in one transaction, all or nothing, and put them in
        the index; resolves with how many were newer and applied, once decisions see them.

        The rows are not kept: each is freed as soon as it is stored, a chunk at a time on the
        writer's thread (freeing 100,000 in one go holds the GIL ~50 ms). Into an empty cache (a
        cold start) they go into a whole new index, built on the writer's thread as they are
        stored and swapped in with one assignment once committed: the loop does none of the
        index work, and until then decisions see the empty index (an unknown card), as before
        any snapshot. A snapshot refused or rolled back leaves cache and index as they were.
        """

        def write(store: CacheStore) -> _Made[int]:
            if store.has_members():
                return _store_and_make(lambda s, each: s.upsert_rows(rows, each), store)
            index = MemberIndex()
            put = index.put

            def put_all(batch: list[dict[str, Any]]) -> None:
                for row in batch:
                    put(member_from_row(_index_values(row)), row["digest_term"])

            return _Made(store.upsert_batches(rows, put_all), [], [], index)

        return self._index_when_committed(self.writer.submit(write))

    def _commit_then_index(
        self, write: Callable[[CacheStore, Callable[[dict[str, Any]], None]], T]
    ) -> Future[T]:
        return self._index_when_committed(self.writer.submit(partial(_store_and_make, write)))

    def _index_when_committed(self, committed: Future[_Made[T]]) -> Future[T]:
        """A Future of the write's own result, resolved once the index holds what it made."""
        loop = asyncio.get_running_loop()
        result: Future[T] = Future()
        committed.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._apply_to_index, f, result)
        )
        return result

    def _apply_to_index(self, committed: Future[_Made[T]], result: Future[T]) -> None:
        try:
            made = committed.result()
        except Exception as exc:  # the writer's typed failures are handed on to the caller
            result.set_exception(exc)
            return
        if made.new_index is not None:
            # Built from an empty cache. Nothing reached the old, empty index meanwhile: the index
            # changes only after the writer commits, in the writer's order, and a later commit's
            # slices start after this call.
            self.index = made.new_index
            self.freeze_new_members(made.new_index.count)
            result.set_result(made.value)
            return
        self._apply_slice(made.value, made.members, made.terms, 0, result)

    def _apply_slice(
        self, value: T, members: list[Member], terms: list[int], start: int, result: Future[T]
    ) -> None:
        """Put records into the index a slice at a time, yielding to the loop between slices so a
        badge arriving during a 100k-member burst waits for one slice at most."""
        end = min(start + APPLY_SLICE, len(members))
        put = self.index.put
        for i in range(start, end):
            put(members[i], terms[i])
        if end < len(members):
            asyncio.get_running_loop().call_soon(
                self._apply_slice, value, members, terms, end, result
            )
        else:
            self.freeze_new_members(len(members))
            result.set_result(value)

    def freeze_new_members(self, applied: int) -> None:
        """New members live as long as the gate: every few thousand, move them out of the
        collector's generations (as at start) so a full collection never walks them during a
        badge. Young cyclic garbage is collected first so it is not frozen with them."""
        self._unfrozen += applied
        if self._unfrozen >= FREEZE_EVERY:
            self._unfrozen = 0
            # While a snapshot holds the collector off, its young generations hold everything the
            # snapshot made: collecting them took ~70 ms of a badge's time (100k members).
            if gc.isenabled():
                gc.collect(1)
            gc.freeze()

    async def outbox_depth(self) -> int:
        """Events waiting for the broker, counted on the writer thread."""
        return int(await asyncio.wrap_future(self.writer.submit(lambda s: s.outbox_depth())))

    def heard_from_head_office(self, issued_at: str | None = None) -> None:
        """Record contact (and a newer trusted time) from a verified head-office object."""
        now = time.time()
        self.last_head_office_at = now
        self.stale = False
        if issued_at is not None:
            with contextlib.suppress(ContractError):
                self.clock.observe(parse_time(issued_at).timestamp())

    # --- what the control socket, doctor and the sync read and drive -----------------------

    def published_status(self, state: str, outbox_depth: int | None) -> dict[str, Any]:
        """The GateStatus this gate publishes (retained, and as its last will)."""
        last = self.last_head_office_at
        return GateStatus(
            state="online" if state == "online" else "offline",
            site=self.config.site,
            gate=self.config.gate,
            software_version=__version__,
            started_at=format_time(self.started_at),
            members=self.index.count,
            max_version=self.index.max_version,
            digest=self.index.digest,
            last_head_office_at=format_time(last) if last else None,
            outbox_depth=outbox_depth,
            lockdown=self.context.lockdown,
            readers=[
                {
                    "id": r.id,
                    "kind": r.kind,
                    "state": "ok" if r.health.state == "ok" else "fault",
                    # Head office tells "people inside" from "entries today" by exit readers.
                    "direction": r.direction,
                }
                for r in self.readers
            ],
        ).model_dump()

    def status(self, outbox_depth: int) -> dict[str, Any]:
        """What ``gatectl status`` shows (without the sync's part): the published status and
        what only a technician needs."""
        return {
            **self.published_status("online", outbox_depth),
            "outbox_dropped": self.outbox.dropped,
            "events_lost": self.writer.events_lost,
            "events_held": self.writer.events_held,
            "cache_writes_refused": self.writer.refusing,
            "metrics_url": self.metrics.url,
            "fire": self.context.fire,
            "stale_cache": self.stale,
            "clock_synchronized": self.clock_synchronized,
            "clock": self.clock.stats(),
            "scheduling": self.scheduling,
            "now": format_time(self.clock.now()),
            "decisions": dict(self.decisions),
            "rejected": dict(self.rejected),
            "door": {
                "pin_factory": self.door.pin_factory_name,
                "contact_open": self.door.contact_open,
                "relay_energized": self.door.relay_energized,
                "fire_active": self.door.fire_active,
            },
        }

    def pulse(self, *, source: str, operator: str | None) -> None:
        """An operator's opening: the door pulses; recorded, never counted as attendance."""
        self.door.pulse(source)
        self.event("entry", reason="door_pulse", source=source, operator=operator)

    async def set_lockdown(self, on: bool, *, source: str, operator: str | None) -> None:
        """Lockdown survives a restart: the reply waits until the flag is committed."""
        self.context.lockdown = on
        await asyncio.wrap_future(self.writer.submit(lambda s: s.set("lockdown", on)))
        self.event("lockdown", reason="on" if on else "off", source=source, operator=operator)

    async def next_card(self, reader_id: str | None) -> Credential:
        """The next card read on ``reader_id`` (any reader if None), taken instead of decided:
        enrolment. One at a time."""
        if self._enroll is not None:
            raise ControlError("an enrolment is already waiting for a card")
        future: asyncio.Future[Credential] = asyncio.get_running_loop().create_future()
        self._enroll = (reader_id, future)
        try:
            return await future
        finally:
            self._enroll = None

    async def doctor(self) -> list[dict[str, str]]:
        """``gatectl doctor``'s checks that only the running daemon can make."""
        return [c.as_dict() for c in await daemon_checks(self)]

    # --- lifetime ------------------------------------------------------------------------------

    def start_readers(self) -> list[asyncio.Task[None]]:
        """Build every configured reader (the door must be open: Wiegand readers share its pin
        factory) and run each as a task whose reads come to the hot path."""
        tasks = []
        for rc in self.config.readers:
            reader = build_reader(rc, pin_factory=self.door.factory)
            self.readers.append(reader)
            if isinstance(reader, SimReader):
                self.sim_readers[reader.id] = reader
            tasks.append(asyncio.create_task(self._run_reader(reader), name=f"reader-{reader.id}"))
        return tasks

    async def _run_reader(self, reader: Reader) -> None:
        last_state = reader.health.state
        watcher = asyncio.create_task(self._watch_reader(reader, last_state))
        try:
            await reader.run(self._on_read)
        finally:
            watcher.cancel()

    async def _watch_reader(self, reader: Reader, last: str) -> None:
        """Turn reader health changes into reader_fault / reader_ok events."""
        while True:
            await asyncio.sleep(0.5)
            state = reader.health.state
            if state != last:
                kind = "reader_ok" if state == "ok" else "reader_fault"
                self.event(kind, reader_id=reader.id, reason=state if state != "ok" else None)
                log.warning(
                    "event=%s reader=%s state=%s detail=%r",
                    kind,
                    reader.id,
                    state,
                    reader.health.detail,
                )
                last = state

    async def _housekeeping(self) -> None:
        """Once a minute: save the last good time, forget old nonces, watch clock and freshness."""
        max_offline = self.config.policy.max_offline
        while True:
            now = self.clock.now()
            self.qr.prune(now)
            synced = self.clock.refresh()
            if synced is False and self.clock_synchronized is not False:
                self.event("clock_unsynced", reason="system clock not synchronized")
            self.clock_synchronized = synced
            good = self.clock.good_time()
            if good is not None:
                self.writer.post(partial(CacheStore.set, key="last_good_time", value=good))
            if self.config.mqtt is not None:
                last = self.last_head_office_at or self.started_at
                stale = time.time() - last > max_offline
                if stale and not self.stale:
                    self.event(
                        "stale_cache", reason=f"no head-office contact for over {max_offline:.0f}s"
                    )
                self.stale = stale
            await asyncio.sleep(TIME_SAVE_INTERVAL_S)

    async def _watch_outbox(self) -> None:
        """Count the outbox exactly every few seconds (the broker link deletes rows we never see)
        and keep the number of dropped events on disk, so doctor still fails after a restart."""
        saved = self.outbox.dropped
        # Without [mqtt] nobody collects events: the outbox is a local journal of the most recent
        # ones (gatectl events tail), kept well below the alarm so a standalone gate never trips it.
        keep = None if self.config.mqtt is not None else self.config.outbox_warn_events // 2
        while True:
            if keep is not None:
                trimmed = await asyncio.wrap_future(
                    self.writer.submit(partial(CacheStore.trim_outbox, keep=keep))
                )
                if trimmed:
                    log.info(
                        "event=outbox_trimmed removed=%d kept=%d reason=no_broker", trimmed, keep
                    )
            mark = self.outbox.mark()
            depth = await self.outbox_depth()
            self.outbox.measured(depth, mark)
            dropped = self.outbox.dropped
            if dropped != saved:
                log.error(
                    "event=outbox_dropping dropped=%d since_last=%d", dropped, dropped - saved
                )
                self.writer.post(partial(CacheStore.set, key="outbox_dropped", value=dropped))
                saved = dropped
            await asyncio.sleep(OUTBOX_MEASURE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or :meth:`stop`."""
        loop = asyncio.get_running_loop()
        self.scheduling = decide_in_realtime(self.config.realtime_priority)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.door = Door(self.config.door, loop, self.on_door_event, pin_factory=self._pin_factory)
        control = ControlServer(
            self.config.control_socket, ControlCommands(self).handle, self.rejected
        )
        await control.start()
        if self.config.metrics.address is not None:
            self.metrics.serve(*self.config.metrics.address)
        spawn = self._tasks.append
        spawn(asyncio.create_task(self._watch_outbox(), name="outbox"))
        self._tasks.extend(self.start_readers())
        spawn(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        notifier = Notifier()
        spawn(asyncio.create_task(notifier.watchdog(), name="watchdog"))
        if self.config.mqtt is not None:
            self.sync = SiteSync(self)
            spawn(asyncio.create_task(self.sync.run(), name="sync"))
        free = shutil.disk_usage(self.config.state_dir).free
        notifier.notify("READY=1")
        log.info(
            "event=ready site=%s gate=%s members=%d max_version=%d lockdown=%s readers=%d disk_free_mb=%d",
            self.config.site, self.config.gate, self.index.count, self.index.max_version,
            self.context.lockdown, len(self.readers), free // 2**20,
        )  # fmt: skip
        try:
            await self._stop.wait()
        finally:
            notifier.notify("STOPPING=1")
            log.info("event=stopping")
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await control.close()
            self.metrics.close()
            self.door.close()
            # Events dropped since the last save still count after a restart (doctor, metrics).
            dropped = self.outbox.dropped
            self.writer.post(partial(CacheStore.set, key="outbox_dropped", value=dropped))
            self.writer.close()
            log.info("event=stopped")
