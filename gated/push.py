"""The small head office: sign member states and commands, publish them or write a snapshot.

For a site without gated-billing, ``gated members push FILE`` signs every member in a members file
with the head-office private key and publishes them retained at QoS 1, then the manifest; with
``--snapshot OUT`` it writes the same states as a signed snapshot file instead. ``gated command
sign`` makes a GateCommand with a command key. The members file is the site's whole membership:
the manifest describes exactly what it holds (mark leavers ``cancelled`` or ``erased``, don't drop
them from the file, or gates keep their last state).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from gated.contract import (
    MAX_VERSION,
    ContractError,
    Signer,
    Verifier,
    build_snapshot,
    canonical_json,
    cmd_topic,
    compact_json,
    format_time,
    loads_bounded,
    manifest_topic,
    member_topic,
    new_ulid,
    parse_topic,
    read_snapshot,
    site_summary,
    status_topic,
)
from gated.errors import GatedError
from gated.members import read_members_file
from gated.mqtt_session import BrokerSetupError, TlsFiles, client_for, session
from gated.payloads import GateStatus, Manifest

# PUBACKs awaited together; well under paho's 65,535 message ids.
PUBLISH_WINDOW = 2000
MANIFEST_WAIT_S = 2.0
STATUS_QUIET_S = 0.5
MAX_COMMAND_TTL_S = 300


class PushError(GatedError):
    """A push that cannot go ahead; one line for the operator."""


@dataclass(frozen=True)
class Broker:
    """Where and how to connect, as in ``[mqtt]`` of gated.toml."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None

    def client(self) -> aiomqtt.Client:
        """A fresh client for one push (clean session). Raises PushError for a bad URL or TLS
        file."""
        try:
            return client_for(
                self.url,
                username=self.username,
                password=self.password,
                tls=TlsFiles(self.ca_file, self.cert_file, self.key_file),
                client_id=self.client_id,
            )
        except BrokerSetupError as exc:
            raise PushError(str(exc)) from exc


def sign_states(
    states: Iterable[Mapping[str, Any]], signer: Signer, on_progress: Callable[[int], None] | None
) -> list[dict[str, Any]]:
    """Sign each MemberState (``kid`` and ``sig`` set)."""
    signed = []
    for state in states:
        signed.append(signer.sign(state))
        if on_progress is not None and len(signed) % 1000 == 0:
            on_progress(1000)
    if on_progress is not None:
        on_progress(len(signed) % 1000)
    return signed


def build_manifest(
    site: str, states: Iterable[Mapping[str, Any]], signer: Signer, issued_at: str
) -> dict[str, Any]:
    """The signed manifest of a site's states: count and digest over the non-erased ones."""
    summary = site_summary(states)
    return signer.sign(
        {
            "type": "manifest",
            "site": site,
            "count": summary.count,
            "max_version": summary.max_version,
            "digest": summary.digest,
            "issued_at": issued_at,
        }
    )


@dataclass(frozen=True)
class KnownVersions:
    """What a pusher can learn of the versions a site's gates may already hold. A gate skips a
    state not newer than its own (``not_newer``, silently to the pusher), so a push must
    continue above all of these, and refuses when it knows none of them."""

    manifest: int | None = None  # the broker's retained manifest (verified)
    gates: Mapping[str, int] = field(default_factory=dict)  # each gate's retained status
    recorded: int | None = None  # this key's own record of its last push to the site
    floor: int | None = None  # --version-floor

    def base(self, site: str, record: Path | None) -> int:
        """The version a push continues above. Raises PushError when nothing is known."""
        known = [self.manifest, self.recorded, self.floor, *self.gates.values()]
        values = [v for v in known if v is not None]
        if not values:
            where = f" and {record} holds no push to it" if record is not None else ""
            raise PushError(
                f"cannot tell which versions the gates of {site} hold: the broker has no "
                f"retained manifest or gate status for it{where}; give --version-floor N with N "
                "at least every gate's max_version (gatectl status shows it; 0 for a new site)"
            )
        return max(values)


def version_record_path(key: Path) -> Path:
    """Where a push records, next to the head-office key, the highest version it published per
    site: the floor of its next push even when the broker has lost every retained message."""
    return key.with_name(key.name + ".versions.json")


