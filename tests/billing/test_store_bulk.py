"""``bulk`` and ``insert_ids`` on SQLite: a batch goes in as one statement over the rows as a
JSON array (each trigger's frame allocated once per batch, not once per row) and leaves the
store exactly as one executemany of the same rows does: values and their types, NULLs,
rowcounts, ids, and each trigger fired once per row with the same values. What JSON cannot
carry, or an UPDATE ... FROM would apply differently, goes in as an executemany."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import sqlite

from gated.billing_sync import charging, invoices, publishing, store
from gated.billing_sync.store import _json_plan, bulk, compiled_for, insert_ids

from .helpers import make_billing

md = MetaData()
things = Table(
    "things",
    md,
    Column("id", Integer, primary_key=True),
    Column("code", String, unique=True),
    Column("name", String),
    Column("n", Integer),
    Column("r", Float),
    Column("kind", String),
)
# What the triggers saw, in the order they fired, with SQLite's type of each value.
TRIGGERS = """
CREATE TABLE fired (seq INTEGER PRIMARY KEY, what TEXT, id INTEGER, name ANY, tn TEXT,
                    n ANY, tnn TEXT, r ANY, tr TEXT);
CREATE TRIGGER things_in AFTER INSERT ON things BEGIN
  INSERT INTO fired (what, id, name, tn, n, tnn, r, tr) VALUES ('in', NEW.id, NEW.name,
    typeof(NEW.name), NEW.n, typeof(NEW.n), NEW.r, typeof(NEW.r));
END;
-- A WHEN comparing a TEXT column with a number: true only under TEXT affinity.
CREATE TRIGGER things_up AFTER UPDATE OF name, n ON things WHEN NEW.name = 7 OR NEW.n > OLD.n
BEGIN
  INSERT INTO fired (what, id, name, tn, n, tnn) VALUES ('up', NEW.id, NEW.name,
    typeof(NEW.name), NEW.n, typeof(NEW.n));
END;
"""

ROWS: list[dict[str, Any]] = [
    {"code": "a", "name": "Zoë", "n": 1, "r": 0.1, "kind": "x"},
    {"code": "b", "name": None, "n": None, "r": None, "kind": None},
    {"code": "c", "name": "007", "n": -(2**59), "r": 1 / 3, "kind": "y"},
    {"code": "d", "name": 7, "n": True, "r": 2.0, "kind": "x"},  # a number into TEXT: '7'
    {"code": "e", "name": "quote ' and \" and \\", "n": "12", "r": 1e300, "kind": "x"},
    {"code": "f", "name": "", "n": 2**63 - 1, "r": -0.0, "kind": "y"},
]


def _engine(tmp_path: Path, name: str) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path}/{name}.db")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.connection.driver_connection.executescript(TRIGGERS)  # type: ignore[union-attr]
    return engine


def _contents(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return [
            conn.exec_driver_sql(
                "SELECT *, typeof(name), typeof(n), typeof(r) FROM things ORDER BY id"
            ).all(),
            conn.exec_driver_sql("SELECT * FROM fired ORDER BY seq").all(),
        ]


class Runs:
    """Each statement the driver runs: (SQL, whether as an executemany, how many rows)."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[str, bool, int]] = []
        event.listen(engine, "before_cursor_execute", self._saw)

    def _saw(self, _c: Any, _cur: Any, sql: str, params: Any, _x: Any, many: bool) -> None:
        self.seen.append((sql, many, len(params) if many else 1))

    def writes(self) -> list[tuple[str, bool, int]]:
        """The writes, each without the rows' WITH clause (so its SQL starts INSERT or UPDATE)
        and whether it had one."""
        out = []
        for sql, many, n in self.seen:
            if sql.startswith("WITH bulk_rows"):
                sql = sql[sql.index(") ", sql.index("json_each")) + 2 :]
            if sql.startswith(("INSERT", "UPDATE")):
                out.append((sql, many, n))
        return out


