"""The report rollups (migration 0018, kept by the triggers of 0023) equal a recount from the raw
rows after a random sequence of writes through the billing engine: members joining at one or two
sites, renewals, soft and hard declines and their recovery, payments at the desk, refunds, credit
notes, write-offs, cancellations and their withdrawal, sites changed, erasure, and gate events
(entries, refusals, entries nobody passed). On SQLite and on PostgreSQL; and a store filled before
the migration gets the same rollups from the backfill."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, select

from gated.billing_sync import reports
from gated.billing_sync import schema as s
from gated.billing_sync.errors import BillingError
from gated.billing_sync.service import Billing
from gated.billing_sync.store import alembic_config
from gated.contract import format_time, new_ulid
from tests.billing import report_recount
from tests.billing.helpers import DAY, T0, Clock, make_billing

ZONES = {"downtown": {"name": "Downtown", "timezone": "Europe/Berlin"}, "uptown": {}}
SITES = (["downtown"], ["uptown"], ["downtown", "uptown"])
METHODS = ("pm_sim_ok", "pm_sim_ok", "pm_sim_decline_insufficient_funds",
           "pm_sim_decline_lost_card", "pm_sim_sepa")  # fmt: skip
RECOUNTED: dict[str, Callable[[Engine, int, reports.Scope], reports.Report]] = {
    "revenue": report_recount.revenue,
    "mrr": report_recount.mrr,
    "members": report_recount.members,
    "recovery": report_recount.recovery,
    "statuses": report_recount.statuses,
    "heatmap": report_recount.heatmap,
    "sites": report_recount.sites,
}


def _invoices(b: Billing, *status: str) -> list[Any]:
    inv = s.invoices
    with b.engine.connect() as conn:
        return list(conn.execute(select(inv).where(inv.c.status.in_(status)).order_by(inv.c.id)))


def _scopes(now: int) -> list[reports.Scope]:
    zones = {"downtown": "Europe/Berlin", "uptown": "UTC"}
    first, last = reports.last_months(now, 13)
    middle = datetime.fromtimestamp(now - 60 * DAY, UTC).strftime("%Y-%m")
    return [
        reports.Scope(zones=zones),
        reports.Scope.months(first, last, zones=zones),
        reports.Scope.months(middle, middle, zones=zones),
        reports.Scope.months(first, last, sites=("downtown",), zones=zones),
        reports.Scope.months(None, middle, sites=("uptown",), zones=zones),
    ]


def assert_rollups_recount(b: Billing, now: int) -> None:
    """Every rollup-read report equals its recount from raw rows, for several periods."""
    for scope in _scopes(now):
        for name, recount in RECOUNTED.items():
            assert reports.REPORTS[name](b.engine, now, scope) == recount(b.engine, now, scope), (
                name,
                scope,
            )


def random_story(b: Billing, clock: Clock, seed: int, steps: int) -> None:
    """``steps`` random writes over about four months; a write the engine refuses (a refund of
    nothing, a cancellation twice) is skipped, as a person at the desk would be told no."""
    rng = random.Random(seed)
    members: list[str] = []

    def someone() -> str:
        return rng.choice(members)

    def join() -> None:
        mid = f"m{len(members) + 1}"
        b.add_member(mid, f"Member {mid}", plan_id="monthly", sites=rng.choice(SITES),
                     payment_method=rng.choice(METHODS))  # fmt: skip
        members.append(mid)

    def days() -> None:
        clock.advance(rng.choice((0.3, 1, 2, 5, 12)))
        b.run_cycle()

    def events() -> None:
        batch = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.choice(("entry", "entry", "entry", "deny", "exit"))
            reason = rng.choice(("ok", "ok", "not_passed")) if kind == "entry" else "expired"
            batch.append({
                "event_id": new_ulid(), "site": rng.choice(("downtown", "uptown")), "gate": "t1",
                "at": format_time(clock.now - rng.randrange(0, 3 * DAY)), "kind": kind,
                "member_id": rng.choice([*members, None]), "reason": reason,
            })  # fmt: skip
        b.record_gate_events(batch)

    def pay_at_desk() -> None:
        b.record_payment(someone(), method=rng.choice(("front_desk", "cash")))

    def new_card() -> None:
        b.set_payment_method(someone(), "pm_sim_ok")

    def refund() -> None:
        paid = _invoices(b, "paid")
        if paid:
            inv = rng.choice(paid)
            b.refund(inv.id, amount=rng.choice((None, 100, int(inv.total) // 2)))

    def credit() -> None:
        owing = _invoices(b, "open")
        if owing:
            b.credit(rng.choice(owing).id, amount=rng.choice((None, 250)))

    def write_off() -> None:
        owing = _invoices(b, "open")
        if owing:
            b.write_off(rng.choice(owing).id)

    def cancel() -> None:
        b.cancel(someone())

    def uncancel() -> None:
        b.uncancel(someone())

    def move() -> None:
        b.edit_member(someone(), sites=rng.choice(SITES))

    def erase() -> None:
        if rng.random() < 0.3:
            b.erase(someone())

    actions = [join, join, days, days, days, events, events, pay_at_desk, new_card, refund,
               credit, write_off, cancel, uncancel, move, erase]  # fmt: skip
    for _ in range(3):
        join()
    for _ in range(steps):
        with contextlib.suppress(BillingError):
            rng.choice(actions)()


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_equal_a_recount_on_sqlite(tmp_path: Path, seed: int) -> None:
    b, clock = make_billing(tmp_path, clock=Clock(T0 - 120 * DAY), sites=ZONES)
    random_story(b, clock, seed, 120)
    assert_rollups_recount(b, clock.now)
    # Later in the same day: this month's MRR and churn count up to the instant.
    assert_rollups_recount(b, clock.now + 5 * 3600)


def test_rollups_equal_a_recount_on_postgres(tmp_path: Path, postgres_store_url: str) -> None:
    b, clock = make_billing(
        tmp_path, clock=Clock(T0 - 120 * DAY), sites=ZONES, database_url=postgres_store_url
    )
    random_story(b, clock, 3, 120)
    assert_rollups_recount(b, clock.now)
    b.engine.dispose()


def test_the_migration_fills_the_rollups_from_the_rows_already_stored(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, clock=Clock(T0 - 120 * DAY), sites=ZONES)
    random_story(b, clock, 4, 80)
    before = {
        name: reports.REPORTS[name](b.engine, clock.now, scope)
        for scope in _scopes(clock.now)
        for name in RECOUNTED
    }
    config = alembic_config()
    with b.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0017_products")
    with b.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert before == {
        name: reports.REPORTS[name](b.engine, clock.now, scope)
        for scope in _scopes(clock.now)
        for name in RECOUNTED
    }
    assert_rollups_recount(b, clock.now)


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe"]
)
def test_utc_offsets_cut_a_year_where_the_zone_changes_its_offset(zone: str) -> None:
    from zoneinfo import ZoneInfo

    start = T0 - 400 * DAY
    start -= start % 900
    end = start + 400 * DAY
    parts = reports.utc_offsets(ZoneInfo(zone), start, end)
    assert parts[0][0] == start and parts[-1][1] == end
    for (_, a_end, a_off), (b_start, _, b_off) in itertools.pairwise(parts):
        assert a_end == b_start and a_off != b_off
    for lo, hi, offset in parts:
        for ts in (lo, hi - 900, lo + (hi - lo) // 1800 * 900):
            local = datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(zone))
            assert local.utcoffset().total_seconds() == offset  # type: ignore[union-attr]


def test_every_rollup_trigger_is_there_at_the_head(tmp_path: Path) -> None:
    """SQLite drops a table's triggers with it, and a later migration in batch mode copies and
    drops the table it changes: the rollups would then stop counting without an error."""
    b, _ = make_billing(tmp_path)
    with b.engine.connect() as conn:
        found = {
            (name, table)
            for name, table in conn.exec_driver_sql(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
                " AND name LIKE 'rollup_%'"
            )
        }

    def each(table: str, names: str) -> set[tuple[str, str]]:
        return {(f"rollup_{name}", table) for name in names.split()}

    assert found == {
        *each("payments", "payment_in payment_up payment_del payment_recovered_in"
              " payment_recovered_up payment_recovered_del"),
        *each("invoices", "mrr_from_in mrr_from_up mrr_from_del mrr_until_in mrr_until_up"
              " mrr_until_del invoice_recovery_up invoice_recovered_up invoice_payments_up"),
        *each("subscriptions", "started_in started_up started_del ended_in ended_up ended_del"
              " status_in status_up status_del"),
        *each("members", "member_status_up member_sites_up_before member_sites_up_after"),
        # A household invoice's MRR line by line (0025).
        *each("invoices", "household_lines_from_up household_whole_from_up"
              " household_lines_until_up household_whole_until_up"),
        *each("members", "household_member_from_up household_payer_from_up"
              " household_member_until_up household_payer_until_up"),
        # A household invoice's payments member by member (0029: on SQLite, triggers of their
        # own (0030) hand its rows to a view's trigger).
        *each("invoices", "household_invoice_payments_up"),
        *each("members", "household_member_payments_up"),
        *each("rollup_household_payment_rows", "household_payment_apply"),
        *each("payments", "payment_household_in payment_household_up_old"
              " payment_household_up_new payment_household_del"),
        *each("payment_attempts", "attempt_in_before attempt_in_after attempt_up_before"
              " attempt_up_after attempt_del_before attempt_del_after"),
        # Each regroup's statement behind a view of its own (0030).
        *{(f"rollup_attempt_{e}_{t}_apply", f"rollup_attempt_{e}_{t}_rows")
          for e in ("in", "up", "del") for t in ("before", "after")},
        *each("gate_events", "entry_in visit_in"),
    }  # fmt: skip
