"""Reconciliation with the payment provider: movements and payouts imported page by page, each
payout with what it carried, every difference between the books both ways, and an import that
fails mid-way resuming from its cursor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update
from typer.testing import CliRunner

from gated.billing_sync import reconcile
from gated.billing_sync import schema as s
from gated.billing_sync.cli import app
from gated.billing_sync.gateway import FaultyGateway, GatewayUnavailable
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SIM_DISPUTE_FEE, SimulatedGateway
from gated.billing_sync.stripe_gateway import balance_entry
from gated.contract import format_time
from tests.billing.crashing import billing_for
from tests.billing.helpers import DAY, T0, Clock, cli_ok, make_billing, write_cli_config
from tests.billing.test_crash import ROOT, cli, write_config
from tests.billing.test_stripe_gateway import gateway as stripe_gateway
from tests.services import LocalStripe, free_port

TOTAL = 5938  # 49.90 + 19 % tax
FEE = 25 + (TOTAL * 14 + 500) // 1000  # the simulator's 0.25 + 1.4 %, rounded: 108


def intent_of(b: Billing, member_id: str) -> str:
    a = s.payment_attempts
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(a.c.gateway_ref).where(a.c.member_id == member_id, a.c.state == "succeeded")
            ).scalar_one()
        )


def three_paid_members(
    tmp_path: Path, **overrides: object
) -> tuple[Billing, Clock, SimulatedGateway]:
    clock = Clock()
    gw = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock, **overrides)
    for m in ("m1", "m2", "m3"):
        b.add_member(m, m.upper(), plan_id="monthly", payment_method="pm_sim_ok")
    # Charged on 1 December, available on the 3rd, paid out at midnight into the 4th.
    clock.advance(4)
    return b, clock, gw


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_payout_shows_the_charges_and_fees_it_carried_and_the_books_agree(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = (
        {"database_url": request.getfixturevalue("postgres_store_url")} if store != "sqlite" else {}
    )
    b, _, _ = three_paid_members(tmp_path, **url)
    report = reconcile.fetch(b.engine, b.gateway, b.clock(), None, page=2)
    # 3 charges + the payout's own movement = 4 movements: 2 pages; 1 page of payouts; the
    # payout's contents (the same 4 movements) 2 pages.
    assert (report.requests, report.movements, report.payouts) == (5, 8, 1)
    columns, rows = reconcile.payouts(b.engine)
    assert [dict(zip(columns, r, strict=True)) for r in rows] == [
        {
            "payout": "po_sim_20261204_eur",
            "created": "2026-12-04",
            "arrival": "2026-12-04",
            "status": "paid",
            "currency": "EUR",
            "amount": 3 * (TOTAL - FEE),
            "charges": 3,
            "charged": 3 * TOTAL,
            "refunded": 0,
            "disputed": 0,
            "fees": 3 * FEE,
            "other": 0,
            "unexplained": 0,
        }
    ]
    assert reconcile.mismatches(b.engine)[1] == []


def test_every_difference_between_the_books_is_reported_both_ways(tmp_path: Path) -> None:
    b, clock, gw = three_paid_members(tmp_path)
    # A charge made at the provider outside gated (its dashboard, another system).
    stray = gw.create_intent(
        customer_ref=None,
        payment_method="pm_sim_ok",
        amount=1000,
        currency="EUR",
        idempotency_key="stray",
        metadata={},
    )
    gw.confirm_intent(stray, "stray")
    # Our books say m2 paid 50.00 where the provider took 59.38.
    with b.engine.begin() as conn:
        conn.execute(update(s.payments).where(s.payments.c.member_id == "m2").values(amount=5000))
        # And a payment booked for m3 under a reference the provider never saw.
        invoice_id = conn.execute(
            select(s.invoices.c.id).where(s.invoices.c.member_id == "m3")
        ).scalar_one()
        conn.execute(
            insert(s.payment_attempts).values(
                invoice_id=invoice_id, member_id="m3", idempotency_key="ghost",
                gateway_ref="pi_sim_0000009999", amount=700, currency="EUR",
                state="succeeded", created_at=clock(), updated_at=clock(),
            )
        )  # fmt: skip
        conn.execute(
            insert(s.payments).values(
                invoice_id=invoice_id, member_id="m3", amount=700, method="card",
                reference="pi_sim_0000009999", at=clock(),
            )
        )  # fmt: skip
    # m1's bank disputes the payment: the provider takes it back at once.
    gw.open_dispute(intent_of(b, "m1"))
    reconcile.fetch(b.engine, b.gateway, b.clock(), None)
    _, rows = reconcile.mismatches(b.engine)
    found = {(r[0], r[1], r[2]): (r[3], r[5], r[6]) for r in rows}
    assert found == {
        ("amount_differs", "charge", intent_of(b, "m2")): ("m2", 5000, TOTAL),
        ("not_at_processor", "charge", "pi_sim_0000009999"): ("m3", 700, ""),
        ("not_booked", "charge", stray): ("", "", 1000),
        ("not_booked", "dispute", intent_of(b, "m1")): ("", "", -TOTAL),
    }
    # The dispute is lost: the chargeback is booked, and the two books agree on it.
    b.dispute_closed("dp_1", intent_of(b, "m1"), "lost")
    clock.advance(3)
    reconcile.fetch(b.engine, b.gateway, b.clock(), None)
    _, rows = reconcile.mismatches(b.engine)
    assert ("dispute", intent_of(b, "m1")) not in {(r[1], r[2]) for r in rows}
    _, payouts = reconcile.payouts(b.engine)
    # Paid out on the 7th with the stray charge made the same day.
    disputed = [r for r in payouts if r[9] != 0]
    assert [(r[6], r[7], r[9], r[10], r[12]) for r in disputed] == [
        (1, 1000, -TOTAL, 25 + 14 + SIM_DISPUTE_FEE, 0)
    ]


def test_a_period_only_lists_what_it_covers(tmp_path: Path) -> None:
    b, clock, _ = three_paid_members(tmp_path)
    clock.advance(30)
    b.run_cycle()  # the renewals of 31 December
    clock.advance(4)
    report = reconcile.fetch(b.engine, b.gateway, b.clock(), T0 + 20 * DAY)
    assert report.movements == 3 + 1 + 3 + 1  # the renewals and their payout, twice
    with b.engine.connect() as conn:
        stored = conn.execute(select(func.min(s.processor_balance.c.created))).scalar_one()
    assert stored >= T0 + 20 * DAY
    # The first month's payments were booked before the imported period: not a mismatch.
    assert reconcile.mismatches(b.engine)[1] == []


def test_an_import_that_fails_mid_way_resumes_from_its_cursor(tmp_path: Path) -> None:
    b, clock, gw = three_paid_members(tmp_path)
    for m in ("m4", "m5", "m6"):
        b.add_member(m, m.upper(), plan_id="monthly", payment_method="pm_sim_ok")
    clock.advance(4)
    asked: list[str] = []

    def fail_on_third_page(step: str) -> None:
        if step == "after_list_balance":
            asked.append(step)
            if len(asked) == 3:
                # The provider answered, and the answer was lost (a timeout, a crash).
                raise GatewayUnavailable("connection reset")

    faulty = FaultyGateway(gw, fail_on_third_page)
    with pytest.raises(GatewayUnavailable):
        reconcile.fetch(b.engine, faulty, b.clock(), None, page=2)
    with b.engine.connect() as conn:
        kept = conn.execute(select(func.count()).select_from(s.processor_balance)).scalar_one()
        after = conn.execute(
            select(s.processor_cursors.c.after).where(s.processor_cursors.c.what == "balance")
        ).scalar_one()
        # The payouts' list runs beside the movements: it may have been read before the error.
        listed = conn.execute(
            select(s.processor_cursors.c.done).where(s.processor_cursors.c.what == "payouts")
        ).scalar_one()
    # 6 charges + 2 payouts = 8 movements; the first two pages were stored with their cursor.
    assert kept == 4 and after is not None

    starts: list[str | None] = []

    class Recording(FaultyGateway):
        def list_balance(self, **kw: object) -> object:  # type: ignore[override]
            if kw.get("payout") is None:
                starts.append(kw["after"])  # type: ignore[arg-type]
            return super().list_balance(**kw)  # type: ignore[arg-type]

    report = reconcile.fetch(b.engine, Recording(gw, lambda _: None), b.clock(), None, page=2)
    assert report.resumed
    assert starts == [after, starts[1]] and starts[1] is not None  # from the cursor, not page 1
    with b.engine.connect() as conn:
        ids = conn.execute(select(s.processor_balance.c.id)).scalars().all()
        assert conn.execute(select(func.count()).select_from(s.processor_cursors)).scalar() == 0
        requests = conn.execute(select(s.processor_fetches.c.requests)).scalar_one()
    assert len(ids) == 8
    # The failed run asked for 3 pages of movements (and perhaps the payouts); this one for the
    # last 2 pages of movements and each payout's contents (4 movements each: 2 pages each).
    assert report.requests == 2 + 2 * 2 + (0 if listed else 1)
    assert requests == 3 + (1 if listed else 0) + report.requests
    assert reconcile.mismatches(b.engine)[1] == []


def test_the_command_line_fetches_and_reports_as_table_csv_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990",
           "--tax-rate-bp", "1900")  # fmt: skip
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    cli_ok(cfg, "clock", "advance", "4d")
    assert "fetched 4 movements and 1 payouts in 3 requests" in cli_ok(cfg, "reconcile", "fetch")
    parts = json.loads(cli_ok(cfg, "reconcile", "report", "--format", "json"))
    assert parts["mismatches"] == []
    [payout] = parts["payouts"]
    assert (payout["charges"], payout["charged"], payout["fees"]) == (1, TOTAL, FEE)
    assert payout["amount"] == TOTAL - FEE and payout["unexplained"] == 0
    csv_text = cli_ok(cfg, "reconcile", "report", "--show", "payouts", "--format", "csv")
    assert csv_text.splitlines()[1].startswith("po_sim_")
    assert "payouts" in cli_ok(cfg, "reconcile", "report", "--until", "2026-12-01")
    refused = CliRunner().invoke(app, ["reconcile", "report", "--format", "csv", "-c", str(cfg)])
    assert refused.exit_code == 2 and "--show payouts or --show mismatches" in refused.output


def test_stripe_balance_transactions_are_read_page_by_page_through_localstripe(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    gw = stripe_gateway(localstripe.url)
    b, _ = make_billing(tmp_path, gateway=gw)
    for m in ("m1", "m2", "m3"):
        b.add_member(m, m.upper(), plan_id="monthly", payment_method="pm_card_visa")
    # A charge made at Stripe outside gated.
    customer = gw.create_customer("x", None, "Stray")
    stray = gw.create_intent(
        customer_ref=customer,
        payment_method=gw.attach_payment_method(customer, "pm_card_visa"),
        amount=1200,
        currency="EUR",
        idempotency_key="stray",
        metadata={},
    )
    gw.confirm_intent(stray, "stray")
    # localstripe filters balance transactions by nothing but the cursor: fetch everything.
    report = reconcile.fetch(b.engine, gw, b.clock(), None, page=1)
    # 4 movements, a page each, the last saying there is no more; no payouts (1 request).
    assert (report.movements, report.requests) == (4, 4 + 1)
    with b.engine.connect() as conn:
        kinds = conn.execute(select(s.processor_balance.c.kind, s.processor_balance.c.source)).all()
    assert sorted(k for k, _ in kinds) == ["charge"] * 4
    assert {src for _, src in kinds} == {intent_of(b, m) for m in ("m1", "m2", "m3")} | {stray}
    _, rows = reconcile.mismatches(b.engine)
    assert [(r[0], r[2], r[6]) for r in rows] == [("not_booked", stray, 1200)]


@pytest.mark.parametrize(
    ("txn", "kind", "source"),
    [
        ({"type": "charge", "source": {"id": "ch_1", "payment_intent": "pi_1"}}, "charge", "pi_1"),
        ({"type": "payment", "source": {"id": "py_1", "payment_intent": "pi_2"}}, "charge", "pi_2"),
        ({"type": "refund", "source": {"id": "re_1", "payment_intent": "pi_1"}}, "refund", "pi_1"),
        # An older refund names only its charge (expanded with the charge's intent).
        (
            {
                "type": "refund",
                "source": {"id": "re_2", "charge": {"id": "ch_1", "payment_intent": "pi_3"}},
            },
            "refund",
            "pi_3",
        ),
        (
            {
                "type": "adjustment",
                "reporting_category": "dispute",
                "source": {"id": "du_1", "payment_intent": {"id": "pi_4"}},
            },
            "dispute",
            "pi_4",
        ),
        (
            {
                "type": "adjustment",
                "reporting_category": "dispute_reversal",
                "source": {"id": "du_1", "payment_intent": "pi_4"},
            },
            "dispute",
            "pi_4",
        ),
        ({"type": "payout", "source": {"id": "po_1", "object": "payout"}}, "payout", "po_1"),
        ({"type": "stripe_fee", "source": None}, "fee", None),
        ({"type": "transfer", "source": "tr_1"}, "other", "tr_1"),
    ],
)
def test_stripe_balance_transactions_in_the_gateways_words(
    txn: dict[str, object], kind: str, source: str | None
) -> None:
    entry = balance_entry({"id": "txn_1", "amount": -100, "fee": 15, "currency": "eur",
                           "created": T0, **txn})  # fmt: skip
    assert (entry.kind, entry.source, entry.amount, entry.fee, entry.currency) == (
        kind, source, -100, 15, "EUR"
    )  # fmt: skip


# Run in a child process: an import killed (SIGKILL) when the provider's third page of movements
# has arrived and before it is stored.
KILLED_IMPORT = """
import os, signal, sys
from pathlib import Path
from gated.billing_sync import reconcile
from tests.billing.crashing import billing_for

