"""Crash safety: kill -9 the billing process at each step of the charging protocol (through the
gateway seam, ``FaultyGateway``) and check that the restart charges nobody twice and loses no
payment, with the simulated gateway and with the real stripe library against localstripe; and
the same steps failing with a gateway error instead, in process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import stripe
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.gateway import FaultyGateway, GatewayUnavailable
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.crashing import billing_for
from tests.billing.helpers import Clock, make_billing
from tests.services import LocalStripe

BIN = Path(sys.executable).parent / "gated-billing"
ROOT = Path(__file__).resolve().parents[2]
# The charging protocol's steps as the gateway seam sees them: an intent created but its id not
# committed; the id committed but nothing charged; money taken but the result not committed.
POINTS = ["after_create_intent", "before_confirm_intent", "after_confirm_intent"]
TOTAL = 5938


def write_config(tmp: Path, stripe_url: str | None) -> Path:
    gateway = "simulated"
    extra = ""
    if stripe_url:
        (tmp / "stripe.key").write_text("sk_test_local\n")
        gateway = "stripe"
        extra = (
            f'[stripe]\napi_key_file = "stripe.key"\napi_base = "{stripe_url}"\n'
            "off_session = false\nmax_requests_per_s = 100\n"
        )
    path = tmp / "billing.toml"
    path.write_text(
        f'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
        f'gateway = "{gateway}"\n[keys]\nhead_office_private_key_file = "keys/ho.pem"\n'
        'credential_key_file = "keys/credential.key"\ncard_encryption_key_file = "keys/cards.key"\n'
        + extra
    )
    return path


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args, "-c", str(config_path)], capture_output=True, text=True, timeout=60
    )


def killed_at(config_path: Path, step: str, *action: str) -> subprocess.CompletedProcess[str]:
    """A billing cycle (or ``action``, see crashing.py) in its own process, its gateway killing
    it at ``step``."""
    return subprocess.run(
        [sys.executable, "-m", "tests.billing.crashing", str(config_path), step, *action],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def crash_and_resume(config_path: Path, card: str, point: str) -> Billing:
    b = billing_for(config_path)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method=card)
    assert b.member("m1")["status"] == "active"
    b.advance_clock(31 * 86_400)
    killed = killed_at(config_path, point)
    assert killed.returncode == -9, killed.stderr  # SIGKILL at the step, nothing cleaned up
    resumed = cli(config_path, "run")  # the real command resumes what the kill left open
    assert resumed.returncode == 0, resumed.stderr
    return b


def assert_charged_once(b: Billing) -> None:
    with b.engine.connect() as conn:
        attempts = conn.execute(
            select(schema.payment_attempts.c.invoice_id, schema.payment_attempts.c.state)
        ).all()
        invoices = conn.execute(select(schema.invoices.c.status)).scalars().all()
        payments = conn.execute(select(schema.payments.c.amount)).scalars().all()
    assert invoices == ["paid", "paid"]
    assert payments == [TOTAL, TOTAL]
    assert [a.state for a in attempts] == ["succeeded", "succeeded"]
    assert b.member("m1")["status"] == "active" and b.member("m1")["owed"] == 0


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_simulated(tmp_path: Path, point: str) -> None:
    config_path = write_config(tmp_path, None)
    b = crash_and_resume(config_path, "pm_sim_ok", point)
    assert_charged_once(b)
    gw = SimulatedGateway(tmp_path / "state" / "simulated-gateway.db", clock=b.clock)
    assert gw.charged_total() == 2 * TOTAL


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_stripe(tmp_path: Path, point: str, localstripe: LocalStripe) -> None:
    config_path = write_config(tmp_path, localstripe.url)
    b = crash_and_resume(config_path, "pm_card_visa", point)
    assert_charged_once(b)
    client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    charges = client.v1.charges.list(params={"limit": 100}).data
    assert sorted(c.amount for c in charges if c.status == "succeeded") == [TOTAL, TOTAL]


@pytest.mark.parametrize("point", POINTS)
def test_a_gateway_error_at_each_step_is_resumed_without_charging_twice(
    tmp_path: Path, point: str
) -> None:
    clock = Clock()
    simulated = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    armed = {point}

    def fault(step: str) -> None:
        if step in armed:  # once
            armed.discard(step)
            raise GatewayUnavailable(f"injected at {step}")

    b, _ = make_billing(tmp_path, gateway=FaultyGateway(simulated, fault), clock=clock)
    report = b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    assert not armed and report.errors == 1 and report.succeeded == 0
    assert b.member("m1")["status"] == "pending"
    assert b.run_cycle().resumed == 1
    with b.engine.connect() as conn:
        payments = conn.execute(select(schema.payments.c.amount)).scalars().all()
        attempts = conn.execute(select(schema.payment_attempts.c.state)).scalars().all()
    assert payments == [TOTAL] and attempts == ["succeeded"]
    assert simulated.charged_total() == TOTAL
    assert b.member("m1")["status"] == "active"


# The refund protocol's steps: the row committed, nothing asked; money given back, not booked.
REFUND_POINTS = ["before_refund", "after_refund"]
REFUNDED = 2000


def refund_crash_and_resume(config_path: Path, card: str, point: str) -> Billing:
    b = billing_for(config_path)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method=card)
    killed = killed_at(config_path, point, "refund", "1", str(REFUNDED))
    assert killed.returncode == -9, killed.stderr
    resumed = cli(config_path, "run")  # the next cycle finishes the refund the kill left
    assert resumed.returncode == 0, resumed.stderr
    with b.engine.connect() as conn:
        refunds = conn.execute(select(schema.refunds.c.state, schema.refunds.c.amount)).all()
        booked = conn.execute(
            select(schema.payments.c.method, schema.payments.c.amount).order_by(
                schema.payments.c.id
            )
        ).all()
        notes = conn.execute(select(schema.credit_notes.c.amount)).scalars().all()
    assert [tuple(r) for r in refunds] == [("succeeded", REFUNDED)]
    assert [tuple(r) for r in booked][1:] == [("credit_note", REFUNDED), ("refund", -REFUNDED)]
    assert notes == [REFUNDED]
    assert b.member("m1")["status"] == "active" and b.member("m1")["owed"] == 0
    return b


@pytest.mark.parametrize("point", REFUND_POINTS)
def test_kill_during_a_refund_gives_back_once_simulated(tmp_path: Path, point: str) -> None:
    b = refund_crash_and_resume(write_config(tmp_path, None), "pm_sim_ok", point)
    gw = SimulatedGateway(tmp_path / "state" / "simulated-gateway.db", clock=b.clock)
    assert gw.refunded_total() == REFUNDED


@pytest.mark.parametrize("point", REFUND_POINTS)
def test_kill_during_a_refund_gives_back_once_stripe(
    tmp_path: Path, point: str, localstripe: LocalStripe
) -> None:
    refund_crash_and_resume(write_config(tmp_path, localstripe.url), "pm_card_visa", point)
    client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    # localstripe ignores idempotency keys: only the lookup by key keeps this at one refund.
    assert [r.amount for r in client.v1.refunds.list(params={"limit": 100}).data] == [REFUNDED]


def test_an_unreachable_provider_leaves_the_refund_to_the_next_cycle(tmp_path: Path) -> None:
    clock = Clock()
    simulated = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    armed = {"before_refund"}

    def fault(step: str) -> None:
        if step in armed:
            armed.discard(step)
            raise GatewayUnavailable(f"injected at {step}")

    b, _ = make_billing(tmp_path, gateway=FaultyGateway(simulated, fault), clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    out = b.refund(1, REFUNDED)
    assert (out.refunded, out.waiting) == (0, REFUNDED)
    assert "waiting on the payment provider" in out.line()
    b.run_cycle()
    assert simulated.refunded_total() == REFUNDED
    with b.engine.connect() as conn:
        assert conn.execute(select(schema.refunds.c.state)).scalars().all() == ["succeeded"]


@pytest.mark.parametrize("point", POINTS)
def test_an_upgrade_killed_at_each_step_is_charged_once(tmp_path: Path, point: str) -> None:
    config_path = write_config(tmp_path, None)
    b = billing_for(config_path)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_plan(PlanSpec("premium", "Premium", 7990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.advance_clock(15 * 86_400)
    quote = b.plan_change_quote("m1", "premium")
    killed = killed_at(config_path, point, "change-plan", "m1", "premium")
    assert killed.returncode == -9, killed.stderr
    assert b.member("m1")["plan"] == "premium"  # committed with its invoice before any charge
    resumed = cli(config_path, "run")
    assert resumed.returncode == 0, resumed.stderr
    with b.engine.connect() as conn:
        invoices = conn.execute(
            select(schema.invoices.c.kind, schema.invoices.c.total, schema.invoices.c.status)
        ).all()
        payments = conn.execute(select(schema.payments.c.amount)).scalars().all()
    assert [tuple(i) for i in invoices] == [
        ("renewal", TOTAL, "paid"),
        ("plan_change", quote.total, "paid"),
    ]
    assert payments == [TOTAL, quote.total]
    gw = SimulatedGateway(tmp_path / "state" / "simulated-gateway.db", clock=b.clock)
    assert gw.charged_total() == TOTAL + quote.total
