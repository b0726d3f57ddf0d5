"""Money and status at the edges, as a finance manager meets them through the facade: cancelled
members who owe, households whose payer leaves or freezes, back-dated freezes, migrated start
dates, chargebacks, the retry schedule, and whose card and address a household's notices use."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.service import Billing
from gated.contract import parse_time
from tests.billing.helpers import Clock, make_billing, published, step

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
