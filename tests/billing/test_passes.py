"""Fixed-term passes (plans that do not auto-renew): one period billed, then ``expired``,
published to the gates, shown by ``members show`` and the ``passes`` report."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from gated.billing_sync import reports, schema
from gated.billing_sync.service import Billing, PlanSpec
from gated.contract import format_time
from tests.billing.helpers import (
    DAY,
    T0,
    cli_ok,
    make_billing,
    notices,
    published,
    step,
    write_cli_config,
)


def with_pass(tmp: Path) -> tuple[Billing, object]:
    b, clock = make_billing(tmp)
    b.add_plan(PlanSpec("pass1", "One-month pass", 3900, "EUR", auto_renew=False))
    return b, clock


def invoices_of(b: Billing, member_id: str) -> int:
    with b.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(schema.invoices.c.member_id == member_id)
            ).scalar_one()
        )


def test_a_pass_ends_expired_and_is_never_billed_again(tmp_path: Path) -> None:
    b, clock = with_pass(tmp_path)
    b.add_member("p1", "Pia", plan_id="pass1", email="pia@example.org", payment_method="pm_sim_ok")
    b.add_member("m1", "Max", plan_id="monthly", payment_method="pm_sim_ok")
    end = T0 + 31 * DAY  # 2026-12-01 + one calendar month
    state = published(b, "p1")
    assert state["status"] == "active"
    assert state["valid_until"] == format_time(end)  # no grace days after a pass

    step(b, clock, 30)
    assert published(b, "p1")["status"] == "active"
    step(b, clock, 1)
    state = published(b, "p1")
    assert state["status"] == "expired" and state["valid_until"] == format_time(end)
    assert published(b, "m1")["status"] == "active"  # the monthly member renewed instead
    assert notices(b, "p1")[-1] == "expired"

    step(b, clock, 40)
    assert invoices_of(b, "p1") == 1 and invoices_of(b, "m1") == 3
    shown = b.member("p1")
    assert (shown["status"], shown["auto_renew"], shown["owed"]) == ("expired", False, 0)
    assert [r.id for r in b.list_members(status="expired")] == ["p1"]
    columns, rows = reports.passes(b.engine, clock())  # type: ignore[arg-type]
    assert columns[:4] == ["member", "plan", "ends", "status"]
    assert rows == [("p1", "pass1", "2027-01-01", "expired", 0)]


def test_a_frozen_pass_ends_later(tmp_path: Path) -> None:
    b, clock = with_pass(tmp_path)
    b.add_member("p1", "Pia", plan_id="pass1", payment_method="pm_sim_ok")
    step(b, clock, 10)
    b.freeze("p1", 1)  # 2026-12-11 to 2027-01-11: the pass now ends on 2027-02-01
    step(b, clock, 51)  # 2027-01-31
    assert published(b, "p1")["status"] == "active"
    step(b, clock, 1)
    assert published(b, "p1")["status"] == "expired"
    assert published(b, "p1")["valid_until"].startswith("2027-02-01T")


def test_passes_through_the_cli(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)

    def ok(*args: str) -> str:
        return cli_ok(cfg, *args)

    ok("keys", "init")
    ok("plans", "add", "pass1", "--name", "Pass", "--price", "3900", "--no-auto-renew")
    assert ok("plans", "list", "--csv").splitlines()[1].endswith(",no")
    ok("members", "add", "p1", "--name", "Pia", "--plan", "pass1", "--card", "pm_sim_ok")
    ok("clock", "advance", "32d")
    ok("run")
    assert '"status": "expired"' in ok("members", "show", "p1", "--json")
    assert ok("report", "passes", "--csv").splitlines()[1].startswith("p1,pass1,")
