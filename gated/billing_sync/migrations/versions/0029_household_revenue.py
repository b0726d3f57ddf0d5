"""household_revenue: the payments rollup counts a payment of a household invoice (and a refund
or chargeback on it) member by member, each member's part at that member's sites.

0023's payment parts count a payment whole under its member's (the payer's) sites. The parts
here take the whole back there and add each member's part under that member's sites, as 0025
does for MRR: a payment's gross is split in proportion to each member's lines on the invoice
(with their tax), its tax share in proportion to each member's tax lines, in whole minor units
(``_split``: the parts always add up to the payment exactly). The payment is still counted once,
at its member's sites (the parts add money, not payments).

They are kept by a payment's writes, by its invoice's currency or tax changing (as 0023's
``invoice_payments``), and by a member's sites changing (their parts move; a payer's whole,
taken back here, moves with 0023's regroup of the payer). A household invoice's lines are
written with it and never change, so they need no trigger.

Revision ID: 0029_household_revenue
Revises: 0028_rollup_trigger_cost
Create Date: 2026-12-07 19:00:00.000000
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import op

revision = "0029_household_revenue"
down_revision = "0028_rollup_trigger_cost"
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
NOT_MONEY: str = _R23.NOT_MONEY


def _split(amount: str, invoice: str, member: str, payer: str, dialect: str, tax: bool) -> str:
    """The part of ``amount`` (a payment's gross, or with ``tax`` its tax share) of household
    invoice ``invoice`` that falls to ``member``: in proportion to the member's lines (their
    tax lines, with ``tax``), by cumulative shares in member id order (byte order on both
    databases), each rounded toward zero, so that the parts add up to ``amount`` exactly. With
    nothing to share by (no such lines, or they add up to zero) it all falls to ``payer``, the
    payment's member."""
    order = ' COLLATE "C"' if dialect == "postgresql" else ""
    lines = f"FROM invoice_lines x WHERE x.invoice_id = {invoice} AND x.member_id IS NOT NULL" + (
        " AND x.kind = 'tax'" if tax else ""
    )

    def weight(more: str = "") -> str:
        # A whole number on both databases (PostgreSQL's sum of bigints is a numeric).
        return f"(SELECT CAST(coalesce(sum(x.amount), 0) AS BIGINT) {lines}{more})"

    whole = weight()
    upto = weight(f" AND x.member_id{order} <= {member}{order}")
    before = weight(f" AND x.member_id{order} < {member}{order}")
    return (
        f"CASE WHEN {whole} = 0 THEN CASE WHEN {member} = {payer} THEN {amount} ELSE 0 END"
        f" ELSE {amount} * {upto} / {whole} - {amount} * {before} / {whole} END"
    )


def _moved(amount: str, invoice: str, member: str, payer: str, dialect: str, tax: bool) -> str:
    """What counting one payment per member moves to ``member``'s sites: their part, less the
    whole where they are the payment's member (0023 counts it all there)."""
    part = _split(amount, invoice, member, payer, dialect, tax)
    return f"sum({part} - CASE WHEN {member} = {payer} THEN {amount} ELSE 0 END)"


def _lines_of(invoice: str) -> str:
    return (
        f"(SELECT l.member_id FROM invoice_lines l WHERE l.invoice_id = {invoice}"
        " AND l.member_id IS NOT NULL)"
    )


