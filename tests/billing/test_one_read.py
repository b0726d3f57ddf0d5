"""A member's page reads the store through one connection (``store.one_read``), on SQLite and on
PostgreSQL: one pool checkout, one BEGIN and one ROLLBACK for all its reads instead of one of each
per read, and the same answers as before."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gated.billing_sync.context import db_clock, one_offset_per_request
from gated.billing_sync.service import Billing
from gated.billing_sync.store import warm_pool
from gated.billing_sync.worker_lanes import READ_THREADS, WRITE_THREADS
from tests.billing.helpers import checkouts, make_billing


@pytest.fixture(params=["sqlite", "postgres"])
def billing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Billing]:
    """A store with one paying member, ``m_1``, on each kind of store; its clock is the
    deployment's (the store's offset), as in ``serve``."""
    overrides: dict[str, Any] = {}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_store_url")
    b, _ = make_billing(tmp_path, **overrides)
    b.add_member(
        "m_1", "Ana", plan_id="monthly", email="ana@example.org", payment_method="pm_sim_ok"
    )
    b.ctx.clock = db_clock(b.engine)
    yield b
    b.engine.dispose()


def page(b: Billing) -> tuple[Any, ...]:
    """What the member app's ``/app/`` reads."""
    access = b.member_access()
    return (
        access.membership("m_1"),
        access.invoices("m_1", 24),
        b.member_data().visits_by_month("m_1"),
    )


def test_a_members_page_reads_on_one_connection(billing: Billing) -> None:
    with one_offset_per_request(), checkouts(billing.engine) as apart:
        alone = page(billing)
    with one_offset_per_request(), checkouts(billing.engine) as together, billing.one_read():
        shared = page(billing)
    assert apart[0] == 3  # each of the three service calls alone takes one
    assert together[0] == 1
    assert shared == alone
    assert shared[0]["status"] == "active" and len(shared[1]) == 1


def test_the_session_and_the_clock_share_a_connection(billing: Billing) -> None:
    access = billing.member_access()
    token = access.open_session("m_1", "test agent")
    with one_offset_per_request(), checkouts(billing.engine) as n:
        found = access.session(token)
    assert found is not None and found.member_id == "m_1"
    assert n[0] == 1
    assert access.session("not-a-session-token-" + "x" * 20) is None


def test_reads_of_another_store_inside_keep_their_own_connection(tmp_path: Path) -> None:
    one, _ = make_billing(tmp_path / "one")
    other, _ = make_billing(tmp_path / "other")
    other.add_member(
        "m_2", "Bo", plan_id="monthly", email="bo@example.org", payment_method="pm_sim_ok"
    )
    with one.one_read(), checkouts(other.engine) as n:
        assert other.member_access().membership("m_2")["name"] == "Bo"
    assert n[0] == 1


def test_a_change_made_inside_is_written_and_seen_after(billing: Billing) -> None:
    with billing.one_read():
        assert billing.member_access().membership("m_1")["status"] == "active"
        # Writes take their own connection and commit as always.
        billing.update_contact("m_1", "+49 30 1234567", "Kim +49 170 1")
    assert billing.contact("m_1")["phone"] == "+49 30 1234567"


def test_the_pool_holds_a_connection_for_every_worker_thread_from_the_start(
    billing: Billing,
) -> None:
    threads = READ_THREADS + WRITE_THREADS
    engine = billing.engine
    engine.dispose()  # as a fresh serve finds it
    if engine.dialect.name == "sqlite":
        assert warm_pool(engine, threads) == 0  # its connections stay lazy: files, no server
        return
    assert warm_pool(engine, threads) == threads
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    # Every thread of both lanes holding a connection at once: none waits, none is opened.
    all_in = threading.Barrier(threads)

    def hold() -> str:
        with engine.connect():
            all_in.wait(timeout=10)
        return billing.member_access().membership("m_1")["status"]

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda _: hold(), range(threads)))
    assert answers == ["active"] * threads
    assert opened == []
