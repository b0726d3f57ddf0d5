"""Drains the status outbox to MQTT (retained, QoS 1, signed) and keeps each site's manifest up
to date; consumes gate events and statuses into the store (``GateIntake``). Survives broker
outages: a row leaves the outbox only after the broker acknowledged every site's message.

In ``serve`` both run on one connection, or, with ``[serve] publisher = "own-process"``, the
publisher in a child process (``publisher_process.py``) and the intake in ``serve``, each on a
connection of its own."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import aiomqtt
from pydantic import ValidationError
from sqlalchemy import Engine, select, update

from gated.billing_sync import schema
from gated.billing_sync.config import BillingMqttConfig
from gated.billing_sync.store import raise_version_floor, reading
from gated.contract import (
    ContractError,
    SignatureError,
    Signer,
    Verifier,
    compact_json,
    erased_state,
    events_topic,
    format_time,
    loads_bounded,
    manifest_topic,
    member_topic,
    parse_topic,
    status_topic,
)
from gated.mqtt_session import TlsFiles, client_for, read_password, session
from gated.payloads import Manifest

log = logging.getLogger("gated.billing.mqtt")


def billing_client(cfg: BillingMqttConfig, client_id: str | None = None) -> aiomqtt.Client:
    """An aiomqtt client from billing's ``[mqtt]``: a persistent session under the fixed client
    id (``client_id``: another fixed one, e.g. the console's), TLS (with our client certificate
    when configured) for ``mqtts://``. Raises BrokerSetupError for a password or TLS file that
    cannot be used."""
    return client_for(
        cfg.url,
        username=cfg.username,
        password=read_password(cfg.password_file),
        tls=TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file),
        client_id=client_id or cfg.client_id,
        clean_session=False,
        keepalive=30,
    )


async def connected_forever(
    cfg: BillingMqttConfig,
    client_id: str,
    connected: asyncio.Event,
    body: Callable[[aiomqtt.Client], Awaitable[None]],
) -> None:
    """Run ``body`` on a connection under ``client_id`` until cancelled; connect again with
    backoff after any broker error. ``connected`` is set while a connection is up."""
    delay = 0.2
    while True:
        try:
            async with session(billing_client(cfg, client_id)) as client:
                delay = 0.2
                connected.set()
                log.info("event=mqtt_connected url=%s client_id=%s", cfg.url, client_id)
                await body(client)
        except* aiomqtt.MqttError as group:
            connected.clear()
            log.warning("event=mqtt_lost error=%s retry_in=%.1f", group.exceptions[0], delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


class GateIntake:
    """Gate events into attendance (each at once: the console's live check-in feed) and gate
    statuses into the gate board, from the sites' topics."""

    def __init__(
        self,
        cfg: BillingMqttConfig,
        sites: list[str],
        record_events: Callable[[list[dict[str, object]]], int],
        record_status: Callable[[str, str, object, bool], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sites = sites
        self.record_events = record_events
        self.record_status = record_status
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Consume on a connection of its own (``[mqtt] client_id``: the broker keeps the gates'
        events queued for it while ``serve`` is away) until cancelled."""
        await connected_forever(self.cfg, self.cfg.client_id, self.connected, self._consume)

    async def _consume(self, client: aiomqtt.Client) -> None:
        await self.subscribe(client)
        await self.consume(client)

    async def subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to every site's gate events and (with a ``record_status``) statuses."""
        for site in self.sites:
            await client.subscribe(events_topic(site, "+"), qos=1)
            if self.record_status is not None:
                # Retained: every gate's last status (or last will) arrives at once.
                await client.subscribe(status_topic(site, "+"), qos=1)

    async def consume(self, client: aiomqtt.Client) -> None:
        """Record every message that arrives, until the connection ends."""
        async for message in client.messages:
            await self.record(message)

    async def record(self, message: aiomqtt.Message) -> None:
        """Store one gate event or status; anything else is ignored."""
        if str(message.topic).endswith("/status"):
            self._record_status(message)
            return
        if not str(message.topic).endswith("/events"):
            return
        try:
            payload = message.payload
            event = loads_bounded(payload if isinstance(payload, bytes) else b"")
        except ValueError:
            log.warning("event=bad_gate_event topic=%s", message.topic)
            return
        if isinstance(event, dict) and "event_id" in event:
            await asyncio.to_thread(self.record_events, [event])

    def _record_status(self, message: aiomqtt.Message) -> None:
        if self.record_status is None:
            return
        try:
            site, _kind, gate = parse_topic(str(message.topic))
            payload = message.payload
            body = loads_bounded(payload if isinstance(payload, bytes) else b"")
        except (ValueError, ContractError):
            log.warning("event=bad_gate_status topic=%s", message.topic)
            return
        if not self.record_status(site, gate, body, bool(message.retain)):
            log.warning("event=bad_gate_status topic=%s", message.topic)


class Publisher:
    """One connection to the broker: publishes member states and manifests, and, given
    ``record_events``, reads gate events (and statuses) on it too. Without, it only publishes,
    under ``client_id`` (``serve``'s publisher process, beside a ``GateIntake`` in ``serve``)."""

    def __init__(
        self,
        engine: Engine,
        cfg: BillingMqttConfig,
        signer: Callable[[], Signer],
        sites: list[str],
        clock: Callable[[], int],
        record_events: Callable[[list[dict[str, object]]], int] | None = None,
        batch: int = 500,
        record_status: Callable[[str, str, object, bool], bool] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.reader = reading(engine)
        self.cfg = cfg
        self.signer = signer
        self.sites = sites
        self.clock = clock
        self.intake = (
            GateIntake(cfg, sites, record_events, record_status)
            if record_events is not None
            else None
        )
        self.client_id = client_id or cfg.client_id
        self.batch = batch
        self.wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.published = 0
        # Retained manifests not adopted as a version floor, by reason (not ours, malformed).
        self.refused_manifests: dict[str, int] = {}

    async def run(self) -> None:
        """Connect, publish (and consume) until cancelled; reconnect with backoff after any
        broker error."""
        await connected_forever(self.cfg, self.client_id, self.connected, self._publish)

    async def _publish(self, client: aiomqtt.Client) -> None:
        lost = await self._adopt_retained_versions(client)
        if self.intake is not None:
            await self.intake.subscribe(client)
        while await self.drain(client):
            pass
        if lost:
            await self.resync(client, lost)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._drain_loop(client))
            if self.intake is not None:
                tg.create_task(self.intake.consume(client))

    async def _adopt_retained_versions(self, client: aiomqtt.Client) -> set[str]:
        """Read each site's retained manifest once at connect. Never publish a version below its
        max_version (the store may be a restored backup), and return the sites whose retained
        manifest is not the one we last published: the broker lost retained state there.

        Only a manifest signed with our own key is adopted: anyone who can write to the broker
        could otherwise push our versions past 2^53, above which every gate refuses every
        state. Anything else is logged, counted and treated as no manifest (a manifest signed
        with a key since rotated away is republished with the new one at once)."""
        floor = 0
        found: dict[str, tuple[int, str]] = {}
        verifier = Verifier([self.signer().public_key_raw])
        for site in self.sites:
            await client.subscribe(manifest_topic(site), qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    if not (str(message.topic).endswith("/manifest") and message.retain):
                        # The persistent session delivers queued gate events at once.
                        if self.intake is not None:
                            await self.intake.record(message)
                        continue
                    manifest = self._own_manifest(verifier, message)
                    if manifest is not None:
                        found[manifest.site] = (manifest.max_version, manifest.digest)
                        floor = max(floor, manifest.max_version)
                    if len(found) >= len(self.sites):
                        break
        except TimeoutError:
            pass
        for site in self.sites:
            await client.unsubscribe(manifest_topic(site))
        # A write: in a worker thread, not on the event loop (see drain).
        ours = await asyncio.to_thread(self._adopt_floor, floor)
        lost = {
            site for site, mine in ours.items() if mine[1] is not None and found.get(site) != mine
        }
        if lost:
            log.warning("event=broker_lost_retained sites=%s", ",".join(sorted(lost)))
        return lost

    def _adopt_floor(self, floor: int) -> dict[str, tuple[int, str | None]]:
        """Raise the version floor to ``floor``; each site's manifest as we last published it."""
        sm = schema.site_manifests
        with self.engine.begin() as conn:
            if floor:
                raise_version_floor(conn, floor)
            return {
                r.site: (int(r.published_max_version), r.published_digest)
                for r in conn.execute(select(sm))
            }

    def _own_manifest(self, verifier: Verifier, message: aiomqtt.Message) -> Manifest | None:
        """The retained manifest if it is ours (our signature, for the site of its topic)."""
        topic = str(message.topic)
        try:
            payload = message.payload
            obj = loads_bounded(payload if isinstance(payload, bytes) else b"")
            if not isinstance(obj, dict):
                raise ContractError("not a JSON object")
            manifest = Manifest.model_validate(verifier.verify(obj, "manifest"))
            if topic != manifest_topic(manifest.site):
                raise ContractError("another site's manifest")
        except SignatureError:
            reason = "bad_signature"
        except (ContractError, ValidationError, ValueError):
            reason = "malformed"
        else:
            return manifest
        self.refused_manifests[reason] = self.refused_manifests.get(reason, 0) + 1
        log.warning("event=retained_manifest_refused reason=%s topic=%s", reason, topic)
        return None

    async def resync(self, client: aiomqtt.Client, sites: set[str]) -> int:
        """Republish every current member state of these sites (same versions: gates skip what
        they have) and then their manifests."""
        ms = schema.member_states
        signer = self.signer()
        with self.reader.connect() as conn:
            rows = conn.execute(select(ms.c.member_id, ms.c.sites, ms.c.payload)).all()
        count = 0
        for row in rows:
            payload = compact_json(signer.sign(json.loads(row.payload)))
            for site in set(json.loads(row.sites)) & sites:
                await client.publish(member_topic(site, row.member_id), payload, qos=1, retain=True)
                count += 1
        await self.publish_manifests(client, sites, signer)
        return count

    async def _drain_loop(self, client: aiomqtt.Client) -> None:
        while True:
            sent = await self.drain(client)
            if sent == 0:
                self.wake.clear()
                try:
                    async with asyncio.timeout(0.25):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    async def drain(self, client: aiomqtt.Client) -> int:
        """Publish one batch of the outbox in version order, then each touched site's manifest."""
        ob = schema.status_outbox
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(ob.c.version, ob.c.member_id, ob.c.sites, ob.c.payload)
                .where(ob.c.published_at.is_(None))
                .order_by(ob.c.version)
                .limit(self.batch)
            ).all()
        if not rows:
            return 0
        signer = self.signer()
        sites_touched: set[str] = set()
        for row in rows:
            body = json.loads(row.payload)
            payload = compact_json(signer.sign(body))
            for site in json.loads(row.sites):
                if site not in body["sites"]:
                    # A site the member left (members edit --site): its gates get a signed
                    # tombstone naming that site, as they drop a state for another site unread.
                    left = erased_state(row.member_id, [site], body["version"], body["issued_at"])
                    message = compact_json(signer.sign(left))
                else:
                    message = payload
                await client.publish(member_topic(site, row.member_id), message, qos=1, retain=True)
                sites_touched.add(site)
        # In a worker thread: on SQLite the write waits for the one write lock (a renewal batch
        # holds it for a while), and on the event loop that wait stalled every request of serve.
        await asyncio.to_thread(self._mark_published, [r.version for r in rows])
        await self.publish_manifests(client, sites_touched, signer)
        self.published += len(rows)
        return len(rows)

    async def publish_manifests(
        self, client: aiomqtt.Client, sites: set[str], signer: Signer
    ) -> None:
        """Signed manifests from the O(1)-maintained per-site figures."""
        sm = schema.site_manifests
        with self.reader.connect() as conn:
            rows = conn.execute(select(sm).where(sm.c.site.in_(sorted(sites)))).all()
        issued_at = format_time(self.clock())
        for row in rows:
            manifest = signer.sign(
                {
                    "type": "manifest",
                    "site": row.site,
                    "count": int(row._mapping["count"]),
                    "max_version": int(row.max_version),
                    "digest": row.digest,
                    "issued_at": issued_at,
                }
            )
            await client.publish(
                manifest_topic(row.site), compact_json(manifest), qos=1, retain=True
            )
            await asyncio.to_thread(self._mark_manifest, row.site, row.max_version, row.digest)

    def _mark_published(self, versions: list[int]) -> None:
        ob = schema.status_outbox
        with self.engine.begin() as conn:
            conn.execute(
                update(ob).where(ob.c.version.in_(versions)).values(published_at=self.clock())
            )

    def _mark_manifest(self, site: str, max_version: int, digest: str) -> None:
        sm = schema.site_manifests
        with self.engine.begin() as conn:
            conn.execute(
                update(sm)
                .where(sm.c.site == site)
                .values(published_max_version=max_version, published_digest=digest)
            )
