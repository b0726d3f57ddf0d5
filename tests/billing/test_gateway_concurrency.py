"""A billing cycle keeps several gateway calls in flight at once (a remote provider answers each
after a round trip), without giving up the charging protocol's order: every intent of a batch is
created and its id committed before any is confirmed, each charge is booked once, and a failed
call costs only its own charge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gated.billing_sync import schema
from gated.billing_sync.gateway import ChargeResult, GatewayUnavailable
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import Clock, make_billing, published, step

MEMBERS = 12


class RemoteGateway(SimulatedGateway):
    """The simulator behind a round trip: each intent call waits ``delay`` seconds, like a
    provider over the network. Records how many calls were in flight at once and which intents
    were confirmed before their id was committed."""

    name = "remote"

    def __init__(self, clock: Clock, path: Path, concurrency: int, delay: float = 0.02) -> None:
        super().__init__(path, clock=clock)
        self.concurrency = concurrency
        self.delay = delay
        self.billing: Billing | None = None
        self.fail_create: set[str] = set()  # member ids whose create_intent is unavailable
        self._count = threading.Lock()
        self._now = 0
        self.most = 0
        self.confirmed: list[str] = []
        self.confirmed_uncommitted: list[str] = []
        self.calls = 0
        self.stop_after: int | None = None  # the service is told to stop at this call

    @contextmanager
    def _round_trip(self) -> Iterator[None]:
        with self._count:
            self._now += 1
            self.most = max(self.most, self._now)
            self.calls += 1
            if self.calls == self.stop_after:
                assert self.billing is not None
                self.billing.stopping.set()
        try:
            time.sleep(self.delay)
            yield
        finally:
            with self._count:
                self._now -= 1

    def create_intent(self, **kw: Any) -> str:
        with self._round_trip():
            if kw["metadata"]["member_id"] in self.fail_create:
                raise GatewayUnavailable("no answer")
            return super().create_intent(**kw)

    def confirm_intent(self, intent_id: str, *args: Any, **kw: Any) -> ChargeResult:
        with self._round_trip():
            assert self.billing is not None
            with self.billing.engine.connect() as conn:
                committed = conn.execute(
                    select(func.count()).where(schema.payment_attempts.c.gateway_ref == intent_id)
                ).scalar_one()
            with self._count:
                self.confirmed.append(intent_id)
                if not committed:
                    self.confirmed_uncommitted.append(intent_id)
            return super().confirm_intent(intent_id, *args, **kw)

    def retrieve_intent(self, intent_id: str) -> ChargeResult:
        with self._round_trip():
            return super().retrieve_intent(intent_id)


def _billing(
    tmp_path: Path, concurrency: int, batch: int = MEMBERS
) -> tuple[Billing, Clock, RemoteGateway]:
    clock = Clock()
    gateway = RemoteGateway(clock, tmp_path / "sim.db", concurrency)
    b, _ = make_billing(tmp_path, gateway=gateway, clock=clock, batch_size=batch)
    gateway.billing = b
    for i in range(MEMBERS):
        b.add_member(f"m{i:02d}", f"Member {i}", plan_id="monthly", payment_method="pm_sim_ok")
    return b, clock, gateway


def _payments(b: Billing) -> dict[str, int]:
    """Card payments per member (the first month's included)."""
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(schema.payments.c.member_id, func.count()).group_by(schema.payments.c.member_id)
        ).all()
    return {member_id: int(n) for member_id, n in rows}


EVERYONE = {f"m{i:02d}" for i in range(MEMBERS)}


def test_a_cycle_keeps_up_to_concurrency_calls_in_flight_and_books_each_charge_once(
    tmp_path: Path,
) -> None:
    b, clock, gateway = _billing(tmp_path, concurrency=4)
    gateway.most = 0
    gateway.confirmed.clear()
    step(b, clock, 31)  # every member's renewal is due: one batch of MEMBERS charges
    assert gateway.most == 4
    assert len(gateway.confirmed) == MEMBERS == len(set(gateway.confirmed))
    assert gateway.confirmed_uncommitted == []  # no intent charged before its id was committed
    assert _payments(b) == dict.fromkeys(EVERYONE, 2)  # the first month and one renewal
    assert all(published(b, m)["status"] == "active" for m in EVERYONE)
    assert gateway.charged_total() == 2 * MEMBERS * 5938  # first month and one renewal


def test_one_at_a_time_when_the_gateway_says_so(tmp_path: Path) -> None:
    b, clock, gateway = _billing(tmp_path, concurrency=1)
    gateway.most = 0
    step(b, clock, 31)
    assert gateway.most == 1
    assert _payments(b) == dict.fromkeys(EVERYONE, 2)


def test_a_call_that_fails_costs_only_its_own_charge_and_is_retried_later(
    tmp_path: Path,
) -> None:
    b, clock, gateway = _billing(tmp_path, concurrency=4)
    gateway.fail_create = {"m03", "m07"}
    clock.advance(31)
    report = b.run_cycle()
    assert report.errors == 2
    assert report.succeeded == MEMBERS - 2
    assert _payments(b) == {m: 1 if m in {"m03", "m07"} else 2 for m in EVERYONE}
    # The two attempts stay open with no intent; the next cycle creates and confirms them, once.
    gateway.fail_create = set()
    report = b.run_cycle()
    assert (report.resumed, report.succeeded, report.errors) == (2, 2, 0)
    assert _payments(b) == dict.fromkeys(EVERYONE, 2)
    assert gateway.charged_total() == 2 * MEMBERS * 5938


def test_stopping_makes_no_new_call_ends_the_cycle_and_the_next_one_finishes_the_rest(
    tmp_path: Path,
) -> None:
    b, clock, gateway = _billing(tmp_path, concurrency=2, batch=4)
    gateway.calls = 0
    gateway.stop_after = 3  # the service is told to stop during the first batch's creates
    clock.advance(31)
    report = b.run_cycle()
    # The calls under way when the stop came end (the third, perhaps the second); nothing else
    # is sent (a whole batch is 8 calls) and no later batch runs.
    assert gateway.calls in (3, 4)
    assert report.reviewed == 4 and report.succeeded == 0
    assert _payments(b) == dict.fromkeys(EVERYONE, 1)  # the first month only
    # A restarted service (a new Billing on the same store) finishes the open attempts, renews
    # everyone else, and charges nobody twice.
    b2 = Billing(b.engine, b.config, gateway, b.keys, clock)
    gateway.billing = b2
    report = b2.run_cycle()
    assert report.resumed == 4
    assert _payments(b) == dict.fromkeys(EVERYONE, 2)
    assert gateway.charged_total() == 2 * MEMBERS * 5938
