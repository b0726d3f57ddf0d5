"""The billing store on PostgreSQL: the same SQLAlchemy Core code that runs on SQLite, against a
throwaway cluster (tests/services.py). Each test gets an empty database of its own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import generate_latest
from sqlalchemy import func, inspect, select

from gated.billing_sync import reports, schema
from gated.billing_sync.metrics import registry_for
from gated.billing_sync.server import apply_stripe_event
from gated.billing_sync.store import HEAD_REVISION, current_revision, next_versions, open_store
from tests.billing.helpers import (
    cli_ok,
    make_billing,
    published,
    report_one_charge_at_once,
    step,
    write_cli_config,
)
from tests.billing.test_publisher import check_site, publisher_for, retained, wait_drained
from tests.services import Mosquitto


def versions(b: object) -> list[int]:
    """Every version ever put in the status outbox, in the order they were written."""
    with b.engine.connect() as conn:  # type: ignore[attr-defined]
        return list(
            conn.execute(
                select(schema.status_outbox.c.version).order_by(schema.status_outbox.c.created_at)
            ).scalars()
        )


def test_migrations_run_up_from_an_empty_database(postgres_url: str) -> None:
    engine = open_store(postgres_url)
    try:
        assert engine.dialect.name == "postgresql"
        assert current_revision(engine) == HEAD_REVISION
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            assert next_versions(conn) == 1
            assert next_versions(conn, 3) == 2
    finally:
        engine.dispose()
    again = open_store(postgres_url)  # at head already: nothing to migrate, nothing reset
    try:
        with again.begin() as conn:
            assert next_versions(conn) == 5
    finally:
        again.dispose()


def test_renewals_declines_and_versions_across_a_restart(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, clock = make_billing(tmp_path, database_url=postgres_store_url)
    b.add_member(
        "m_ok", "Ok", plan_id="monthly", email="ok@example.org", payment_method="pm_sim_ok"
    )
    b.add_member(
        "m_soft",
        "Soft",
        plan_id="monthly",
        email="soft@example.org",
        payment_method="pm_sim_ok",
    )
    assert published(b, "m_ok")["status"] == "active"
    b.set_payment_method("m_soft", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)  # the second month is due for both
    assert published(b, "m_ok")["status"] == "active"
    assert published(b, "m_soft")["status"] == "grace"
    shown = b.member("m_soft")
    assert shown["owed"] == 5938 and shown["next_retry_at"] is not None
    before = versions(b)
    assert before == sorted(before) and len(set(before)) == len(before)
    b.engine.dispose()

    # A second process on the same database continues the sequence above everything published.
    again, _ = make_billing(tmp_path, clock=clock, database_url=postgres_store_url)
    again.record_payment("m_soft")
    assert published(again, "m_soft")["status"] == "active"
    after = versions(again)[len(before) :]
    assert after and min(after) > max(before)
    again.engine.dispose()


def test_a_webhook_applied_twice_gives_the_same_result(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, _ = make_billing(tmp_path, database_url=postgres_store_url)
    b.add_member("m1", "One", plan_id="monthly", payment_method="pm_sim_sepa")
    with b.engine.connect() as conn:
        ref = conn.execute(select(schema.payment_attempts.c.gateway_ref)).scalar_one()
    event = {
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": ref}},
    }
    assert apply_stripe_event(b, event) is True
    state = published(b, "m1")
    assert state["status"] == "active"
    assert apply_stripe_event(b, event) is False
    assert published(b, "m1") == state
    with b.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.payments)).scalar_one() == 1
    b.engine.dispose()


def test_reports_run_on_postgres(tmp_path: Path, postgres_store_url: str) -> None:
    b, clock = make_billing(tmp_path, database_url=postgres_store_url)
    b.add_member("m1", "One", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("m2", "Two", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    b.record_gate_events(
        [
            {
                "event_id": "01JEVENT0000000000000000001",
                "site": "downtown",
                "gate": "g1",
                "at": "2026-12-01T09:00:00Z",
                "kind": "entry",
                "member_id": "m1",
                "reason": "ok",
            }
        ]
    )
    clock.advance(2)
    now = clock()
    tables = {name: fn(b.engine, now) for name, fn in reports.REPORTS.items()}
    assert tables["revenue"][1] == [("2026-12", "EUR", "card", 5938, 4990, 948, 1)]
    assert [r[0] for r in tables["outstanding"][1]] == ["m2"]
    assert [r[:2] for r in tables["dunning"][1]] == [("m2", "pending")]
    assert tables["attendance"][1] == [("2026-12-01", "downtown", 1, 1)]
    lines = reports.invoices(b.engine, "m1", with_lines=True)
    assert [line[-5] for line in lines] == ["membership", "tax"]
    assert b.list_members()[0].id == "m1"
    metrics = generate_latest(registry_for(b.engine)).decode()
    assert 'gated_billing_charged_minor_units_total{currency="EUR"} 5938.0' in metrics
    b.engine.dispose()


async def test_outbox_drains_to_mqtt_from_postgres(
    tmp_path: Path, postgres_store_url: str, mosquitto: Mosquitto
) -> None:
    b, _ = make_billing(tmp_path, database_url=postgres_store_url, sites=["downtown"])
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        for i, card in enumerate(["pm_sim_ok", "pm_sim_decline_insufficient_funds", "pm_sim_ok"]):
            await asyncio.to_thread(
                b.add_member, f"m{i}", f"M{i}", plan_id="monthly", payment_method=card
            )
        await asyncio.to_thread(b.erase, "m2")
        await wait_drained(b)
        seen = await retained(mosquitto.port)
        assert json.loads(json.dumps(seen["m2"]))["status"] == "erased"
        check_site(b, seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        b.engine.dispose()


def test_the_same_payment_reported_twice_at_once_is_booked_once(
    tmp_path: Path, postgres_store_url: str
) -> None:
    """READ COMMITTED lets two transactions read the same unfinished attempt: the attempt row is
    locked while its result is recorded, so the second waits and then sees it final."""
    b, _ = make_billing(tmp_path, database_url=postgres_store_url)
    applied = report_one_charge_at_once(b)
    assert applied.count(True) == 1
    with b.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.payments)).scalar_one() == 1
    assert published(b, "m1")["status"] == "active"
    b.engine.dispose()


def test_the_cli_runs_on_a_postgres_url(tmp_path: Path, postgres_url: str) -> None:
    cfg = write_cli_config(tmp_path, postgres_url)

    def ok(*args: str) -> str:
        return cli_ok(cfg, *args)

    ok("keys", "init")
    ok("plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    ok("members", "add", "m1", "--name", "One", "--plan", "monthly", "--card", "pm_sim_ok")
    shown = json.loads(ok("members", "show", "m1", "--json"))
    assert shown["status"] == "active" and shown["published"]["version"] >= 1
    assert ok("report", "revenue", "--csv").splitlines()[1].endswith(",card,4990,4990,0,1")
