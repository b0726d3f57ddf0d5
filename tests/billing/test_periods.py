"""Closed periods: a month is closed only once it has ended and never opened again; nothing is
issued into a closed month, its invoices cannot be changed (a credit note corrects them), and
every refusal is one clear line with exit code 2."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from gated.billing_sync import schema
from gated.billing_sync.cli import app
from gated.billing_sync.errors import PeriodClosed
from gated.billing_sync.periods import ensure_invoice_open, month_of
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store
from tests.billing.helpers import DAY, T0, Clock, cli_ok, make_billing, write_cli_config
from tests.billing.test_documents import SITES

runner = CliRunner()


def test_a_closed_month_issues_nothing_and_its_invoices_are_final(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("a", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    with pytest.raises(PeriodClosed, match="2026-12 has not ended yet"):
        b.close_period("2026-12", "tester")
    clock.advance(32)  # 2 January 2027: the renewal of 1 January is issued in January
    b.run_cycle()
    assert b.close_period("2026-12", "tester") == "2026-12"
    december, january = sorted(i["id"] for i in b.member_access().invoices("a"))
    with b.engine.begin() as conn:
        with pytest.raises(PeriodClosed, match="correct it with a credit note") as refused:
            ensure_invoice_open(conn, december)
        assert "invoice downtown-2026-000001 is in the closed period 2026-12" in str(refused.value)
        ensure_invoice_open(conn, january)  # an open month: no refusal

    # A clock set back into the closed month issues nothing, and loses no number.
    clock.now = T0 + 20 * DAY
    with pytest.raises(PeriodClosed, match="the period 2026-12 is closed"):
        b.charge_extra("a", "towel", "Towel", 300)
    clock.now = T0 + 33 * DAY
    b.charge_extra("a", "towel", "Towel", 300)
    numbers = [i["number"] for i in b.member_access().invoices("a")]
    assert sorted(numbers) == [
        "downtown-2026-000001",
        "downtown-2027-000001",
        "downtown-2027-000002",
    ]
    with pytest.raises(PeriodClosed, match="already closed"):
        b.close_period("2026-11", "tester")  # closed with December already


def test_periods_close_from_the_command_line(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    now = time.time()
    this, last = month_of(int(now)), month_of(int(now) - 32 * DAY)

    def refused(*args: str) -> str:
        result = runner.invoke(app, [*args, "-c", str(cfg)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return " ".join(result.stderr.split())

    assert f"{this} has not ended yet" in refused("periods", "close", this)
    assert "a period is a month written YYYY-MM, not '2026-13'" in refused(
        "periods", "close", "2026-13"
    )
    assert f"{last} closed" in cli_ok(cfg, "periods", "close", last)
    assert f"{last} is already closed (closed through {last})" in refused("periods", "close", last)
    listed = cli_ok(cfg, "periods", "list", "--csv").splitlines()
    assert listed[0] == "period,closed,by" and listed[1].startswith(f"{last},")
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with engine.connect() as conn:
        a = schema.audit_log
        closes = conn.execute(select(func.count()).where(a.c.action == "period_close"))
        assert closes.scalar_one() == 1  # the refusals are not recorded: they did not happen
    engine.dispose()


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def test_a_month_ends_and_is_closed_in_each_sites_own_time_zone(tmp_path: Path) -> None:
    # 23:30 UTC on 30 November: 00:30 on 1 December in Berlin, 18:30 on 30 November in New York.
    clock = Clock(_utc(2026, 11, 30, 23, 30))
    sites = {
        "downtown": {**SITES["downtown"], "timezone": "Europe/Berlin"},
        "uptown": {"timezone": "America/New_York"},
    }
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock, sites=sites)
    b.add_member("berlin", "Bea", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("ny", "Ned", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    (berlin,) = (i["id"] for i in b.member_access().invoices("berlin"))
    (ny,) = (i["id"] for i in b.member_access().invoices("ny"))
    # 04:59 UTC on 1 December is still November in New York: the month has not ended there.
    clock.now = _utc(2026, 12, 1, 4, 59)
    with pytest.raises(PeriodClosed, match="2026-11 has not ended yet at every site"):
        b.close_period("2026-11", "tester")
    clock.now = _utc(2026, 12, 1, 5, 0)  # midnight in New York
    assert b.close_period("2026-11", "tester") == "2026-11"
    # Issued at the same instant: New York's invoice is of its 30 November, in the closed
    # month; Berlin's is of its 1 December, in an open one.
    with b.engine.begin() as conn:
        with pytest.raises(PeriodClosed, match="in the closed period 2026-11"):
            ensure_invoice_open(conn, ny)
        ensure_invoice_open(conn, berlin)
    # A clock set back to that instant: Berlin issues (December there), New York does not.
    clock.now = _utc(2026, 11, 30, 23, 30)
    b.charge_extra("berlin", "towel", "Towel", 300)
    with pytest.raises(PeriodClosed, match="the period 2026-11 is closed"):
        b.charge_extra("ny", "towel", "Towel", 300)
    with pytest.raises(PeriodClosed, match="the period 2026-11 is closed"):
        b.refund(ny, 100)  # a credit note of New York's, dated in its closed November
    assert b.refund(berlin, 100).credit_notes == ["downtown-CN-2026-000001"]
