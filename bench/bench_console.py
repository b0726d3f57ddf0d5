"""Benchmark: the staff console over a large store (SQLite, or PostgreSQL with ``--postgres``).

    .venv/bin/python bench/bench_console.py [--members 100000] [--months 13] [--events 3000000]
        [--runs 200] [--dashboard-runs 10] [--postgres] [--own-autogroup] [--settle]

Seeds a store in bulk (SQLite: executemany in one transaction; PostgreSQL: COPY into a throwaway
cluster), migrated up to before the report rollups, then runs that migration, which fills them
from the seeded rows (timed apart): ``--members`` members at two sites (name, e-mail, phone,
one card each), a subscription each started over the last ``--months`` months (about one in ten
cancelled), a paid renewal invoice and its payment for every month each member had (about one
in twenty with a failed attempt first, most of them recovered), and ``--events`` gate events
spread over the months. Then, with the garbage collector set as ``serve`` sets it
(``settle_collector``), times in this process:

* member search (``Billing.search_members``, what the desk's search box and the staff API call)
  for a name, part of a name, an e-mail address, a phone number as a caller reads it out, a
  card UID as a keyboard-wedge reader types it, and a member id: ``--runs`` queries of each;
* the same searches as whole pages (``GET /desk/?q=…`` through starlette's TestClient,
  template included), ``--runs`` / 4 of each;
* the dashboard page (``GET /desk/dashboard``, 13 months, every report and chart) and each of
  its reports alone, ``--dashboard-runs`` times each.

Prints one JSON document: wall-clock and CPU-time percentiles in milliseconds, the time this
process's threads waited for a core (``runq``, from the scheduler's statistics) and the page
faults that read the disk (``majflt``), the seeding time, the scheduler group it ran in and the
load average before and after (this is a noisy shared machine). With the kernel's autogroups
on, ``nice`` ranks the benchmark only within its shell's session: ``--own-autogroup`` runs it
in a session of its own at its nice value, so ``nice -n -15`` counts against the machine's
other sessions too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from starlette.testclient import TestClient

from gated.billing_sync import reports
from gated.billing_sync.cli import settle_collector
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import alembic_config, open_store, upgrade
from gated.web.app import web_routes
from gated.web.desk_dashboard import DASHBOARD, MONTHS

MONTH_S = 30 * 86_400
# The last migration before the report rollups (0018).
BEFORE_ROLLUPS = "0017_products"
FIRST = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas")
LAST = ("Schmidt", "Meyer", "Weber", "Wagner", "Becker", "Hoffmann", "Koch", "Richter")
SITES = ("downtown", "uptown")


def pct(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max of durations in seconds, as milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def typed_uid(uid: str) -> str:
    """A UID as some keyboard-wedge readers type it: lower case, with colons."""
    return ":".join(uid[k : k + 2] for k in range(0, len(uid), 2)).lower()


# The PostgreSQL server's CPU seconds spent for this benchmark so far (None: SQLite, whose work
# is this process's own): set by main() when it runs against PostgreSQL.
server_cpu: Callable[[], float] | None = None


def backends_cpu(url: str, database: str) -> Callable[[], float]:
    """The CPU time of the server processes serving ``database`` (from /proc), read through
    a connection of its own that is left out of the sum."""
    import psycopg

    watcher = psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    )
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        pids = [
            pid
            for (pid,) in watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        ]
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    return cpu


def run_queue_s() -> float:
    """Seconds this process's threads have spent runnable but waiting for a core (the
    scheduler's ``run_delay`` in /proc/self/task/*/schedstat; 0 where the kernel has none)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def timed(work: Callable[[], Any], runs: int) -> dict[str, float]:
    """Wall-clock percentiles, and the same of the CPU time spent: this process's, plus the
    PostgreSQL server's where it runs (on a machine whose load is above its cores, wall time
    is mostly waiting for a core). ``runq``: the time this process's threads were ready to run
    but waited for a core; ``majflt``: page faults that read the disk (none: the store is in
    the page cache)."""
    work()  # a first run opens the connections the server's CPU is read from
    samples, cpu, runq = [], [], []
    majflt = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    for _ in range(runs):
        server = server_cpu() if server_cpu else 0.0
        q = run_queue_s()
        t, c = time.perf_counter(), time.process_time()
        work()
        samples.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c + ((server_cpu() - server) if server_cpu else 0.0))
        runq.append(run_queue_s() - q)
    cpu_pct, runq_pct = pct(cpu), pct(runq)
    return {
        **pct(samples),
        "cpu_p50_ms": cpu_pct["p50_ms"],
        "cpu_p99_ms": cpu_pct["p99_ms"],
        "runq_p50_ms": runq_pct["p50_ms"],
        "runq_p99_ms": runq_pct["p99_ms"],
        "majflt": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - majflt,
    }


