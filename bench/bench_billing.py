"""Benchmark: one billing cycle renewing N members with the SimulatedGateway.

    .venv/bin/python bench/bench_billing.py [--members 100000] [--batch 500]

Members are seeded straight into the store (one subscription each, due now, a card that
succeeds); the timed part is ``Billing.run_cycle()``: invoices with lines, attempts under the
crash-safe protocol, payments, receipts, new MemberStates with versions and the status outbox.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from gated.billing_sync import schema
from gated.billing_sync.cli import settle_collector
from gated.billing_sync.gateway import SimulatedGateway
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.store import open_store
from gated.config import BillingConfig

T0 = 1_796_112_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
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
        billing = Billing(
            engine, config, SimulatedGateway(clock=clock), Keys.load(config.keys), clock
        )
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
        t, cpu = time.perf_counter(), time.process_time()
        report = billing.run_cycle()
        cycle_s = time.perf_counter() - t
        cpu_s = time.process_time() - cpu
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
                    "outbox_rows": outbox,
                }
            )
        )


if __name__ == "__main__":
    main()