def read_version_record(path: Path, site: str) -> int | None:
    """The highest version this key pushed to ``site`` (None if never). Raises PushError for a
    record that cannot be read."""
    try:
        data = loads_bounded(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ContractError) as exc:
        raise PushError(f"version record {path}: {exc}") from exc
    value = data.get(site) if isinstance(data, dict) else None
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_VERSION):
        raise PushError(f"version record {path}: {site} is not a version: {value!r}")
    return value


def write_version_record(path: Path, site: str, max_version: int) -> None:
    """Raise the record of ``site`` to ``max_version`` (atomically; never lowers it)."""
    try:
        data = loads_bounded(path.read_bytes()) if path.exists() else {}
    except (OSError, ContractError) as exc:
        raise PushError(f"version record {path}: {exc}") from exc
    record = dict(data) if isinstance(data, dict) else {}
    record[site] = max(max_version, int(record.get(site) or 0))
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise PushError(f"version record {path}: {exc.strerror or exc}") from exc


async def site_versions(
    client: aiomqtt.Client,
    site: str,
    verifier: Verifier,
    wait_s: float = MANIFEST_WAIT_S,
    quiet_s: float = STATUS_QUIET_S,
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The site's retained manifest (verified, or None) and each gate's ``max_version`` from its
    retained status. Retained messages come in one burst after subscribing: this waits for
    ``quiet_s`` of silence after the last, or ``wait_s`` when none comes."""
    topics = [manifest_topic(site), status_topic(site, "+")]
    for topic in topics:
        await client.subscribe(topic, qos=1)
    manifest: dict[str, Any] | None = None
    gates: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    messages = aiter(client.messages)
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(left, quiet_s) if manifest or gates else left):
                    message = await anext(messages)
            except TimeoutError:
                break
            payload = message.payload
            if not isinstance(payload, bytes) or not payload:
                continue
            topic = message.topic.value
            if topic == topics[0]:
                try:
                    manifest = verifier.verify(loads_bounded(payload), "manifest")
                    Manifest.model_validate(manifest)
                except (ValueError, AttributeError) as exc:  # ContractError, ValidationError
                    raise PushError(f"the retained manifest does not verify: {exc}") from exc
                continue
            # A gate's status is not signed: it can only raise the floor (ACLs let only that gate
            # write it), never lower it below what a manifest or the record says.
            try:
                status = GateStatus.model_validate(loads_bounded(payload))
                _site, _kind, gate = parse_topic(topic)
            except (ValueError, ContractError):
                continue
            if status.max_version is not None:
                gates[gate] = status.max_version
    finally:
        for topic in topics:
            await client.unsubscribe(topic)
    return manifest, gates


async def publish_states(
    client: aiomqtt.Client,
    site: str,
    signed: list[dict[str, Any]],
    manifest: Mapping[str, Any],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Publish every state retained at QoS 1 (waiting for each PUBACK), then the manifest."""
    client.pending_calls_threshold = PUBLISH_WINDOW + 10
    for start in range(0, len(signed), PUBLISH_WINDOW):
        chunk = signed[start : start + PUBLISH_WINDOW]
        await asyncio.gather(
            *(
                client.publish(
                    member_topic(site, s["member_id"]), compact_json(s), qos=1, retain=True
                )
                for s in chunk
            )
        )
        if on_progress is not None:
            on_progress(len(chunk))
    await client.publish(manifest_topic(site), compact_json(manifest), qos=1, retain=True)


def snapshot_max_version(path: Path, verifier: Verifier, site: str) -> int:
    """The max_version of an existing snapshot file (0 if there is none)."""
    if not path.exists():
        return 0
    trailer, _states = read_snapshot(path.read_bytes(), verifier, site)
    return int(trailer["max_version"])


def write_snapshot_file(
    path: Path, site: str, states: Iterable[Mapping[str, Any]], signer: Signer, issued_at: str
) -> dict[str, Any]:
    """Write a site snapshot (what gated-billing serves) atomically; returns its trailer."""
    data = build_snapshot(site, states, signer, issued_at)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    trailer: dict[str, Any] = json.loads(gzip.decompress(data).rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return trailer


def sign_command(
    signer: Signer,
    *,
    site: str,
    gate: str,
    action: str,
    args: Mapping[str, Any] | None = None,
    ttl_s: float = 60.0,
    now: float | None = None,
) -> dict[str, Any]:
    """A signed GateCommand valid for ``ttl_s`` seconds (at most 5 minutes)."""
    if not 0 < ttl_s <= MAX_COMMAND_TTL_S:
        raise PushError(f"a command lives at most {MAX_COMMAND_TTL_S} s (asked: {ttl_s:g})")
    issued = int(time.time() if now is None else now)
    return signer.sign(
        {
            "type": "gate_command",
            "id": new_ulid(),
            "site": site,
            "gate": gate,
            "action": action,
            "args": dict(args or {}),
            "issued_at": format_time(issued),
            "not_after": format_time(issued + int(ttl_s)),
        }
    )


def command_json(command: Mapping[str, Any]) -> str:
    """The wire form of a command, one line."""
    return canonical_json(command).decode()


async def push_members(
    file: Path,
    *,
    site: str,
    credential_key: bytes,
    signer: Signer,
    trusted: Verifier,
    broker: Broker | None,
    snapshot: Path | None,
    record: Path | None = None,
    floor: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``gated members push``: read, sign and publish (or write as a snapshot) a members file.

    Versions continue above everything known of what the gates hold (:class:`KnownVersions`):
    the retained manifest, every gate's retained status, this key's version ``record`` (a file,
    raised after each push) and ``floor``; with none of them known the push is refused, since
    gates would silently skip states at versions they already passed. A snapshot continues
    above the existing file, the record and the floor. Raises PushError, MembersFileError,
    ContractError.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    issued_at = format_time(time.time())
    recorded = read_version_record(record, site) if record is not None else None
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    )
    if snapshot is not None:
        # An existing snapshot file is its own manifest; a new one starts at the record or the
        # floor (a gate refuses, counted and shown by doctor, a snapshot older than its cache).
        known = KnownVersions(
            manifest=snapshot_max_version(snapshot, trusted, site), recorded=recorded, floor=floor
        )
        base = known.base(site, record)
        states = read_members_file(file, credential_key, default_site=site, first_version=base + 1)
        _check_room(base, len(states))
        trailer = write_snapshot_file(snapshot, site, states, signer, issued_at)
        if record is not None:
            write_version_record(record, site, int(trailer["max_version"]))
        return {
            "file": str(file),
            "snapshot": str(snapshot),
            "states": len(states),
            "count": trailer["count"],
            "max_version": trailer["max_version"],
            "digest": trailer["digest"],
        }
    if broker is None:
        raise PushError("give a broker (--url or [mqtt] in the config) or --snapshot OUT")
    try:
        async with session(broker.client()) as client:
            current, gates = await site_versions(client, site, trusted)
            known = KnownVersions(
                manifest=int(current["max_version"]) if current else None,
                gates=gates,
                recorded=recorded,
                floor=floor,
            )
            base = known.base(site, record)
            states = read_members_file(
                file, credential_key, default_site=site, first_version=base + 1
            )
            _check_room(base, len(states))
            with progress:
                signing = progress.add_task("signing", total=len(states))
                signed = sign_states(states, signer, lambda n: progress.advance(signing, n))
                manifest = build_manifest(site, states, signer, issued_at)
                sending = progress.add_task("publishing", total=len(signed))
                await publish_states(
                    client, site, signed, manifest, lambda n: progress.advance(sending, n)
                )
    except aiomqtt.MqttError as exc:
        raise PushError(f"broker {broker.url}: {exc}") from exc
    if record is not None:
        write_version_record(record, site, int(manifest["max_version"]))
    return {
        "file": str(file),
        "published": len(signed),
        "first_version": base + 1,
        "max_version": manifest["max_version"],
        "count": manifest["count"],
        "digest": manifest["digest"],
        "continued_above": {
            "manifest": known.manifest,
            "gates": dict(known.gates),
            "record": known.recorded,
            "floor": known.floor,
        },
    }


def _check_room(base: int, states: int) -> None:
    if base + states > MAX_VERSION:
        raise PushError(f"versions would pass 2^53 (continuing above {base}); gates refuse those")


async def publish_command(broker: Broker, command: Mapping[str, Any]) -> None:
    """Send a signed command to its gate (QoS 1, not retained: it is meant for now)."""
    try:
        async with session(broker.client()) as client:
            await client.publish(
                cmd_topic(str(command["site"]), str(command["gate"])),
                compact_json(command),
                qos=1,
            )
    except aiomqtt.MqttError as exc:
        raise PushError(f"broker {broker.url}: {exc}") from exc
