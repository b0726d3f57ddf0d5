"""Money and status at the edges, as a finance manager meets them through the facade: cancelled
members who owe, households whose payer leaves or freezes, back-dated freezes, migrated start
dates, chargebacks, the retry schedule, and whose card and address a household's notices use."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gated.billing_sync import schema
from gated.billing_sync.cli import app
from gated.billing_sync.engine import FreezeRefused
from gated.billing_sync.errors import BillingError
from gated.billing_sync.notices import format_day
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from gated.contract import parse_time
from tests.billing.helpers import (
    DAY,
    T0,
    Clock,
    cli_ok,
    make_billing,
    published,
    step,
    write_cli_config,
)

ALLOWED = {"active", "grace", "pending_cancel"}


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    return make_billing(tmp_path)


def let_in(b: Billing, member_id: str, now: int) -> bool:
    """Whether the gates would let the member in on their published state."""
    state = published(b, member_id)
    until = state["valid_until"]
    return state["status"] in ALLOWED and (until is None or parse_time(until).timestamp() > now)


def test_a_cancelled_member_who_owes_is_denied_not_in_grace(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.cancel("m1")  # at the end of the paid month, day 31
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 29)
    b.charge_extra("m1", "personal_training", "PT session", 3000)  # declined: owes 35.70
    assert published(b, "m1")["status"] == "grace"
    step(b, clock, 2)  # the contract ended on day 31, the debt is two days old
    assert published(b, "m1")["status"] == "cancelled"
    assert not let_in(b, "m1", clock.now)
    assert b.member("m1")["owed"] == 3570


def test_grace_never_runs_past_the_end_of_a_cancelled_contract(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    when = b.cancel("m1")
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 30)
    b.charge_extra("m1", "personal_training", "PT session", 3000)
    state = published(b, "m1")
    assert state["status"] == "grace"
    assert parse_time(state["valid_until"]).timestamp() <= when


def _charged_invoices(b: Billing, member_id: str) -> list[int]:
    with b.engine.connect() as conn:
        return list(
            conn.execute(
                select(schema.payment_attempts.c.invoice_id).where(
                    schema.payment_attempts.c.member_id == member_id,
                    schema.payment_attempts.c.state == "succeeded",
                )
            ).scalars()
        )


def test_a_cancelled_payer_pays_nothing_for_locked_out_dependants(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("pat", "Pat", plan_id="monthly", email="p@x", payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("kit", "Kit", plan_id="monthly", payer_id="pat")
    charged = b.gateway.charged_total()  # type: ignore[attr-defined]
    assert charged == 3 * 5938
    b.cancel("pat")  # the contract ends with the paid month, on day 31
    step(b, clock, 62)  # two more renewal dates for the children
    for kid in ("kim", "kit"):
        assert published(b, kid)["status"] == "payer_suspended"
        assert len(_charged_invoices(b, kid)) == 1  # the first month only
        assert b.member(kid)["owed"] == 0
    assert b.gateway.charged_total() == charged  # type: ignore[attr-defined]


def test_a_payers_freeze_leaves_the_dependants_in(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("pat", "Pat", plan_id="monthly", email="p@x", payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.freeze("pat", 2)
    assert published(b, "pat")["status"] == "frozen"
    assert published(b, "kim")["status"] == "active"  # the month Kim's payer paid for
    assert let_in(b, "kim", clock.now)
    step(b, clock, 31)  # Kim's renewal falls due during Pat's freeze: billed as usual
    assert published(b, "kim")["status"] == "active"
    assert len(_charged_invoices(b, "kim")) == 2


def _freeze_invoices(b: Billing) -> int:
    with b.engine.connect() as conn:
        rows = conn.execute(select(schema.invoices.c.id).where(schema.invoices.c.kind == "freeze"))
        return len(rows.all())


def test_a_back_dated_freeze_gives_no_free_months(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("f", "Fay", plan_id="monthly", payment_method="pm_sim_ok")
    paid_through = b.member("f")["paid_through"]
    for start in ("2026-01-01", "2026-04-01", "2026-11-30"):  # each before today, 2026-12-01
        with pytest.raises(FreezeRefused, match="before today"):
            b.freeze("f", 3, start_at=int(parse_time(f"{start}T00:00:00Z").timestamp()))
    assert b.member("f")["paid_through"] == paid_through
    assert _freeze_invoices(b) == 0
    assert published(b, "f")["status"] == "active"


def test_one_freeze_at_a_time_whatever_its_start(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("f", "Fay", plan_id="monthly", payment_method="pm_sim_ok")
    clock.advance(0.5)  # midday: a freeze "from today" starts now
    b.freeze("f", 1, start_at=clock.now - clock.now % DAY)
    assert published(b, "f")["status"] == "frozen"
    b.unfreeze("f")
    later = clock.now + 20 * DAY
    b.freeze("f", 3, start_at=later)  # booked ahead
    for start in (later + 100 * DAY, None):
        with pytest.raises(FreezeRefused, match="already booked"):
            b.freeze("f", 1, start_at=start)
    assert _freeze_invoices(b) == 2


def test_the_cli_refuses_a_back_dated_freeze_in_one_line(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "M", "--price", "4990", "--freeze-fee", "595")
    cli_ok(cfg, "members", "add", "f", "--name", "Fay", "--plan", "monthly", "--card", "pm_sim_ok")
    result = CliRunner().invoke(
        app, ["freeze", "f", "--months", "3", "--start", "2026-01-01", "-c", str(cfg)]
    )
    assert result.exit_code == 2  # a refused operation
    assert result.stderr.strip().splitlines() == [
        "error: a freeze cannot start before today (book it from today or a later day)"
    ]


def _invoices(b: Billing, member_id: str) -> list[tuple[str, str]]:
    """(period start, period end) of each of the member's invoices, as days."""
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(schema.invoices.c.period_start, schema.invoices.c.period_end)
            .where(schema.invoices.c.member_id == member_id)
            .order_by(schema.invoices.c.id)
        ).all()
    return [(format_day(r.period_start), format_day(r.period_end)) for r in rows]


