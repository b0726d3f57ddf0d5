"""Benchmark: one billing cycle renewing N members with the SimulatedGateway.

    .venv/bin/python bench/bench_billing.py [--members 100000] [--batch 500] [--seed-only] [--mix]

Members are seeded straight into the store (one subscription each, due now, a card that
succeeds); the timed part is ``Billing.run_cycle()``: invoices with lines, attempts under the
crash-safe protocol, payments, receipts, new MemberStates with versions and the status outbox.

Also reported: the time spent inside the gateway's calls (the simulator stands in for the
payment provider), so ``overhead_per_renewal_us`` is gated's own share; and a fixed calibration
workload (Python building rows, SQLite inserting them) timed just before and just after the
cycle, best of three each. This VM's speed can halve from one minute to the next: a slow
calibration beside a slow cycle shows it was the minute, not the code (a reading before and after
can still miss a slow stretch in between).

``--mix`` seeds what a real gym's renewals hold beside plain members (see ``mix_of``):
households (a payer with two dependants charged to the payer's card, 10% of members), a
downgrade booked for the renewal (5%, on a cheaper plan) and a price kept by a grandfathering
price change (5%). Without it the data is what older trees' benchmark seeded, so the same
command measures them.
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
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store

T0 = 1_796_112_000

# --mix: of every 60 members, 6 are in households (two payers each with two dependants), 3
# have a downgrade booked for the renewal and 3 keep a grandfathered price.
MIX_BLOCK = 60
BASIC_PRICE, KEPT_PRICE = 2990, 4490


def mix_of(i: int) -> tuple[str | None, str | None, int | None]:
    """(payer, next plan, kept price) of member number ``i`` under ``--mix``."""
    k = i % MIX_BLOCK
    if k in (1, 2, 4, 5):  # dependants of members k=0 and k=3
        return f"m{i - k % 3:07d}", None, None
    if k in (6, 7, 8):
        return None, "basic", None
    if k in (9, 10, 11):
        return None, None, KEPT_PRICE
    return None, None, None


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


def check_mix(engine: Any, mix: list[tuple[str | None, str | None, int | None]]) -> dict[int, int]:
    """Assert the ``--mix`` cycle billed what each member owed: the booked downgrades at the
    basic plan's price (and switched to it), the kept prices, everyone else the plan's price; a
    household on one invoice, its members' nets summed and taxed together. (A dependant has no
    card of its own: every invoice paid, checked by the caller, means the dependants' were
    charged to their payers' cards.) Returns renewals by total."""
    from gated.billing_sync.engine import tax_of

    nets: dict[str, int] = {}
    for i, (payer, nxt, kept) in enumerate(mix):
        invoice = payer or f"m{i:07d}"
        nets[invoice] = nets.get(invoice, 0) + (BASIC_PRICE if nxt else kept or 4990)
    want: dict[int, int] = {}
    for net in nets.values():
        gross = net + tax_of(net, 1900)
        want[gross] = want.get(gross, 0) + 1
    inv, sub = schema.invoices, schema.subscriptions
    with engine.connect() as conn:
        got = dict(
            conn.execute(
                select(inv.c.total, func.count())
                .where(inv.c.kind == "renewal")
                .group_by(inv.c.total)
            ).all()
        )
        on_basic = conn.execute(
            select(func.count()).where(sub.c.plan_id == "basic", sub.c.next_plan_id.is_(None))
        ).scalar_one()
    assert got == want, (got, want)
    assert on_basic == sum(1 for _, nxt, _ in mix if nxt), on_basic
    return got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--batch-hold-ms",
        type=int,
        default=None,
        help="batch_hold_ms (default: the config's): under valgrind every write transaction holds"
        " SQLite's lock ~50 times longer and the batches shrink; 60000 keeps them at --batch",
    )
    parser.add_argument(
        "--seed-only",
        action="store_true",
        help="seed and calibrate but run no cycle: under cachegrind, subtracting this run's"
        " instructions from a whole run's leaves the cycle's",
    )
    parser.add_argument(
        "--mix",
        action="store_true",
        help="seed households, downgrades booked for the renewal and grandfathered prices"
        " (see mix_of); the default is plain members, as older trees' benchmark seeded",
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
                **({"batch_hold_ms": args.batch_hold_ms} if args.batch_hold_ms else {}),
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
        if args.mix:
            billing.add_plan(
                PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900, grandfather=True)
            )
            billing.add_plan(PlanSpec("basic", "Basic", BASIC_PRICE, "EUR", tax_rate_bp=1900))
        else:
            billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        t = time.perf_counter()
        ids = [f"m{i:07d}" for i in range(args.members)]
        mix = [mix_of(i) if args.mix else (None, None, None) for i in range(args.members)]
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
                        # A dependant has no card of its own: it is charged to the payer's.
                        "customer_ref": None if payer else f"cus_sim_{m}",
                        "payment_method": None if payer else "pm_sim_ok",
                        "erased": False,
                        "created_at": T0,
                        # Every row names the same columns (an executemany takes the first
                        # row's); the plain rows name none that older trees lack.
                        **({"payer_id": payer} if args.mix else {}),
                    }
                    for m, (payer, _, _) in zip(ids, mix, strict=True)
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
                        **({"next_plan_id": nxt, "price": kept} if args.mix else {}),
                    }
                    for m, (_, nxt, kept) in zip(ids, mix, strict=True)
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
        # One charge and one invoice a payer: a household's on one.
        charges = sum(1 for payer, _, _ in mix if payer is None)
        assert report.renewals == args.members and report.succeeded == charges, report
        assert paid == charges
        mixed = check_mix(engine, mix) if args.mix else None
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
                    **({"renewal_totals": mixed} if mixed else {}),
                }
            )
        )


if __name__ == "__main__":
    main()
