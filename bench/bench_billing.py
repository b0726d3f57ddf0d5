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
downgrade booked for the renewal (5%, on a cheaper plan), a price kept by a grandfathering
price change (5%), and upgrades made mid-period (3.3%: two of every 60, one of them a
household's dependant), each through ``Billing.change_plan`` as the CLI and the member app make
it, so its prorated ``plan_change`` invoice is issued and charged before the cycle, and the
renewal bills the new plan. Without it the data is what older trees' benchmark seeded, so the
same command measures them.

What the cycle itself prorates: nothing. An upgrade is prorated and charged when it is made
(``plan_changes.change_plan``); a downgrade or any change booked for the renewal, and a kept
price, are billed whole periods by the renewal (``renewals.renewal_terms``); a member who joins
mid-month is billed a whole first period at once, anchored to their join day
(``members.add_member``; a join date in the past bills nothing before today), so their renewal
is a whole period too, and joins are not in the data. The proration in ``--mix`` is therefore
the upgrades' invoices before the cycle and the renewals at the upgraded price in it. The seed's
time (``seed_s``) includes the upgrades' (``upgrade_s``).
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
from typing import Any, NamedTuple

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
# have a downgrade booked for the renewal, 3 keep a grandfathered price and 2 upgrade
# mid-period (one of them a dependant, k=5). Each upgrade is a service call of its own (about
# 12 ms of CPU): at 100,000 members the 3,334 upgrades took 42 s of the seed's 57 s.
MIX_BLOCK = 60
PRICE, BASIC_PRICE, KEPT_PRICE, PREMIUM_PRICE = 4990, 2990, 4490, 5990
TAX_BP = 1900
DAY = 86_400
# The seeded paid period: 1 December to 1 January (31 days). The upgrades are made 20 days and
# 6 hours into it, so 11 days are left (a part day counts whole: the day of the change is the
# new plan's); the cycle runs at its end.
PAID_THROUGH = T0 + 31 * DAY
UPGRADE_AT = T0 + 20 * DAY + 6 * 3_600
DAYS_LEFT, PERIOD_DAYS = 11, 31


class Mixed(NamedTuple):
    """What member number ``i`` is under ``--mix``."""

    payer: str | None = None
    next_plan: str | None = None
    kept: int | None = None
    upgrade: bool = False


PLAIN = Mixed()


def mix_of(i: int) -> Mixed:
    """Member number ``i`` under ``--mix``."""
    k = i % MIX_BLOCK
    if k in (1, 2, 4, 5):  # dependants of members k=0 and k=3
        return Mixed(payer=f"m{i - k % 3:07d}", upgrade=k == 5)
    if k in (6, 7, 8):
        return Mixed(next_plan="basic")
    if k in (9, 10, 11):
        return Mixed(kept=KEPT_PRICE)
    if k == 12:
        return Mixed(upgrade=True)
    return PLAIN


def renewal_net(m: Mixed) -> int:
    """What the renewal bills ``m`` (net, per period): the booked plan, else the upgraded one,
    else the kept price, else the plan's."""
    if m.next_plan:
        return BASIC_PRICE
    if m.upgrade:
        return PREMIUM_PRICE
    return m.kept or PRICE


def half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up to an integer (both positive)."""
    return (2 * numerator + denominator) // (2 * denominator)


def upgrade_total() -> int:
    """The gross of an upgrade's invoice, worked out here from the prices and the days, not by
    the code under test: the premium plan for the days left less the monthly plan's credit for
    them, each rounded half up, then taxed (rounded half up)."""
    net = half_up(PREMIUM_PRICE * DAYS_LEFT, PERIOD_DAYS) - half_up(PRICE * DAYS_LEFT, PERIOD_DAYS)
    return net + half_up(net * TAX_BP, 10_000)


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


def check_mix(engine: Any, mix: list[Mixed]) -> dict[str, Any]:
    """Assert the ``--mix`` cycle billed what each member owed: the booked downgrades at the
    basic plan's price (and switched to it), the kept prices, the mid-period upgrades at the
    premium price (their prorated invoice issued and paid before the cycle, one each, at the
    total worked out here), everyone else the plan's price; a household on one invoice, its
    members' nets summed and taxed together. (A dependant has no card of its own: every invoice
    paid, checked by the caller, means the dependants' were charged to their payers' cards.)
    Returns renewals by total and the upgrades' invoices by total."""
    nets: dict[str, int] = {}
    for i, m in enumerate(mix):
        invoice = m.payer or f"m{i:07d}"
        nets[invoice] = nets.get(invoice, 0) + renewal_net(m)
    want: dict[int, int] = {}
    for net in nets.values():
        gross = net + half_up(net * TAX_BP, 10_000)
        want[gross] = want.get(gross, 0) + 1
    upgraders = sorted(f"m{i:07d}" for i, m in enumerate(mix) if m.upgrade)
    inv, sub = schema.invoices, schema.subscriptions
    with engine.connect() as conn:
        got = dict(
            conn.execute(
                select(inv.c.total, func.count())
                .where(inv.c.kind == "renewal")
                .group_by(inv.c.total)
            ).all()
        )
        changes = conn.execute(
            select(inv.c.member_id, inv.c.total, inv.c.status, inv.c.issued_at)
            .where(inv.c.kind == "plan_change")
            .order_by(inv.c.member_id)
        ).all()
        on_plan = dict(
            conn.execute(
                select(sub.c.plan_id, func.count())
                .where(sub.c.next_plan_id.is_(None))
                .group_by(sub.c.plan_id)
            ).all()
        )
    assert got == want, (got, want)
    # One prorated invoice per upgrade, issued at the upgrade, paid at the upgraded total.
    assert [c.member_id for c in changes] == upgraders, (len(changes), len(upgraders))
    total = upgrade_total()
    assert all((c.total, c.status, c.issued_at) == (total, "paid", UPGRADE_AT) for c in changes), (
        changes[:3]
    )
    assert on_plan.get("basic", 0) == sum(1 for m in mix if m.next_plan), on_plan
    assert on_plan.get("premium", 0) == len(upgraders), on_plan
    return {"renewal_totals": got, "plan_change_totals": {total: len(changes)}}


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
        # The cycle runs at the end of the seeded period; --mix's upgrades before it.
        now = [PAID_THROUGH]

        def clock() -> int:
            return now[0]

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
            billing.add_plan(
                PlanSpec("premium", "Premium", PREMIUM_PRICE, "EUR", tax_rate_bp=TAX_BP)
            )
        else:
            billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        t = time.perf_counter()
        ids = [f"m{i:07d}" for i in range(args.members)]
        mix = [mix_of(i) if args.mix else PLAIN for i in range(args.members)]
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
                    for m, (payer, _, _, _) in zip(ids, mix, strict=True)
                ],
            )
            conn.execute(
                insert(schema.subscriptions),
                [
                    {
                        "member_id": m,
                        "plan_id": "monthly",
                        "started_at": T0 - 86_400,
                        "paid_through": PAID_THROUGH,
                        "status": "active",
                        "retries_done": 0,
                        "needs_new_card": False,
                        "review_at": PAID_THROUGH,
                        **({"next_plan_id": nxt, "price": kept} if args.mix else {}),
                    }
                    for m, (_, nxt, kept, _) in zip(ids, mix, strict=True)
                ],
            )
        # The upgrades, mid-period, one at a time through the service as a member or the desk
        # makes them: each issues its prorated invoice and charges it at once.
        t_up = time.perf_counter()
        now[0] = UPGRADE_AT
        upgraders = [m for m, x in zip(ids, mix, strict=True) if x.upgrade]
        for m in upgraders:
            change, charged = billing.change_plan(m, "premium")
            assert change.when == "now" and change.total == upgrade_total(), change
            assert charged.succeeded == 1, (m, charged)
        now[0] = PAID_THROUGH
        upgrade_s = time.perf_counter() - t_up
        # Every member already has a published state, as in a running system.
        billing.republish_all()
        seed_s = time.perf_counter() - t
        before = calibration()
        if args.seed_only:
            calibration()
            print(
                json.dumps(
                    {
                        "members": args.members,
                        "seed_s": round(seed_s, 2),
                        **({"upgrades": len(upgraders)} if args.mix else {}),
                        **({"upgrade_s": round(upgrade_s, 2)} if args.mix else {}),
                    }
                )
            )
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
        # One charge and one invoice a payer: a household's on one; the upgrades' invoices
        # were paid before the cycle.
        charges = sum(1 for x in mix if x.payer is None)
        assert report.renewals == args.members and report.succeeded == charges, report
        assert paid == charges + len(upgraders), (paid, charges, len(upgraders))
        mixed = check_mix(engine, mix) if args.mix else None
        print(
            json.dumps(
                {
                    "members": args.members,
                    "batch": args.batch,
                    "seed_s": round(seed_s, 2),
                    **({"upgrades": len(upgraders)} if args.mix else {}),
                    **({"upgrade_s": round(upgrade_s, 2)} if args.mix else {}),
                    "cycle_s": round(cycle_s, 2),
                    "cycle_cpu_s": round(cpu_s, 2),
                    "per_renewal_us": round(cycle_s / args.members * 1e6, 1),
                    "renewals_per_s": round(args.members / cycle_s),
                    "gateway_s": round(gateway_s, 2),
                    "overhead_per_renewal_us": round((cycle_s - gateway_s) / args.members * 1e6, 1),
                    "calibration_s": [round(before, 3), round(after, 3)],
                    "cycle_per_calibration": round(cycle_s / ((before + after) / 2), 1),
                    "outbox_rows": outbox,
                    **(mixed or {}),
                }
            )
        )


if __name__ == "__main__":
    main()
