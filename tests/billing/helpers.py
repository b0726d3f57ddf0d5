"""Shared construction for billing tests: a store in tmp, keys, a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from typer.testing import CliRunner

from gated.billing_sync.cli import app
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.gateway import PaymentGateway
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store

T0 = 1_796_112_000  # 2026-12-01T00:00:00Z
DAY = 86_400


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, days: float) -> None:
        self.now += int(days * DAY)


def make_config(tmp: Path, **overrides: Any) -> BillingConfig:
    data: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp}/billing.db",
        "state_dir": str(tmp),
        "sites": ["downtown", "uptown"],
        "keys": {
            "head_office_private_key_file": str(tmp / "keys/head-office.pem"),
            "credential_key_file": str(tmp / "keys/credential.key"),
            "card_encryption_key_file": str(tmp / "keys/cards.key"),
        },
        # Reminders ahead of renewals have their own tests (test_notice_kinds.py); elsewhere
        # they would only add a notice to every story that crosses a renewal.
        "notices": {"upcoming_charge_days": 0, "card_expiry_days": 0},
    }
    data.update(overrides)
    return BillingConfig.model_validate(data)


def make_billing(
    tmp: Path, gateway: PaymentGateway | None = None, clock: Clock | None = None, **overrides: Any
) -> tuple[Billing, Clock]:
    config = make_config(tmp, **overrides)
    init_keys(config.keys)
    clock = clock or Clock()
    engine = open_store(config.database_url)
    gw = gateway or SimulatedGateway(tmp / "sim.db", clock=clock)
    billing = Billing(engine, config, gw, Keys.load(config.keys), clock)
    billing.add_plan(
        PlanSpec(
            "monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900, freeze_fee=500, min_term_months=0
        )
    )
    return billing, clock


def published(billing: Billing, member_id: str) -> dict[str, Any]:
    """The MemberState the gates were last given for a member."""
    import json

    from sqlalchemy import select

    from gated.billing_sync import schema

    with billing.engine.connect() as conn:
        payload = conn.execute(
            select(schema.member_states.c.payload).where(
                schema.member_states.c.member_id == member_id
            )
        ).scalar_one()
    return dict(json.loads(payload))


def notices(billing: Billing, member_id: str | None = None) -> list[str]:
    """Kinds of notices queued (for one member), oldest first."""
    from sqlalchemy import select

    from gated.billing_sync import schema

    n = schema.notifications
    q = select(n.c.kind).order_by(n.c.id)
    if member_id:
        q = q.where(n.c.member_id == member_id)
    with billing.engine.connect() as conn:
        return list(conn.execute(q).scalars())


def step(billing: Billing, clock: Clock, days: float) -> None:
    """Advance the clock day by day, running a cycle each day as `serve` would."""
    whole = int(days)
    for _ in range(whole):
        clock.advance(1)
        billing.run_cycle()
    if days - whole:
        clock.advance(days - whole)
        billing.run_cycle()


def write_cli_config(tmp: Path, database_url: str = "sqlite:///billing.db") -> Path:
    """A billing.toml for CLI tests: one site, keys under keys/ (``keys init`` makes them)."""
    path = tmp / "billing.toml"
    path.write_text(
        f'database_url = "{database_url}"\nstate_dir = "state"\nsites = ["downtown"]\n'
        '[keys]\nhead_office_private_key_file = "keys/ho.pem"\n'
        'credential_key_file = "keys/credential.key"\ncard_encryption_key_file = "keys/cards.key"\n'
    )
    return path


def cli_ok(cfg: Path, *args: str) -> str:
    """Run ``gated-billing ARGS -c CFG``; it must succeed. Returns its stdout."""
    result = CliRunner().invoke(app, [*args, "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def report_one_charge_at_once(billing: Billing, reports: int = 4) -> list[bool]:
    """A member's SEPA debit reported ``reports`` times at the same moment (the cycle and a
    webhook, or a webhook delivered twice): whether each report applied it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from gated.billing_sync import schema
    from gated.billing_sync.gateway import ChargeResult

    billing.add_member("m1", "One", plan_id="monthly", payment_method="pm_sim_sepa")
    with billing.reader.connect() as conn:
        ref = conn.execute(select(schema.payment_attempts.c.gateway_ref)).scalar_one()
    barrier = threading.Barrier(reports)

    def report(_: int) -> bool:
        barrier.wait()
        return billing.intent_update(ref, ChargeResult(ref, "succeeded"))

    with ThreadPoolExecutor(reports) as pool:
        return list(pool.map(report, range(reports)))


@contextmanager
def checkouts(engine: Engine) -> Iterator[list[int]]:
    """How many connections the block took from ``engine``'s pool (a list of one count)."""
    n = [0]

    def count(*_: Any) -> None:
        n[0] += 1

    event.listen(engine, "checkout", count)
    try:
        yield n
    finally:
        event.remove(engine, "checkout", count)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL of every statement the block ran on ``engine``'s pool, in order."""
    run: list[str] = []
    pool = engine.pool

    def count(conn: Connection, _cursor: Any, sql: str, *_: Any) -> None:
        if conn.engine.pool is pool:
            run.append(sql)

    # On every engine: the store's option engines (its reader, the clock's) share the pool but
    # do not take a listener added to ``engine`` after they were made.
    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield run
    finally:
        event.remove(Engine, "before_cursor_execute", count)
