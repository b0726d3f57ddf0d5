"""``gatectl doctor``: every check says ok / warn / fail and, when not ok, the fix in one line.

Checks that need the running daemon come from it over the control socket; the rest are made from
the config file, so a technician gets answers even when the daemon is down.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from gated.cache.index import MemberIndex
from gated.cache.store import CacheWriter
from gated.clock import TrustedClock, system_clock_synchronized
from gated.config import ConfigError, GateConfig, load_gate_config
from gated.contract import ContractError, load_credential_key
from gated.door import Door
from gated.metrics import GateMetrics
from gated.outbox_guard import OutboxGuard
from gated.placement import Placement
from gated.policy.decide import GateContext
from gated.readers.base import Reader
from gated.readers.diagnostics import reader_checks


class SyncStats(Protocol):
    """The head-office link, as doctor reads it."""

    def stats(self) -> dict[str, Any]: ...


class DoctorGate(Protocol):
    """What the running daemon's checks read of the gate."""

    @property
    def config(self) -> GateConfig: ...
    @property
    def started_at(self) -> float: ...
    @property
    def scheduling(self) -> str: ...
    @property
    def placement(self) -> Placement: ...
    @property
    def door(self) -> Door: ...
    @property
    def metrics(self) -> GateMetrics: ...
    @property
    def context(self) -> GateContext: ...
    @property
    def index(self) -> MemberIndex: ...
    @property
    def readers(self) -> Sequence[Reader]: ...
    @property
    def outbox(self) -> OutboxGuard: ...
    @property
    def last_head_office_at(self) -> float | None: ...
    @property
    def sync(self) -> SyncStats | None: ...
    @property
    def clock(self) -> TrustedClock: ...
    @property
    def writer(self) -> CacheWriter: ...

    async def outbox_depth(self) -> int: ...


Level = Literal["ok", "warn", "fail"]
LEVEL_EXIT = {"ok": 0, "warn": 1, "fail": 2}
DISK_WARN_BYTES = 200 * 2**20
DISK_FAIL_BYTES = 20 * 2**20
# A skewed head-office object seen within this long keeps the clock skew check at warn.
SKEW_RECENT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "level": self.level, "message": self.message, "fix": self.fix}


def worst(checks: list[Check]) -> Level:
    level: Level = "ok"
    for c in checks:
        if LEVEL_EXIT[c.level] > LEVEL_EXIT[level]:
            level = c.level
    return level


def disk_check(path: Path) -> Check:
    probe = path if path.exists() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    msg = f"{free // 2**20} MiB free at {probe}"
    if free < DISK_FAIL_BYTES:
        return Check(
            "disk",
            "fail",
            msg,
            "free space on the SD card (old logs: journalctl --vacuum-size=50M)",
        )
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", msg, "free space soon: the cache and outbox need room to grow")
    return Check("disk", "ok", msg)


def clock_check(synced: bool | None) -> Check:
    if synced is None:
        return Check(
            "clock", "warn", "cannot read the clock's sync state", "check timedatectl status"
        )
    if not synced:
        return Check(
            "clock",
            "warn",
            "system clock is not synchronized (decisions use the last known good time)",
            "enable NTP: timedatectl set-ntp true, and check the network reaches a time server",
        )
    return Check("clock", "ok", "system clock synchronized")


def skew_check(clock: TrustedClock) -> Check:
    """Whether head office's time and this gate's disagree (DESIGN "Time"), not only NTP."""
    if not clock.plausible():
        return Check(
            "clock skew",
            "warn",
            "system clock not plausible (unsynchronized, behind the last good time or the "
            f"release): decisions use {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(clock.now()))}Z",
            "enable NTP: timedatectl set-ntp true (gatectl status shows the clock)",
        )
    age = clock.last_skew_age()
    if age is not None and age < SKEW_RECENT_S:
        return Check(
            "clock skew",
            "warn",
            f"{clock.skew_count} head-office objects dated up to {clock.last_skew_s or 0:.0f}s "
            f"ahead of this gate's clock (last {age:.0f}s ago): applied, their time ignored",
            "check the head office's clock (timedatectl there), then this gate's NTP",
        )
    return Check(
        "clock skew", "ok", f"head-office time agrees ({clock.skew_count} skewed since start)"
    )


def outbox_check(depth: int, warn: int, ceiling: int, dropped: int, *, drained: bool) -> Check:
    """Fail while the ceiling is reached (new events are being dropped); warn past ``warn``.

    Events dropped earlier stay in the message (and in gated_outbox_dropped_events_total) but do
    not hold the level down for ever once the outbox has drained.
    """
    msg = f"{depth} events waiting for the broker (warn {warn}, max {ceiling})"
    if dropped:
        msg += f"; {dropped} events dropped at the ceiling so far"
    # Nothing drains the outbox of a gate without [mqtt]: it grows until the ceiling.
    link = "check the broker link: gatectl status" if drained else "no [mqtt]: nothing drains it"
    if depth >= ceiling:
        return Check(
            "outbox", "fail", msg, f"{link}; raise outbox_max_events only if the disk has room"
        )
    if depth >= warn:
        return Check("outbox", "warn", msg, link)
    return Check("outbox", "ok", msg)


