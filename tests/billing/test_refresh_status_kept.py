"""A refresh writes a member whose status stays without setting ``status`` on SQLite, so the
statuses rollup's trigger is not compiled into the renewal's subscription update; where the
store holds another status than the facts it was given, it writes the status as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.facts import load_facts
from gated.billing_sync.publishing import refresh
from tests.billing.helpers import DAY, make_billing
from tests.billing.test_rollup_deltas import recount, rollups


def subscription_updates(engine: Any) -> list[str]:
    """The UPDATE statements of ``subscriptions`` run on ``engine`` from now on."""
    seen: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE subscriptions"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", hook)
    return seen


def test_a_renewal_that_keeps_the_status_does_not_set_it(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    clock.advance(31)
    seen = subscription_updates(b.engine)
    report = b.run_cycle()
    assert report.renewals == 1 and report.succeeded == 1
    assert seen, "the renewal updates the subscription"
    assert all(" status=" not in q.split(" WHERE ")[0] for q in seen), seen
    with b.engine.connect() as conn:
        assert conn.execute(select(s.subscriptions.c.status)).scalar_one() == "active"
        assert rollups(conn) == recount(conn)


def test_a_status_the_facts_did_not_see_is_written_over_as_before(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    clock.advance(1)
    now = clock()
    sub = s.subscriptions
    with b.engine.begin() as conn:
        facts = load_facts(conn, ["m1"], now)
        assert facts["m1"].sub is not None and facts["m1"].sub.status == "active"
        # Written in this transaction after the facts were read (their status is now stale).
        conn.execute(update(sub).where(sub.c.member_id == "m1").values(status="suspended"))
        refresh(b.ctx, conn, ["m1"], now, facts=facts)
        row = conn.execute(select(sub.c.status, sub.c.review_at)).one()
        assert row.status == "active"
        assert row.review_at is not None and row.review_at > now + 20 * DAY
        assert rollups(conn) == recount(conn)
