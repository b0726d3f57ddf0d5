"""The reports a finance manager reads, on a small story whose numbers are worked out by hand:
revenue (gross, net and tax apart) by method and by site, MRR, deferred revenue, churn and the
recovery rate of dunning; and each of them as CSV and JSON on the command line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gated.billing_sync import reports
from gated.billing_sync.service import Billing
from tests.billing.helpers import DAY, T0, Clock, cli_ok, make_billing, step, write_cli_config

NET, TAX = 4990, 948  # the monthly plan: 49.90 + 19 % tax
TOTAL = NET + TAX
DEC = "2026-12"


@pytest.fixture
def story(tmp_path: Path) -> tuple[Billing, Clock]:
    """From 1 December: m1 pays by card, m2 by SEPA debit (settled on the 4th), m3 (uptown) at
    the front desk; m4's card is declined for lack of funds and a new card pays; m5's card is
    lost and nothing is ever paid. Ten days of cycles later, it is 11 December, 08:00 UTC."""
    b, clock = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", sites=["downtown"], payment_method="pm_sim_ok")
    b.add_member("m2", "Bo", plan_id="monthly", sites=["downtown"], payment_method="pm_sim_sepa")
    b.add_member("m3", "Cy", plan_id="monthly", sites=["uptown"])
    b.record_payment("m3", method="front_desk", reference="desk-1")
    b.add_member("m4", "Di", plan_id="monthly", sites=["downtown"],
                 payment_method="pm_sim_decline_insufficient_funds")  # fmt: skip
    b.set_payment_method("m4", "pm_sim_ok")
    b.add_member("m5", "Ed", plan_id="monthly", sites=["downtown"],
                 payment_method="pm_sim_decline_lost_card")  # fmt: skip
    step(b, clock, 10)
    return b, clock


def rows(b: Billing, name: str, **scope: object) -> list[dict[str, object]]:
    columns, found = reports.REPORTS[name](b.engine, b.clock(), reports.Scope(**scope))  # type: ignore[arg-type]
    return reports.records(columns, found)


def test_revenue_by_method_and_site_with_net_and_tax_apart(story: tuple[Billing, Clock]) -> None:
    b, _ = story
    assert rows(b, "revenue") == [
        {"month": DEC, "currency": "EUR", "method": "card", "gross": 2 * TOTAL,
         "net": 2 * NET, "tax": 2 * TAX, "payments": 2},
        {"month": DEC, "currency": "EUR", "method": "front_desk", "gross": TOTAL,
         "net": NET, "tax": TAX, "payments": 1},
        {"month": DEC, "currency": "EUR", "method": "sepa_debit", "gross": TOTAL,
         "net": NET, "tax": TAX, "payments": 1},
    ]  # fmt: skip
    uptown = rows(b, "revenue", sites=("uptown",))
    assert [(r["method"], r["gross"]) for r in uptown] == [("front_desk", TOTAL)]


def test_mrr_and_deferred_revenue(story: tuple[Billing, Clock]) -> None:
    b, _ = story
    # Four members paid December (1 December to 1 January): 4 x 49.90 a month.
    assert rows(b, "mrr") == [{"month": DEC, "currency": "EUR", "mrr": 4 * NET, "members": 4}]
    # On 11 December, 21 of the period's 31 days (from 1 December, 08:00) are still to be served for each of the four:
    # 49.90 x 21 / 31 = 33.8032..., 33.80 each (rounded down per invoice).
    assert NET * 21 // 31 == 3380
    assert rows(b, "deferred") == [
        {"month": DEC, "at": "2026-12-11 08:00", "currency": "EUR", "deferred": 4 * 3380,
         "invoices": 4}
    ]  # fmt: skip


def test_recovery_rate_of_dunning(story: tuple[Billing, Clock]) -> None:
    b, _ = story
    # m4's soft decline was recovered in full by the new card. Hard: m5's lost card, never
    # recovered, and m3's first charge, tried with no card on file and paid at the desk.
    assert rows(b, "recovery") == [
        {"month": DEC, "currency": "EUR", "decline_class": "hard", "failed": 2,
         "failed_amount": 2 * TOTAL, "recovered_amount": TOTAL, "recovered": 1,
         "recovery_pct": "50.0"},
        {"month": DEC, "currency": "EUR", "decline_class": "soft", "failed": 1,
         "failed_amount": TOTAL, "recovered_amount": TOTAL, "recovered": 1,
         "recovery_pct": "100.0"},
    ]  # fmt: skip


def test_churn_by_month(story: tuple[Billing, Clock]) -> None:
    b, clock = story
    assert b.cancel("m1") == T0 + 31 * DAY  # 1 January, the end of the paid period
    clock.advance(22)  # 2 January: the cancellation has taken effect
    assert rows(b, "members") == [
        {"month": DEC, "new": 5, "cancelled": 0, "at_start": 0, "churn_pct": None},
        {"month": "2027-01", "new": 0, "cancelled": 1, "at_start": 5, "churn_pct": "20.0"},
    ]


def test_the_reports_print_csv_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", str(NET),
           "--tax-rate-bp", "1900")  # fmt: skip
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    # Every report is the same generated command (a few of them here: each run opens the store).
    # Not deferred: the CLI's clock is the wall clock, and what is deferred shrinks as it runs.
    for name in ("revenue", "mrr", "recovery", "members"):
        as_json = json.loads(cli_ok(cfg, "report", name, "--json"))
        as_csv = list(csv.DictReader(io.StringIO(cli_ok(cfg, "report", name, "--csv"))))
        assert len(as_json) == len(as_csv), name
        for obj, line in zip(as_json, as_csv, strict=True):
            assert {k: "" if v is None else str(v) for k, v in obj.items()} == line, name
    [deferred] = json.loads(cli_ok(cfg, "report", "deferred", "--json"))
    assert deferred["deferred"] > 0 and deferred["invoices"] == 1