@pytest.fixture
def both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Runs a step on a store through the JSON path and on another through executemany."""
    engines = {"json": _engine(tmp_path, "json"), "many": _engine(tmp_path, "many")}

    def run(step: Any) -> dict[str, Any]:
        out = {}
        for way, engine in engines.items():
            monkeypatch.setattr(store, "_JSON_ROWS", way == "json")
            with engine.begin() as conn:
                out[way] = step(conn)
        monkeypatch.setattr(store, "_JSON_ROWS", True)
        return out

    yield run, engines
    for e in engines.values():
        e.dispose()


def test_inserts_and_updates_leave_what_an_executemany_leaves(both: Any) -> None:
    run, engines = both
    runs = Runs(engines["json"])
    ids = run(lambda conn: insert_ids(conn, things, ROWS))
    assert ids["json"] == ids["many"] == [1, 2, 3, 4, 5, 6]
    changed = run(
        lambda conn: bulk(
            conn,
            update(things)
            .where(things.c.id == bindparam("tid"))
            .values(name=bindparam("nm"), n=bindparam("nn")),
            [
                {"tid": 1, "nm": 7, "nn": 5},  # the WHEN's TEXT '7' = 7
                {"tid": 2, "nm": "x", "nn": None},
                {"tid": 3, "nm": None, "nn": 0},  # n rises: fires
                {"tid": 99, "nm": "nobody", "nn": 1},  # no such row
            ],
        )
    )
    assert changed == {"json": 3, "many": 3}
    assert _contents(engines["json"]) == _contents(engines["many"])
    table, fired = _contents(engines["json"])
    assert [r.name for r in table] == ["7", "x", None, "7", "quote ' and \" and \\", ""]
    assert [f.what for f in fired] == ["in"] * 6 + ["up", "up"]  # once per row, in row order
    # Both batches ran as one statement each, not as an executemany.
    assert [(many, n) for _, many, n in runs.writes()] == [(False, 1), (False, 1)]


def test_an_upsert_over_the_rows_keeps_its_on_conflict(both: Any) -> None:
    run, engines = both
    run(lambda conn: bulk(conn, insert(things), ROWS[:3]))
    stmt = sqlite.insert(things)
    stmt = stmt.on_conflict_do_update(index_elements=["code"], set_={"n": stmt.excluded.n})
    rows = [{"code": "a", "n": 40}, {"code": "z", "n": 41}, {"code": "c", "n": 42}]
    runs = Runs(engines["json"])
    run(lambda conn: bulk(conn, stmt, rows))
    assert _contents(engines["json"]) == _contents(engines["many"])
    assert [(many, n) for _, many, n in runs.writes()] == [(False, 1)]
    assert "WHERE true ON CONFLICT" in runs.writes()[0][0]


@pytest.mark.parametrize(
    "row",
    [
        {"code": "b", "name": b"\x00bytes", "n": 1},
        {"code": "b", "name": "nul \x00 inside", "n": 1},
        {"code": "b", "name": "nan", "n": 1, "r": float("nan")},
    ],
    ids=["bytes", "nul", "nan"],
)
def test_values_json_cannot_carry_go_in_as_an_executemany(both: Any, row: dict[str, Any]) -> None:
    run, engines = both
    runs = Runs(engines["json"])
    rows = [{"code": "a", "name": "plain", "n": 0, "r": 0.5}, {"r": 0.5, **row}]
    run(lambda conn: bulk(conn, insert(things), rows))
    assert _contents(engines["json"]) == _contents(engines["many"])
    assert [(many, n) for _, many, n in runs.writes()] == [(True, 2)]


def test_an_integer_past_64_bits_fails_as_in_an_executemany(both: Any) -> None:
    """JSON would carry it as a real; the driver refuses it."""
    run, _ = both
    rows = [{"code": "a", "n": 1}, {"code": "b", "n": 2**63}]
    with pytest.raises(OverflowError):
        run(lambda conn: bulk(conn, insert(things), rows))


def test_updates_without_triggers_or_where_update_from_differs_go_in_as_an_executemany(
    both: Any,
) -> None:
    run, engines = both
    run(lambda conn: insert_ids(conn, things, ROWS))
    runs = Runs(engines["json"])
    by_id = update(things).where(things.c.id == bindparam("tid")).values(n=bindparam("nn"))
    # The same row twice: each applied in turn (and its trigger fired twice), the last wins.
    twice = [{"tid": 1, "nn": 10}, {"tid": 1, "nn": 20}, {"tid": 2, "nn": 30}]
    assert run(lambda conn: bulk(conn, by_id, twice)) == {"json": 3, "many": 3}
    # No trigger of the kind: the rows cost less bound one by one than parsed from JSON.
    kinds = update(things).where(things.c.id == bindparam("tid")).values(kind=bindparam("k"))
    rows = [{"tid": 4, "k": "y"}, {"tid": 5, "k": "y"}]
    assert run(lambda conn: bulk(conn, kinds, rows)) == {"json": 2, "many": 2}
    # Not by a unique key: a row may meet several targets.
    by_kind = update(things).where(things.c.kind == bindparam("k")).values(n=bindparam("nn"))
    rows = [{"k": "x", "nn": 50}, {"k": "y", "nn": 60}]
    assert run(lambda conn: bulk(conn, by_kind, rows)) == {"json": 5, "many": 5}
    assert _contents(engines["json"]) == _contents(engines["many"])
    assert [(many, n) for _, many, n in runs.writes()] == [(True, 3), (True, 2), (True, 2)]
    with engines["json"].connect() as conn:
        assert conn.execute(select(things.c.n).where(things.c.id == 1)).scalar() == 50


def test_a_cycle_runs_each_write_once_per_batch_not_once_per_row(tmp_path: Path) -> None:
    """The driver calls of a cycle's writes: an executemany runs its statement once per row
    (and allocates every trigger's frame again each time)."""
    b, clock = make_billing(tmp_path, batch_size=100)
    members = 40
    for i in range(members):
        b.add_member(f"m{i:02d}", f"M{i}", plan_id="monthly", payment_method="pm_sim_ok")
    runs = Runs(b.engine)
    clock.advance(31)
    assert b.run_cycle().renewals == members
    writes = {" ".join(sql.split()[:3]): (many, n) for sql, many, n in runs.writes()}
    # The renewal's writes that fire the rollups' triggers, each one statement a batch: its
    # attempt and the attempt's two updates, the payment, the invoice paid.
    for write in (
        "INSERT INTO payment_attempts",
        "UPDATE payment_attempts SET",
        "INSERT INTO payments",
        "UPDATE invoices SET",
    ):
        assert writes[write] == (False, 1), writes
    # An executemany where no trigger fires (the outbox), or too few for the columns JSON would
    # carry (the invoice: two programs, 16 columns).
    assert writes["INSERT INTO status_outbox"] == (True, members), writes
    assert writes["INSERT INTO invoices"] == (True, members), writes
    assert len(runs.writes()) < members


def test_bulk_counts_the_rows_it_changed_on_postgresql_too(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    md.create_all(engine)
    by_code = update(things).where(things.c.code == bindparam("c")).values(n=bindparam("nn"))
    try:
        with engine.begin() as conn:
            made = [{"code": c, "name": c, "n": 0} for c in "abc"]
            assert bulk(conn, insert(things), made) == 3
            rows = [{"c": "a", "nn": 1}, {"c": "nobody", "nn": 2}, {"c": "b", "nn": 3}]
            assert bulk(conn, by_code, rows) == 2
    finally:
        engine.dispose()


def test_an_update_over_the_rows_finds_each_target_by_its_key(tmp_path: Path) -> None:
    """The batch's rows drive the update (a search of the table by key for each), never a scan
    of the table: a store of 100,000 members' invoices would be read whole every batch."""
    b, _ = make_billing(tmp_path)
    with b.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        for stmt, table in (
            (invoices._SET_INVOICE_PAID, "invoices"),
            (charging._SET_ATTEMPT_RESULT, "payment_attempts"),
            (publishing._SET_SUB_STATUS, "subscriptions"),
        ):
            plan = _json_plan(stmt, compiled_for(conn, stmt)[0])
            assert plan is not None
            steps = [r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {plan.sql}", ("[]",))]
            assert any(s.startswith(f"SEARCH {table} ") for s in steps), steps
            assert not any(s.startswith(f"SCAN {table}") for s in steps), steps
