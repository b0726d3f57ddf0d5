"""The gate's link to head office: member states, manifest and commands in; events and status out.

One :class:`SiteSync` per gate, run as a task by the daemon when ``[mqtt]`` is configured. It keeps
a persistent MQTT session (fixed client id, ``clean_session`` off, MQTT 3.1.1) and reconnects with
jittered exponential backoff for as long as the gate runs.

Incoming member states are cheap to refuse and dear to accept: a state whose version is not newer
than the cache's is skipped on the loop before any signature work (a reconnect re-delivers every
retained state); the rest are verified in batches in worker processes (at nice 19, so they only
take what decisions leave) and handed to :meth:`Gate.apply_rows`, which commits them and puts them
into the index in slices, so a badge never waits behind a sync burst. Only a verified state raises
what the gate holds of a member: the skip compares with the cache alone, and every distinct
payload waiting for a member is verified, so a forged state at a high version cannot shadow the
genuine one behind it (a member's waiting payloads are bounded, and so is the whole queue).
Nothing that arrives can raise out of here: a message that is forged, malformed, oversized or for
another site is dropped and counted in ``gatectl status``, and logged one line per reason and
interval (REJECT_LOG_INTERVAL_S), not one per message.

Beside this connection loop: the verifier processes (:mod:`gated.cache.verifier`), snapshots
(:mod:`gated.cache.snapshot`: an empty gate fetches one before it subscribes, a gate still apart
from the manifest once the traffic settles fetches one) and signed commands
(:mod:`gated.cache.commands`). What it knows of the gate is :class:`SyncGate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Protocol

import aiomqtt

from gated.cache.commands import RemoteCommands
from gated.cache.index import MemberIndex
from gated.cache.snapshot import SnapshotError, load_snapshot
from gated.cache.store import CacheStore, CacheWriter
from gated.cache.verifier import VerifierPool, unpickled, verify_member_states
from gated.clock import TrustedClock
from gated.config import GateConfig, MqttConfig
from gated.contract import (
    MEMBER_ID_RE,
    ContractError,
    PayloadError,
    SignatureError,
    Verifier,
    check_site_summary,
    cmd_topic,
    events_topic,
    format_time,
    load_public_key_raw,
    loads_bounded,
    manifest_topic,
    member_topic,
    member_version,
    members_wildcard,
    parse_topic,
    status_topic,
)
from gated.errors import GatedError
from gated.mqtt_session import (
    TlsFiles,
    client_for,
    read_password,
    session,
    take_messages_directly,
    wait_disconnected,
)

log = logging.getLogger("gated.sync")

# A member state is ~0.5 KiB; anything this big is an attack or a bug, and is never parsed.
MAX_PAYLOAD = 64 * 1024
# States go to the verifiers in batches: a batch costs a process round trip, a commit and a wakeup
# of the loop, so while the verifiers are busy the next batch keeps growing (up to VERIFY_BATCH);
# when idle a state waits at most BATCH_DELAY_S.
VERIFY_BATCH = 512
BATCH_DELAY_S = 0.005
# After this long without member traffic a sync has ended: compare with the manifest.
SETTLE_S = 1.5
BACKOFF_MIN_S = 0.5
# Unverified payloads waiting (or being verified) for one member, and for all members. A flood
# on one member's topic faster than the verifiers take it loses its excess here (counted as
# ``queue_full``), not other members' states; the overall bound keeps memory bounded. The
# reconnect burst of a whole site is one payload per member and the verifiers keep pace with the
# broker, so neither bound is reached by genuine traffic.
PENDING_PER_MEMBER = 32
PENDING_MAX = 200_000
REJECT_LOG_INTERVAL_S = 10.0
OUTBOX_BATCH = 200
# A PUBACK or SUBACK comes after every message the broker queued before it: behind a resumed
# session's backlog or a retained flood that can be many seconds. A lost link is noticed by the
# receiving side at once (and by keepalive), so waiting long here costs nothing.
BROKER_REPLY_TIMEOUT_S = 300.0
RETRY_PUBLISH_S = 1.0
ANTI_ENTROPY_MIN_INTERVAL_S = 60.0
CONTACT_SAVE_INTERVAL_S = 30.0


class SyncError(GatedError):
    """A broker problem, described in one line for a technician."""


class SyncGate(Protocol):
    """What the sync reads of the gate and hands to it."""

    @property
    def config(self) -> GateConfig: ...
    @property
    def index(self) -> MemberIndex: ...
    @property
    def writer(self) -> CacheWriter: ...
    @property
    def clock(self) -> TrustedClock: ...
    @property
    def last_head_office_at(self) -> float | None: ...

    def apply_rows(self, rows: Iterable[dict[str, Any]]) -> Future[list[dict[str, Any]]]: ...
    def apply_snapshot(self, rows: Iterable[dict[str, Any]]) -> Future[int]: ...
    def heard_from_head_office(self, issued_at: str | None = None) -> None: ...
    def published_status(self, state: str, outbox_depth: int | None) -> dict[str, Any]: ...
    async def outbox_depth(self) -> int: ...
    def pulse(self, *, source: str, operator: str | None) -> None: ...
    async def set_lockdown(self, on: bool, *, source: str, operator: str | None) -> None: ...


def _backoff(attempt: int, cap: float) -> float:
    """Full-jitter exponential backoff up to ``cap``: a site's gates don't reconnect in
    lockstep."""
    return random.uniform(BACKOFF_MIN_S, min(cap, BACKOFF_MIN_S * 2 ** min(attempt, 30)))


def describe_error(exc: BaseException, url: str) -> str:
    """One line for a failed connection, with the likely cause when it is a TLS one."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker at {url} presented a certificate this gate does not trust "
            f"({text}); check [mqtt] ca_file"
        )
    if "Connection refused" in text or "Errno 111" in text:
        return f"broker {url} refused the connection (not running or wrong port)"
    if "Not authorized" in text or "Bad user name or password" in text:
        return f"broker {url} refused our credentials ({text}); check [mqtt] username/password_file"
    return f"broker {url}: {text or type(exc).__name__}"


