"""Gate hot-path benchmark (issue: the turnstile daemon). Prints a Markdown report.

    .venv/bin/python bench/bench_gate.py --members 1000000

Measured in one process, one run, against a real cache database and a MockFactory door:
- card credential in → relay command out (idle, and while a 100k-member update burst is applied
  through the sync's own path: pickled rows → ``Gate.apply_rows`` → index slices); credentials are
  handed to the loop from a separate "reader" thread, as hardware readers do, so any wait for the
  loop is inside the number; the loop runs under the scheduling ``Gate.run()`` gives it
  (``--realtime-priority``);
- the same for rotating QR codes (one Ed25519 verify each);
- the swipe fully handled: until the event's transaction is committed;
- bytes written per decision (its event's later delivery included), from /proc/self/io: the kernel's
  count of storage writes and the bytes handed to write(); and the WAL frames SQLite wrote for them
  (``SQLITE_DBSTATUS_CACHE_WRITE``), which no writeback timing moves;
- memory per cached member, RSS with 100k members and ready time (separate child processes);
- the ratio of a whole decision to a bare dict lookup, measured in the same run.
"""

from __future__ import annotations

import _sqlite3
import argparse
import asyncio
import base64
import ctypes
import gc
import json
import os
import pickle
import random
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey

from gated.cache.index import card_keys, member_row
from gated.cache.store import CacheStore
from gated.contract import card_key, format_time, mint_qr_code
from gated.placement import check_decision_cpu
from gated.policy.credential import Credential

UNTIL = "2030-01-01T00:00:00Z"
QR_MEMBERS = 2000
# The member sync's shapes (gated.cache.sync): rows per pickled chunk from a verifier process,
# states per batch, and batches verified or applied at once (two per verifier, two verifiers).
ROW_CHUNK = 64
SYNC_BATCH = 512
BATCHES_IN_FLIGHT = 4
SQLITE_DBSTATUS_CACHE_WRITE = 9
# The CPU the calling thread is on (glibc). An idle badge's wake-up is ~24 µs when the reader
# thread and the loop are on one CPU and 40-57 µs across two: the kernel's placement, which moves
# a run's p50 by ~20 µs either way (BENCHMARKS.md, gate hot path), so the report counts it.
_sched_getcpu = ctypes.CDLL(None).sched_getcpu


def _unpickled(chunks: list[bytes]) -> Iterator[dict[str, Any]]:
    """On the cache writer's thread, as the sync does: a batch's rows, a chunk at a time."""
    for chunk in chunks:
        yield from pickle.loads(chunk)


def uid_of(i: int) -> str:
    return f"04{i:012X}"


def member_state(
    i: int, ckey: bytes, version: int, status: str = "active", qr_key: str | None = None
) -> dict[str, Any]:
    return {
        "type": "member_state", "kid": None, "member_id": f"m_{i}", "sites": ["bench"],
        "version": version, "status": status, "role": "member", "valid_from": None,
        "valid_until": UNTIL, "plan": "full" if i % 10 else "offpeak",
        "schedule": [] if i % 10 else [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}],
        "zones": [], "credentials": [card_key(ckey, uid_of(i))], "qr_key": qr_key,
        "daily_limit": None, "issued_at": "2026-11-26T08:00:00Z",
    }  # fmt: skip


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def build_site(root: Path, members: int) -> tuple[Path, bytes, dict[int, bytes]]:
    """A config, keys and a cache with ``members`` members (reused between runs)."""
    root.mkdir(parents=True, exist_ok=True)
    ckey_file = root / "credential.key"
    if not ckey_file.exists():
        ckey_file.write_text(secrets.token_hex(32) + "\n")
    ckey = bytes.fromhex(ckey_file.read_text().strip())
    app_keys_file = root / "app-keys.json"
    if not app_keys_file.exists():
        app_keys_file.write_text(
            json.dumps({i: SigningKey.generate().encode().hex() for i in range(QR_MEMBERS)})
        )
    app_keys = {int(i): bytes.fromhex(k) for i, k in json.loads(app_keys_file.read_text()).items()}
    (root / "head-office.pub").write_bytes(b"")
    config = root / "gated.toml"
    config.write_text(
        f'site = "bench"\ngate = "g1"\ntimezone = "Europe/Berlin"\nstate_dir = "{root}/state"\n'
        f'control_socket = "{root}/state/control.sock"\n[keys]\ncredential_key_file = "{ckey_file}"\n'
        '[door]\npin_factory = "mock"\npulse_ms = 3000\n[[readers]]\nkind = "sim"\n'
    )
    db = root / "state" / "cache.db"
    store = CacheStore(db)
    have = store.max_version()
    if have < members:
        t0 = time.perf_counter()
        batch: list[dict[str, Any]] = []
        for i in range(have, members):
            qr = (
                base64.b64encode(bytes(SigningKey(app_keys[i]).verify_key)).decode()
                if i in app_keys
                else None
            )
            batch.append(member_state(i, ckey, i + 1, qr_key=qr))
            if len(batch) == 5000:
                store.apply_states(batch)
                batch = []
        store.apply_states(batch)
        print(
            f"# built {members - have} members in {time.perf_counter() - t0:.1f}s", file=sys.stderr
        )
    store.close()
    return config, ckey, app_keys