def _day(text: str) -> int:
    return int(parse_time(f"{text}T00:00:00Z").timestamp())


def test_a_migrated_join_date_bills_nothing_before_today(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    # Joined on 1 September: the renewal that falls today (1 December) is the first charge.
    b.add_member(
        "m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok", start_at=_day("2026-09-01")
    )
    b.run_cycle()
    b.run_cycle()
    assert _invoices(b, "m1") == [("2026-12-01", "2027-01-01")]
    # Joined on 15 September: paid up (in the old system) to 15 December, billed from there.
    b.add_member(
        "m2", "Bo", plan_id="monthly", payment_method="pm_sim_ok", start_at=_day("2026-09-15")
    )
    assert _invoices(b, "m2") == []
    assert published(b, "m2")["status"] == "active"
    step(b, clock, 14)
    assert _invoices(b, "m2") == [("2026-12-15", "2027-01-15")]
    assert b.gateway.charged_total() == 2 * 5938  # type: ignore[attr-defined]


def test_members_add_with_a_past_start_charges_once_from_the_cli(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "M", "--price", "4990")
    today = datetime.now(UTC).date()
    start = today.replace(year=today.year - 1)  # a year of membership in the old system
    cli_ok(
        cfg,
        "members",
        "add",
        "m1",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_ok",
        "--start",
        start.isoformat(),
    )
    cli_ok(cfg, "run")
    cli_ok(cfg, "run")
    rows = list(csv.DictReader(io.StringIO(cli_ok(cfg, "invoices", "m1", "--csv"))))
    assert len(rows) == 1, rows


def _notices(b: Billing, member_id: str) -> list[tuple[str, str, str]]:
    """(kind, recipient, body) of a member's notices, oldest first."""
    n = schema.notifications
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(n.c.kind, n.c.to_addr, n.c.body)
            .where(n.c.member_id == member_id)
            .order_by(n.c.id)
        ).all()
    return [(r.kind, r.to_addr, r.body) for r in rows]


def _intent_of(b: Billing, member_id: str) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.payment_attempts.c.gateway_ref).where(
                    schema.payment_attempts.c.member_id == member_id
                )
            ).scalar()
        )


