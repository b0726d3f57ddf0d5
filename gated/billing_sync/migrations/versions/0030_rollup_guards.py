"""rollup_guards: on SQLite, the triggers a renewal fires without counting anything cost it less
CPU time; what the rollups count is unchanged

Measured by CPU time per row on the renewal cycle's writes (BENCHMARKS.md, "Billing"):
- A payment's insert (and update and delete) handed a household invoice's payment row to the
  view whose trigger splits it between the members (0029) with ``INSERT INTO view SELECT …
  WHERE EXISTS (…)``. SQLite runs an INSERT … SELECT into a table or view with triggers
  through a temporary table, opened and dropped at every firing even when the SELECT finds no
  row (most invoices are not a household's): 1.3 µs of a payment insert's 9.4. The hand-off is
  now a trigger of its own whose WHEN asks whether the invoice is a household's, and which
  hands the row on with ``VALUES``: no temporary table, and nothing more runs for the others.
- Every write of a payment attempt (a renewal writes three) fires 0023's two regroup triggers,
  BEFORE and AFTER, whose WHEN (the attempt is or was ``failed``) is false for a payment that
  goes through. SQLite tests a trigger's WHEN inside the trigger's program, after allocating
  and zeroing a frame for all its registers; the regroups' programs (a grouped join with
  subqueries) are large. Each regroup is now a small trigger with the same WHEN that hands the
  invoice ids on to a view, whose INSTEAD OF trigger holds the regroup's statement: its program
  runs only for a failed attempt.
- An invoice turning paid tested in its recovery trigger's WHEN whether a failed attempt is
  on the old row's invoice, and then on the new row's: the same invoice, unless its id
  changes, so two index probes where one answers (0.8 µs of its 11.5). The second is now asked
  only when the id changed (the same in SQL's logic: if it did not, the first already said no);
  likewise for a payment's recovered money.

The statements that count are 0028's and 0029's, moved and not changed (the same SQL, the
row's invoice ids read from the view's row); the rollup tables and their rows are untouched.
PostgreSQL tests a WHEN before calling the trigger's function, so its triggers stay as they
are. The downgrade makes 0028's and 0029's triggers again.

Revision ID: 0030_rollup_guards
Revises: 0029_household_revenue
Create Date: 2026-12-08 01:00:00.000000
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0030_rollup_guards"
down_revision = "0029_household_revenue"
branch_labels = None
depends_on = None


def _migration(name: str) -> ModuleType:
    """An earlier migration whose statements these are (the versions directory is not a
    package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"gated_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_R29 = _migration("0029_household_revenue")
_R28 = _R29._R28
_R23 = _R29._R23
_PAYMENT_TRIGGERS: tuple[str, ...] = _R29._PAYMENT_TRIGGERS
_ROWS: str = _R29._ROWS
_ROW_COLUMNS: tuple[str, ...] = _R29._ROW_COLUMNS
# A CREATE TRIGGER as 0023's ``_trigger`` writes it on SQLite.
_TRIGGER = re.compile(
    r"CREATE TRIGGER (?P<name>\w+) (?P<head>.+? ON (?P<table>\w+) FOR EACH ROW)"
    r" WHEN (?P<when>.+?) BEGIN (?P<body>.+); END"
)


def _regroups() -> list[tuple[str, str]]:
    """(name, statement) of the payment attempts' regroup triggers as 0028 made them."""
    made = {name: s for name, table, s in _R28._statements("sqlite") if table == "payment_attempts"}
    assert len(made) == 6 and all(len(s) == 1 for s in made.values()), made.keys()
    return [(name, s[0]) for name, s in sorted(made.items())]


def _guarded(name: str, statement: str) -> list[str]:
    """The regroup trigger ``statement`` as a small trigger with its WHEN that hands the row's
    invoice ids to a view of its own, and the view's INSTEAD OF trigger with its body."""
    found = _TRIGGER.fullmatch(statement)
    assert found is not None and found["name"] == name, statement[:120]
    body = found["body"]
    # The body reads nothing of the written row but its invoice (the group it counts again).
    assert set(re.findall(r"\b(?:OLD|NEW)\.\w+", body)) <= {"OLD.invoice_id", "NEW.invoice_id"}
    view = f"{name}_rows"
    rows = ("OLD", "NEW")
    values = ", ".join(
        f"{row}.invoice_id" if f"{row}.invoice_id" in body else "NULL" for row in rows
    )
    for row in rows:
        body = body.replace(f"{row}.invoice_id", f"NEW.{row.lower()}_invoice_id")
    return [
        f"CREATE VIEW {view} AS SELECT invoice_id AS old_invoice_id,"
        f" invoice_id AS new_invoice_id FROM payment_attempts WHERE 0",
        f"CREATE TRIGGER {name}_apply INSTEAD OF INSERT ON {view} FOR EACH ROW BEGIN {body}; END",
        f"CREATE TRIGGER {name} {found['head']} WHEN {found['when']} BEGIN"
        f" INSERT INTO {view} (old_invoice_id, new_invoice_id) VALUES ({values}); END",
    ]


# Whether a failed attempt is on the old row's invoice, or on the new row's (0023's WHEN).
_FAILED_EITHER = re.compile(
    r"\(EXISTS \((?P<probe>SELECT 1 FROM payment_attempts a WHERE a\.invoice_id = )OLD\.(?P<id>\w+)"
    r"(?P<failed> AND a\.state = 'failed')\)\) OR \(EXISTS \((?P=probe)NEW\.(?P=id)(?P=failed)\)\)"
)


def _recoveries() -> list[tuple[str, str]]:
    """(name, statement) of the update triggers whose WHEN asks about a failed attempt on both
    rows' invoices, as 0028 made them."""
    made = [(name, s) for name, _, s in _R28._statements("sqlite") if len(s) == 1]
    out = [(name, s[0]) for name, s in made if _FAILED_EITHER.search(s[0])]
    assert sorted(name for name, _ in out) == [
        "rollup_invoice_recovered_up",
        "rollup_invoice_recovery_up",
        "rollup_payment_recovered_up",
    ], out
    return out


def _asked_once(statement: str) -> str:
    """``statement`` whose WHEN asks about the new row's invoice only when it is another."""
    return _FAILED_EITHER.sub(
        lambda m: (
            f"(EXISTS ({m['probe']}OLD.{m['id']}{m['failed']})) OR (NEW.{m['id']} IS NOT"
            f" OLD.{m['id']} AND EXISTS ({m['probe']}NEW.{m['id']}{m['failed']}))"
        ),
        statement,
        count=1,
    )


def _handed_on(name: str, statement: str) -> list[str]:
    """For 0029's payment trigger ``name`` (``statement`` as 0028 made it, without the
    hand-off): a trigger per row it hands on, with the payment trigger's WHEN and the invoice
    being a household's."""
    found = _TRIGGER.fullmatch(statement)
    assert found is not None and found["name"] == name, statement[:120]
    rows = _R23._TIMING_ROW[{v: k for k, v in _R23._SHORT.items()}[name.rsplit("_", 1)[1]]]
    columns = ", ".join(_ROW_COLUMNS)
    out = []
    for row in rows:
        sign = -1 if row == "OLD" else 1
        values = ", ".join(f"{row}.{c}" for c in _ROW_COLUMNS)
        household = (
            f"EXISTS (SELECT 1 FROM invoices h WHERE h.id = {row}.invoice_id AND h.household)"
        )
        trigger = name.replace("rollup_payment_", "rollup_payment_household_") + (
            f"_{row.lower()}" if len(rows) > 1 else ""
        )
        out.append(
            f"CREATE TRIGGER {trigger} {found['head']} WHEN ({found['when']}) AND {household}"
            f" BEGIN INSERT INTO {_ROWS} ({columns}, sign) VALUES ({values}, {sign}); END"
        )
    return out


def _statements() -> list[tuple[str, list[str]]]:
    """(trigger name, the statements that make it and what it hands on to) on SQLite."""
    out = [(name, _guarded(name, statement)) for name, statement in _regroups()]
    out += [(name, [_asked_once(statement)]) for name, statement in _recoveries()]
    for name, statements in _R29._payment_triggers("sqlite", household=False):
        assert len(statements) == 1, name
        out.append((name, [statements[0], *_handed_on(name, statements[0])]))
    return out


def _names(statements: list[str]) -> list[tuple[str, str]]:
    """(kind, name) of what ``statements`` make, views last (a trigger goes with its view)."""
    made = [tuple(s.split(" ", 3)[1:3]) for s in statements]
    return sorted(((k.lower(), n) for k, n in made), key=lambda m: m[0] == "view")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    made = _statements()
    _R23._drop("sqlite", [(name, "") for name, _ in made])
    for _, statements in made:
        for statement in statements:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for _, statements in _statements():
        for kind, name in _names(statements):
            op.execute(f"DROP {kind.upper()} IF EXISTS {name}")
    for _, statement in [*_regroups(), *_recoveries()]:
        op.execute(statement)
    for _, statements in _R29._payment_triggers("sqlite", household=True):
        for statement in statements:
            op.execute(statement)