def child_load(config: Path, image: str) -> None:
    """Run in a child process: time to ready and memory of the loaded index. ``image``: "drop"
    deletes the index image first (a start from the rows), "keep" starts from whatever is
    there; either way the gate then saves its image as a clean stop does."""
    from gated.cache.store import CacheStore
    from gated.config import load_gate_config

    cfg = load_gate_config(config)
    image_path = cfg.cache_path.with_name("index.img")
    if image == "drop":
        image_path.unlink(missing_ok=True)
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    c0 = time.process_time()
    from gated.daemon import Gate

    t_import = time.perf_counter() - t0
    gate = Gate(cfg)
    ready = time.perf_counter() - t0
    ready_cpu = time.process_time() - c0
    rss1 = _rss_bytes()
    from_image = gate.images.saved_generation is not None
    gate.writer.close()
    gate.images.save_at_stop(gate.index, gate.live)
    store = CacheStore(cfg.cache_path)
    gc.collect()
    before = _rss_bytes()
    index = store.load_index()
    gc.collect()
    index_bytes = _rss_bytes() - before
    print(json.dumps({"ready_s": ready, "ready_cpu_s": ready_cpu, "import_s": t_import,
                      "from_image": from_image, "rss_total": rss1, "rss_gate_delta": rss1 - rss0,
                      "index_bytes": index_bytes, "members": index.count}))  # fmt: skip


