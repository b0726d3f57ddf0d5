"""The gate's link to head office: member states, manifest and commands in; events and status out.

One :class:`SiteSync` per gate, run as a task by the daemon when ``[mqtt]`` is configured. It keeps
a persistent MQTT session (fixed client id, ``clean_session`` off, MQTT 3.1.1) and reconnects with
jittered exponential backoff for as long as the gate runs.

Incoming member states are cheap to refuse and dear to accept: a state whose version is not newer
than the cache's is skipped on the loop before any signature work (a reconnect re-delivers every
retained state); the rest are verified in batches in worker processes (at nice 19, so they only
take what decisions leave) and handed to :meth:`Gate.apply_rows`, which commits them and puts them
into the index in slices, so a badge never waits behind a sync burst. Nothing that arrives can raise out of here: a message
that is forged, malformed, oversized or for another site is dropped, logged with its reason and
counted in ``gatectl status``.

A big site syncs by snapshot (one signature for the whole site) rather than message by message: an
empty gate fetches one before it subscribes, and a gate whose digest still differs from the signed
manifest once the traffic settles fetches one (anti-entropy). A snapshot only ever adds newer
states: the cache a gate decides from is never cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import multiprocessing
import os
import pickle
import queue
import random
import shutil
import signal
import sqlite3
import ssl
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import httpx
from paho.mqtt.enums import MQTTErrorCode
from pydantic import ValidationError

from gated import __version__
from gated.cache.index import member_row
from gated.cache.store import CacheStore
from gated.clock import issued_too_far_ahead
from gated.contract import (
    MEMBER_ID_RE,
    STATUSES,
    ContractError,
    GateCommand,
    Manifest,
    PayloadError,
    SignatureError,
    Verifier,
    cmd_topic,
    events_topic,
    format_time,
    load_public_key,
    loads_bounded,
    manifest_topic,
    member_payload,
    members_wildcard,
    parse_time,
    parse_topic,
    public_key_raw,
    status_topic,
    verify_snapshot,
)
from gated.control import ControlError
from gated.doctor import Check
from gated.errors import GatedError
from gated.mqtt_session import session

if TYPE_CHECKING:
    from gated.config import HeadOfficeConfig, MqttConfig
    from gated.daemon import Gate

log = logging.getLogger("gated.sync")

# A member state is ~0.5 KiB; anything this big is an attack or a bug, and is never parsed.
MAX_PAYLOAD = 64 * 1024
# States go to the verifiers in batches: a batch costs a process round trip, a commit and a wakeup
# of the loop, so while the verifiers are busy the next batch keeps growing (up to VERIFY_BATCH);
# when idle a state waits at most BATCH_DELAY_S.
VERIFY_BATCH = 512
BATCH_DELAY_S = 0.005
# Member states are verified in worker processes, not threads: parsing and canonical JSON hold the
# GIL, and a loop thread that must win the GIL back after every poll would wait a switch interval
# each time (the convoy effect) and slow both decisions and the MQTT stream. One per core (up to
# 3): at nice 19 they only take what the gate leaves. Against two busy processes on both cores of
# this 2-core machine, a badge's p99 was 1.9 ms with them at nice 10 and 0.16 ms at nice 19.
VERIFY_PROCESSES = max(1, min(3, os.cpu_count() or 1))
VERIFY_NICE = 19
# How long a starting sync waits for every verifier process to be up.
VERIFIER_START_S = 10.0
# After this long without member traffic a sync has ended: compare with the manifest.
SETTLE_S = 1.5
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0
OUTBOX_BATCH = 200
# A PUBACK or SUBACK comes after every message the broker queued before it: behind a resumed
# session's backlog or a retained flood that can be many seconds. A lost link is noticed by the
# receiving side at once (and by keepalive), so waiting long here costs nothing.
BROKER_REPLY_TIMEOUT_S = 300.0
RETRY_PUBLISH_S = 1.0
ANTI_ENTROPY_MIN_INTERVAL_S = 60.0
SNAPSHOT_MAX_BYTES = 1 << 30
# A downloaded snapshot goes to its file this many bytes at a time, each write on a thread.
SNAPSHOT_WRITE_BYTES = 1 << 20
# Rows cross from a verifier process pickled in chunks this size: unpickling one holds the GIL
# ~0.1 ms.
ROW_CHUNK = 64
# A snapshot's verified body is cut into pieces of about this many bytes (~5,000 states) for the
# verifier processes to make rows from; each reads its piece from the body's file.
SNAPSHOT_PIECE_BYTES = 2 << 20
# MQTT packets read per pass of the loop. paho's loop_read reads as many as this client has
# unacknowledged messages of its own: during a sync, with events waiting for PUBACKs behind the
# flood, that was hundreds of member states (20-60 ms) in one callback, and every badge waited
# for all of them. The socket stays readable, so the rest is read on the next pass.
READ_PACKETS_PER_PASS = 8
SNAPSHOT_TIMEOUT_S = 120.0
CONTACT_SAVE_INTERVAL_S = 30.0
MAX_COMMAND_TTL_S = 300.0
# The staff console's desk key lives on the internet-facing head office: it may only open a door
# once or lock a site down (and lift it), and its commands live a minute at most.
DESK_ACTIONS = frozenset({"pulse", "lockdown_on", "lockdown_off"})
MAX_DESK_COMMAND_TTL_S = 60.0


class SyncError(GatedError):
    """A snapshot or broker problem, described in one line for a technician."""


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: a site's gates don't reconnect in lockstep."""
    return random.uniform(BACKOFF_MIN_S, min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt))


