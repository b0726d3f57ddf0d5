"""rollup_deltas: the report rollups' triggers add a written row's own part to its key instead of
summing the key again, and run only for a write that can move a number

The rollup tables and what they hold are 0018's; only the triggers change. 0018 re-aggregated
the key a row touched with a grouped SELECT joining payments, invoices and members, taken out in
a BEFORE trigger and put back in an AFTER one, for every write: a renewal's invoice insert, its
payment and its invoice turning paid ran about fifteen such statements, which doubled the
renewal cycle's work.

How a row is counted now (``_Part``): a rollup's part of one row is read from that row (``NEW``
or ``OLD``) and the few rows it names by key (its invoice, its member, its invoice's first
failed attempt). An insert adds NEW's part, a delete takes OLD's out, an update takes OLD's out
and adds NEW's, all in one AFTER trigger per part, since the rows it looks up are in other
tables that the write does not change. Each trigger's WHEN names the columns its part reads
(``reads``) and whether the row counts at all (``counts``), so an invoice update that changes
neither its status nor its amounts or dates runs nothing, a payment that is not money runs
nothing, and a fresh invoice (which cannot have payments or attempts yet: they refer to it and
are written after it, foreign keys keep it so) only adds to MRR if it is already paid. Where a
part reads rows it does not own (an invoice's payments when its currency or tax changes), its
values are sums over them, still from that one invoice.

Where the grouped SELECT stays (``_REGROUPS``, 0018's ``_Rollup`` taken out before the write and
put back after it):
- a failed payment attempt, inserted, changed or deleted: recovery counts an invoice at its
  *first* failure, and which attempt that is, with the payments since then, depends on the
  invoice's other attempts; a new or removed attempt can move the whole invoice to another day
  or decline class.
- a member's sites changing: every payment, subscription, renewal and failure of the member is
  counted under the sites it has now, so they all move together (a site move is rare).

Revision ID: 0023_rollup_deltas
Revises: 0022_submit_keys
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from alembic import op

revision = "0023_rollup_deltas"
down_revision = "0022_submit_keys"
branch_labels = None
depends_on = None


def _report_rollups() -> ModuleType:
    """Migration 0018, whose grouped SELECTs the regroups reuse and whose triggers a downgrade
    makes again (the versions directory is not a package)."""
    path = Path(__file__).with_name("0018_report_rollups.py")
    spec = importlib.util.spec_from_file_location("gated_migration_0018_report_rollups", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_R18 = _report_rollups()
NOT_MONEY: str = _R18.NOT_MONEY
MONTH_S: int = _R18.MONTH_S
EVENTS = ("INSERT", "UPDATE", "DELETE")
_changed = _R18._changed


class _Part(NamedTuple):
    """A rollup's part of one row of ``source``. In every expression ``{r}`` is that row (NEW or
    OLD); ``lookups`` are the rows it reads by key, tied to it by ``joined``; ``keys`` are
    (column, expression) and ``values`` (column, the row's term of the sum, or an aggregate
    when ``grouped``: then the part sums the looked-up rows per key). ``counts`` decides from
    the row alone whether it counts; ``reads`` are the columns the part depends on (an update
    that changes none of them runs nothing); ``guard`` is a further condition that may look at
    other tables (SQLite puts it in the trigger's WHEN, PostgreSQL, which allows no subquery
    there, in an IF around the body)."""

    table: str
    source: str
    keys: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, str], ...]
    reads: tuple[str, ...]
    lookups: str = ""
    joined: str = "1 = 1"
    counts: str = "1 = 1"
    guard: str = ""
    grouped: bool = False
    combine: str = "+"
    events: tuple[str, ...] = EVENTS

    def apply(self, row: str, sign: int) -> str:
        """The upsert that adds (sign 1) or takes out (sign -1) ``row``'s part."""
        cols = [k for k, _ in self.keys] + [v for v, _ in self.values]
        keys = [e.format(r=row) for _, e in self.keys]
        values = [e.format(r=row) if sign > 0 else f"-({e.format(r=row)})" for _, e in self.values]
        sets = ", ".join(
            f"{v} = {self.table}.{v} {self.combine} excluded.{v}" for v, _ in self.values
        )
        source = f" FROM {self.lookups}" if self.lookups else ""
        group = f" GROUP BY {', '.join(keys)}" if self.grouped else ""
        # The WHERE is always there: SQLite needs one before an upsert's ON CONFLICT.
        return (
            f"INSERT INTO {self.table} ({', '.join(cols)}) SELECT {', '.join(keys + values)}"
            f"{source} WHERE ({self.counts.format(r=row)}) AND ({self.joined.format(r=row)})"
            f"{group} ON CONFLICT ({', '.join(k for k, _ in self.keys)}) DO UPDATE SET {sets}"
        )


