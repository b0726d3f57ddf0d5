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
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from gated.cache.events import EventLog
from gated.cache.image import IMAGE_NAME, ImageKeeper, image_tag
from gated.cache.index import MemberIndex
from gated.cache.live import LiveIndex
from gated.cache.store import CacheStore, CacheWriter
from gated.clock import ClockProbe, TrustedClock
from gated.config import GateConfig
from gated.contract import (
    ContractError,
    CredentialHasher,
    is_random_uid,
    load_credential_key,
    parse_time,
)
from gated.control import ControlError, ControlServer
from gated.control.commands import ControlCommands
from gated.door import Door, DoorEvent
from gated.gate_status import published_status, technician_status
from gated.housekeeping import keep_house
from gated.metrics import GateMetrics
from gated.placement import (
    Placement,
    current,
    keep_off_decisions,
    place_decisions,
    release_decisions,
)
from gated.policy.credential import Credential
from gated.policy.decide import (
    Decision,
    GateContext,
    Member,
    MemberCounters,
    decide,
    local_day,
    reads_counters,
)
from gated.policy.qr import QrVerifier
from gated.process import decide_in_realtime, settle_after_load
from gated.readers.base import Reader
from gated.readers.registry import build_reader
from gated.readers.sim import SimReader
from gated.readers.supervise import run_reader
from gated.systemd import Notifier

if TYPE_CHECKING:
    # Imported when [mqtt] is configured: a standalone gate never loads the MQTT client, TLS
    # and the verifier processes' code (~2 MiB of its memory).
    from gated.cache.sync import SiteSync