# Each table's columns as the seed writes them.
COLUMNS = {
    "plans": "id, name, price, currency, period_months, tax_rate_bp, schedule, zones,"
    " min_term_months, freeze_fee",
    "members": "id, name, email, sites, role, payment_method, erased, created_at, phone,"
    " emergency_contact",
    "subscriptions": "member_id, plan_id, started_at, paid_through, status, retries_done,"
    " needs_new_card, cancel_at",
    "cards": "member_id, uid_encrypted, uid_lookup, credential, assigned_at",
    "invoices": "id, member_id, kind, currency, period_start, period_end, subtotal, tax, total,"
    " amount_paid, status, due_at, created_at, paid_at",
    "payments": "invoice_id, member_id, amount, method, at",
    "payment_attempts": "invoice_id, member_id, idempotency_key, amount, currency, state,"
    " decline_code, decline_class, created_at, updated_at",
    "gate_events": "event_id, site, gate, at, kind, member_id, reason, payload, received_at",
}
Put = Callable[[str, list[tuple[Any, ...]]], None]


def sqlite_writer(db: sqlite3.Connection) -> Put:
    """Rows into SQLite: one executemany per batch."""

    def put(table: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ",".join("?" * len(rows[0]))
        db.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", rows)

    return put


def postgres_writer(conn: Any) -> Put:
    """Rows into PostgreSQL with COPY."""

    def put(table: str, rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    return put


def seed(put: Put, keys: Keys, args: argparse.Namespace, now: int) -> dict[str, Any]:
    """Fill the store (migrated up to before the rollups) in bulk, a table at a time."""
    rng = random.Random(7)
    start_of_history = now - args.months * MONTH_S
    members, subs, cards, uids = [], [], [], []
    for i in range(args.members):
        mid = f"m{i:07d}"
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i // 10) % len(LAST)]} {i}"
        started = rng.randrange(start_of_history, now - 86_400)
        cancel = rng.randrange(started, now) if rng.random() < 0.1 else None
        site = SITES[i % 2]
        members.append(
            (
                mid,
                name,
                f"{name.split()[0].lower()}.{i}@example.org",
                json.dumps([site]),
                "member",
                "pm_sim_ok",
                False,
                started,
                f"+49 30 {1_000_000 + i}",
                "Partner +49 170 1",
            )
        )
        status = "cancelled" if cancel is not None else "active"
        subs.append((mid, "monthly", started, now + 20 * 86_400, status, 0, False, cancel))
        uid = f"04{i:012X}"
        uids.append(uid)
        cards.append(
            (
                mid,
                keys.cipher.encrypt(uid.encode()),
                keys.uid_lookup(uid),
                "0" * 64,
                started,
            )
        )
    # The plan as a row of the schema before the rollups (the service would write columns
    # later migrations add).
    put("plans", [("monthly", "Monthly", 4990, "EUR", 1, 1900, "[]", "[]", 0, 0)])
    put("members", members)
    put("subscriptions", subs)
    put("cards", cards)
    invoice_id = 0
    invoices, payments, attempts = [], [], []
    for mid, _plan, started, _pt, _st, _r, _n, cancel in subs:
        at = started
        end = cancel if cancel is not None else now
        while at < end:
            invoice_id += 1
            invoices.append(
                (invoice_id, mid, "renewal", "EUR", at, at + MONTH_S, 4193, 797, 4990, 4990,
                 "paid", at, at, at)
            )  # fmt: skip
            paid_at = at
            if rng.random() < 0.05:
                decline = rng.choice(("soft", "hard"))
                attempts.append(
                    (invoice_id, mid, f"idem-{invoice_id}-f", 4990, "EUR", "failed",
                     "card_declined", decline, at, at)
                )  # fmt: skip
                paid_at = at + 3 * 86_400
            payments.append((invoice_id, mid, 4990, "card", paid_at))
            at += MONTH_S
    put("invoices", invoices)
    put("payments", payments)
    put("payment_attempts", attempts)
    batch: list[tuple[Any, ...]] = []
    for n in range(args.events):
        i = rng.randrange(args.members)
        at = rng.randrange(start_of_history, now)
        kind = "entry" if rng.random() < 0.97 else "deny"
        site = SITES[i % 2]
        mid = f"m{i:07d}"
        payload = json.dumps(
            {"event_id": f"e{n:011d}", "site": site, "gate": "t1", "kind": kind, "member_id": mid}
        )
        batch.append((f"e{n:011d}", site, "t1", at, kind, mid, None, payload, at))
        if len(batch) == 100_000:
            put("gate_events", batch)
            batch = []
    if batch:
        put("gate_events", batch)
    return {
        "invoices": len(invoices),
        "payments": len(payments),
        "failed_attempts": len(attempts),
        "uids": uids[:: max(1, len(uids) // 1000)],
    }


def fill(url: str, keys: Keys, args: argparse.Namespace, now: int) -> dict[str, Any]:
    """Seed the store at ``url`` in one transaction, then analyze it for the planner."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute("PRAGMA synchronous=OFF")
        seeded = seed(sqlite_writer(db), keys, args, now)
        db.commit()
        db.execute("ANALYZE")
        db.close()
        return seeded
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        seeded = seed(postgres_writer(conn), keys, args, now)
        conn.execute("SELECT setval('invoices_id_seq', (SELECT max(id) FROM invoices))")
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return seeded


def settle_store(url: str) -> None:
    """The store as a running gym's is, not minutes after a bulk load: on PostgreSQL vacuumed,
    analyzed (the rollups the backfill just wrote too) and checkpointed, so no autovacuum or
    checkpoint of the seed runs under the timed requests; on SQLite analyzed and the write-ahead
    log checkpointed."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return
    import psycopg

    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def autogroup() -> str:
    """The scheduler group this process runs in and its nice value ("" where there is none)."""
    try:
        return Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return ""


def rerun_in_own_autogroup(argv: list[str]) -> int:
    """Run this benchmark again in a session of its own whose scheduler group has this
    process's nice value, and return its exit status.

    With the kernel's autogroups on (``/proc/sys/kernel/sched_autogroup_enabled``), a task's
    nice value ranks it only against the tasks of its own session: each session's group gets
    an equal share of the cores. ``nice -n -15`` from a shell left the benchmark one group
    among the machine's other sessions, so on these two cores at load 6 it waited for a core
    about as long as it ran. A new session has a group of its own, and that group's nice value
    (lowering it needs root) is what counts against the others."""
    niceness = os.nice(0)

    def own_group() -> None:
        Path("/proc/self/autogroup").write_text(str(niceness))

    child = subprocess.Popen([sys.executable, *argv], start_new_session=True, preexec_fn=own_group)
    try:
        return child.wait()
    except KeyboardInterrupt:
        # The child has left this terminal's process group, so it did not get the interrupt.
        child.terminate()
        return child.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=13)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--dashboard-runs", type=int, default=10, help="0: no dashboards")
    parser.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL cluster, not SQLite"
    )
    parser.add_argument(
        "--own-autogroup",
        action="store_true",
        help="run in a session and scheduler group of its own at this process's nice value"
        " (see rerun_in_own_autogroup)",
    )
    parser.add_argument(
        "--settle",
        action="store_true",
        help="vacuum, analyze and checkpoint the store after the seed and the backfill, so no"
        " autovacuum or checkpoint of the bulk load runs under the timed requests",
    )
    args = parser.parse_args()
    if args.own_autogroup:
        argv = [a for a in sys.argv if a != "--own-autogroup"]
        raise SystemExit(rerun_in_own_autogroup(argv))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        url = f"sqlite:///{root}/billing.db"
        if args.postgres:
            from tests.services import run_postgres

            url = stack.enter_context(run_postgres()).create_database("bench_console")
        config = BillingConfig.model_validate(
            {
                "database_url": url,
                "state_dir": str(root),
                "sites": list(SITES),
                "keys": {
                    "head_office_private_key_file": str(root / "k/ho.pem"),
                    "credential_key_file": str(root / "k/cred.key"),
                    "card_encryption_key_file": str(root / "k/cards.key"),
                },
            }
        )
        init_keys(config.keys)
        now = 1_796_112_000

        def clock() -> int:
            return now

        # Seeded before the rollups' migration, which then fills them (timed apart): what
        # upgrading a large store costs, and the same rollups the triggers would have kept.
        engine = open_store(config.database_url, migrate=False)
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, BEFORE_ROLLUPS)
        keys = Keys.load(config.keys)
        billing = Billing(engine, config, SimulatedGateway(clock=clock), keys, clock)
        engine.dispose()
        t = time.perf_counter()
        seeded = fill(url, keys, args, now)
        seed_s = time.perf_counter() - t
        t = time.perf_counter()
        upgrade(engine)
        backfill_s = time.perf_counter() - t
        if args.settle:
            settle_store(url)
        if args.postgres:
            global server_cpu
            server_cpu = backends_cpu(url, url.rsplit("/", 1)[1])
        access = billing.staff_access()
        access.add("olga", "Olga", "owner", [], "a long staff password")
        token = access.open_session("olga", "bench", "127.0.0.1")
        # The collector as `serve` sets it once the service is wired (``build``): what is loaded
        # by now is frozen out of its full passes, the young generation collected less often.
        settle_collector()

        rng = random.Random(11)
        n = args.members
        queries: dict[str, Callable[[], str]] = {
            "full name": lambda: f"{FIRST[3]} {LAST[2]} {rng.randrange(n)}",
            "part of a name (many hits)": lambda: rng.choice(LAST).lower()[:5],
            "part of every e-mail address": lambda: "example.org",
            "e-mail address": lambda: f"emma.{rng.randrange(n)}@example.org",
            "phone, read out": lambda: f"030 {1_000_000 + rng.randrange(n)}",
            "card UID, as a reader types it": lambda: typed_uid(rng.choice(seeded["uids"])),
            "member id": lambda: f"m{rng.randrange(n):07d}",
        }
        results: dict[str, Any] = {
            "members": n,
            "months": args.months,
            "events": args.events,
            "invoices": seeded["invoices"],
            "payments": seeded["payments"],
            "failed_attempts": seeded["failed_attempts"],
            "database": engine.dialect.name,
            "seed_s": round(seed_s, 1),
            "rollup_backfill_s": round(backfill_s, 1),
            "search": {},
            "search_page": {},
            "dashboard_report": {},
        }
        for label, make in queries.items():
            results["search"][label] = timed(
                lambda make=make: billing.search_members(make(), ["*"]), args.runs
            )
        app = create_app(billing, None, web_routes(billing))
        with TestClient(app) as client:
            client.cookies.set("gated-staff", token)
            for label, make in queries.items():

                def page(make: Callable[[], str] = make) -> None:
                    r = client.get("/desk/", params={"q": make()}, follow_redirects=False)
                    assert r.status_code in (200, 303), r.status_code

                results["search_page"][label] = timed(page, max(1, args.runs // 4))

            def dashboard() -> None:
                r = client.get("/desk/dashboard")
                assert r.status_code == 200, r.status_code

            if args.dashboard_runs:
                results["dashboard_page"] = timed(dashboard, args.dashboard_runs)
        first, last = reports.last_months(now, MONTHS)
        where = reports.scope_for(config, first, last, None)
        for name in DASHBOARD if args.dashboard_runs else ():
            results["dashboard_report"][name] = timed(
                lambda name=name: reports.REPORTS[name](billing.reader, now, where),
                args.dashboard_runs,
            )
        results["autogroup"] = autogroup()
        results["loadavg"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