def test_a_lost_chargeback_is_dunned_to_collections_with_its_notices(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    intent = _intent_of(b, "m1")
    b.dispute_opened("dp_1", intent)
    assert published(b, "m1")["status"] == "suspended"
    kinds = [(k, body) for k, _, body in _notices(b, "m1")]
    assert kinds[-1][0] == "dispute" and "59.38 EUR" in kinds[-1][1]
    assert not any("0.00 EUR" in body for _, body in kinds)
    step(b, clock, 10)
    b.dispute_closed("dp_1", intent, "lost")
    assert b.member("m1")["owed"] == 5938
    assert _notices(b, "m1")[-1][0] == "chargeback"
    assert "59.38 EUR" in _notices(b, "m1")[-1][2]
    assert published(b, "m1")["status"] == "suspended"  # no new grace for a chargeback
    assert b.member("m1")["needs_new_card"]  # the disputed card is not charged again
    step(b, clock, 29)
    assert published(b, "m1")["status"] == "suspended"
    step(b, clock, 1)  # collections_days (30) after the chargeback
    assert published(b, "m1")["status"] == "collections"
    assert b.gateway.charged_total() == 5938  # type: ignore[attr-defined]


def _attempts(b: Billing, member_id: str) -> dict[str, list[int]]:
    """Days (from the start) of each invoice kind's attempts."""
    a, i = schema.payment_attempts, schema.invoices
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(i.c.kind, a.c.created_at)
            .join(i, i.c.id == a.c.invoice_id)
            .where(a.c.member_id == member_id)
            .order_by(a.c.id)
        ).all()
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r.kind, []).append((r.created_at - T0) // DAY)
    return out


@pytest.fixture
def declining(tmp_path: Path) -> tuple[Billing, Clock]:
    """A member whose first month is paid and whose card then declines (soft) for ever."""
    clock = Clock()
    gw = SimulatedGateway(clock=clock, script={"pm_card": ["ok"] + ["insufficient_funds"] * 20})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_card")
    return b, clock


def test_a_renewal_after_the_schedule_ran_out_asks_the_card_nothing(
    declining: tuple[Billing, Clock],
) -> None:
    b, clock = declining
    step(b, clock, 5)
    b.charge_extra("m1", "personal_training", "PT session", 3000)  # fails on day 5
    step(b, clock, 26)  # retries on days 8 and 12, then the renewal falls due on day 31
    assert _attempts(b, "m1") == {"renewal": [0], "extra": [5, 8, 12]}
    card = [(k, body) for k, _, body in _notices(b, "m1") if k != "suspension"]
    assert [k for k, _ in card] == ["receipt", "failure", "retry", "retry"]
    assert "will not try this card again" in card[-1][1]
    assert b.member("m1")["owed"] == 3570 + 5938  # the renewal is owed, not charged


def test_a_renewal_during_dunning_joins_the_schedule(declining: tuple[Billing, Clock]) -> None:
    b, clock = declining
    step(b, clock, 29)
    b.charge_extra("m1", "personal_training", "PT session", 3000)  # fails on day 29
    step(b, clock, 10)  # renewal on day 31; retries on days 32 and 36
    assert _attempts(b, "m1") == {"renewal": [0, 32, 36], "extra": [29, 32, 36]}
    notices = [(k, body) for k, _, body in _notices(b, "m1") if k != "suspension"][1:]
    # One notice per failed attempt; the renewal's first is a failure, not a failed retry.
    assert [k for k, _ in notices] == ["failure", "retry", "failure", "retry", "retry"]
    assert "try again on" in notices[2][1]
    assert all("will not try this card again" in body for _, body in notices[3:])


def test_paying_the_failed_invoice_charges_what_waited_on_a_schedule_of_its_own(
    declining: tuple[Billing, Clock],
) -> None:
    b, clock = declining
    step(b, clock, 5)
    b.charge_extra("m1", "personal_training", "PT session", 3000)
    step(b, clock, 26)  # the schedule ran out on day 12; the renewal waits, unattempted
    b.record_payment("m1", 3570)  # the extra, at the front desk
    step(b, clock, 1)
    # Charged before the desk's answer, not at the next cycle: what `pay` prints holds.
    assert _attempts(b, "m1")["renewal"] == [0, 31]
    assert [k for k, _, _ in _notices(b, "m1")][-1] == "failure"


def test_a_card_declined_for_good_is_not_charged_again_once_the_desk_is_paid(
    tmp_path: Path,
) -> None:
    clock = Clock()
    gw = SimulatedGateway(clock=clock, script={"pm_card": ["ok", "lost_card"]})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_card")
    step(b, clock, 31)  # the renewal of day 31 is declined for good: a new card is asked for
    assert [k for k, _, _ in _notices(b, "m1")] == ["receipt", "new_card"]
    step(b, clock, 34)  # day 65: the period from day 62 waits behind the debt
    b.record_payment("m1")  # day 31's renewal, at the desk; day 62's is billed at once
    # ...and waits for a new card: the lost card is not asked for it.
    assert _attempts(b, "m1") == {"renewal": [0, 31]}
    assert b.member("m1")["owed"] == 5938 and b.member("m1")["needs_new_card"]
    step(b, clock, 1)  # dunned from its due date, as a declined charge is
    step(b, clock, 29)
    assert published(b, "m1")["status"] == "collections"
    assert _attempts(b, "m1") == {"renewal": [0, 31]}
    b.set_payment_method("m1", "pm_sim_ok")  # a new card pays what is owed at once
    assert b.member("m1")["owed"] == 0 and not b.member("m1")["needs_new_card"]
    assert published(b, "m1")["status"] == "active"


def test_a_charged_back_card_is_not_charged_again_once_the_desk_is_paid(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    intent = _intent_of(b, "m1")
    b.dispute_opened("dp_1", intent)
    step(b, clock, 10)
    b.dispute_closed("dp_1", intent, "lost")
    b.record_payment("m1")  # the charged-back month, at the desk
    step(b, clock, 21)  # the renewal of day 31 is billed, not charged to the disputed card
    assert b.gateway.charged_total() == 5938  # type: ignore[attr-defined]
    assert b.member("m1")["owed"] == 5938 and b.member("m1")["needs_new_card"]


def test_a_card_declined_for_good_for_a_dependant_is_not_charged_for_the_payer(
    tmp_path: Path,
) -> None:
    clock = Clock()
    # Pat paid on day 0, Kim a day later, so that Kim's renewal is an invoice of her own, not a
    # line on Pat's: Pat's renewal of day 31 goes through, Kim's of day 32 is declined for good.
    outcomes = ["ok", "ok", "ok", "lost_card", "ok"]
    gw = SimulatedGateway(clock=clock, script={"pm_card": outcomes})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("pat", "Pat", plan_id="monthly", email="p@x", payment_method="pm_card")
    clock.advance(1)
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    step(b, clock, 31)
    assert _notices(b, "kim")[1][:2] == ("new_card", "p@x")
    assert b.member("pat")["needs_new_card"]
    step(b, clock, 31)  # Pat's next renewal is not asked of the lost card
    assert _attempts(b, "pat") == {"renewal": [0, 31]}
    assert b.member("pat")["owed"] == 5938
    b.set_payment_method("pat", "pm_sim_ok")
    assert b.member("pat")["owed"] == 0 and b.member("kim")["owed"] == 0


def _card_of(b: Billing, member_id: str) -> str | None:
    with b.engine.connect() as conn:
        return conn.execute(
            select(schema.members.c.payment_method).where(schema.members.c.id == member_id)
        ).scalar()


def test_set_card_on_a_dependant_is_refused_naming_the_payer(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "M", "--price", "4990")
    cli_ok(
        cfg, "members", "add", "pat", "--name", "Pat", "--plan", "monthly", "--card", "pm_sim_ok"
    )
    cli_ok(cfg, "members", "add", "kim", "--name", "Kim", "--plan", "monthly", "--payer", "pat")
    result = CliRunner().invoke(
        app, ["members", "set-card", "kim", "pm_sim_decline_lost_card", "-c", str(cfg)]
    )
    assert result.exit_code == 2  # a refused operation
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "payer pat" in lines[0] and "set-card pat" in lines[0]
    shown = json.loads(cli_ok(cfg, "members", "show", "pat", "--json"))
    assert shown["status"] == "active"
    cli_ok(cfg, "run")
    assert json.loads(cli_ok(cfg, "members", "show", "kim", "--json"))["status"] == "active"


def test_the_payers_card_is_untouched_by_a_refused_set_card(
    billing: tuple[Billing, Clock],
) -> None:
    b, _ = billing
    b.add_member("pat", "Pat", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    with pytest.raises(BillingError, match="payer pat"):
        b.set_payment_method("kim", "pm_sim_decline_lost_card")
    assert _card_of(b, "pat") == "pm_sim_ok"
    assert _card_of(b, "kim") is None


def test_a_dependants_card_notices_go_to_the_payer_who_owns_the_card(tmp_path: Path) -> None:
    clock = Clock()
    outcomes = ["ok", "ok", "ok", "insufficient_funds"]
    gw = SimulatedGateway(clock=clock, script={"pm_card": outcomes})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_card")
    # A day apart, so that Kim's renewal is an invoice of her own, not a line on Pat's.
    clock.advance(1)
    b.add_member("kim", "Kim", plan_id="monthly", email="kim@x", payer_id="pat")
    step(b, clock, 31)  # Kim's renewal is declined on Pat's card (Pat's own goes through)
    kim = _notices(b, "kim")
    assert [(k, to) for k, to, _ in kim] == [("receipt", "pat@x"), ("failure", "pat@x")]
    assert all(body.startswith("Hello Pat,") and "Kim (kim)" in body for _, _, body in kim)
    assert [to for _, to, _ in _notices(b, "pat")] == ["pat@x", "pat@x"]
