"""Benchmark: the CPU time of each of a renewal's writes on SQLite, with the rollups' triggers
and indexes as the store has them, and with some of them dropped.

    .venv/bin/python bench/bench_rollup_writes.py [--members 5000] [--repeat 3] [--set-status]
        [NAME=PATTERN[,PATTERN…] …]

A fresh store (``open_store``, every migration) gets a plan and ``--members`` members with an
active subscription; then the renewal cycle's nine writes, as it binds them (an invoice, its two
lines, an attempt, its intent id, its result, the payment, the invoice paid, the subscription
renewed, the receipt), run batch by batch (500 rows, one ``executemany`` each) inside one
transaction that is rolled back. Each write's thread CPU time is summed over the batches and
divided by the members; the best of ``--repeat`` runs is printed, per configuration: ``all``
(the store as it is), then each ``NAME=PATTERN,…``, whose triggers and indexes matching a
pattern (``fnmatch``: ``rollup_*``, ``ix_invoices_period_*``) are dropped inside the rolled-back
transaction. A trigger's cost to a write is ``all`` less the configuration without it.

CPU time, not instructions: cachegrind counts the zeroing of SQLite's trigger frames byte by
byte (BENCHMARKS.md, "What the rollup triggers cost a renewal"). The best of a few runs
because on a shared host a run's CPU time grows with the load (hyperthreads and caches).
"""

from __future__ import annotations

import argparse
import fnmatch
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gated.billing_sync.store import open_store

T0 = 1_798_790_400  # the cycle's day
PERIOD = 31 * 86_400
BATCH = 500