def _first_failure(invoice: str) -> str:
    """The id of ``invoice``'s first failed attempt (by time, then id): recovery's key."""
    return (
        "(SELECT a.id FROM payment_attempts a WHERE a.invoice_id = "
        f"{invoice} AND a.state = 'failed' ORDER BY a.created_at, a.id LIMIT 1)"
    )


def _has_failed(invoice: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM payment_attempts a WHERE a.invoice_id = {invoice}"
        " AND a.state = 'failed')"
    )


def _tax_share(amount: str, inv: str) -> str:
    """A payment's share of its invoice's tax, rounded half away from zero (0018's)."""
    return (
        f"CASE WHEN {inv}.total <= 0 THEN 0"
        f" WHEN {amount} >= 0 THEN ({amount} * {inv}.tax * 2 + {inv}.total) / (2 * {inv}.total)"
        f" ELSE -((-{amount} * {inv}.tax * 2 + {inv}.total) / (2 * {inv}.total)) END"
    )


def _parts(d: str) -> dict[str, _Part]:
    """Every delta part, by the name its triggers carry."""
    money = "{r}.method NOT IN " + NOT_MONEY
    span = f"((2 * ({{r}}.period_end - {{r}}.period_start) + {MONTH_S}) / {2 * MONTH_S})"
    monthly = f"{{r}}.subtotal / (CASE WHEN {span} > 1 THEN {span} ELSE 1 END)"
    renewal_paid = (
        "{r}.kind = 'renewal' AND {r}.status = 'paid'"
        " AND {r}.period_start IS NOT NULL AND {r}.period_end IS NOT NULL"
    )
    mrr = ("kind", "status", "subtotal", "currency", "period_start", "period_end", "member_id")
    failure_keys = (
        ("day", "f.created_at - f.created_at % 86400"),
        ("sites", "m.sites"),
        ("currency", "{r}.currency"),
        ("decline_class", "coalesce(f.decline_class, 'unknown')"),
    )
    granted = "{r}.kind = 'entry' AND coalesce({r}.reason, '') <> 'not_passed'"
    by_member = "m.id = {r}.member_id"
    return {
        # A payment: its amount and tax share on its day, under its member's sites and its
        # invoice's currency.
        "payment": _Part(
            "rollup_payments",
            "payments",
            (
                ("day", "{r}.at - {r}.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
                ("method", "{r}.method"),
            ),
            (("gross", "{r}.amount"), ("tax", _tax_share("{r}.amount", "i")), ("payments", "1")),
            ("invoice_id", "member_id", "amount", "method", "at"),
            "invoices i, members m",
            "i.id = {r}.invoice_id AND m.id = {r}.member_id",
            money,
        ),
        # A payment made on or after its invoice's first failure is recovered money.
        "payment_recovered": _Part(
            "rollup_recovery",
            "payments",
            (*failure_keys[:2], ("currency", "i.currency"), failure_keys[3]),
            (
                ("failed", "0"),
                ("failed_amount", "0"),
                ("recovered_amount", "{r}.amount"),
                ("recovered", "0"),
            ),
            ("invoice_id", "amount", "method", "at"),
            "payment_attempts f, invoices i, members m",
            f"f.id = {_first_failure('{r}.invoice_id')} AND f.created_at <= {{r}}.at"
            " AND i.id = {r}.invoice_id AND m.id = f.member_id",
            money,
            _has_failed("{r}.invoice_id"),
        ),
        # A paid renewal's monthly net, from its first day until the day it ends.
        "mrr_from": _Part(
            "rollup_mrr",
            "invoices",
            (
                ("day", "{r}.period_start - {r}.period_start % 86400"),
                ("sites", "m.sites"),
                ("currency", "{r}.currency"),
            ),
            (("amount", monthly), ("renewals", "1")),
            mrr,
            "members m",
            by_member,
            renewal_paid,
        ),
        "mrr_until": _Part(
            "rollup_mrr",
            "invoices",
            (
                ("day", "{r}.period_end - {r}.period_end % 86400"),
                ("sites", "m.sites"),
                ("currency", "{r}.currency"),
            ),
            (("amount", f"-({monthly})"), ("renewals", "-1")),
            mrr,
            "members m",
            by_member,
            renewal_paid,
        ),
        # An invoice's own numbers at its first failure (an insert has no attempts yet, and a
        # delete none left: their own triggers took them out).
        "invoice_recovery": _Part(
            "rollup_recovery",
            "invoices",
            failure_keys,
            (
                ("failed", "1"),
                ("failed_amount", "{r}.total"),
                ("recovered_amount", "0"),
                ("recovered", "CASE WHEN {r}.status = 'paid' THEN 1 ELSE 0 END"),
            ),
            ("status", "total", "currency"),
            "payment_attempts f, members m",
            f"f.id = {_first_failure('{r}.id')} AND m.id = f.member_id",
            guard=_has_failed("{r}.id"),
            events=("UPDATE",),
        ),
        # The money recovered on an invoice moves with its currency.
        "invoice_recovered": _Part(
            "rollup_recovery",
            "invoices",
            failure_keys,
            (
                ("failed", "0"),
                ("failed_amount", "0"),
                ("recovered_amount", "sum(q.amount)"),
                ("recovered", "0"),
            ),
            ("currency",),
            "payment_attempts f, members m, payments q",
            f"f.id = {_first_failure('{r}.id')} AND m.id = f.member_id"
            f" AND q.invoice_id = {{r}}.id AND q.method NOT IN {NOT_MONEY}"
            " AND q.at >= f.created_at",
            guard=_has_failed("{r}.id"),
            grouped=True,
            events=("UPDATE",),
        ),
        # An invoice's payments are booked in its currency with a share of its tax.
        "invoice_payments": _Part(
            "rollup_payments",
            "invoices",
            (
                ("day", "q.at - q.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "{r}.currency"),
                ("method", "q.method"),
            ),
            (
                ("gross", "sum(q.amount)"),
                ("tax", f"sum({_tax_share('q.amount', '{r}')})"),
                ("payments", "count(*)"),
            ),
            ("currency", "tax", "total"),
            "payments q, members m",
            f"q.invoice_id = {{r}}.id AND m.id = q.member_id AND q.method NOT IN {NOT_MONEY}",
            grouped=True,
            events=("UPDATE",),
        ),
        "started": _Part(
            "rollup_subscriptions",
            "subscriptions",
            (
                ("day", "{r}.started_at - {r}.started_at % 86400"),
                ("sites", "m.sites"),
                ("plan_id", "{r}.plan_id"),
            ),
            (("started", "1"), ("ended", "0")),
            ("started_at", "plan_id", "member_id"),
            "members m",
            by_member,
        ),
        "ended": _Part(
            "rollup_subscriptions",
            "subscriptions",
            (
                ("day", "{r}.cancel_at - {r}.cancel_at % 86400"),
                ("sites", "m.sites"),
                ("plan_id", "{r}.plan_id"),
            ),
            (("started", "0"), ("ended", "1")),
            ("cancel_at", "plan_id", "member_id"),
            "members m",
            by_member,
            "{r}.cancel_at IS NOT NULL",
        ),
        "status": _Part(
            "rollup_statuses",
            "subscriptions",
            (("status", "{r}.status"), ("sites", "m.sites")),
            (("members", "1"),),
            ("status", "member_id"),
            "members m",
            f"{by_member} AND NOT m.erased",
        ),
        # A member's status counts under their sites until they are erased (a subscription is
        # keyed by its member; it is written after the member and deleted before).
        "member_status": _Part(
            "rollup_statuses",
            "members",
            (("status", "sub.status"), ("sites", "{r}.sites")),
            (("members", "1"),),
            ("sites", "erased"),
            "subscriptions sub",
            "sub.member_id = {r}.id",
            "NOT {r}.erased",
            events=("UPDATE",),
        ),
        # Gate events are only ever added.
        "entry": _Part(
            "rollup_entries",
            "gate_events",
            (("slot", "{r}.at - {r}.at % 900"), ("site", "{r}.site")),
            (("entries", "1"),),
            (),
            counts=granted,
            events=("INSERT",),
        ),
        "visit": _Part(
            "rollup_visits",
            "gate_events",
            (
                ("site", "{r}.site"),
                ("member_id", "{r}.member_id"),
                ("year", _R18._year("{r}.at", d)),
            ),
            (("months", f"1 << {_R18._month0('{r}.at', d)}"),),
            (),
            counts=f"{granted} AND {{r}}.member_id IS NOT NULL",
            combine="|",
            events=("INSERT",),
        ),
    }


class _Regroup(NamedTuple):
    """0018's grouped SELECTs for the rows a write to ``table`` touches (``parts``: rollup, which
    rows, ``{r}`` being the written row), taken out before the write and put back after it,
    when the written row ``counts`` (and, for an update, one of the columns it ``reads``
    changed). ``neighbours``: a row's group holds other rows of ``table`` (an invoice's
    attempts), which matters on PostgreSQL (below)."""

    table: str
    events: tuple[str, ...]
    counts: str
    reads: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    neighbours: bool


_REGROUPS = {
    # Which attempt is an invoice's first failure, and the money paid since, depend on its
    # other attempts.
    "attempt": _Regroup(
        "payment_attempts",
        EVENTS,
        "{r}.state = 'failed'",
        _R18._ATTEMPT_COLUMNS,
        (("recovery", "f.invoice_id = {r}.invoice_id"),),
        True,
    ),
    # Everything of a member counts under the sites the member has now (but statuses, a part).
    "member_sites": _Regroup(
        "members",
        ("UPDATE",),
        "",
        ("sites",),
        tuple(p for p in _R18._BY_MEMBER if p[0] != "statuses"),
        False,
    ),
}
_TIMING_ROW = {"INSERT": ("NEW",), "UPDATE": ("OLD", "NEW"), "DELETE": ("OLD",)}
_SHORT = {"INSERT": "in", "UPDATE": "up", "DELETE": "del"}


def _trigger(
    dialect: str, name: str, timing: str, event: str, table: str, when: str, guard: str,
    body: list[str],
) -> list[str]:  # fmt: skip
    """CREATE TRIGGER (on PostgreSQL with its PL/pgSQL function)."""
    if dialect == "sqlite":
        cond = " AND ".join(f"({c})" for c in (when, guard) if c)
        cond = f" WHEN {cond}" if cond else ""
        return [
            f"CREATE TRIGGER {name} {timing} {event} ON {table} FOR EACH ROW{cond} BEGIN "
            + "; ".join(body)
            + "; END"
        ]
    back = "OLD" if event == "DELETE" else "NEW"
    statements = "; ".join(body) + ";"
    if guard:
        statements = f"IF {guard} THEN {statements} END IF;"
    cond = f" WHEN ({when})" if when else ""
    return [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {statements}"
        f" RETURN {back}; END $$",
        f"CREATE TRIGGER {name} {timing} {event} ON {table} FOR EACH ROW{cond}"
        f" EXECUTE FUNCTION {name}()",
    ]


def _either(condition: str, event: str) -> str:
    """``condition`` of the row an event writes: for an update, of the old or the new one."""
    if "{r}" not in condition:
        return condition
    return " OR ".join(f"({condition.format(r=row)})" for row in _TIMING_ROW[event])


def _when(counts: str, reads: tuple[str, ...], event: str) -> str:
    """A trigger's WHEN: the row counts (before or after an update), and for an update, one of
    the columns its part reads changed."""
    when = "" if counts in ("", "1 = 1") else _either(counts, event)
    if event == "UPDATE":
        when = f"({_changed(*reads)})" + (f" AND ({when})" if when else "")
    return when


def _as_written(table: str, columns: tuple[str, ...], event: str) -> str:
    """``table``'s rows as the written row will leave them (for a BEFORE trigger)."""
    cols = ", ".join(columns)
    rows = f"SELECT {cols} FROM {table}" + ("" if event == "INSERT" else " WHERE id <> OLD.id")
    if event != "DELETE":
        rows += " UNION ALL SELECT " + ", ".join(f"NEW.{c}" for c in columns)
    return f"({rows})"


def _statements(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it), for every trigger."""
    out: list[tuple[str, str, list[str]]] = []
    for name, part in _parts(dialect).items():
        for event in part.events:
            when = _when(part.counts, part.reads, event)
            body = []
            if event != "INSERT":
                body.append(part.apply("OLD", -1))
            if event != "DELETE":
                body.append(part.apply("NEW", 1))
            guard = _either(part.guard, event) if part.guard else ""
            trigger = f"rollup_{name}_{_SHORT[event]}"
            made = _trigger(dialect, trigger, "AFTER", event, part.source, when, guard, body)
            out.append((trigger, part.source, made))
    rollups = _R18._rollups(dialect)
    for name, group in _REGROUPS.items():
        for event in group.events:
            when = _when(group.counts, group.reads, event)
            parts = [(rollups[r], _either(m, event)) for r, m in group.parts]
            body = [r.apply(m, -1) for r, m in parts]
            if dialect == "postgresql" and group.neighbours:
                # PostgreSQL runs a statement's AFTER row triggers when the whole statement is
                # done, not after each row as SQLite does: for a statement that writes two
                # attempts of one invoice, the second row's take-out would see the first row's
                # change never put back. So the BEFORE trigger also puts the group back, read
                # from the table as this row will leave it (a BEFORE row trigger sees the rows
                # the statement already wrote).
                written = _as_written(group.table, ("id", *group.reads), event)
                body += [r.apply(m, 1).replace(group.table, written) for r, m in parts]
                timings = ["BEFORE"]
            else:
                timings = ["BEFORE", "AFTER"]
            for timing in timings:
                trigger = f"rollup_{name}_{_SHORT[event]}_{timing.lower()}"
                if timing == "AFTER":
                    body = [r.apply(m, 1) for r, m in parts]
                made = _trigger(dialect, trigger, timing, event, group.table, when, "", body)
                out.append((trigger, group.table, made))
    return out


def _drop(dialect: str, names: list[tuple[str, str]]) -> None:
    for name, table in names:
        op.execute(
            f"DROP TRIGGER IF EXISTS {name}" + ("" if dialect == "sqlite" else f" ON {table}")
        )
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")


def trigger_names(dialect: str = "sqlite") -> list[tuple[str, str]]:
    """(trigger, table) of every trigger this migration makes."""
    return [(name, table) for name, table, _ in _statements(dialect)]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop(dialect, _R18._trigger_names())
    for _, _, statements in _statements(dialect):
        for statement in statements:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop(dialect, trigger_names(dialect))
    for statement in _R18._statements(dialect):
        op.execute(statement)
