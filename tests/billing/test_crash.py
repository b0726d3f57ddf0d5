"""Crash safety: kill -9 the billing process at each step of the charging protocol and check
that the restart charges nobody twice and loses no payment, with the simulated gateway and with
the real stripe library against localstripe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import stripe
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.context import db_clock
from gated.billing_sync.gateway import SimulatedGateway
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.store import open_store
from gated.billing_sync.stripe_gateway import StripeGateway
from gated.config import load_billing_config
from tests.services import LocalStripe

BIN = Path(sys.executable).parent / "gated-billing"
POINTS = ["after_create", "after_commit_ref", "after_confirm"]
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


def billing_for(config_path: Path) -> Billing:
    config = load_billing_config(config_path)
    init_keys(config.keys)
    engine = open_store(config.database_url)
    clock = db_clock(engine)
    if config.gateway == "stripe":
        assert config.stripe is not None and config.stripe.api_base
        gw: object = StripeGateway(
            "sk_test_local",
            api_base=config.stripe.api_base,
            off_session=False,
            max_requests_per_s=100,
        )
    else:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        gw = SimulatedGateway(config.state_dir / "simulated-gateway.db", clock=clock)
    return Billing(engine, config, gw, Keys.load(config.keys), clock)  # type: ignore[arg-type]


def cli(
    config_path: Path, *args: str, crash: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("GATED_BILLING_CRASHPOINT", None)
    if crash:
        env["GATED_BILLING_CRASHPOINT"] = crash
    return subprocess.run(
        [str(BIN), *args, "-c", str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def crash_and_resume(config_path: Path, card: str, point: str) -> Billing:
    b = billing_for(config_path)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method=card)
    assert b.member("m1")["status"] == "active"
    b.advance_clock(31 * 86_400)
    killed = cli(config_path, "run", crash=point)
    assert killed.returncode == -9, killed.stderr  # SIGKILL at the step, nothing cleaned up
    resumed = cli(config_path, "run")
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
