"""What the rollups' triggers cost a write on SQLite (migration 0028): an UPDATE compiles in only
the triggers of the columns it sets, and no trigger builds a table of the not-money methods each
time it fires. That the triggers still count exactly is test_rollup_deltas.py's and
test_rollups.py's; here, which trigger programs SQLite puts into the renewal cycle's writes (its
EXPLAIN names each as ``-- TRIGGER name``), and that 0028's downgrade gives 0025's triggers back.
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from sqlalchemy import Connection, Engine

from gated.billing_sync.store import alembic_config, open_store


def compiled_triggers(conn: Connection, statement: str) -> set[str]:
    """The triggers SQLite codes into ``statement`` (bound with 1s: only the plan matters)."""
    rows = conn.exec_driver_sql(f"EXPLAIN {statement}", (1,) * statement.count("?"))
    return {
        p4.removeprefix("-- TRIGGER ")
        for _, opcode, _, _, _, p4, *_ in rows
        if opcode == "Init" and isinstance(p4, str) and p4.startswith("-- TRIGGER ")
    }


def triggers(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                " AND name LIKE 'rollup_%'"
            ).all()
        )


def test_the_cycles_updates_compile_in_only_the_triggers_of_the_columns_they_set(
    tmp_path: Path,
) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with engine.connect() as conn:
        # An invoice turning paid: MRR, recovery and the household lines read its status; the
        # triggers of its currency, tax and total (its payments' rollup, recovered money) not.
        paid = "UPDATE invoices SET amount_paid = ?, status = ?, paid_at = ? WHERE id = ?"
        assert compiled_triggers(conn, paid) == {
            "rollup_mrr_from_up",
            "rollup_mrr_until_up",
            "rollup_invoice_recovery_up",
            *(
                f"rollup_household_{p}_{e}_up"
                for p in ("lines", "whole")
                for e in ("from", "until")
            ),
        }
        renewed = (
            "UPDATE subscriptions SET paid_through = ?, status = ?, first_failure_at = ?,"
            " next_retry_at = ?, retries_done = ?, needs_new_card = ?, review_at = ?"
            " WHERE member_id = ?"
        )
        assert compiled_triggers(conn, renewed) == {"rollup_status_up"}
        # The provider's reference alone moves no number.
        ref = "UPDATE payment_attempts SET gateway_ref = ?, updated_at = ? WHERE id = ?"
        assert compiled_triggers(conn, ref) == set()
        # An insert has no column list: every insert trigger is in, and with them the view's
        # trigger (0029) that splits a household invoice's payment between its members' sites.
        pay = (
            "INSERT INTO payments (invoice_id, member_id, amount, method, reference, at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        assert compiled_triggers(conn, pay) == {
            "rollup_payment_in",
            "rollup_payment_recovered_in",
            "rollup_payment_household_in",
            "rollup_household_payment_apply",
        }
    engine.dispose()


def test_no_rollup_trigger_holds_an_in_list_sqlite_would_build_per_firing(tmp_path: Path) -> None:
    """SQLite makes an IN list of more than two values an ephemeral index, built again at each
    firing of the trigger program that holds it."""
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    found = triggers(engine)
    # 0028's, 0029's household revenue, and 0030's: the household hand-offs (4) and the six
    # regroups' statements behind views.
    assert len(found) == 43 + 3 + 4 + 6
    assert {n for n, sql in found.items() if re.search(r"\bIN \(\s*'", sql)} == set()
    engine.dispose()


def test_the_downgrade_gives_back_0025s_triggers_and_the_upgrade_0028s(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    head = triggers(engine)
    config = alembic_config()

    def downgrade(engine: Engine, revision: str) -> dict[str, str]:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
        return triggers(engine)

    at_0028 = downgrade(engine, "0028_rollup_trigger_cost")
    before = downgrade(engine, "0027_next_invoice_deadline")
    assert before.keys() == at_0028.keys()
    assert sum(" UPDATE OF " in sql for sql in before.values()) == 0
    assert sum(" UPDATE OF " in sql for sql in at_0028.values()) == 23
    fresh = open_store(f"sqlite:///{tmp_path}/fresh.db")
    assert downgrade(fresh, "0027_next_invoice_deadline") == before
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert triggers(engine) == head
    fresh.dispose()
    engine.dispose()


def programs(conn: Connection, statement: str) -> dict[str, set[str]]:
    """The opcodes of each trigger program SQLite codes into ``statement``, by trigger (each
    program starts with an ``Init`` naming it)."""
    rows = conn.exec_driver_sql(f"EXPLAIN {statement}", (1,) * statement.count("?"))
    out: dict[str, set[str]] = {}
    current = out.setdefault("", set())
    for _, opcode, _, _, _, p4, *_ in rows:
        if opcode == "Init" and isinstance(p4, str) and p4.startswith("-- TRIGGER "):
            current = out.setdefault(p4.removeprefix("-- TRIGGER "), set())
        current.add(opcode)
    return out


def test_a_payment_hands_on_a_household_row_without_a_temporary_table(tmp_path: Path) -> None:
    """0029 handed the row on with INSERT INTO the view SELECT … WHERE EXISTS (…): SQLite runs
    an INSERT … SELECT into a view with triggers through a temporary table, opened at every
    firing, household or not. 0030's trigger asks in its WHEN and hands on with VALUES."""
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    pay = (
        "INSERT INTO payments (invoice_id, member_id, amount, method, reference, at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    with engine.connect() as conn:
        found = programs(conn, pay)
    for name in ("rollup_payment_in", "rollup_payment_household_in"):
        assert "OpenEphemeral" not in found[name], name
    made = triggers(engine)
    # Each payment trigger counts whole, its hand-off is a trigger of its own.
    for name in ("rollup_payment_in", "rollup_payment_up", "rollup_payment_del"):
        assert "rollup_household_payment_rows" not in made[name], name
    assert "VALUES" in made["rollup_payment_household_in"]
    engine.dispose()


def test_a_regroup_runs_its_statement_only_for_a_failed_attempt(tmp_path: Path) -> None:
    """The regroups' WHEN (the attempt is or was failed) is tested inside a trigger's program,
    after its frame is allocated: each regroup trigger is small and hands the invoice ids to a
    view whose trigger holds the statement."""
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    made = triggers(engine)
    for event in ("in", "up", "del"):
        for timing in ("before", "after"):
            name = f"rollup_attempt_{event}_{timing}"
            assert made[name].endswith(f"INSERT INTO {name}_rows (old_invoice_id, new_invoice_id)"
                                       f" VALUES ({'NULL' if event == 'in' else 'OLD.invoice_id'},"
                                       f" {'NULL' if event == 'del' else 'NEW.invoice_id'}); END")  # fmt: skip
            assert "rollup_recovery" in made[f"{name}_apply"]
            assert "OLD." not in made[f"{name}_apply"]
    engine.dispose()


def test_an_invoice_turning_paid_asks_once_whether_it_had_a_failed_attempt(tmp_path: Path) -> None:
    """0023's recovery WHEN asked about the old row's invoice and then the new row's: the same
    one unless the id changed (two index probes for one answer)."""
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    made = triggers(engine)
    for name, key in (
        ("rollup_invoice_recovery_up", "id"),
        ("rollup_invoice_recovered_up", "id"),
        ("rollup_payment_recovered_up", "invoice_id"),
    ):
        when = made[name].split(" BEGIN ", 1)[0]
        assert when.count(f"a.invoice_id = NEW.{key} AND") == 1, name
        assert f"NEW.{key} IS NOT OLD.{key} AND EXISTS" in when, name
    engine.dispose()


def test_0030s_downgrade_gives_back_0029s_triggers_and_the_upgrade_0030s(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    head = triggers(engine)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0029_household_revenue")
    at_0029 = triggers(engine)
    assert len(at_0029) == 43 + 3
    assert "rollup_household_payment_rows" in at_0029["rollup_payment_in"]
    assert "NEW.id IS NOT OLD.id" not in at_0029["rollup_invoice_recovery_up"]
    with engine.connect() as conn:
        views = {
            n for (n,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'view'")
        }
    assert views == {"rollup_household_payment_rows"}
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert triggers(engine) == head
    engine.dispose()
