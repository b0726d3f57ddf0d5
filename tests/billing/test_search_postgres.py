"""The front desk's member search on PostgreSQL: the same answers as on SQLite (a name or part
of it, an e-mail address, a phone number as a caller reads it out, a card UID as a wedge reader
types it, a member id), each condition read through its own index (pg_trgm GIN indexes on the
name, the e-mail address and the phone's digits, migration 0018; the id and the card by point
lookups), never by scanning every member."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gated.billing_sync import member_search
from tests.billing.helpers import make_billing


def test_search_finds_members_through_the_trigram_indexes(
    tmp_path: Path, postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, _ = make_billing(tmp_path, database_url=postgres_store_url)
    for i, (name, email, phone) in enumerate(
        [
            ("Anna Weber", "anna.weber@example.org", "+49 30 1047110"),
            ("Ben Weberling", "ben@example.org", "+49 (170) 555-0101"),
            ("Clara Koch", "clara.k@example.net", None),
        ]
    ):
        b.add_member(f"m{i}", name, plan_id="monthly", sites=["downtown"], email=email)
        if phone:
            b.edit_member(f"m{i}", phone=phone)
    b.assign_card("m2", "04A1B2C3D4E5F6")

    statements: list[tuple[str, Any]] = []

    @event.listens_for(b.reader, "before_cursor_execute")
    def keep(conn: object, cursor: object, statement: str, parameters: Any, *args: object) -> None:
        statements.append((statement, parameters))

    def found(query: str) -> list[str]:
        return [r["id"] for r in b.search_members(query, ["*"]).members]

    assert found("weber") == ["m0", "m1"]
    assert found("WEBERL") == ["m1"]
    assert found("clara.k@example") == ["m2"]
    assert found("030 1047110") == ["m0"]
    assert found("0170 5550101") == ["m1"]
    assert found("04:a1:b2:c3:d4:e5:f6") == ["m2"]
    assert found("m1") == ["m1"]
    assert found("nobody") == []

    # The conditions on text are one query whose OR the planner reads as one bitmap per
    # index; with sequential scans priced out, it does.
    def matching(query: str) -> tuple[str, Any]:
        statements.clear()
        found(query)
        return next(st for st in statements if "LIKE" in st[0] and "LIMIT" in st[0])

    by_name = matching("weber")
    by_phone = matching("030 1047110")
    with b.reader.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        name_plan, phone_plan = (
            "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, params))
            for sql, params in (by_name, by_phone)
        )
    assert "Seq Scan on members" not in name_plan + phone_plan, (name_plan, phone_plan)
    assert "ix_members_name_trgm" in name_plan and "ix_members_email_trgm" in name_plan
    assert "ix_members_phone_trgm" in phone_plan
    # A broad query's walk can read the members in name order straight from the name-order
    # index (a range of it when it pages on): with sorts priced out (three members make any
    # plan cheap), no sort is left, so the index's order is the walk's, collation included.
    monkeypatch.setattr(member_search, "BROAD", 0)
    for after in (None, "m0"):
        statements.clear()
        assert [m["id"] for m in b.search_members("weber", ["*"], after).members] == (
            ["m0", "m1"] if after is None else ["m1"]
        )
        walk_sql, walk_params = next(st for st in statements if "walked" in st[0])
        with b.reader.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_sort = off")
            walk_plan = "\n".join(
                row[0] for row in conn.exec_driver_sql("EXPLAIN " + walk_sql, walk_params)
            )
        assert "ix_members_name_order" in walk_plan and "Sort" not in walk_plan, walk_plan
    b.engine.dispose()