def writes_check(writer: CacheWriter) -> Check:
    """Whether the disk takes the cache's commits, and the events a refusing disk cost."""
    lost, held = writer.events_lost, writer.events_held
    msg = f"{lost} events lost: disk full or failing" if lost else "no event lost"
    fix = "free space on the SD card (journalctl --vacuum-size=50M), then check gatectl status"
    if writer.refusing is not None:
        return Check(
            "cache writes",
            "fail",
            f"the disk refuses writes ({writer.refusing}): {held} events held in memory; {msg}",
            fix,
        )
    if lost:
        return Check("cache writes", "warn", msg, "events lost cannot come back; " + fix)
    return Check("cache writes", "ok", "the disk takes every commit")


def metrics_check(listen: str, url: str | None) -> Check:
    if url is None:
        return Check(
            "metrics",
            "warn",
            f"metrics endpoint could not listen on {listen} (the gate runs on without it)",
            "another process holds the port: change [metrics] listen, then restart gated",
        )
    return Check("metrics", "ok", f"serving {url}")


def gpio_check(factory_name: str, configured: str) -> Check:
    if "Mock" in factory_name or configured == "mock":
        return Check(
            "gpio",
            "warn",
            f"pin factory {factory_name}: the door relay is simulated",
            'on a Pi set [door] pin_factory = "lgpio" and install the pi extra',
        )
    return Check("gpio", "ok", f"pin factory {factory_name}")


def scheduling_check(scheduling: str, priority: int) -> Check:
    """Whether decisions run on a real-time thread, as configured (see decide_in_realtime)."""
    if scheduling.startswith("fifo"):
        return Check("scheduling", "ok", f"decisions on a real-time thread (SCHED_FIFO {priority})")
    if priority <= 0:
        return Check(
            "scheduling", "ok", "decisions under the normal policy (realtime_priority = 0)"
        )
    return Check(
        "scheduling",
        "warn",
        f"decisions under the normal policy ({scheduling.removeprefix('normal (').rstrip(')')}): "
        "a badge can wait milliseconds behind a busy board",
        f"LimitRTPRIO={priority} in the unit (systemctl edit gated), or realtime_priority = 0",
    )


def placement_check(placement: Placement) -> Check:
    """Which CPU decisions and the readers' threads share (see gated.placement)."""
    if placement.cpu is not None or not placement.wanted:
        return Check("decision_cpu", "ok", placement.detail)
    return Check(
        "decision_cpu",
        "warn",
        f"decisions {placement.detail}: a badge's wake-up can cross CPUs (~20 µs more)",
        'decision_cpu = "auto" or a CPU of the allowed set, and sched_setaffinity allowed in '
        'the unit; or decision_cpu = "off"',
    )


def config_checks(path: Path) -> tuple[GateConfig | None, list[Check]]:
    """Checks made from the config file alone (the daemon may be down)."""
    try:
        config = load_gate_config(path)
    except ConfigError as exc:
        return None, [
            Check("config", "fail", str(exc), f"fix the file, then: gated config check {path}")
        ]
    checks = [Check("config", "ok", f"{path} is valid")]
    try:
        load_credential_key(config.keys.credential_key_file)
        checks.append(Check("keys", "ok", "credential key readable"))
    except (OSError, ContractError) as exc:
        checks.append(
            Check(
                "keys",
                "fail",
                f"credential key: {exc}",
                "gated keys generate --out /etc/gated (then enrol cards again)",
            )
        )
    checks.append(cache_file_check(config.cache_path))
    checks.append(disk_check(config.state_dir))
    checks.append(clock_check(system_clock_synchronized()))
    checks.extend(hardware_checks(config))
    return config, checks


def hardware_checks(config: GateConfig) -> list[Check]:
    """The readers' stacks (pcscd and its readers, who owns an NFC device, serial/HID/GPIO
    device nodes and permissions). Blocking: run it in a thread from the daemon."""
    return [
        Check("reader stack", level, message, fix)
        for level, message, fix in reader_checks(config.readers)
    ]


