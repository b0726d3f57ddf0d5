"""Building the billing service from a billing.toml as ``gated-billing`` does, optionally with
its gateway wrapped in a ``FaultyGateway``; run as a module it is ``gated-billing run`` killed
with SIGKILL at one gateway step:

    python -m tests.billing.crashing BILLING_TOML STEP [refund INVOICE AMOUNT | change-plan MEMBER PLAN]

(``STEP`` as ``FaultyGateway`` names them, e.g. ``after_confirm_intent``; with ``refund`` it is
``gated-billing invoice refund INVOICE --amount AMOUNT`` that is killed, e.g. ``after_refund``)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from gated.billing_sync.config import load_billing_config
from gated.billing_sync.context import db_clock
from gated.billing_sync.gateway import FaultyGateway, PaymentGateway
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store


def kill_at(step: str) -> Callable[[str], None]:
    """A fault that SIGKILLs this process at ``step``: nothing is cleaned up or flushed."""

    def fault(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def billing_for(config_path: Path, fault: Callable[[str], None] | None = None) -> Billing:
    """The service over the store, keys and gateway ``config_path`` names."""
    config = load_billing_config(config_path)
    init_keys(config.keys)
    engine = open_store(config.database_url)
    clock = db_clock(engine)
    gw: PaymentGateway
    if config.gateway == "stripe":
        from gated.billing_sync.stripe_gateway import StripeGateway  # as the CLI: only if used

        assert config.stripe is not None and config.stripe.api_base
        gw = StripeGateway(
            config.stripe.api_key_file.read_text().strip(),
            api_base=config.stripe.api_base,
            off_session=config.stripe.off_session,
            max_requests_per_s=config.stripe.max_requests_per_s,
        )
    else:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        gw = SimulatedGateway(config.state_dir / "simulated-gateway.db", clock=clock)
    if fault is not None:
        gw = FaultyGateway(gw, fault)
    return Billing(engine, config, gw, Keys.load(config.keys), clock)


if __name__ == "__main__":
    # CONFIG STEP: a billing cycle; CONFIG STEP refund INVOICE AMOUNT: a refund;
    # CONFIG STEP change-plan MEMBER PLAN: an upgrade now.
    config_file, step, *action = sys.argv[1:]
    billing = billing_for(Path(config_file), kill_at(step))
    if action and action[0] == "refund":
        billing.refund(int(action[1]), int(action[2]))
    elif action:
        _, member_id, plan_id = action
        billing.change_plan(member_id, plan_id)
    else:
        billing.run_cycle()
    sys.exit(f"not killed: no gateway call reached {step}")