def checkpoint(db: Path) -> None:
    """Copy the WAL into the database file now, so its writes are inside the measurement."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _wal_frames(conn: sqlite3.Connection) -> int:
    """Pages this connection has written to the WAL, as SQLite counts them
    (``sqlite3_db_status(SQLITE_DBSTATUS_CACHE_WRITE)``): each is one WAL frame of a page and a
    24-byte frame header. Python's sqlite3 does not expose the call, so it is made through ctypes
    on the connection's handle (the pointer right after the object header in CPython's
    ``pysqlite_Connection``; a benchmark's shortcut, checked against the WAL file's size below)."""
    lib = ctypes.CDLL(_sqlite3.__file__)
    handle = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    current, highwater = ctypes.c_int(), ctypes.c_int()
    if lib.sqlite3_db_status(
        ctypes.c_void_p(handle), SQLITE_DBSTATUS_CACHE_WRITE, ctypes.byref(current),
        ctypes.byref(highwater), 0,
    ) != 0:  # fmt: skip
        raise RuntimeError("sqlite3_db_status failed")
    return current.value


def _check_wal_count(db: Path) -> None:
    """The frame count above equals what a fresh WAL file grows by (no checkpoint between)."""
    conn = sqlite3.connect(db.with_name("walcheck.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    wal = db.with_name("walcheck.db-wal")
    frames0, size0 = _wal_frames(conn), wal.stat().st_size
    for _ in range(50):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(300),))
    frames = _wal_frames(conn) - frames0
    grown = wal.stat().st_size - max(size0, 32)
    conn.close()
    if grown != frames * (page + 24):
        raise SystemExit(f"WAL frame count {frames} does not match the WAL's growth {grown}")


def _io_written() -> tuple[int, int]:
    """(write_bytes, wchar) from /proc/self/io: what the kernel counts as sent to storage (a 4 KiB
    page each time one is dirtied, again if it was written back since), and what the process
    handed to write() (SQLite's WAL frames and checkpoint pages, exactly)."""
    fields = {}
    with open("/proc/self/io") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            fields[name] = int(value)
    return fields["write_bytes"], fields["wchar"]


async def run_bench(
    config: Path,
    ckey: bytes,
    app_keys: dict[int, bytes],
    members: int,
    decisions: int,
    realtime_priority: int,
    decision_cpu: str | None = None,
) -> dict[str, Any]:
    from gpiozero.pins.mock import MockFactory

    from gated.config import load_gate_config
    from gated.daemon import Gate
    from gated.door import Door
    from gated.placement import join_decisions, release_decisions
    from gated.process import decide_in_realtime

    cfg = load_gate_config(config)
    gate = Gate(cfg, pin_factory=MockFactory())
    # Decisions scheduled as Gate.run() schedules them (the config's realtime_priority, SCHED_FIFO
    # by default); the reader threads started below get the normal policy, as hardware readers'.
    gate.scheduling = decide_in_realtime(realtime_priority)
    # The loop and the reader threads on the decision CPU, as Gate.run() places them.
    if decision_cpu is not None:
        cfg.decision_cpu = decision_cpu
    gate.place_threads()
    loop = asyncio.get_running_loop()
    gate.door = Door(cfg.door, loop, gate.on_door_event, pin_factory=gate._pin_factory)
    results: dict[str, Any] = {}
    latencies: list[int] = []
    original = gate.on_credential

    # (perf_counter at the decision, latency): to place the burst's slowest decisions in time.
    stamped: list[tuple[float, int]] = []
    # (reader thread and loop on different CPUs, latency) of each badge.
    placed: list[tuple[bool, int]] = []

    def timed(cred: Credential, read_cpu: int) -> None:
        crossed = _sched_getcpu() != read_cpu
        latency = original(cred)["latency_us"]
        latencies.append(latency)
        stamped.append((time.perf_counter(), latency))
        placed.append((crossed, latency))

    def reader_thread(
        creds: list[Credential | str], interval: float, done: threading.Event
    ) -> None:
        """Stand in for a hardware reader: each credential stamped here, handed to the loop; on
        the decision CPU, as a reader's device thread puts itself (ThreadedReader)."""
        join_decisions()
        for c in creds:
            if isinstance(c, str):
                cred = Credential("qr", c, "bench")
            else:
                cred = Credential(c.kind, c.value, c.reader_id, c.direction)  # fresh `at`
            loop.call_soon_threadsafe(timed, cred, _sched_getcpu())
            time.sleep(interval)
        loop.call_soon_threadsafe(done.set)

    async def play(creds: list[Any], interval: float) -> list[int]:
        latencies.clear()
        placed.clear()
        done = threading.Event()
        t = threading.Thread(target=reader_thread, args=(creds, interval, done))
        t.start()
        while not done.is_set():
            await asyncio.sleep(0.01)
        t.join()
        await asyncio.sleep(0.05)
        return list(latencies)

    rnd = random.Random(7)
    cards = [Credential("card", uid_of(rnd.randrange(members)), "bench") for _ in range(decisions)]

    # Baseline for the hand-off: the same reader thread and pace, but the loop callback only
    # takes the time (what waking an idle event loop from another thread costs on this machine).
    def handoff(cred: Credential, read_cpu: int) -> None:
        latencies.append((time.monotonic_ns() - cred.at) // 1000)

    timed_decision = timed
    timed = handoff
    results["handoff"] = await play(cards[:5000], 0.0005)
    timed = timed_decision
    # Idle: one badge every 0.5 ms (far faster than any turnstile), the loop otherwise idle.
    idle = await play(cards, 0.0005)
    results["card_idle"] = idle
    results["card_idle_placed"] = list(placed)

    # Baseline: the index's own lookup alone (a hash, a probe, the record made), timed the same
    # way: the call the hot path makes.
    keys = [card_keys(m.credentials)[0] for m in list(gate.index.by_id.values())[:decisions]]
    bare = []
    lookup = gate.index.member_of_key
    for k in keys:
        t0 = time.perf_counter_ns()
        lookup(k)
        bare.append((time.perf_counter_ns() - t0) / 1000)
    results["bare_lookup_us"] = statistics.median(bare)
    # Members badge in any order: the same lookup of random members, as the thread's CPU time
    # per call over all of them (the first members in order, above, are helped by the caches).
    everyone = [m for m in gate.index.by_id.values() if m.credentials]
    random_keys = [card_keys(rnd.choice(everyone).credentials)[0] for _ in range(decisions)]
    del everyone
    c0 = time.thread_time_ns()
    for k in random_keys:
        lookup(k)
    results["random_lookup_cpu_us"] = (time.thread_time_ns() - c0) / len(random_keys) / 1000

    # In-loop decision time without the thread hand-off (for the ratio to the bare lookup).
    inloop = []
    for c in cards[:5000]:
        cred = Credential(c.kind, c.value, c.reader_id)
        inloop.append(gate.on_credential(cred)["latency_us"])
        if len(inloop) % 64 == 0:
            await asyncio.sleep(0)
    results["card_inloop"] = inloop

    # During a 100k-member update burst, applied the way the member sync applies one: states made
    # into rows (in the sync's verifier processes; here before the clock starts), pickled
    # ROW_CHUNK rows at a time, unpickled on the writer's thread by Gate.apply_rows, SYNC_BATCH
    # states a batch, BATCHES_IN_FLIGHT at once. The waiting rows are bytes, as in the sync: the
    # 100,000 state dicts this once held were ~600,000 objects for the collector to walk, and a
    # full collection over them (20-45 ms) sometimes landed inside the burst. Versions above all
    # the cache holds, so every run applies every state (a kept cache holds the last run's).
    burst_n = min(100_000, members)
    base = gate.index.max_version
    burst_batches = [
        [
            pickle.dumps(
                [
                    member_row(member_state(i, ckey, base + 1 + i, "active" if i % 3 else "grace"))
                    for i in range(k, min(k + ROW_CHUNK, j + SYNC_BATCH, burst_n))
                ],
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            for k in range(j, min(j + SYNC_BATCH, burst_n), ROW_CHUNK)
        ]
        for j in range(0, burst_n, SYNC_BATCH)
    ]
    gc.collect()

    async def sync_burst() -> None:
        in_flight = asyncio.Semaphore(BATCHES_IN_FLIGHT)

        async def one(chunks: list[bytes]) -> None:
            async with in_flight:
                await asyncio.wrap_future(gate.apply_rows(_unpickled(chunks)))

        await asyncio.gather(*(one(chunks) for chunks in burst_batches))

    # Every collection during the burst: generation, duration, thread (the collector runs on
    # whichever thread allocated past a threshold, holding the GIL: a badge waits for it).
    # The CPU time the collecting thread got during it, beside the wall time: a collection much
    # longer on the wall than on the CPU was a thread taken off the CPU while holding the GIL.
    collections: list[tuple[int, float, float, str, float]] = []
    gc_started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if phase == "start":
            gc_started["t"], gc_started["cpu"] = now, cpu
        else:
            t = gc_started.get("t", now)
            collections.append(
                (info["generation"], t, now - t, threading.current_thread().name,
                 cpu - gc_started.get("cpu", cpu))
            )  # fmt: skip

    stamped.clear()
    gc.callbacks.append(on_gc)
    burst_t0 = time.perf_counter()
    burst = asyncio.create_task(sync_burst())
    burst_cards = cards[: min(decisions, 4000)]
    during = await play(burst_cards, 0.0005)
    await burst
    if gate.index.max_version != base + burst_n:
        raise SystemExit("the burst did not apply every state")
    results["burst_s"] = time.perf_counter() - burst_t0
    results["card_burst"] = during
    gc.callbacks.remove(on_gc)
    in_burst = [c for c in collections if burst_t0 <= c[1] <= burst_t0 + results["burst_s"]]
    results["gc_burst"] = in_burst
    # The slowest decisions, and the collection (if any) that ended within their wait.
    slowest = []
    for at, latency in sorted(stamped, key=lambda x: -x[1])[:3]:
        overlap = [c for c in in_burst if at - latency / 1e6 <= c[1] + c[2] <= at + 1e-4]
        slowest.append((latency, at - burst_t0, overlap))
    results["burst_slowest"] = slowest
    results["burst_overlap"] = results["burst_s"]

    # Rotating QR codes (fresh nonces, signature verified on the loop).
    now = int(time.time())
    codes = [
        mint_qr_code(app_keys[i % QR_MEMBERS], f"m_{i % QR_MEMBERS}", now, secrets.token_hex(8))
        for i in range(min(decisions, 3000))
    ]
    results["qr"] = await play(codes, 0.0005)

    # Swipe fully handled: credential in → its event committed (a marker queued behind it).
    durable = []
    for c in cards[:2000]:
        cred = Credential(c.kind, c.value, c.reader_id)
        gate.on_credential(cred)
        await asyncio.wrap_future(gate.writer.submit(lambda s: None))
        durable.append((time.monotonic_ns() - cred.at) / 1000)
    results["durable"] = durable

    # Bytes written per decision, with its later delivery (deleted in batches of 100 as the outbox
    # drain does after PUBACK) and a full checkpoint, for a burst and for a gym's pace.
    def drain(store: CacheStore) -> None:
        while batch := store.outbox_batch(100):
            store.delete_events([s for s, _ in batch])

    await asyncio.wrap_future(gate.writer.submit(drain))
    checkpoint(cfg.cache_path)
    _check_wal_count(cfg.cache_path)
    conn = gate.writer.store.conn
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    for label, n, pace in (("written_burst", 10_000, 0.0), ("written_paced", 1000, 0.005)):
        w0, c0 = _io_written()
        f0 = _wal_frames(conn)
        for i, c in enumerate(cards[:n]):
            gate.on_credential(Credential(c.kind, c.value, c.reader_id))
            if pace:
                await asyncio.sleep(pace)
            elif i % 32 == 0:
                await asyncio.sleep(0)
            if i % 100 == 99:
                gate.writer.submit(drain)
        await asyncio.wrap_future(gate.writer.submit(drain))
        frames = _wal_frames(conn) - f0
        checkpoint(cfg.cache_path)
        w1, c1 = _io_written()
        results[label] = (w1 - w0) / n
        results[label + "_wchar"] = (c1 - c0) / n
        results[label + "_frames"] = frames / n
        results[label + "_wal"] = frames * (page_size + 24) / n
    results["scheduling"] = gate.scheduling
    results["placement"] = gate.placement.detail
    gate.door.close()
    gate.writer.close()
    release_decisions()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gated-bench")
    ap.add_argument(
        "--realtime-priority",
        type=int,
        default=10,
        help="the loop's SCHED_FIFO priority, as the config's realtime_priority (default 10, "
        "the shipped default; 0: decisions under the normal policy)",
    )
    ap.add_argument(
        "--decision-cpu",
        help='the config\'s decision_cpu for the decisions ("auto", "off" or a CPU; default: '
        "the workdir's gated.toml, which leaves it at auto)",
    )
    ap.add_argument("--child-load", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--image", choices=("drop", "keep"), default="keep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_load:
        child_load(args.child_load, args.image)
        return
    big_cfg, ckey, app_keys = build_site(args.workdir / f"m{args.members}", args.members)
    small_cfg, _, _ = build_site(args.workdir / "m100000", 100_000)

    def load(cfg: Path, image: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, __file__, "--child-load", str(cfg), "--image", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(json.loads(out))

    # From the rows (no image; the child saves one as a clean stop would), then from that image.
    rows_big, load_big = load(big_cfg, "drop"), load(big_cfg, "keep")
    if small_cfg == big_cfg:
        rows_small, load_small = rows_big, load_big
    else:
        rows_small, load_small = load(small_cfg, "drop"), load(small_cfg, "keep")
    if not (load_big["from_image"] and load_small["from_image"]):
        raise SystemExit("the second start did not load the image")
    r = asyncio.run(
        run_bench(
            big_cfg,
            ckey,
            app_keys,
            args.members,
            args.decisions,
            args.realtime_priority,
            None if args.decision_cpu is None else check_decision_cpu(args.decision_cpu),
        )
    )
    db_bytes = sum(
        p.stat().st_size for p in (args.workdir / f"m{args.members}" / "state").glob("cache.db*")
    )
    ratio = statistics.median(r["card_inloop"]) / max(r["bare_lookup_us"], 0.001)

    def row(name: str, xs: list[int] | list[float], target: str) -> str:
        return f"| {name} | {statistics.median(xs):.0f} | {pct(xs, 99):.0f} | {max(xs):.0f} | {target} |"

    print(
        f"## Gate hot path ({format_time(time.time())}, {args.members:,} members cached, {os.cpu_count()} cores, decisions: {r['scheduling']}, decision CPU: {r['placement']}, load average {os.getloadavg()[0]:.2f})\n"
    )
    print("| credential in → relay command out (µs) | p50 | p99 | max | target |")
    print("| --- | --- | --- | --- | --- |")
    print(row("baseline: reader thread → loop hand-off alone (no decision)", r["handoff"], ""))
    print(row("card, idle (reader thread → loop)", r["card_idle"], "p50 < 50, p99 < 250"))
    for crossed, name in ((False, "on the loop's CPU"), (True, "on another CPU")):
        xs = [lat for c, lat in r["card_idle_placed"] if c is crossed]
        if xs:
            share = f"{len(xs) / len(r['card_idle_placed']):.0%}"
            print(row(f"card, idle, reader thread {name} ({share} of badges)", xs, ""))
    print(row("card, decided on the loop (no hand-off)", r["card_inloop"], ""))
    print(
        row(
            f"card, during a 100k-member update burst ({r['burst_s']:.1f} s)",
            r["card_burst"],
            "p99 < 1000",
        )
    )
    print(row("rotating QR (Ed25519 verify on the loop)", r["qr"], "p50 < 300"))
    print(row("swipe fully handled (event committed)", r["durable"], "p99 < 2000"))
    print()
    gcs = r["gc_burst"]
    by_gen = {g: [c for c in gcs if c[0] == g] for g in (0, 1, 2)}
    longest = max(gcs, key=lambda c: c[2], default=None)
    print(
        "\nCollections during the burst: "
        + ", ".join(
            f"gen{g} {len(cs)} (max {max((c[2] for c in cs), default=0) * 1e3:.1f} ms)"
            for g, cs in by_gen.items()
        )
        + (
            f"; longest on thread {longest[3]} ({longest[4] * 1e3:.2f} ms of it on the CPU)"
            if longest
            else ""
        )
        + ". Slowest decisions: "
        + "; ".join(
            f"{lat} µs at +{when:.2f} s"
            + "".join(f" (gen{c[0]} {c[2] * 1e3:.1f} ms on {c[3]})" for c in overlap)
            for lat, when, overlap in r["burst_slowest"]
        )
        + "\n"
    )
    print("| other | value | target |")
    print("| --- | --- | --- |")
    print(f"| index lookup alone (same index) | {r['bare_lookup_us']:.2f} µs | |")
    print(
        f"| index lookup of a random member (thread CPU per call) | {r['random_lookup_cpu_us']:.2f} µs | |"
    )
    print(f"| whole decision / index lookup alone (p50) | {ratio:.0f}× | report |")
    print(
        f"| bytes written per decision, back-to-back (10,000, delivery + checkpoint included) | {r['written_burst']:.0f} B (write() calls: {r['written_burst_wchar']:.0f} B) | < 10 KB |"
    )
    print(
        f"| bytes written per decision, one every 5 ms (1,000) | {r['written_paced']:.0f} B (write() calls: {r['written_paced_wchar']:.0f} B) | < 10 KB |"
    )
    for label, name in (("written_burst", "back-to-back"), ("written_paced", "one every 5 ms")):
        print(
            f"| WAL per decision by SQLite's count, {name} (frames × (page + 24 B)) | {r[label + '_wal']:.0f} B ({r[label + '_frames']:.2f} frames) | < 10 KB |"
        )
    print(
        f"| index memory per member ({load_big['members']:,}) | {load_big['index_bytes'] / load_big['members']:.0f} B | < 500 B |"
    )
    for name, rows, img, target in (
        (
            f"{load_big['members']:,}",
            rows_big,
            load_big,
            "< 2 s (1M)" if args.members > 100_000 else "< 0.3 s (100k)",
        ),
        (f"{load_small['members']:,}", rows_small, load_small, "< 0.3 s (100k)"),
    ):
        print(
            f"| ready after start, {name} members, from the index image (imports {img['import_s']:.2f} s) | {img['ready_s']:.2f} s (CPU {img['ready_cpu_s']:.2f} s) | {target} |"
        )
        print(
            f"| ready after start, {name} members, from the rows (no image) | {rows['ready_s']:.2f} s (CPU {rows['ready_cpu_s']:.2f} s) | |"
        )
    print(
        f"| RSS with {load_small['members']:,} members | {load_small['rss_total'] / 2**20:.0f} MiB | < 100 MB |"
    )
    print(f"| cache.db size, {args.members:,} members | {db_bytes / 2**20:.0f} MiB | |")
    print(
        f"| max RSS of this benchmark | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB | |"
    )


if __name__ == "__main__":
    main()