def cache_file_check(path: Path) -> Check:
    if not path.exists():
        return Check(
            "cache", "warn", f"no cache at {path} yet", "start gated, or gated members import FILE"
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            members = conn.execute(
                "SELECT count(*) FROM members WHERE status != 'erased'"
            ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check(
            "cache",
            "fail",
            f"cache unreadable: {exc}",
            "stop gated, move cache.db aside and resync",
        )
    if result != "ok":
        return Check(
            "cache",
            "fail",
            f"cache damaged: {result}",
            "stop gated, move cache.db aside and resync",
        )
    return Check("cache", "ok", f"{members} members cached, integrity ok")


async def daemon_checks(gate: DoctorGate) -> list[Check]:
    """Checks only the running daemon can answer."""
    checks: list[Check] = [
        Check(
            "daemon",
            "ok",
            f"running since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(gate.started_at))}Z",
        )
    ]
    # The daemon read the key to start; this line replaces the file check, which a technician
    # outside the gated user cannot make (the key is 0600 gated).
    checks.append(Check("keys", "ok", "credential key loaded by the daemon"))
    checks.append(gpio_check(gate.door.pin_factory_name, gate.config.door.pin_factory))
    checks.append(scheduling_check(gate.scheduling, gate.config.realtime_priority))
    checks.append(placement_check(gate.placement))
    checks.append(skew_check(gate.clock))
    if gate.config.metrics.listen:
        checks.append(metrics_check(gate.config.metrics.listen, gate.metrics.url))
    if gate.context.lockdown:
        checks.append(
            Check(
                "lockdown", "warn", "lockdown is ON: every badge is refused", "gatectl lockdown off"
            )
        )
    if gate.context.fire:
        checks.append(
            Check("fire", "warn", "fire input active: door held open", "clear the fire panel")
        )
    contact = gate.door.contact_open
    if contact is not None:
        checks.append(
            Check(
                "door",
                "warn" if contact else "ok",
                "door open" if contact else "door closed",
                "close the door or check the contact wiring" if contact else "",
            )
        )
    checks.append(
        Check(
            "cache",
            "ok" if gate.index.count else "warn",
            f"{gate.index.count} members in memory, max version {gate.index.max_version}",
            "" if gate.index.count else "import or sync members: nobody can enter yet",
        )
    )
    for reader in gate.readers:
        h = reader.health
        level: Level = "ok" if h.state == "ok" else "fail"
        checks.append(
            Check(
                f"reader {reader.id}",
                level,
                f"{reader.kind}: {h.state} {h.detail}".strip(),
                "" if level == "ok" else "check the reader's cable and gatectl readers",
            )
        )
    checks.extend(await asyncio.to_thread(hardware_checks, gate.config))
    checks.append(writes_check(gate.writer))
    depth = await gate.outbox_depth()
    checks.append(
        outbox_check(
            depth,
            gate.config.outbox_warn_events,
            gate.config.outbox_max_events,
            gate.outbox.dropped,
            drained=gate.config.mqtt is not None,
        )
    )
    if gate.config.mqtt is not None:
        last = gate.last_head_office_at
        age = None if last is None else time.time() - last
        max_offline = gate.config.policy.max_offline
        if age is None or age > max_offline:
            checks.append(
                Check(
                    "freshness",
                    "fail" if age is not None else "warn",
                    "no head-office contact" + (f" for {age / 3600:.1f} h" if age else " yet"),
                    "check the broker link: gatectl status",
                )
            )
        else:
            checks.append(Check("freshness", "ok", f"last head-office contact {age:.0f}s ago"))
    if gate.sync is not None:
        checks.extend(sync_checks(gate.sync.stats()))
    return checks


def sync_checks(stats: dict[str, Any]) -> list[Check]:
    """The broker link and the last sync, from the sync's ``stats()``."""
    checks: list[Check] = []
    broker = stats["broker"]
    if stats["connected"] and stats["subscribed"]:
        checks.append(Check("broker", "ok", f"connected to {broker}, subscribed"))
    else:
        checks.append(
            Check(
                "broker",
                "fail",
                f"not connected to {broker}: {stats['last_error'] or 'connecting'}",
                "check the broker is up and the [mqtt] settings; decisions continue from the cache",
            )
        )
    sync = stats["last_sync"]
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
    snapshot = stats["last_snapshot"]
    if snapshot is not None and not snapshot["ok"]:
        checks.append(
            Check(
                "snapshot",
                "warn",
                f"last snapshot refused: {snapshot['error']}",
                "check [head_office] snapshot_url, token_file and ca_file",
            )
        )
    rejected = Counter(stats["rejected"])
    if rejected:
        worst = ", ".join(f"{k} {v}" for k, v in rejected.most_common(3))
        checks.append(
            Check(
                "messages",
                "warn",
                f"dropped head-office messages: {worst}",
                "bad_signature: check head_office_public_key_files match head office",
            )
        )
    return checks


def merge(
    local: list[Check],
    remote: list[dict[str, Any]] | None,
    daemon_error: str | None,
    fix: str | None = None,
) -> list[Check]:
    """Combine file checks with the daemon's; the daemon's answer wins for shared names.
    ``fix`` is what to do about ``daemon_error`` (by default: start the daemon)."""
    if daemon_error is not None:
        fix = fix or "systemctl start gated; journalctl -u gated -n 50"
        return [Check("daemon", "fail", daemon_error, fix), *local]
    remote_checks = [
        Check(r["name"], r["level"], r["message"], r.get("fix", "")) for r in remote or []
    ]
    names = {c.name for c in remote_checks}
    return remote_checks + [c for c in local if c.name not in names]