def tls_context(mqtt: MqttConfig) -> ssl.SSLContext:
    """The TLS context for an ``mqtts://`` broker: its CA (or the system's) and, optionally, this
    gate's client certificate. Raises SyncError naming the file that cannot be used."""
    try:
        context = ssl.create_default_context(
            cafile=str(mqtt.ca_file) if mqtt.ca_file is not None else None
        )
        if mqtt.cert_file is not None:
            context.load_cert_chain(
                str(mqtt.cert_file), str(mqtt.key_file) if mqtt.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise SyncError(f"mqtt TLS files: {exc}") from exc
    return context


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


async def fetch_snapshot(head_office: HeadOfficeConfig, into: Path) -> Path:
    """The site snapshot as a file: a ``file://`` path is used where it lies, and
    ``https://``/``http://`` (bearer token in ``token_file``) is streamed into ``into``. A verifier
    process reads the file (:func:`open_snapshot`): handing megabytes to a process pool pickles
    them on a thread of the daemon that holds the GIL for milliseconds, and every badge waits.
    Raises SyncError."""
    url = head_office.snapshot_url
    if not url:
        raise SyncError("no [head_office] snapshot_url")
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise SyncError(f"snapshot file {path}: {exc.strerror or exc}") from exc
        if size > SNAPSHOT_MAX_BYTES:
            raise SyncError(f"snapshot file {path} is larger than {SNAPSHOT_MAX_BYTES}")
        return path
    headers = {"Accept": "application/gzip"}
    try:
        if head_office.token_file is not None:
            headers["Authorization"] = "Bearer " + head_office.token_file.read_text().strip()
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(head_office.ca_file))
            if head_office.ca_file is not None
            else True
        )
    except (OSError, ssl.SSLError) as exc:
        raise SyncError(f"[head_office] files: {exc}") from exc
    try:
        async with (
            httpx.AsyncClient(verify=verify, timeout=SNAPSHOT_TIMEOUT_S) as http,
            http.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise SyncError(f"snapshot: HTTP {response.status_code} from {url}")
            size = 0
            pending = bytearray()
            with into.open("wb") as out:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > SNAPSHOT_MAX_BYTES:
                        raise SyncError(f"snapshot from {url} is larger than {SNAPSHOT_MAX_BYTES}")
                    pending += chunk
                    if len(pending) >= SNAPSHOT_WRITE_BYTES:
                        # Off the loop: a write to an SD card can block for a long time.
                        await asyncio.to_thread(out.write, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(out.write, bytes(pending))
            return into
    except httpx.HTTPError as exc:
        raise SyncError(f"snapshot: {url}: {exc or type(exc).__name__}") from exc
    except OSError as exc:
        raise SyncError(f"snapshot: cannot store it in {into.parent}: {exc}") from exc


class SiteSync:
    """Keeps one gate's cache in step with head office and its outbox drained (see module doc)."""

    def __init__(self, gate: Gate) -> None:
        config = gate.config
        assert config.mqtt is not None, "SiteSync needs an [mqtt] section"
        self.gate = gate
        self.mqtt: MqttConfig = config.mqtt
        self.site = config.site
        self.gate_id = config.gate
        self.client_id = self.mqtt.client_id or f"gated-{config.site}-{config.gate}"
        self._public_keys = [
            public_key_raw(load_public_key(p)) for p in config.keys.head_office_public_key_files
        ]
        self.verifier = Verifier(self._public_keys)
        self.command_verifier = (
            Verifier.from_pem_files(config.keys.command_public_key_files)
            if config.keys.command_public_key_files
            else None
        )
        self.desk_verifier = (
            Verifier.from_pem_files(config.keys.desk_command_public_key_files)
            if config.keys.desk_command_public_key_files
            else None
        )
        self.head_office = config.head_office
        self.snapshot_configured = bool(self.head_office and self.head_office.snapshot_url)
        self._pool = self._new_pool()
        self._max_batches = VERIFY_PROCESSES * 2
        self._batches = 0
        self._client: aiomqtt.Client | None = None
        self._wake_outbox = asyncio.Event()
        # States waiting for a verifier: full batches in order, then the one still filling (a
        # deque, so taking a batch never copies a backlog of thousands).
        self._ready: deque[list[tuple[str, int, bytes]]] = deque()
        self._filling: list[tuple[str, int, bytes]] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._pending: dict[str, int] = {}
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        self._compared = True
        self._last_anti_entropy = 0.0
        self._contact_saved = 0.0
        self._commands_running: set[str] = set()
        self._direct = False
        # what stats() and checks() report
        self.connected = False
        self.subscribed = False
        self.connects = 0
        self.last_error: str | None = None
        self.received: Counter[str] = Counter()
        self.applied = 0
        self.skipped: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.published_events = 0
        self.manifest: dict[str, Any] | None = None
        self.last_sync: dict[str, Any] | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self.round_received = 0

    # --- lifetime ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, sync and drain until cancelled; never lets an error out."""
        try:
            await self.start_verifiers()
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
                except SyncError as exc:
                    self._lost(str(exc))
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._lost(describe_error(exc, self.mqtt.url))
                except Exception as exc:  # the last wall: the link retries, the gate decides on
                    log.exception("event=sync_failed")
                    self._lost(f"internal error: {type(exc).__name__}: {exc}")
                delay = _backoff(attempt)
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def start_verifiers(self) -> None:
        """Start every verifier process now and wait until each has taken a job, not when the
        first sync needs it. The pool starts a process only when a job finds none idle, so one
        job would start one; and the first process up could take every warm-up job while the
        others were still importing, to finish starting in the middle of the first sync (a cold
        start's) on cores the sync needs. Each warm-up job holds its process a little, so the
        next goes to another; at most VERIFIER_START_S is spent waiting.

        The loop's default thread pool gets its first thread now too: starting one waits for it
        to run, and a cold start's first file work would otherwise do that under a badge."""
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(int)
        ready: set[int] = set()
        deadline = time.monotonic() + VERIFIER_START_S
        with contextlib.suppress(BrokenProcessPool, OSError):
            while len(ready) < VERIFY_PROCESSES and time.monotonic() < deadline:
                ready.update(
                    await asyncio.gather(
                        *(
                            loop.run_in_executor(self._pool, _verifier_ready, 0.05)
                            for _ in range(VERIFY_PROCESSES)
                        )
                    )
                )

    def _lost(self, reason: str) -> None:
        if self.connected or reason != self.last_error:
            log.warning("event=mqtt_disconnected reason=%r", reason)
        self.last_error = reason
        self.connected = False
        self.subscribed = False
        self._client = None

    def _make_client(self) -> aiomqtt.Client:
        mqtt = self.mqtt
        scheme, _, rest = mqtt.url.partition("://")
        host, _, port_text = rest.rstrip("/").partition(":")
        tls = scheme == "mqtts"
        password = None
        if mqtt.password_file is not None:
            try:
                password = mqtt.password_file.read_text().strip()
            except OSError as exc:
                raise SyncError(f"mqtt password_file: {exc.strerror or exc}") from exc
        client = aiomqtt.Client(
            host,
            int(port_text) if port_text else (8883 if tls else 1883),
            identifier=self.client_id,
            clean_session=False,
            username=mqtt.username,
            password=password,
            will=aiomqtt.Will(
                status_topic(self.site, self.gate_id),
                json.dumps(self._status("offline", None), separators=(",", ":")),
                qos=1,
                retain=True,
            ),
            keepalive=max(5, int(mqtt.heartbeat_s * 2)),
            tls_context=tls_context(mqtt) if tls else None,
            max_inflight_messages=100,
            timeout=BROKER_REPLY_TIMEOUT_S,
        )
        # Up to an outbox batch of publishes wait for PUBACK together: expected, not a warning.
        client.pending_calls_threshold = OUTBOX_BATCH + 10
        self._take_messages_directly(client)
        return client

    def _take_messages_directly(self, client: aiomqtt.Client) -> None:
        """Handle each message in paho's callback, inside the loop's read of the socket, rather
        than through ``client.messages``: that iterator costs a Task and an ``asyncio.wait``
        per message, a fifth of the loop's time in a flood of retained states. Both attributes
        are aiomqtt 2's own; should a release lack them, the iterator is used
        (``tests/sync`` checks the installed one has them)."""
        paho_client = getattr(client, "_client", None)
        self._direct = paho_client is not None and isinstance(
            getattr(client, "_disconnected", None), asyncio.Future
        )
        if not self._direct:
            return

        def on_message(_client: object, _userdata: object, message: Any) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                self._reject("bad_topic", "(not UTF-8)")
                return
            payload = message.payload
            self.handle_message(topic, payload if isinstance(payload, bytes) else bytes(payload))

        assert paho_client is not None
        paho_client.on_message = on_message
        packet_read = getattr(paho_client, "_packet_read", None)
        rc_handle = getattr(paho_client, "_loop_rc_handle", None)
        if packet_read is None or rc_handle is None:
            return

        def loop_read(max_packets: int = 1) -> MQTTErrorCode:
            """paho's loop_read (the same return codes), a few packets per call."""
            for _ in range(READ_PACKETS_PER_PASS):
                if paho_client._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = packet_read()
                if rc > 0:
                    return rc_handle(rc)  # type: ignore[no-any-return]
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        paho_client.loop_read = loop_read

    async def _session(self) -> None:
        """One connection: subscribe, announce, then receive/drain/heartbeat until it breaks."""
        client = self._make_client()
        async with session(client):
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
                disconnected: asyncio.Future[None] = client._disconnected
                try:
                    await asyncio.shield(disconnected)
                except Exception as exc:
                    raise aiomqtt.MqttError("Disconnected during message iteration") from exc
                raise aiomqtt.MqttError("Disconnected during message iteration")
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
                self._spawn(self._on_command(payload))
            else:
                self._reject("unexpected_topic", topic)
        except Exception:  # the last wall: a bug here must cost one message, not the link
            log.exception("event=message_failed topic=%s", topic)
            self.rejected["internal_error"] += 1

    def _reject(self, reason: str, topic: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        log.warning("event=message_rejected reason=%s topic=%s %s", reason, topic, detail)

    def _on_member(self, member_id: str, payload: bytes) -> None:
        self._last_activity = time.monotonic()
        self.round_received += 1
        if not payload:
            self.skipped["empty_payload"] += 1
            return
        try:
            _obj, version = member_payload(payload, member_id)
        except PayloadError as exc:
            self._reject(exc.reason, member_id, str(exc))
            return
        if version <= self.gate.index.version_of(member_id) or version <= self._pending.get(
            member_id, 0
        ):
            self.skipped["not_newer"] += 1
            return
        self._pending[member_id] = version
        filling = self._filling
        filling.append((member_id, version, payload))
        if len(filling) >= VERIFY_BATCH:
            self._ready.append(filling)
            self._filling = []
            self._flush()
        elif self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(BATCH_DELAY_S, self._flush)

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
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            chunks, good, newest, rejects = await loop.run_in_executor(
                pool, verify_member_states, [payload for _, _, payload in batch]
            )
            for reason in rejects:
                self.rejected[reason] += 1
            if rejects:
                log.warning(
                    "event=states_rejected count=%d reasons=%s", len(rejects), sorted(set(rejects))
                )
            if good:
                await self._apply(chunks, good, newest)
        except BrokenProcessPool:
            self.rejected["verifier_died"] += len(batch)
            log.error("event=verifier_died states=%d: restarting it", len(batch))
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
        except Exception:  # the last wall: a bug costs this batch (counted), not the link
            self.rejected["internal_error"] += len(batch)
            log.exception("event=batch_failed states=%d", len(batch))
        finally:
            self._inflight -= len(batch)
            self._batches -= 1
            pending = self._pending
            for member_id, version, _payload in batch:
                if pending.get(member_id) == version:
                    del pending[member_id]
            self._last_activity = time.monotonic()
            self._flush()

    async def _apply(self, chunks: list[bytes], count: int, newest: str) -> None:
        """Commit verified rows (pickled chunks, unpickled on the writer's thread) and put them
        in the index."""
        try:
            applied = await asyncio.wrap_future(self.gate.apply_rows(_unpickled(chunks)))
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
            Manifest.model_validate(body)
        except SignatureError:
            self._reject("bad_signature", "manifest")
            return
        except PayloadError as exc:
            self._reject(exc.reason, "manifest", str(exc))
            return
        except (ContractError, ValidationError, ValueError):
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
        except SyncError:
            return None

    async def _apply_snapshot(self, body: Path, cuts: list[int]) -> tuple[int, int, int]:
        """Apply a verified snapshot's body (a file, cut into pieces of whole lines at ``cuts``)
        in one transaction, all or nothing: the writer takes each piece's rows while the verifier
        processes make the next ones. Returns (rows applied, rows for this site, states for other
        sites)."""
        chunks: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        committed = asyncio.wrap_future(self.gate.apply_snapshot(_rows_from(chunks)))
        loop = asyncio.get_running_loop()
        count = dropped = 0
        # Hundreds of thousands of new long-lived objects would set off full collections (tens of
        # milliseconds each, during badges): collect nothing until they are frozen.
        collecting = gc.isenabled()
        gc.disable()
        try:
            making = [
                loop.run_in_executor(self._pool, snapshot_rows, str(body), start, end)
                for start, end in pairwise(cuts)
            ]
            for made in making:
                piece_chunks, rows, others = await made
                for chunk in piece_chunks:
                    chunks.put(chunk)
                count += rows
                dropped += others
        except BaseException as exc:
            chunks.put(exc)  # the writer rolls the whole snapshot back
            await asyncio.gather(committed, return_exceptions=True)
            raise
        else:
            chunks.put(None)
            return await committed, count, dropped
        finally:
            # Freeze without collecting: a collection now would walk every object the snapshot
            # made (tens of milliseconds); what it made is rows and records, not cycles.
            gc.freeze()
            if collecting:
                gc.enable()

    async def _snapshot(self, reason: str, operator: str | None) -> dict[str, Any]:
        """Fetch, verify whole and apply a snapshot; SyncError (cache untouched) if refused."""
        assert self.head_office is not None
        async with self._snapshot_lock:
            started = time.monotonic()
            log.info("event=snapshot_start reason=%s operator=%s", reason, operator)
            work: Path | None = None
            try:
                work = await asyncio.to_thread(_snapshot_workdir, self.gate.config.state_dir)
                source = await fetch_snapshot(self.head_office, work / "snapshot.gz")
                body = work / "body.jsonl"
                trailer, cuts = await asyncio.get_running_loop().run_in_executor(
                    self._pool, open_snapshot, str(source), str(body)
                )
                if int(trailer["max_version"]) < self.gate.index.max_version:
                    raise SyncError(
                        f"snapshot max_version {trailer['max_version']} is older than ours "
                        f"({self.gate.index.max_version})"
                    )
                applied, count, dropped = await self._apply_snapshot(body, cuts)
            except (
                SyncError,
                ValueError,  # ContractError among them
                KeyError,
                TypeError,
                OSError,
                sqlite3.Error,
                BrokenProcessPool,
            ) as exc:
                self.last_snapshot = {
                    "at": format_time(time.time()),
                    "reason": reason,
                    "ok": False,
                    "error": str(exc),
                }
                self.rejected["snapshot_refused"] += 1
                log.error("event=snapshot_refused reason=%s error=%s", reason, exc)
                raise SyncError(str(exc)) from exc
            finally:
                if work is not None:
                    await asyncio.to_thread(shutil.rmtree, work, True)
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
            except SyncError as exc:
                raise ControlError(f"resync refused: {exc}") from exc
        client = self._client
        if client is None:
            raise ControlError(
                f"resync: not connected to the broker ({self.last_error or 'connecting'}) and no "
                "[head_office] snapshot_url"
            )
        try:
            await client.unsubscribe(members_wildcard(self.site))
            await self._subscribe_members(client)
        except aiomqtt.MqttError as exc:
            raise ControlError(f"resync: {describe_error(exc, self.mqtt.url)}") from exc
        log.info("event=resync source=retained reason=%s operator=%s", reason, operator)
        return {
            "ok": True,
            "source": "retained",
            "reason": reason,
            "members": self.gate.index.count,
            "max_version": self.gate.index.max_version,
        }

    # --- commands ------------------------------------------------------------------------------

    async def _on_command(self, payload: bytes) -> None:
        command_id = "?"
        try:
            if self.command_verifier is None and self.desk_verifier is None:
                raise _Refused("no_command_key")
            try:
                obj = loads_bounded(payload)
            except PayloadError as exc:
                raise _Refused(exc.reason) from exc
            if not isinstance(obj, dict):
                raise _Refused("malformed")
            command_id = str(obj.get("id", "?"))[:40]
            # The key decides what a command may do: the offline command key anything, the
            # desk key only DESK_ACTIONS for a minute (checked below).
            kid = obj.get("kid")
            desk = self.desk_verifier is not None and kid in self.desk_verifier.kids
            verifier = self.desk_verifier if desk else self.command_verifier
            if verifier is None:
                raise _Refused("bad_signature")
            try:
                body = await asyncio.to_thread(verifier.verify, obj, "gate_command")
                command = GateCommand.model_validate(body)
                issued_at = parse_time(command.issued_at).timestamp()
                not_after = parse_time(command.not_after).timestamp()
            except SignatureError as exc:
                raise _Refused("bad_signature") from exc
            except (ContractError, ValidationError) as exc:
                raise _Refused("malformed") from exc
            if command.site != self.site or command.gate != self.gate_id:
                raise _Refused("misaddressed")
            now = self.gate.clock.now()
            if not_after <= now:
                raise _Refused("expired")
            if issued_too_far_ahead(issued_at, now):
                raise _Refused("issued_in_future")
            if (
                not 0
                < not_after - issued_at
                <= (MAX_DESK_COMMAND_TTL_S if desk else MAX_COMMAND_TTL_S)
            ):
                raise _Refused("lifetime_too_long")
            if desk and command.action not in DESK_ACTIONS:
                raise _Refused("not_allowed_for_desk_key")
            if command.id in self._commands_running:
                raise _Refused("replayed")
            self._commands_running.add(command.id)
            try:
                seen = await asyncio.wrap_future(
                    self.gate.writer.submit(lambda s: s.command_seen(command.id))
                )
                if seen:
                    raise _Refused("replayed")
                # Remembered before it runs: a crash mid-command never runs it twice.
                await asyncio.wrap_future(
                    self.gate.writer.submit(lambda s: s.remember_command(command.id, not_after))
                )
            finally:
                self._commands_running.discard(command.id)
            await self._run_command(command)
            self.commands["run"] += 1
        except _Refused as refused:
            self.commands[f"refused_{refused.reason}"] += 1
            log.warning("event=command_refused reason=%s id=%s", refused.reason, command_id)
        except (sqlite3.Error, ControlError, aiomqtt.MqttError) as exc:
            self.commands["failed"] += 1
            log.error("event=command_failed id=%s error=%s", command_id, exc)

    async def _run_command(self, command: GateCommand) -> None:
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
            # The console shows lockdown from the retained status: say so now, not at the
            # next heartbeat.
            self._spawn(self._status_now())
        elif command.action == "resync":
            self._spawn(self._command_resync(command.id))
        else:  # message: for the technician reading the log
            text = str(command.args.get("text", ""))[:200]
            log.info("event=command_message id=%s text=%r", command.id, text)

    async def _status_now(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_status(client, "online")

    async def _command_resync(self, command_id: str) -> None:
        with contextlib.suppress(ControlError):
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

    def _status(self, state: str, outbox_depth: int | None) -> dict[str, Any]:
        gate = self.gate
        last = gate.last_head_office_at
        return {
            "state": state,
            "site": self.site,
            "gate": self.gate_id,
            "software_version": __version__,
            "started_at": format_time(gate.started_at),
            "members": gate.index.count,
            "max_version": gate.index.max_version,
            "digest": gate.index.digest,
            "last_head_office_at": format_time(last) if last else None,
            "outbox_depth": outbox_depth,
            "lockdown": gate.context.lockdown,
            "readers": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "state": "ok" if r.health.state == "ok" else "fault",
                    # Head office tells "people inside" from "entries today" by exit readers.
                    "direction": r.direction,
                }
                for r in gate.readers
            ],
        }

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        depth = await self.gate.outbox_depth()
        payload = json.dumps(self._status(state, depth), separators=(",", ":"))
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
            "commands": dict(self.commands),
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

    def checks(self) -> list[Check]:
        """``gatectl doctor`` lines for the broker link and the last sync."""
        checks: list[Check] = []
        if self.connected and self.subscribed:
            checks.append(Check("broker", "ok", f"connected to {self.mqtt.url}, subscribed"))
        else:
            checks.append(
                Check(
                    "broker",
                    "fail",
                    f"not connected to {self.mqtt.url}: {self.last_error or 'connecting'}",
                    "check the broker is up and the [mqtt] settings; decisions continue from the cache",
                )
            )
        sync = self.last_sync
        if sync is not None:
            expected = sync.get("manifest_count")
            if expected is not None and sync["members"] < expected:
                checks.append(
                    Check(
                        "sync",
                        "warn",
                        f"last sync ({sync['source']}) ended with {sync['members']} members, "
                        f"the manifest says {expected}",
                        "gatectl resync; if the broker log says 'Outgoing messages are being "
                        "dropped', set max_queued_messages 0 in mosquitto.conf",
                    )
                )
            elif not sync["in_sync"]:
                checks.append(
                    Check(
                        "sync",
                        "warn",
                        f"last sync ({sync['source']}) ended with a digest that differs from "
                        "the manifest",
                        "gatectl resync",
                    )
                )
            else:
                checks.append(
                    Check("sync", "ok", f"in step with the manifest ({sync['members']} members)")
                )
        if self.last_snapshot is not None and not self.last_snapshot["ok"]:
            checks.append(
                Check(
                    "snapshot",
                    "warn",
                    f"last snapshot refused: {self.last_snapshot['error']}",
                    "check [head_office] snapshot_url, token_file and ca_file",
                )
            )
        if self.rejected:
            worst = ", ".join(f"{k} {v}" for k, v in self.rejected.most_common(3))
            checks.append(
                Check(
                    "messages",
                    "warn",
                    f"dropped head-office messages: {worst}",
                    "bad_signature: check head_office_public_key_files match head office",
                )
            )
        return checks

    # --- helpers -------------------------------------------------------------------------------

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the daemon has threads (the cache writer) that a fork would copy
        # mid-lock.
        return ProcessPoolExecutor(
            VERIFY_PROCESSES,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_verifier,
            initargs=(self._public_keys, self.site, os.getpid()),
        )

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_verifier: Verifier | None = None
_site = ""
PR_SET_PDEATHSIG = 1


def _init_verifier(public_keys: list[bytes], site: str, parent: int) -> None:
    """In a verifier process: the trusted head-office keys and this gate's site. The process
    ends with the daemon, even when the daemon is killed with SIGKILL."""
    global _verifier, _site
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)
    # Below the daemon: when cores are short, the loop thread (decisions) runs first.
    os.nice(VERIFY_NICE)
    _verifier = Verifier(public_keys)
    _site = site


def _verifier_ready(hold_s: float) -> int:
    """In a verifier process: a warm-up job (see ``SiteSync.start_verifiers``)."""
    time.sleep(hold_s)
    return os.getpid()


def verify_member_states(payloads: list[bytes]) -> tuple[list[bytes], int, str, list[str]]:
    """In a verifier process: the cache rows of the good signed MemberStates that name this site,
    pickled in chunks of ROW_CHUNK (the daemon's writer thread unpickles them a chunk at a time:
    a whole batch at once would hold the GIL, and so the badges, for more than a millisecond);
    with the number of rows, the newest ``issued_at`` among them and the reason each other
    payload is dropped."""
    assert _verifier is not None
    rows: list[dict[str, Any]] = []
    rejects: list[str] = []
    for payload in payloads:
        try:
            body = _verifier.verify(loads_bounded(payload), "member_state")
            row = member_row(body)
            if _site not in body["sites"]:
                rejects.append("other_site")
                continue
            rows.append(row)
        except SignatureError:
            rejects.append("bad_signature")
        except (ContractError, ValueError, KeyError, TypeError, AttributeError):
            rejects.append("malformed")
    newest = max((row["issued_at"] for row in rows), default="")
    return _pickled(rows), len(rows), newest, rejects


def _snapshot_workdir(state_dir: Path) -> Path:
    """A private folder in the state directory for one snapshot's files (the download and the
    verified body), after removing any a killed gate left behind."""
    for stale in state_dir.glob(".snapshot-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".snapshot-", dir=state_dir))


def open_snapshot(source: str, body_path: str) -> tuple[dict[str, Any], list[int]]:
    """In a verifier process: verify the snapshot file ``source`` whole (signature, site, sha256),
    write its JSON Lines body to ``body_path`` and return (trailer, cuts): the body's offsets cut
    at the first line end past each SNAPSHOT_PIECE_BYTES, for :func:`snapshot_rows`. Only these
    few numbers cross back to the daemon, never the megabytes. Raises ContractError/SignatureError
    (or OSError, SyncError)."""
    assert _verifier is not None
    with open(source, "rb") as f:
        data = f.read(SNAPSHOT_MAX_BYTES + 1)
    if len(data) > SNAPSHOT_MAX_BYTES:
        raise SyncError(f"snapshot is larger than {SNAPSHOT_MAX_BYTES}")
    trailer, body = verify_snapshot(data, _verifier, _site)
    del data
    with open(body_path, "xb") as out:
        out.write(body)
    cuts = [0]
    while cuts[-1] < len(body):
        end = body.find(b"\n", cuts[-1] + SNAPSHOT_PIECE_BYTES)
        cuts.append(len(body) if end < 0 else end + 1)
    return trailer, cuts


def snapshot_rows(body_path: str, start: int, end: int) -> tuple[list[bytes], int, int]:
    """In a verifier process: the cache rows of the states on bytes ``start:end`` of a verified
    snapshot body (whole lines) for this site, pickled in chunks (unpickling thousands of rows at
    once would hold the daemon's GIL for milliseconds; a chunk holds it well under one). Returns
    (chunks, rows, states for other sites). Raises SyncError/ContractError for a malformed
    state."""
    rows: list[dict[str, Any]] = []
    dropped = 0
    with open(body_path, "rb") as f:
        piece = os.pread(f.fileno(), end - start, start)
    if len(piece) != end - start:
        raise SyncError("snapshot body is shorter than its cuts")
    for line in piece.splitlines():
        if not line:
            continue
        try:
            state = loads_bounded(line)
        except PayloadError as exc:
            raise SyncError(f"snapshot holds a line that is not a member state: {exc}") from exc
        if not isinstance(state, dict):
            raise SyncError("snapshot line is not an object")
        member_id = state.get("member_id")
        if (
            not isinstance(member_id, str)
            or not MEMBER_ID_RE.match(member_id)
            or type(state.get("version")) is not int
            or state.get("status") not in STATUSES
            or not isinstance(state.get("sites"), list)
        ):
            raise SyncError("snapshot holds a malformed member state")
        if _site in state["sites"]:
            rows.append(member_row(state))
        else:
            dropped += 1
    return _pickled(rows), len(rows), dropped


def _pickled(rows: list[dict[str, Any]]) -> list[bytes]:
    """In a verifier process: rows pickled ROW_CHUNK at a time for the writer thread."""
    return [
        pickle.dumps(rows[i : i + ROW_CHUNK], protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(rows), ROW_CHUNK)
    ]


def _rows_from(chunks: queue.SimpleQueue[bytes | BaseException | None]) -> Iterator[dict[str, Any]]:
    """On the cache writer's thread: the rows of a snapshot as its pieces arrive (pickled by our
    own verifier processes, never by anyone else); an error ends the transaction."""
    while True:
        try:
            item = chunks.get(timeout=SNAPSHOT_TIMEOUT_S)
        except queue.Empty as exc:
            raise SyncError("snapshot rows stopped arriving") from exc
        if item is None:
            return
        if isinstance(item, BaseException):
            raise SyncError(f"snapshot refused: {item}") from item
        yield from pickle.loads(item)


def _unpickled(chunks: list[bytes]) -> Iterator[dict[str, Any]]:
    """On the cache writer's thread: the rows of a batch, a chunk at a time (pickled by our own
    verifier processes, never by anyone else)."""
    for chunk in chunks:
        yield from pickle.loads(chunk)


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


__all__ = ["SiteSync", "SyncError", "describe_error", "fetch_snapshot", "tls_context"]
