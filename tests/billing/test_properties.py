"""Property-based: random sequences of member operations and clock steps through the real
service and store never charge an invoice twice, never book more than an invoice's total, keep
the gateway's money equal to the books, and never deny a member who has paid in full."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import func, select

from gated.billing_sync import schema
from gated.billing_sync.engine import FreezeRefused
from gated.billing_sync.errors import BillingError
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import Clock, make_billing, published

CARDS = [
    "pm_sim_ok",
    "pm_sim_decline_insufficient_funds",
    "pm_sim_decline_lost_card",
    "pm_sim_sepa",
    "pm_sim_decline_authentication_required",
]
MEMBERS = ["a", "b", "c"]


class BillingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.gateway = SimulatedGateway(clock=self.clock)
        self.billing, _ = make_billing(Path(self.tmp.name), gateway=self.gateway, clock=self.clock)
        for m in MEMBERS:
            self.billing.add_member(m, m.upper(), plan_id="monthly", payment_method="pm_sim_ok")

    def teardown(self) -> None:
        self.billing.engine.dispose()
        self.tmp.cleanup()

    @rule(days=st.integers(1, 20))
    def time_passes(self, days: int) -> None:
        for _ in range(days):
            self.clock.advance(1)
            self.billing.run_cycle()

    @rule(member=st.sampled_from(MEMBERS), card=st.sampled_from(CARDS))
    def change_card(self, member: str, card: str) -> None:
        self.billing.set_payment_method(member, card)

    @rule(member=st.sampled_from(MEMBERS))
    def front_desk_pays(self, member: str) -> None:
        with contextlib.suppress(BillingError):  # owes nothing
            self.billing.record_payment(member)

    @rule(member=st.sampled_from(MEMBERS), months=st.integers(1, 3))
    def freeze(self, member: str, months: int) -> None:
        with contextlib.suppress(FreezeRefused):
            self.billing.freeze(member, months)

    @rule(member=st.sampled_from(MEMBERS))
    def extra(self, member: str) -> None:
        self.billing.charge_extra(member, "personal_training", "PT session", 3000)

    @invariant()
    def books_balance(self) -> None:
        with self.billing.engine.connect() as conn:
            over = conn.execute(
                select(func.count()).where(schema.invoices.c.amount_paid > schema.invoices.c.total)
            ).scalar_one()
            twice = conn.execute(
                select(schema.payment_attempts.c.invoice_id)
                .where(schema.payment_attempts.c.state == "succeeded")
                .group_by(schema.payment_attempts.c.invoice_id)
                .having(func.count() > 1)
            ).all()
            card_money = conn.execute(
                select(func.coalesce(func.sum(schema.payments.c.amount), 0)).where(
                    schema.payments.c.method.in_(("card", "sepa_debit"))  # through the gateway
                )
            ).scalar_one()
        assert over == 0
        assert twice == []
        assert card_money == self.gateway.charged_total()

    @invariant()
    def paid_in_full_is_let_in(self) -> None:
        for m in MEMBERS:
            info = self.billing.member(m)
            state = published(self.billing, m)
            assert state["status"] == info["status"] or state["status"] == "payer_suspended"
            if info["owed"] == 0 and info["freeze"] is None and info["status"] != "pending":
                assert state["status"] in ("active", "grace", "pending_cancel"), info


TestBilling = BillingMachine.TestCase
TestBilling.settings = settings(
    max_examples=15,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
