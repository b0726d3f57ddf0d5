"""Benchmark: one billing cycle renewing N members with the SimulatedGateway.

    .venv/bin/python bench/bench_billing.py [--members 100000] [--batch 500] [--seed-only]

Members are seeded straight into the store (one subscription each, due now, a card that
succeeds); the timed part is ``Billing.run_cycle()``: invoices with lines, attempts under the
crash-safe protocol, payments, receipts, new MemberStates with versions and the status outbox.

Also reported: the time spent inside the gateway's calls (the simulator stands in for the
payment provider), so ``overhead_per_renewal_us`` is gated's own share; and a fixed calibration
workload (Python building rows, SQLite inserting them) timed just before and just after the
cycle, best of three each. This VM's speed can halve from one minute to the next: a slow
calibration beside a slow cycle shows it was the minute, not the code (a reading before and after
can still miss a slow stretch in between).
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from gated.billing_sync import schema
from gated.billing_sync.cli import settle_collector
from gated.billing_sync.gateway import SimulatedGateway
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.store import open_store
from gated.config import BillingConfig

T0 = 1_796_112_000


def calibration() -> float:
    """Seconds (best of three) for a fixed single-core load like the cycle's: Python making
    50,000 dict rows and SQLite inserting them, indexed, into a fresh in-memory table."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, m TEXT, a INTEGER, s TEXT, p TEXT)")
        db.execute("CREATE INDEX t_m ON t (m)")
        rows = [
            {"m": f"m{i:07d}", "a": i * 7 % 5000, "s": "open", "p": f"payload {i}"}
            for i in range(50_000)
        ]
        db.executemany("INSERT INTO t (m, a, s, p) VALUES (:m, :a, :s, :p)", rows)
        db.commit()
        db.close()
        best = min(best, time.perf_counter() - t)
    return best


def timed(method: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    """``method`` adding its wall time to ``spent[0]``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--seed-only",
        action="store_true",
        help="seed and calibrate but run no cycle: under cachegrind, subtracting this run's"
        " instructions from a whole run's leaves the cycle's",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = BillingConfig.model_validate(
            {
                "database_url": f"sqlite:///{root}/billing.db",
                "state_dir": str(root),
                "sites": ["downtown"],
                "batch_size": args.batch,
                "keys": {
                    "head_office_private_key_file": str(root / "k/ho.pem"),
                    "credential_key_file": str(root / "k/cred.key"),
                    "card_encryption_key_file": str(root / "k/cards.key"),
                },
            }
        )
        init_keys(config.keys)
        now = T0 + 31 * 86_400

        def clock() -> int:
            return now

        engine = open_store(config.database_url)
        gateway = SimulatedGateway(clock=clock)
        in_gateway = [0.0]
        for name in ("create_intent", "confirm_intent", "retrieve_intent"):
            setattr(gateway, name, timed(getattr(gateway, name), in_gateway))
        billing = Billing(engine, config, gateway, Keys.load(config.keys), clock)
        # As gated-billing's build() does once the service is wired.
        settle_collector()
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        t = time.perf_counter()
        ids = [f"m{i:07d}" for i in range(args.members)]
        with engine.begin() as conn:
            conn.execute(
                insert(schema.members),
                [
                    {
                        "id": m,
                        "name": m,
                        "email": f"{m}@example.org",
                        "sites": '["downtown"]',
                        "role": "member",
                        "customer_ref": f"cus_sim_{m}",
                        "payment_method": "pm_sim_ok",
                        "erased": False,
                        "created_at": T0,
                    }
                    for m in ids
                ],
            )
            conn.execute(
                insert(schema.subscriptions),
                [
                    {
                        "member_id": m,
                        "plan_id": "monthly",
                        "started_at": T0 - 86_400,
                        "paid_through": T0 + 31 * 86_400,
                        "status": "active",
                        "retries_done": 0,
                        "needs_new_card": False,
                        "review_at": T0 + 31 * 86_400,
                    }
                    for m in ids
                ],
            )
        # Every member already has a published state, as in a running system.
        billing.republish_all()
        seed_s = time.perf_counter() - t
        before = calibration()
        if args.seed_only:
            calibration()
            print(json.dumps({"members": args.members, "seed_s": round(seed_s, 2)}))
            return
        in_gateway[0] = 0.0
        t, cpu = time.perf_counter(), time.process_time()
        report = billing.run_cycle()
        cycle_s = time.perf_counter() - t
        cpu_s = time.process_time() - cpu
        gateway_s = in_gateway[0]
        after = calibration()
        with engine.connect() as conn:
            paid = conn.execute(
                select(func.count()).where(schema.invoices.c.status == "paid")
            ).scalar_one()
            outbox = conn.execute(
                select(func.count()).select_from(schema.status_outbox)
            ).scalar_one()
        assert report.renewals == args.members and report.succeeded == args.members, report
        assert paid == args.members
        print(
            json.dumps(
                {
                    "members": args.members,
                    "batch": args.batch,
                    "seed_s": round(seed_s, 2),
                    "cycle_s": round(cycle_s, 2),
                    "cycle_cpu_s": round(cpu_s, 2),
                    "per_renewal_us": round(cycle_s / args.members * 1e6, 1),
                    "renewals_per_s": round(args.members / cycle_s),
                    "gateway_s": round(gateway_s, 2),
                    "overhead_per_renewal_us": round((cycle_s - gateway_s) / args.members * 1e6, 1),
                    "calibration_s": [round(before, 3), round(after, 3)],
                    "cycle_per_calibration": round(cycle_s / ((before + after) / 2), 1),
                    "outbox_rows": outbox,
                }
            )
        )


if __name__ == "__main__":
    main()