log = logging.getLogger("gated.daemon")
T = TypeVar("T")


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
        self._enroll: tuple[str | None, asyncio.Future[Credential]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.sync: SiteSync | None = None  # when [mqtt] is configured
        self.last_head_office_at: float | None = None
        self.clock_synchronized: bool | None = None
        self.stale = False
        # How the loop thread is scheduled (decide_in_realtime, once run() starts).
        self.scheduling = "normal (not started)"
        # Which CPU the loop and the readers' threads share (place_decisions, once run() starts).
        self.placement: Placement = current()

        store = CacheStore(config.cache_path, config.durability)
        gc.disable()  # a million new objects would trigger hundreds of collections while loading
        image, tag = (
            config.cache_path.with_name(IMAGE_NAME),
            image_tag(config.site, self.credential_key),
        )
        self.index: MemberIndex = store.load_index(image, tag)
        # The image on disk; after a start that brought an older one up to the rows, a new one
        # is saved soon.
        saved = store.image_generation
        self.images = ImageKeeper(image, store.generation()[0], tag, saved)
        self.counters: dict[str, MemberCounters] = store.load_counters()
        # Head-office time is not saved: only a plausible clock's time is (DESIGN "Time").
        self.clock = TrustedClock(store.get("last_good_time"), clock)
        self.last_head_office_at = store.get("last_head_office_at")
        # Codes minted before this start are refused (policy/qr.py): a nonce spent in the last
        # moment before a kill -9 may never have reached the disk.
        self.qr = QrVerifier(config.policy.qr_window_s, not_before=self.clock.now())
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
        self.writer = CacheWriter(store)
        self.events = EventLog(
            config.site,
            config.gate,
            self.clock,
            self.writer,
            warn=config.outbox_warn_events,
            ceiling=config.outbox_max_events,
            depth=store.outbox_depth(),
            dropped=int(store.get("outbox_dropped", 0)),
        )
        self.outbox = self.events.outbox
        self.tails = self.events.tails
        self.live = LiveIndex(self.writer, self)
        self.clock.listen(lambda kind, reason: self.events.record(kind, reason=reason))
        self.metrics = GateMetrics(self)
        settle_after_load()

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
        # A card's member comes as decide() reads it, without its id (see card_lookup): made
        # whole from its slot once the door has been driven, or before deciding if the policy
        # needs the member's counters, which are kept by id.
        slot = -1
        if credential.kind == "card":
            if is_random_uid(credential.value):
                self.rejected["random_uid"] += 1
                member = None
            else:
                slot, member = self.index.card_lookup(
                    self.hash_credential.card_value(credential.value)
                )
        else:
            member, fault, nonce = self.qr.check(credential.value, self.index.by_id.get, now)
            if fault == "unknown_credential":
                fault = None
        counters = None
        if member is not None and reads_counters(member, self.context):
            if slot >= 0:
                member, slot = self.index.member(slot, member.credentials), -1
            counters = self.counters.get(member.member_id)
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
        if slot >= 0 and member is not None:
            member = self.index.member(slot, member.credentials)
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
        event = self.events.build(
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
        self.events.publish(event)

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

    def on_door_event(self, ev: DoorEvent) -> None:
        if ev.kind == "fire":
            self.context.fire = ev.detail == "active"
        self.metrics.door_event(ev.kind, ev.detail)
        self.events.record(ev.kind, reason=ev.detail, source="reader")

    # --- head office -------------------------------------------------------------------------

    def apply_states(self, states: list[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """Store member states (verified or locally trusted), then index them; the Future
        resolves with the rows that were newer once decisions see them."""
        return self.live.apply_states(states)

    def apply_rows(self, rows: Iterable[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """As :meth:`apply_states`, for rows the sync's verifier processes made."""
        return self.live.apply_rows(rows)

    def apply_snapshot(self, rows: Iterable[dict[str, Any]]) -> Future[int]:
        """A verified snapshot's rows, all or nothing; resolves with how many were newer."""
        return self.live.apply_snapshot(rows)

    async def outbox_depth(self) -> int:
        """Events waiting for the broker, counted on the writer thread."""
        return await self.events.depth()

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
        return published_status(self, state, outbox_depth)

    def status(self, outbox_depth: int) -> dict[str, Any]:
        """What ``gatectl status`` shows (without the sync's part)."""
        return technician_status(self, outbox_depth)

    def pulse(self, *, source: str, operator: str | None) -> None:
        """An operator's opening: the door pulses; recorded, never counted as attendance."""
        self.door.pulse(source)
        self.events.record("entry", reason="door_pulse", source=source, operator=operator)

    async def set_lockdown(self, on: bool, *, source: str, operator: str | None) -> None:
        """Lockdown survives a restart: the reply waits until the flag is committed."""
        self.context.lockdown = on
        await asyncio.wrap_future(self.writer.submit(lambda s: s.set("lockdown", on)))
        self.events.record(
            "lockdown", reason="on" if on else "off", source=source, operator=operator
        )

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
        from gated.doctor import daemon_checks  # only when a technician asks

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
            run = run_reader(reader, self._on_read, self._reader_health)
            tasks.append(asyncio.create_task(run, name=f"reader-{reader.id}"))
        return tasks

    def _reader_health(self, reader: Reader, state: str) -> None:
        kind = "reader_ok" if state == "ok" else "reader_fault"
        self.events.record(kind, reader_id=reader.id, reason=state if state != "ok" else None)
        log.warning(
            "event=%s reader=%s state=%s detail=%r", kind, reader.id, state, reader.health.detail
        )

    def place_threads(self) -> None:
        """Pin the calling thread, the loop's, to the decision CPU (``decision_cpu``) and move
        the threads running now (the cache writer, the metrics server) off it; the readers'
        threads started afterwards join it and the loop's worker threads keep off it."""
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="gated-worker", initializer=keep_off_decisions)
        )
        self.placement = place_decisions(self.config.decision_cpu)

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
            self.config.control_socket,
            ControlCommands(self).handle,
            self.rejected,
            self.config.control,
        )
        await control.start()
        if self.config.metrics.address is not None:
            self.metrics.serve(*self.config.metrics.address)
        self.place_threads()  # before the readers start: their threads join the loop's CPU
        spawn = self._tasks.append
        # Without [mqtt] nobody collects events: the outbox is a local journal of the most recent
        # ones (gatectl events tail), kept well below the alarm so a standalone gate never trips it.
        keep = None if self.config.mqtt is not None else self.config.outbox_warn_events // 2
        spawn(asyncio.create_task(self.events.watch_outbox(keep), name="outbox"))
        self._tasks.extend(self.start_readers())
        spawn(asyncio.create_task(keep_house(self), name="housekeeping"))
        notifier = Notifier()
        spawn(asyncio.create_task(notifier.watchdog(), name="watchdog"))
        spawn(asyncio.create_task(self.images.keep(self, self.live), name="index-image"))
        if self.config.mqtt is not None:
            from gated.cache.sync import SiteSync

            self.sync = SiteSync(self)
            self.events.on_recorded = self.sync.notify_event
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
            self.images.save_at_stop(self.index, self.live)
            release_decisions()
            self.placement = current()
            log.info("event=stopped")