pages = []

def fault(step):
    if step == "after_list_balance":
        pages.append(step)
        if len(pages) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

b = billing_for(Path(sys.argv[1]), fault)
reconcile.fetch(b.engine, b.gateway, b.clock(), None, page=1)
"""


def test_an_import_killed_mid_page_is_finished_by_the_next_fetch(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    b = billing_for(config)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    for m in ("m1", "m2", "m3"):
        b.add_member(m, m.upper(), plan_id="monthly", payment_method="pm_sim_ok")
    b.advance_clock(4 * DAY)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IMPORT, str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    with b.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.processor_balance)).scalar() == 2
    resumed = cli(config, "reconcile", "fetch")
    assert resumed.returncode == 0, resumed.stderr
    # The last 2 of the 4 movements (3 charges and the payout) from the cursor, then the payout
    # and its contents.
    assert "finished the interrupted import" in resumed.stdout
    assert "fetched 6 movements and 1 payouts in 3 requests" in resumed.stdout
    with b.engine.connect() as conn:
        stored = conn.execute(select(s.processor_balance.c.payout_id)).scalars().all()
        assert conn.execute(select(func.count()).select_from(s.processor_cursors)).scalar() == 0
    assert len(stored) == 4 and all(stored)
    assert reconcile.mismatches(b.engine)[1] == []


def test_a_provider_out_of_reach_is_one_line_saying_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens
    config.write_text(config.read_text() + "max_retries = 0\n")
    cli_ok(config, "keys", "init")
    failed = CliRunner().invoke(app, ["reconcile", "fetch", "-c", str(config)])
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    # Beside the retry's log lines (key=value), one line for the person.
    [said] = [line for line in failed.output.splitlines() if not line.startswith("level=")]
    assert said.startswith("error: stripe ") and said.endswith("run again to continue")


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_second_fetch_while_one_runs_is_refused_and_nothing_is_imported_twice(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    import threading

    url = (
        {"database_url": request.getfixturevalue("postgres_store_url")} if store != "sqlite" else {}
    )
    b, _, gw = three_paid_members(tmp_path, **url)
    listing, release = threading.Event(), threading.Event()

    def hold(step: str) -> None:
        if step == "after_list_balance" and not listing.is_set():
            listing.set()
            assert release.wait(30)

    first: list[reconcile.FetchReport] = []
    runner = threading.Thread(
        target=lambda: first.append(
            reconcile.fetch(b.engine, FaultyGateway(gw, hold), b.clock(), None, page=2)
        )
    )
    runner.start()
    try:
        assert listing.wait(30)
        since = f"already running since {format_time(b.clock())}"
        with pytest.raises(reconcile.FetchRunning, match=since):
            reconcile.fetch(b.engine, gw, b.clock(), None, page=2)
    finally:
        release.set()
        runner.join(30)
    assert first and first[0].movements == 8  # the movements, and the payout's contents again
    with b.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.processor_balance)).scalar() == 4
        assert conn.execute(select(func.count()).select_from(s.processor_fetches)).scalar() == 1
    # Once it has finished, the next runs.
    assert not reconcile.fetch(b.engine, gw, b.clock(), None, page=2).resumed


def test_the_command_line_says_a_fetch_is_already_running(tmp_path: Path) -> None:
    from gated.billing_sync.store import open_store

    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with reconcile.one_fetch_at_a_time(engine):
        busy = CliRunner().invoke(app, ["reconcile", "fetch", "-c", str(cfg)])
    assert busy.exit_code == 2 and "a reconcile fetch is already running" in busy.stderr
    assert "fetched 0 movements" in cli_ok(cfg, "reconcile", "fetch")
