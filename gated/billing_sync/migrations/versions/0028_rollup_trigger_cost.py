"""rollup_trigger_cost: the report rollups' triggers count what 0023 and 0025 count, but SQLite
no longer builds a table per row for the "not money" methods, and an update runs only the
triggers of the columns it sets

Measured on the renewal cycle (BENCHMARKS.md, "Billing"), two costs SQLite pays per written row
that the triggers' upserts do not explain:
- ``method NOT IN ('credit_note', 'write_off', 'payment_plan')``: SQLite compiles an IN list of
  more than two values into an ephemeral index filled once per run of the program that holds
  it; in a trigger that run is every firing, so each payment insert built and dropped such a
  b-tree three times (a fresh page zeroed each time) even where the trigger's WHEN was false.
  The same test as a chain of ``<>`` is the same in SQL's three-valued logic and costs three
  comparisons.
- An UPDATE trigger without a column list is coded into every UPDATE of its table and fires for
  each row: SQLite evaluates its WHEN inside the trigger's program, so each firing allocates and
  zeroes that program's registers first, however quickly the WHEN then says no. With ``UPDATE
  OF`` the columns its part reads (the columns its WHEN already compares, so the trigger runs
  for no fewer writes that change them), an UPDATE that sets none of them does not even compile
  it in: the cycle's invoice update (amount paid, status, paid at) leaves out the two triggers
  reading an invoice's currency and tax, and its subscription update (paid through, status, the
  dunning columns) those of its start and cancel dates. PostgreSQL's ``UPDATE OF`` means the
  same: the trigger fires when one of the columns is a target of the SET.

The statements are 0023's and 0025's, made again with those two changes (a trigger neither
changes is left as it is); the rollup tables and their rows are untouched. The downgrade makes
0023's and 0025's triggers as they were.

Revision ID: 0028_rollup_trigger_cost
Revises: 0027_next_invoice_deadline
Create Date: 2026-12-07 19:00:00.000000
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0028_rollup_trigger_cost"
down_revision = "0027_next_invoice_deadline"
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


_R25 = _migration("0025_household_mrr")
_R23 = _R25._R23
_NOT_MONEY: str = _R23.NOT_MONEY
_NOT_IN_MONEY = " NOT IN " + _NOT_MONEY
_OPERAND = re.compile(r"[\w.]+$")
_MONEY_METHODS = re.findall(r"'[^']*'", _NOT_MONEY)


def _no_in_list(statement: str) -> str:
    """``statement`` with each ``x NOT IN`` the not-money methods as ``x <> …`` chained (split
    on the list rather than a regular expression over the whole statement: a fresh store runs
    this for every trigger)."""
    parts = statement.split(_NOT_IN_MONEY)
    out = []
    for part in parts[:-1]:
        found = _OPERAND.search(part)
        assert found is not None, part[-40:]
        x = found[0]
        tests = " AND ".join(f"{x} <> {v}" for v in _MONEY_METHODS)
        out.append(f"{part[: found.start()]}({tests})")
    return "".join([*out, parts[-1]])


def _reads() -> dict[str, tuple[str, ...]]:
    """The columns each UPDATE trigger's WHEN compares, by trigger name (0023's parts and
    regroups, 0025's parts)."""
    short = _R23._SHORT["UPDATE"]
    out: dict[str, tuple[str, ...]] = {}
    for parts in (_R23._parts("sqlite"), _R25._parts()):
        for name, part in parts.items():
            if "UPDATE" in part.events:
                out[f"rollup_{name}_{short}"] = part.reads
    for name, group in _R23._REGROUPS.items():
        if "UPDATE" in group.events:
            for timing in ("before", "after"):
                out[f"rollup_{name}_{short}_{timing}"] = group.reads
    return out


def _earlier(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it) as 0023 and 0025 made them."""
    out: list[tuple[str, str, list[str]]] = [*_R23._statements(dialect), *_R25._statements(dialect)]
    return out


def _statements(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it), for every trigger this migration
    changes."""
    reads = _reads()
    out = []
    for name, table, statements in _earlier(dialect):
        made = [_no_in_list(s) for s in statements]
        if name in reads:
            assert reads[name], name
            of = f" UPDATE OF {', '.join(reads[name])} ON {table} "
            made = [
                s.replace(f" UPDATE ON {table} ", of, 1) if s.startswith("CREATE TRIGGER") else s
                for s in made
            ]
            assert any(of in s for s in made), name
        if made != statements:
            out.append((name, table, made))
    return out


def _changed(dialect: str) -> list[tuple[str, str, list[str]]]:
    """0023's and 0025's triggers that this migration makes otherwise, as they made them (the
    others, an insert or delete trigger without the not-money methods, stay as they are)."""
    changed = {name for name, _, _ in _statements(dialect)}
    return [t for t in _earlier(dialect) if t[0] in changed]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    made = _statements(dialect)
    _R23._drop(dialect, [(name, table) for name, table, _ in made])
    for _, _, statements in made:
        for statement in statements:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    earlier = _changed(dialect)
    _R23._drop(dialect, [(name, table) for name, table, _ in earlier])
    for _, _, statements in earlier:
        for statement in statements:
            op.execute(statement)