class SiteSync:
    """Keeps one gate's cache in step with head office and its outbox drained (see module doc)."""

    def __init__(self, gate: SyncGate) -> None:
        config = gate.config
        assert config.mqtt is not None, "SiteSync needs an [mqtt] section"
        self.gate = gate
        self.mqtt: MqttConfig = config.mqtt
        self.site = config.site
        self._member_prefix = member_topic(config.site, "")
        self.gate_id = config.gate
        self.client_id = self.mqtt.client_id or f"gated-{config.site}-{config.gate}"
        public_keys = [load_public_key_raw(p) for p in config.keys.head_office_public_key_files]
        self.verifier = Verifier(public_keys)
        keys = config.keys
        self.remote = RemoteCommands(
            self.site,
            self.gate_id,
            Verifier.from_pem_files(keys.command_public_key_files)
            if keys.command_public_key_files
            else None,
            Verifier.from_pem_files(keys.desk_command_public_key_files)
            if keys.desk_command_public_key_files
            else None,
            gate,
            lambda command_id: self._spawn(self._command_resync(command_id)),
            lambda: self._spawn(self._status_now()),
            lambda reason, command_id: self._log_rejection(f"command_{reason}", f"id={command_id}"),
        )
        self.head_office = config.head_office
        self.snapshot_configured = bool(self.head_office and self.head_office.snapshot_url)
        self.pool = VerifierPool(public_keys, self.site)
        self._max_batches = self.pool.size * 2
        self._batches = 0
        self._client: aiomqtt.Client | None = None
        self._wake_outbox = asyncio.Event()
        # States waiting for a verifier: full batches in order, then the one still filling (a
        # deque, so taking a batch never copies a backlog of thousands).
        self._ready: deque[list[tuple[str, int, bytes]]] = deque()
        self._filling: list[tuple[str, int, bytes]] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        # Each member's distinct payloads waiting for or in a verifier.
        self._pending: dict[str, list[bytes]] = {}
        self._pending_count = 0
        # Rejections not yet logged: reason -> (count, a sample topic and detail).
        self._reject_log: dict[str, tuple[int, str]] = {}
        self._reject_log_timer: asyncio.TimerHandle | None = None
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        self._compared = True
        self._last_anti_entropy = 0.0
        self._contact_saved = 0.0
        self._direct = False
        # what stats() reports
        self.connected = False
        self.subscribed = False
        self.connects = 0
        self.last_error: str | None = None
        self.received: Counter[str] = Counter()
        self.applied = 0
        self.skipped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.published_events = 0
        self.manifest: dict[str, Any] | None = None
        self.last_sync: dict[str, Any] | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self.round_received = 0

    # --- lifetime ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, sync and drain until cancelled; never lets an error out."""
        try:
            await self.pool.start()
            if self.snapshot_configured and self.gate.index.count == 0:
                await self._try_snapshot("cold_start", None)
            attempt = 0
            while True:
                connects = self.connects
                try:
                    await self._session()
                    attempt = 0
                except aiomqtt.MqttError as exc:
                    reason = describe_error(exc.__cause__ or exc, self.mqtt.url)
                    if self.connects > connects:
                        attempt = 0
                        reason = f"lost the connection ({reason})"
                    self._lost(reason)
                except GatedError as exc:  # a password or TLS file, a refused snapshot
                    self._lost(str(exc))
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._lost(describe_error(exc, self.mqtt.url))
                except Exception as exc:  # the last wall: the link retries, the gate decides on
                    log.exception("event=sync_failed")
                    self._lost(f"internal error: {type(exc).__name__}: {exc}")
                delay = _backoff(attempt, self.mqtt.backoff_max_s)
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            self._log_rejects()
            for task in list(self._tasks):
                task.cancel()
            self.pool.shutdown()

    def _lost(self, reason: str) -> None:
        if self.connected or reason != self.last_error:
            log.warning("event=mqtt_disconnected reason=%r", reason)
        self.last_error = reason
        self.connected = False
        self.subscribed = False
        self._client = None

    def _make_client(self) -> aiomqtt.Client:
        mqtt = self.mqtt
        client = client_for(
            mqtt.url,
            username=mqtt.username,
            password=read_password(mqtt.password_file),
            tls=TlsFiles(mqtt.ca_file, mqtt.cert_file, mqtt.key_file),
            client_id=self.client_id,
            clean_session=False,
            will=aiomqtt.Will(
                status_topic(self.site, self.gate_id),
                json.dumps(self.gate.published_status("offline", None), separators=(",", ":")),
                qos=1,
                retain=True,
            ),
            keepalive=mqtt.keepalive_s or max(5, int(mqtt.heartbeat_s * 2)),
            max_inflight_messages=100,
            timeout=BROKER_REPLY_TIMEOUT_S,
        )
        # Up to an outbox batch of publishes wait for PUBACK together: expected, not a warning.
        client.pending_calls_threshold = OUTBOX_BATCH + 10
        self._direct = take_messages_directly(
            client, self.handle_message, lambda: self._reject("bad_topic", "(not UTF-8)")
        )
        return client

    async def _session(self) -> None:
        """One connection: subscribe, announce, then receive/drain/heartbeat until it breaks."""
        client = self._make_client()
        async with session(client, connect_timeout=self.mqtt.connect_timeout_s):
            self._client = client
            self.connected = True
            self.connects += 1
            self.last_error = None
            log.info("event=mqtt_connected url=%s client_id=%s", self.mqtt.url, self.client_id)
            # Receive from the start: a resumed session's queued messages arrive before any
            # SUBACK or PUBACK, and must be taken (and skipped or applied) meanwhile.
            receive = asyncio.ensure_future(self._receive(client))
            try:
                await _while_receiving(receive, self._start(client))
                await _first_failure(receive, self._drain_outbox(client), self._heartbeat(client))
            except asyncio.CancelledError:
                # Going down cleanly: say so (a clean disconnect does not fire the will).
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._publish_status(client, "offline")
                raise
            finally:
                receive.cancel()
                self._client = None
                self.connected = False
                self.subscribed = False

    async def _start(self, client: aiomqtt.Client) -> None:
        """Announce the gate online, then subscribe: the manifest first, so a gate knows what to
        expect before the members flood in."""
        await self._publish_status(client, "online")
        await client.subscribe(manifest_topic(self.site), qos=1)
        await client.subscribe(cmd_topic(self.site, self.gate_id), qos=1)
        await self._subscribe_members(client)

    async def _subscribe_members(self, client: aiomqtt.Client) -> None:
        """(Re)subscribe: the broker sends every retained state again; not-newer ones are skipped
        before any signature work, so this is cheap for a gate that is in step."""
        self.round_received = 0
        self._compared = False
        self._last_activity = time.monotonic()
        await client.subscribe(members_wildcard(self.site), qos=1)
        self.subscribed = True

    # --- incoming ----------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        settle = self._spawn(self._settle_watch())
        try:
            if self._direct:
                # Messages are handled as they are read; this only waits for the link to end.
                await wait_disconnected(client)
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                self.handle_message(message.topic.value, bytes(payload))
        finally:
            settle.cancel()

    def handle_message(self, topic: str, payload: bytes) -> None:
        """Route one incoming message; never raises (drops with a counted reason)."""
        try:
            if len(payload) > MAX_PAYLOAD:
                self._reject("oversized", topic)
                return
            # Member states are nearly all of the traffic: their topic is checked by its prefix
            # and the id's pattern, as parse_topic would (anything else goes the long way).
            prefix = self._member_prefix
            if topic.startswith(prefix) and MEMBER_ID_RE.match(name := topic[len(prefix) :]):
                self.received["members"] += 1
                self._on_member(name, payload)
                return
            try:
                site, kind, name = parse_topic(topic)
            except ContractError:
                self._reject("bad_topic", topic)
                return
            if site != self.site:
                self._reject("other_site", topic)
                return
            self.received[kind] += 1
            if kind == "members":
                self._on_member(name, payload)
            elif kind == "manifest":
                self._spawn(self._on_manifest(payload))
            elif kind == "cmd" and name == self.gate_id:
                self._spawn(self.remote.handle(payload))
            else:
                self._reject("unexpected_topic", topic)
        except Exception:  # the last wall: a bug here must cost one message, not the link
            log.exception("event=message_failed topic=%s", topic)
            self.rejected["internal_error"] += 1

    def _reject(self, reason: str, topic: str, detail: str = "", count: int = 1) -> None:
        """Count ``count`` refused messages; the log gets one line per reason and interval."""
        self.rejected[reason] += count
        self._log_rejection(reason, f"{topic} {detail}".strip(), count)

    def _log_rejection(self, reason: str, sample: str, count: int = 1) -> None:
        """Log ``count`` rejections with the next line for ``reason`` (within
        REJECT_LOG_INTERVAL_S)."""
        logged, _sample = self._reject_log.get(reason, (0, ""))
        self._reject_log[reason] = (logged + count, sample)
        if self._reject_log_timer is None:
            self._reject_log_timer = asyncio.get_running_loop().call_later(
                REJECT_LOG_INTERVAL_S, self._log_rejects
            )

    def _log_rejects(self) -> None:
        """One line per reason for the rejections since the last call (with the last one's
        topic as a sample); counters stay exact in ``rejected``."""
        if self._reject_log_timer is not None:
            self._reject_log_timer.cancel()
            self._reject_log_timer = None
        batch, self._reject_log = self._reject_log, {}
        for reason, (count, sample) in sorted(batch.items()):
            log.warning("event=sync_rejected reason=%s count=%d last=%r", reason, count, sample)

    def _on_member(self, member_id: str, payload: bytes) -> None:
        self._last_activity = time.monotonic()
        self.round_received += 1
        if not payload:
            self.skipped["empty_payload"] += 1
            return
        # Against the cache only: what is waiting for a verifier is unverified, and must not
        # hide what comes after it.
        try:
            version = member_version(payload, member_id, self.gate.index.version_of(member_id))
        except PayloadError as exc:
            self._reject(exc.reason, member_id, str(exc))
            return
        if version is None:
            self.skipped["not_newer"] += 1
            return
        waiting = self._pending.get(member_id)
        if waiting is None:
            if self._pending_count >= PENDING_MAX:
                self._queue_full(member_id)
                return
            self._pending[member_id] = [payload]
        elif payload in waiting:
            self.skipped["not_newer"] += 1  # the very state already on its way
            return
        elif len(waiting) >= PENDING_PER_MEMBER or self._pending_count >= PENDING_MAX:
            self._queue_full(member_id)
            return
        else:
            waiting.append(payload)
        self._pending_count += 1
        filling = self._filling
        filling.append((member_id, version, payload))
        if len(filling) >= VERIFY_BATCH:
            self._ready.append(filling)
            self._filling = []
            self._flush()
        elif self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(BATCH_DELAY_S, self._flush)

    def _queue_full(self, member_id: str) -> None:
        """Drop an unverified state that finds the queue full. It may have been genuine: the
        manifest comparison once the traffic settles (and a snapshot, if still apart) makes up
        for it."""
        self._reject("queue_full", member_id)
        self._compared = False

    def _flush(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if self._batches >= self._max_batches:
            return  # a batch that ends flushes again
        if self._ready:
            batch = self._ready.popleft()
        elif self._filling:
            batch, self._filling = self._filling, []
        else:
            return
        self._batches += 1
        self._inflight += len(batch)
        self._spawn(self._verify_and_apply(batch))

    @property
    def _waiting(self) -> int:
        """States not yet handed to a verifier (every batch in ``_ready`` is full)."""
        return len(self._ready) * VERIFY_BATCH + len(self._filling)

    async def _verify_and_apply(self, batch: list[tuple[str, int, bytes]]) -> None:
        try:
            chunks, good, newest, rejects = await self.pool.run(
                verify_member_states, [payload for _, _, payload in batch]
            )
            for reason, count in Counter(rejects).items():
                self._reject(reason, "members", count=count)
            if good:
                await self._apply(chunks, good, newest)
        except BrokenProcessPool:
            self.rejected["verifier_died"] += len(batch)
            log.error("event=verifier_died states=%d: restarting it", len(batch))
        except Exception:  # the last wall: a bug costs this batch (counted), not the link
            self.rejected["internal_error"] += len(batch)
            log.exception("event=batch_failed states=%d", len(batch))
        finally:
            self._inflight -= len(batch)
            self._batches -= 1
            pending = self._pending
            for member_id, _version, payload in batch:
                waiting = pending.get(member_id)
                if waiting is None:
                    continue
                if len(waiting) == 1:
                    del pending[member_id]
                else:
                    waiting.remove(payload)
            self._pending_count -= len(batch)
            self._last_activity = time.monotonic()
            self._flush()

    async def _apply(self, chunks: list[bytes], count: int, newest: str) -> None:
        """Commit verified rows (pickled chunks, unpickled on the writer's thread) and put them
        in the index."""
        try:
            applied = await asyncio.wrap_future(self.gate.apply_rows(unpickled(chunks)))
        except (sqlite3.Error, ContractError, ValueError, KeyError, TypeError) as exc:
            self.rejected["apply_failed"] += count
            log.error("event=apply_failed states=%d error=%s", count, exc)
            return
        self.applied += len(applied)
        self.skipped["not_newer"] += count - len(applied)
        self._heard(newest)

    async def _on_manifest(self, payload: bytes) -> None:
        try:
            obj = loads_bounded(payload)
            if not isinstance(obj, dict):
                raise ContractError("not an object")
            body = await asyncio.to_thread(self.verifier.verify, obj, "manifest")
            check_site_summary(body, "manifest")
        except SignatureError:
            self._reject("bad_signature", "manifest")
            return
        except PayloadError as exc:
            self._reject(exc.reason, "manifest", str(exc))
            return
        except (ContractError, ValueError):
            self._reject("malformed", "manifest")
            return
        if body["site"] != self.site:
            self._reject("other_site", "manifest")
            return
        current = self.manifest
        if current is not None and body["max_version"] < current["max_version"]:
            self.skipped["older_manifest"] += 1
            return
        self.manifest = body
        self._compared = False
        self._heard(body["issued_at"])

    def _heard(self, issued_at: str) -> None:
        """Verified head-office traffic: fresh contact (saved now and then) and a time the clock
        weighs (DESIGN "Time": a floor, not a master; never saved)."""
        self.gate.heard_from_head_office(issued_at)
        now = time.monotonic()
        if now - self._contact_saved >= CONTACT_SAVE_INTERVAL_S:
            self._contact_saved = now
            self._save_contact()

    def _save_contact(self) -> None:
        last = self.gate.last_head_office_at
        self.gate.writer.submit(lambda store: store.set("last_head_office_at", last))

    # --- anti-entropy and snapshots ------------------------------------------------------------

    async def _settle_watch(self) -> None:
        """When the traffic of a sync settles, compare with the manifest; a gate still apart from
        it after that fetches a snapshot (never more often than ANTI_ENTROPY_MIN_INTERVAL_S)."""
        while True:
            await asyncio.sleep(0.25)
            if self._compared or self.manifest is None:
                continue
            if self._inflight or self._waiting or time.monotonic() - self._last_activity < SETTLE_S:
                continue
            self._compared = True
            self._record_sync("retained")
            if self.last_sync is not None and not self.last_sync["in_sync"]:
                await self._anti_entropy()

    def _record_sync(self, source: str) -> None:
        index = self.gate.index
        manifest = self.manifest or {}
        self.last_sync = {
            "at": format_time(time.time()),
            "source": source,
            "members": index.count,
            "max_version": index.max_version,
            "manifest_count": manifest.get("count"),
            "manifest_max_version": manifest.get("max_version"),
            "in_sync": manifest.get("digest") == index.digest,
            "received": self.round_received,
        }
        level = logging.INFO if self.last_sync["in_sync"] else logging.WARNING
        log.log(
            level,
            "event=sync_settled source=%s members=%d manifest_count=%s in_sync=%s",
            source,
            index.count,
            manifest.get("count"),
            self.last_sync["in_sync"],
        )

    async def _anti_entropy(self) -> None:
        now = time.monotonic()
        if now - self._last_anti_entropy < ANTI_ENTROPY_MIN_INTERVAL_S:
            return
        self._last_anti_entropy = now
        if self.snapshot_configured:
            await self._try_snapshot("anti_entropy", None)
        elif self._client is not None:
            # No snapshot source: ask the broker for every retained state again.
            log.warning("event=anti_entropy source=retained")
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(members_wildcard(self.site))
                await self._subscribe_members(self._client)

    async def _try_snapshot(self, reason: str, operator: str | None) -> dict[str, Any] | None:
        """A snapshot whose failure is already logged and counted (the cache keeps serving)."""
        try:
            return await self._snapshot(reason, operator)
        except SnapshotError:
            return None

    async def _snapshot(self, reason: str, operator: str | None) -> dict[str, Any]:
        """Fetch, verify whole and apply a snapshot; SnapshotError (cache untouched) if refused."""
        assert self.head_office is not None
        gate = self.gate
        async with self._snapshot_lock:
            started = time.monotonic()
            log.info("event=snapshot_start reason=%s operator=%s", reason, operator)
            try:
                trailer, applied, count, dropped = await load_snapshot(
                    self.head_office,
                    gate.config.state_dir,
                    self.pool,
                    lambda: gate.index.max_version,
                    gate.apply_snapshot,
                )
            except SnapshotError as exc:
                self.last_snapshot = {
                    "at": format_time(time.time()),
                    "reason": reason,
                    "ok": False,
                    "error": str(exc),
                }
                self.rejected["snapshot_refused"] += 1
                log.error("event=snapshot_refused reason=%s error=%s", reason, exc)
                raise
            self._heard(trailer["issued_at"])
            self.applied += applied
            result = {
                "ok": True,
                "source": "snapshot",
                "reason": reason,
                "snapshot_count": trailer["count"],
                "snapshot_max_version": trailer["max_version"],
                "states": count + dropped,
                "applied": applied,
                "members": self.gate.index.count,
                "max_version": self.gate.index.max_version,
                "in_sync": trailer["digest"] == self.gate.index.digest,
                "seconds": round(time.monotonic() - started, 3),
            }
            self.last_snapshot = {"at": format_time(time.time()), **result}
            if self.manifest is None or self.manifest["max_version"] <= trailer["max_version"]:
                self.last_sync = {
                    "at": format_time(time.time()),
                    "source": "snapshot",
                    "members": self.gate.index.count,
                    "max_version": self.gate.index.max_version,
                    "manifest_count": trailer["count"],
                    "manifest_max_version": trailer["max_version"],
                    "in_sync": result["in_sync"],
                    "received": count + dropped,
                }
            log.info(
                "event=snapshot_applied reason=%s applied=%d members=%d seconds=%.2f",
                reason, applied, self.gate.index.count, result["seconds"],
            )  # fmt: skip
            return result

    async def resync(self, reason: str, operator: str | None) -> dict[str, Any]:
        """Fetch and apply a snapshot now (``gatectl resync``, the ``resync`` command); without a
        snapshot source, ask the broker for every retained state again."""
        if self.snapshot_configured:
            try:
                return await self._snapshot(reason, operator)
            except SnapshotError as exc:
                raise SyncError(f"resync refused: {exc}") from exc
        client = self._client
        if client is None:
            raise SyncError(
                f"resync: not connected to the broker ({self.last_error or 'connecting'}) and no "
                "[head_office] snapshot_url"
            )
        try:
            await client.unsubscribe(members_wildcard(self.site))
            await self._subscribe_members(client)
        except aiomqtt.MqttError as exc:
            raise SyncError(f"resync: {describe_error(exc, self.mqtt.url)}") from exc
        log.info("event=resync source=retained reason=%s operator=%s", reason, operator)
        return {
            "ok": True,
            "source": "retained",
            "reason": reason,
            "members": self.gate.index.count,
            "max_version": self.gate.index.max_version,
        }

    # --- commands ------------------------------------------------------------------------------

    async def _status_now(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_status(client, "online")

    async def _command_resync(self, command_id: str) -> None:
        with contextlib.suppress(SyncError):
            await self.resync("command", command_id)

    # --- outgoing ------------------------------------------------------------------------------

    def notify_event(self) -> None:
        """A new event is in the outbox (called on the loop): wake the drain."""
        self._wake_outbox.set()

    async def _drain_outbox(self, client: aiomqtt.Client) -> None:
        """Publish outbox events in order at QoS 1; delete a row only after its PUBACK. A row
        whose PUBACK was lost is sent again after a reconnect: receivers dedupe by event_id."""
        topic = events_topic(self.site, self.gate_id)
        writer = self.gate.writer
        while True:
            self._wake_outbox.clear()
            batch = await asyncio.wrap_future(writer.submit(lambda s: s.outbox_batch(OUTBOX_BATCH)))
            if not batch:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                # that arrives with the wake-up (see gated.mqtt_session._wait_for).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.mqtt.heartbeat_s):
                        await self._wake_outbox.wait()
                continue
            results = await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for _seq, payload in batch),
                return_exceptions=True,
            )
            acked = [seq for (seq, _), r in zip(batch, results, strict=True) if r is None]
            if acked:
                await asyncio.wrap_future(
                    writer.submit(partial(CacheStore.delete_events, seqs=acked))
                )
                self.published_events += len(acked)
            if len(acked) < len(batch):
                # Kept, and sent again (receivers dedupe by event_id); a dead link ends the
                # session through the receiving side.
                log.info("event=events_not_acked count=%d", len(batch) - len(acked))
                await asyncio.sleep(RETRY_PUBLISH_S)

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        depth = await self.gate.outbox_depth()
        payload = json.dumps(self.gate.published_status(state, depth), separators=(",", ":"))
        await client.publish(status_topic(self.site, self.gate_id), payload, qos=1, retain=True)

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.mqtt.heartbeat_s)
            try:
                await self._publish_status(client, "online")
            except aiomqtt.MqttError as exc:  # the next beat tries again
                log.info("event=status_not_acked error=%s", exc)

    # --- diagnostics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``gatectl status`` shows under ``sync``."""
        index = self.gate.index
        manifest = self.manifest
        return {
            "connected": self.connected,
            "subscribed": self.subscribed,
            "broker": self.mqtt.url,
            "client_id": self.client_id,
            "connects": self.connects,
            "last_error": self.last_error,
            "received": dict(self.received),
            "applied": self.applied,
            "skipped": dict(self.skipped),
            "rejected": dict(self.rejected),
            "pending_verification": self._inflight + self._waiting,
            "commands": dict(self.remote.counts),
            "events_published": self.published_events,
            "manifest": None
            if manifest is None
            else {k: manifest[k] for k in ("count", "max_version", "digest", "issued_at")},
            "ours": {
                "count": index.count,
                "max_version": index.max_version,
                "digest": index.digest,
            },
            "in_sync": manifest is not None and manifest["digest"] == index.digest,
            "last_sync": self.last_sync,
            "last_snapshot": self.last_snapshot,
        }

    # --- helpers -------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _while_receiving(receive: asyncio.Future[None], work: Awaitable[None]) -> None:
    """Do ``work`` while messages keep being received; if receiving ends first, so does work."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([receive, task], return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            receive.result()
            raise SyncError("the broker closed the connection")
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _first_failure(*coros: Awaitable[None]) -> None:
    """Run the connection's tasks together; the first to end (an error) ends them all."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["SiteSync", "SyncError", "SyncGate", "describe_error"]