def _parts(dialect: str) -> dict[str, Any]:
    """The household revenue parts (0023's ``_Part``)."""
    part = _R23._Part
    share = _R23._tax_share

    def values(amount: str, invoice: str, inv: str, member: str, payer: str) -> Any:
        tax = share(amount, inv)
        return (
            ("gross", _moved(amount, invoice, member, payer, dialect, tax=False)),
            ("tax", _moved(tax, invoice, member, payer, dialect, tax=True)),
            ("payments", "0"),
        )

    money = f"{{r}}.method NOT IN {NOT_MONEY}"
    return {
        # A payment (or refund, or chargeback) of a household invoice.
        "household_payment": part(
            "rollup_payments",
            "payments",
            (
                ("day", "{r}.at - {r}.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
                ("method", "{r}.method"),
            ),
            values("{r}.amount", "i.id", "i", "m.id", "{r}.member_id"),
            ("invoice_id", "member_id", "amount", "method", "at"),
            "invoices i, members m",
            "i.id = {r}.invoice_id AND i.household"
            f" AND (m.id = {{r}}.member_id OR m.id IN {_lines_of('i.id')})",
            money,
            "EXISTS (SELECT 1 FROM invoices h WHERE h.id = {r}.invoice_id AND h.household)",
            grouped=True,
        ),
        # A household invoice's payments move with its currency and tax (0023's
        # ``invoice_payments``).
        "household_invoice_payments": part(
            "rollup_payments",
            "invoices",
            (
                ("day", "q.at - q.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "{r}.currency"),
                ("method", "q.method"),
            ),
            values("q.amount", "{r}.id", "{r}", "m.id", "q.member_id"),
            ("currency", "tax", "total"),
            "payments q, members m",
            f"q.invoice_id = {{r}}.id AND q.method NOT IN {NOT_MONEY}"
            f" AND (m.id = q.member_id OR m.id IN {_lines_of('{r}.id')})",
            "{r}.household",
            grouped=True,
            events=("UPDATE",),
        ),
        # A member's parts of household payments (and the whole taken back from a payer) move
        # with the member's sites.
        "household_member_payments": part(
            "rollup_payments",
            "members",
            (
                ("day", "q.at - q.at % 86400"),
                ("sites", "{r}.sites"),
                ("currency", "i.currency"),
                ("method", "q.method"),
            ),
            values("q.amount", "i.id", "i", "{r}.id", "q.member_id"),
            ("sites",),
            "payments q, invoices i",
            f"i.id = q.invoice_id AND i.household AND q.method NOT IN {NOT_MONEY}"
            " AND i.id IN (SELECT l.invoice_id FROM invoice_lines l WHERE l.member_id = {r}.id"
            " AND l.member_id IS NOT NULL UNION SELECT p.invoice_id FROM payments p"
            " WHERE p.member_id = {r}.id)",
            grouped=True,
            events=("UPDATE",),
        ),
    }


def _statements(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it), as 0023 makes its parts'."""
    out = []
    for name, part in _parts(dialect).items():
        for event in part.events:
            when = _R23._when(part.counts, part.reads, event)
            body = []
            if event != "INSERT":
                body.append(part.apply("OLD", -1))
            if event != "DELETE":
                body.append(part.apply("NEW", 1))
            guard = _R23._either(part.guard, event) if part.guard else ""
            trigger = f"rollup_{name}_{_R23._SHORT[event]}"
            made = _R23._trigger(dialect, trigger, "AFTER", event, part.source, when, guard, body)
            out.append((trigger, part.source, made))
    return out


def trigger_names() -> list[tuple[str, str]]:
    """(trigger, table) of every trigger this migration makes."""
    return [(name, table) for name, table, _ in _statements("sqlite")]


def _every_payment(dialect: str, sign: int) -> str:
    """The payment part's upsert for every stored payment (the row ``{r}`` each payment in
    turn, its terms summed per key): what the triggers would have counted (``sign`` 1), or
    taking it back (-1)."""
    part = _parts(dialect)["household_payment"]
    statement: str = part.apply("pay", sign)
    return statement.replace(
        f" FROM {part.lookups} WHERE", f" FROM payments pay, {part.lookups} WHERE", 1
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for _, _, statements in _statements(dialect):
        for statement in statements:
            op.execute(statement)
    # Household payments booked before this migration are counted whole under the payer's
    # sites: move each to its members' parts, as the triggers would have.
    op.execute(_every_payment(dialect, 1))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _R23._drop(dialect, trigger_names())
    # Each household payment counts whole under its member's sites again, as 0023 counts it.
    op.execute(_every_payment(dialect, -1))