def seeded(members: int, root: Path) -> sqlite3.Connection:
    """A migrated store holding one plan and ``members`` members, each with a subscription
    due now; opened with the connection settings ``open_store`` gives its own."""
    url = f"sqlite:///{root}/billing.db"
    open_store(url).dispose()
    db = sqlite3.connect(f"{root}/billing.db", isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("PRAGMA cache_size=-65536")
    db.execute("PRAGMA mmap_size=268435456")
    ids = [f"m{i:07d}" for i in range(members)]
    db.execute("BEGIN")
    db.execute(
        "INSERT INTO plans (id, name, price, currency, period_months, tax_rate_bp, schedule,"
        " zones, min_term_months, freeze_fee) VALUES"
        " ('monthly', 'Monthly', 4990, 'EUR', 1, 1900, '[]', '[]', 0, 0)"
    )
    db.executemany(
        "INSERT INTO members (id, name, email, sites, role, customer_ref, payment_method,"
        " erased, created_at) VALUES (?, ?, ?, '[\"downtown\"]', 'member', ?, 'pm_sim_ok', 0, ?)",
        [(m, m, f"{m}@example.org", f"cus_{m}", T0 - 40 * 86_400) for m in ids],
    )
    db.executemany(
        "INSERT INTO subscriptions (member_id, plan_id, started_at, paid_through, status,"
        " retries_done, needs_new_card, review_at) VALUES (?, 'monthly', ?, ?, 'active', 0, 0, ?)",
        [(m, T0 - PERIOD, T0, T0) for m in ids],
    )
    db.execute("COMMIT")
    return db


def writes(
    ids: list[str], invoice0: int, attempt0: int, set_status: bool
) -> Iterator[tuple[str, str, list[Any]]]:
    """A batch's writes as the cycle runs them: (name, SQL, rows)."""
    inv = [invoice0 + k for k in range(len(ids))]
    att = [attempt0 + k for k in range(len(ids))]
    yield (
        "invoice",
        "INSERT INTO invoices (member_id, kind, currency, period_start, period_end, subtotal, tax,"
        " total, amount_paid, status, due_at, created_at, site, number, issued_at, household)"
        " VALUES (?, 'renewal', 'EUR', ?, ?, 4990, 948, 5938, 0, 'open', ?, ?, 'downtown', ?, ?, 0)",
        [
            (m, T0, T0 + PERIOD, T0, T0, f"downtown-2027-{i:06d}", T0)
            for m, i in zip(ids, inv, strict=True)
        ],
    )
    yield (
        "lines",
        "INSERT INTO invoice_lines (invoice_id, kind, description, quantity, unit_amount, amount,"
        " tax_rate_bp) VALUES (?, ?, ?, 1, ?, ?, 1900)",
        [
            row
            for i in inv
            for row in (
                (i, "membership", "Monthly 2027-01-01 to 2027-02-01", 4990, 4990),
                (i, "tax", "Tax 19 %", 948, 948),
            )
        ],
    )
    yield (
        "attempt",
        "INSERT INTO payment_attempts (invoice_id, member_id, idempotency_key, amount, currency,"
        " state, created_at, updated_at) VALUES (?, ?, ?, 5938, 'EUR', 'new', ?, ?)",
        [(i, m, f"inv{i}-a1", T0, T0) for m, i in zip(ids, inv, strict=True)],
    )
    yield (
        "intent id",
        "UPDATE payment_attempts SET gateway_ref = ?, state = 'created', updated_at = ? WHERE id = ?",
        [(f"pi_{i}", T0, a) for i, a in zip(inv, att, strict=True)],
    )
    yield (
        "result",
        "UPDATE payment_attempts SET state = 'succeeded', decline_code = NULL,"
        " decline_class = NULL, updated_at = ? WHERE id = ?",
        [(T0, a) for a in att],
    )
    yield (
        "payment",
        "INSERT INTO payments (invoice_id, member_id, amount, method, reference, at)"
        " VALUES (?, ?, 5938, 'card', ?, ?)",
        [(i, m, f"pi_{i}", T0) for m, i in zip(ids, inv, strict=True)],
    )
    yield (
        "paid",
        "UPDATE invoices SET amount_paid = 5938, status = 'paid', paid_at = ? WHERE id = ?",
        [(T0, i) for i in inv],
    )
    # As a refresh writes a member whose status stays (publishing.refresh on SQLite), or with
    # ``set_status`` as it did before.
    status, kept = ("status = ?, ", "") if set_status else ("", " AND status = ?")
    yield (
        "renewed",
        f"UPDATE subscriptions SET {status}paid_through = ?, first_failure_at = NULL,"
        f" next_retry_at = NULL, retries_done = 0, needs_new_card = 0, review_at = ?"
        f" WHERE member_id = ?{kept}",
        [
            ("active", T0 + PERIOD, T0 + PERIOD, m)
            if set_status
            else (T0 + PERIOD, T0 + PERIOD, m, "active")
            for m in ids
        ],
    )
    yield (
        "receipt",
        "INSERT INTO notifications (member_id, kind, to_addr, subject, body, created_at, attempts,"
        " invoice_ids) VALUES (?, 'receipt', ?, ?, ?, ?, 0, ?)",
        [
            (
                m,
                f"{m}@example.org",
                f"Receipt for invoice {i}",
                f"Hello {m}, thank you.",
                T0,
                str(i),
            )
            for m, i in zip(ids, inv, strict=True)
        ],
    )


def run(db: sqlite3.Connection, members: int, drop: list[str], set_status: bool) -> dict[str, int]:
    """One run of every batch's writes with ``drop`` dropped: thread CPU ns per write."""
    spent: dict[str, int] = {}
    db.execute("BEGIN IMMEDIATE")
    try:
        for kind, name in db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('index', 'trigger')"
            " AND name NOT LIKE 'sqlite_%'"
        ).fetchall():
            if any(fnmatch.fnmatch(name, p) for p in drop):
                db.execute(f"DROP {kind.upper()} {name}")
        invoice0, attempt0 = (
            db.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {t}").fetchone()[0]
            for t in ("invoices", "payment_attempts")
        )
        ids = [f"m{i:07d}" for i in range(members)]
        for start in range(0, members, BATCH):
            batch = ids[start : start + BATCH]
            for name, sql, rows in writes(batch, invoice0 + start, attempt0 + start, set_status):
                t = time.thread_time_ns()
                db.executemany(sql, rows)
                spent[name] = spent.get(name, 0) + time.thread_time_ns() - t
    finally:
        db.execute("ROLLBACK")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--set-status",
        action="store_true",
        help="the subscription update sets status, as a refresh did before 0030's branch (and"
        " does on PostgreSQL)",
    )
    parser.add_argument("configs", nargs="*", metavar="NAME=PATTERN[,PATTERN…]")
    args = parser.parse_args()
    configs = [("all", [])] + [
        (c.split("=", 1)[0], c.split("=", 1)[1].split(",")) for c in args.configs
    ]
    with tempfile.TemporaryDirectory() as tmp:
        db = seeded(args.members, Path(tmp))
        best: dict[str, dict[str, int]] = {}
        for _ in range(args.repeat):
            for name, drop in configs:  # alternated, so a slow minute hits every one
                for write, ns in run(db, args.members, drop, args.set_status).items():
                    got = best.setdefault(name, {})
                    got[write] = min(got.get(write, ns), ns)
        db.close()
    writes_ = list(best["all"])
    print("µs of thread CPU per renewal, best of", args.repeat)
    print(f"{'':24}" + "".join(f"{w:>10}" for w in writes_) + f"{'sum':>9}")
    for name, got in best.items():
        cells = "".join(f"{got[w] / args.members / 1e3:10.2f}" for w in writes_)
        print(f"{name:24}{cells}{sum(got.values()) / args.members / 1e3:9.2f}")


if __name__ == "__main__":
    main()
