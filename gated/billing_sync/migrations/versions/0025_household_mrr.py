"""household_mrr: the MRR rollup counts a household invoice line by line, each member's net
under that member's sites, one renewal a member.

0023's MRR parts count a renewal whole, under its member's (the payer's) sites; the parts here
take a household invoice's whole back there and add each member's net on it (their lines
without tax; one renewal a member) under that member's sites, on the period's first day, and the reverse on the day it ends. They
are kept by the invoice's updates (a household invoice is written open and its lines after it,
and is paid by an update; a paid renewal is never deleted) and by a member's sites changing
(their lines move, and a payer's wholes taken back move with 0023's regroup of the payer).

Revision ID: 0025_household_mrr
Revises: 0024_household_invoices
Create Date: 2026-12-07 17:30:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import op

revision = "0025_household_mrr"
down_revision = "0024_household_invoices"
branch_labels = None
depends_on = None


def _rollup_deltas() -> ModuleType:
    """Migration 0023, whose parts and triggers these follow (the versions directory is not a
    package)."""
    path = Path(__file__).with_name("0023_rollup_deltas.py")
    spec = importlib.util.spec_from_file_location("gated_migration_0023_rollup_deltas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_R23 = _rollup_deltas()
MONTH_S: int = _R23.MONTH_S
_INVOICE_READS = (
    "kind",
    "status",
    "subtotal",
    "currency",
    "period_start",
    "period_end",
    "member_id",
    "household",
)


def _monthly(amount: str, i: str) -> str:
    """``amount`` of invoice ``i`` a month: over the months its period spans (0018's)."""
    span = f"((2 * ({i}.period_end - {i}.period_start) + {MONTH_S}) / {2 * MONTH_S})"
    return f"{amount} / (CASE WHEN {span} > 1 THEN {span} ELSE 1 END)"


def _net(invoice: str, member: str) -> str:
    """``member``'s net on household invoice ``invoice``: their lines without tax, summed
    before the division as the reports sum them (a member may have a sale beside their
    membership on it)."""
    return (
        f"(SELECT sum(x.amount) FROM invoice_lines x WHERE x.invoice_id = {invoice}"
        f" AND x.member_id = {member} AND x.kind <> 'tax')"
    )


def _paid_household(i: str) -> str:
    return (
        f"{i}.kind = 'renewal' AND {i}.status = 'paid' AND {i}.household"
        f" AND {i}.period_start IS NOT NULL AND {i}.period_end IS NOT NULL"
    )


def _parts() -> dict[str, Any]:
    """The household MRR parts (0023's ``_Part``), for the period's first day (``from``: lines
    in, wholes out) and the day it ends (``until``: the reverse)."""
    part = _R23._Part
    out: dict[str, Any] = {}
    for edge, column, lines in (("from", "period_start", ""), ("until", "period_end", "-")):
        whole = "" if lines else "-"
        day = f"{{r}}.{column} - {{r}}.{column} % 86400"
        inv_day = f"i.{column} - i.{column} % 86400"
        out[f"household_lines_{edge}"] = part(
            "rollup_mrr",
            "invoices",
            (("day", day), ("sites", "m.sites"), ("currency", "{r}.currency")),
            (
                ("amount", f"{lines}sum({_monthly(_net('{r}.id', 'm.id'), '{r}')})"),
                ("renewals", f"{lines}count(*)"),
            ),
            _INVOICE_READS,
            "members m",
            "m.id IN (SELECT l.member_id FROM invoice_lines l WHERE l.invoice_id = {r}.id"
            " AND l.kind <> 'tax')",
            _paid_household("{r}"),
            grouped=True,
            events=("UPDATE",),
        )
        out[f"household_whole_{edge}"] = part(
            "rollup_mrr",
            "invoices",
            (("day", day), ("sites", "m.sites"), ("currency", "{r}.currency")),
            (("amount", f"{whole}({_monthly('{r}.subtotal', '{r}')})"), ("renewals", f"{whole}1")),
            _INVOICE_READS,
            "members m",
            "m.id = {r}.member_id",
            _paid_household("{r}"),
            events=("UPDATE",),
        )
        out[f"household_member_{edge}"] = part(
            "rollup_mrr",
            "members",
            (("day", inv_day), ("sites", "{r}.sites"), ("currency", "i.currency")),
            (
                ("amount", f"{lines}sum({_monthly(_net('i.id', '{r}.id'), 'i')})"),
                ("renewals", f"{lines}count(*)"),
            ),
            ("sites",),
            "invoices i",
            "i.id IN (SELECT l.invoice_id FROM invoice_lines l WHERE l.member_id = {r}.id"
            f" AND l.kind <> 'tax') AND {_paid_household('i')}",
            grouped=True,
            events=("UPDATE",),
        )
        out[f"household_payer_{edge}"] = part(
            "rollup_mrr",
            "members",
            (("day", inv_day), ("sites", "{r}.sites"), ("currency", "i.currency")),
            (
                ("amount", f"{whole}sum({_monthly('i.subtotal', 'i')})"),
                ("renewals", f"{whole}count(*)"),
            ),
            ("sites",),
            "invoices i",
            f"i.member_id = {{r}}.id AND {_paid_household('i')}",
            grouped=True,
            events=("UPDATE",),
        )
    return out


def _statements(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it), as 0023 makes its parts'."""
    out = []
    for name, part in _parts().items():
        for event in part.events:
            when = _R23._when(part.counts, part.reads, event)
            body = [part.apply("OLD", -1), part.apply("NEW", 1)]
            trigger = f"rollup_{name}_{_R23._SHORT[event]}"
            made = _R23._trigger(dialect, trigger, "AFTER", event, part.source, when, "", body)
            out.append((trigger, part.source, made))
    return out


def trigger_names() -> list[tuple[str, str]]:
    """(trigger, table) of every trigger this migration makes."""
    return [(name, table) for name, table, _ in _statements("sqlite")]


def _recount_mrr(dialect: str) -> None:
    """The MRR rollup counted again from the invoices (0018's grouped SELECTs, a household
    invoice whole under the payer's sites), before this migration's triggers (if any) count
    household invoices line by line from the rows' next change."""
    op.execute("DELETE FROM rollup_mrr")
    rollups = _R23._R18._rollups(dialect)
    for name in ("mrr_from", "mrr_until"):
        op.execute(rollups[name].apply("1 = 1", 1))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for _, _, statements in _statements(dialect):
        for statement in statements:
            op.execute(statement)
    # Household invoices paid before this migration are counted whole under the payer's
    # sites: move each to its lines, as the triggers would have (the same parts, for every
    # paid household invoice: its whole taken back, its lines added).
    parts = _parts()
    for edge in ("from", "until"):
        for name in (f"household_whole_{edge}", f"household_lines_{edge}"):
            op.execute(_as_of_now(parts[name]))


def _as_of_now(part: Any) -> str:
    """``part``'s upsert for every stored invoice it counts, as if each were written now (the
    row ``{r}`` is each invoice in turn, its terms summed per key)."""
    if not part.grouped:
        # One statement for every invoice: rows sharing a key are summed first (an upsert may
        # not touch a row twice).
        values = tuple((column, f"sum({term})") for column, term in part.values)
        part = part._replace(values=values, grouped=True)
    statement: str = part.apply("inv", 1)
    return statement.replace(
        f" FROM {part.lookups} WHERE", f" FROM invoices inv, {part.lookups} WHERE", 1
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _R23._drop(dialect, trigger_names())
    # A household invoice counts whole under the payer's sites again, as 0023 counts every
    # renewal: the MRR rollup is counted again from the invoices.
    _recount_mrr(dialect)
