"""A cycle's batch reuses the rows it read when it was planned, after its charges, only while
nobody else has written to the store (SQLite's data_version): then it ends exactly as if it had
read everything again, and a change made meanwhile by anyone else is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gated.billing_sync import charging, schema
from gated.billing_sync.cycle import MIN_BATCH, BatchSize
from gated.billing_sync.gateway import ChargeResult
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway

from .helpers import Clock, make_billing, published

CARDS = [
    "pm_sim_ok",
    "pm_sim_decline_insufficient_funds",  # soft: retried
    "pm_sim_decline_lost_card",  # hard: a new card is needed
    "pm_sim_advice_card_velocity_exceeded",  # do not try again
    "pm_sim_decline_authentication_required",  # a pay link
    "pm_sim_sepa",
    "pm_sim_sepa_fail",
]


def _populate(b: Billing, clock: Clock) -> None:
    """Members on every kind of card, a household, a cancellation and a freeze; then the card
    of some changes to one that declines, so that renewals meet every outcome."""
    for i, card in enumerate(CARDS * 3):
        b.add_member(f"m{i:02d}", f"Member {i}", plan_id="monthly", payment_method=card)
    b.add_member("payer", "Payer", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("kid", "Kid", plan_id="monthly", payer_id="payer")
    clock.advance(3)
    b.run_cycle()
    b.cancel("m00")
    b.freeze("m07", 1)
    b.set_payment_method("payer", "pm_sim_decline_insufficient_funds")
    b.set_payment_method("m14", "pm_sim_decline_insufficient_funds")


def _store(b: Billing) -> dict[str, Any]:
    """What the cycle leaves behind, but for version numbers and issue times (their order
    within a batch may differ) and row ids."""
    out: dict[str, Any] = {}
    with b.reader.connect() as conn:
        for table, key in (
            (schema.subscriptions, "member_id"),
            (schema.invoices, "id"),
            (schema.payment_attempts, "id"),
            (schema.payments, "id"),
        ):
            out[table.name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(key))]
        out["notices"] = sorted(
            (r.member_id, r.kind, r.subject, r.body)
            for r in conn.execute(select(schema.notifications))
        )
        states = {}
        for r in conn.execute(select(schema.member_states)):
            body = json.loads(r.payload)
            del body["version"], body["issued_at"]
            states[r.member_id] = body
        out["states"] = states
        out["manifest_counts"] = sorted(
            (r.site, r.count) for r in conn.execute(select(schema.site_manifests))
        )
    return out


def test_a_batch_ends_as_if_it_had_read_everything_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reread = 0
    original = charging.reread_rows

    def counting(*args: Any) -> Any:
        nonlocal reread
        reread += 1
        return original(*args)

    monkeypatch.setattr(charging, "reread_rows", counting)
    fast, fast_clock = make_billing(tmp_path / "fast", batch_size=5)
    full, full_clock = make_billing(tmp_path / "full", batch_size=5)
    _populate(fast, fast_clock)
    with monkeypatch.context() as m:
        m.setattr(charging, "data_version", lambda conn: None)
        _populate(full, full_clock)
    seen: set[str] = set()
    for _ in range(40):  # renewals, retries, suspensions, SEPA settling, the freeze ending
        fast_clock.advance(1)
        full_clock.advance(1)
        fast.run_cycle()
        with monkeypatch.context() as m:
            m.setattr(charging, "data_version", lambda conn: None)
            full.run_cycle()
        store = _store(fast)
        assert store == _store(full)
        seen.update(state["status"] for state in store["states"].values())
    assert reread > 20, "the batches never reused their rows"
    assert seen >= {"active", "grace", "suspended", "frozen", "pending_cancel", "cancelled"}


class _DisputeDuringConfirm(SimulatedGateway):
    """Opens a chargeback on the member's earlier payment while their renewal is being
    confirmed: a webhook arriving between the batch's transactions."""

    def __init__(self, path: Path, clock: Clock) -> None:
        super().__init__(path, clock=clock)
        self.billing: Billing | None = None
        self.armed = False

    def confirm_intent(
        self, intent_id: str, idempotency_key: str, *, return_url: str | None = None
    ) -> ChargeResult:
        result = super().confirm_intent(intent_id, idempotency_key, return_url=return_url)
        if self.armed and self.billing is not None:
            self.armed = False
            self.billing.dispute_opened("dp_1", "pi_sim_0000000001")
        return result


def test_a_change_made_while_a_charge_is_in_flight_is_not_overwritten(tmp_path: Path) -> None:
    clock = Clock()
    gateway = _DisputeDuringConfirm(tmp_path / "sim.db", clock)
    b, _ = make_billing(tmp_path, gateway=gateway, clock=clock)
    gateway.billing = b
    b.add_member("m1", "One", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("m2", "Two", plan_id="monthly", payment_method="pm_sim_ok")
    assert published(b, "m1")["status"] == "active"
    clock.advance(32)
    gateway.armed = True
    report = b.run_cycle()
    assert report.renewals == 2 and report.succeeded == 2 and not gateway.armed
    # The renewal was booked, and the dispute opened meanwhile still suspends the member.
    assert published(b, "m1")["status"] == "suspended"
    assert published(b, "m2")["status"] == "active"
    with b.reader.connect() as conn:
        paid = conn.execute(
            select(schema.subscriptions.c.paid_through).order_by(schema.subscriptions.c.member_id)
        ).scalars()
        assert len({*paid}) == 1  # both renewed to the same day
    assert b.member("m1")["status"] == "suspended"


def test_a_batch_is_sized_by_how_long_it_holds_the_write_lock() -> None:
    size = BatchSize(limit=200, hold_s=0.1)
    assert size.size == 200
    size.observe(0.4, 200)  # four times too long: a quarter
    assert size.size == 50
    size.observe(0.01, 50)  # fast again: it grows back at most twofold a batch
    assert size.size == 100
    size.observe(None, 100)  # no write lock (PostgreSQL): as it was
    assert size.size == 100
    size.observe(30.0, 100)  # a stall: never below MIN_BATCH
    assert size.size == MIN_BATCH
    small = BatchSize(limit=5, hold_s=0.1)
    small.observe(1.0, 5)
    assert small.size == 5  # a batch_size below MIN_BATCH stays what it is


def test_the_cycle_sizes_its_batches_by_the_holds_the_store_measures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float | None, int]] = []
    observe = BatchSize.observe

    def spy(self: BatchSize, held_s: float | None, reviewed: int) -> None:
        seen.append((held_s, reviewed))
        observe(self, held_s, reviewed)

    monkeypatch.setattr(BatchSize, "observe", spy)
    b, clock = make_billing(tmp_path, batch_size=3)
    for i in range(5):
        b.add_member(f"m{i}", f"M{i}", plan_id="monthly", payment_method="pm_sim_ok")
    clock.advance(31)
    assert b.run_cycle().renewals == 5
    # Each sign-up was charged by a cycle of its own member; then the renewals: 3, then 2.
    assert [n for _, n in seen[-2:]] == [3, 2]
    assert all(held is not None and held > 0 for held, _ in seen)
