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


def _migration(name: str) -> ModuleType:
    """An earlier migration whose parts and triggers these follow (the versions directory is
    not a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"gated_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 0028 made 0023's payment triggers again (no IN list of the not-money methods); its
# statements are the ones this migration adds to, and what its downgrade makes again.
_R28 = _migration("0028_rollup_trigger_cost")
_R23 = _R28._R23
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


def _moved(
    amount: str, invoice: str, member: str, payer: str, dialect: str, tax: bool, sign: str
) -> str:
    """What counting one payment per member moves to ``member``'s sites: their part, less the
    whole where they are the payment's member (0023 counts it all there); times ``sign``."""
    part = _split(amount, invoice, member, payer, dialect, tax)
    return f"sum(({part} - CASE WHEN {member} = {payer} THEN {amount} ELSE 0 END) * {sign})"


def _lines_of(invoice: str) -> str:
    return (
        f"(SELECT l.member_id FROM invoice_lines l WHERE l.invoice_id = {invoice}"
        " AND l.member_id IS NOT NULL)"
    )


def _parts(dialect: str) -> dict[str, Any]:
    """The household revenue parts (0023's ``_Part``)."""
    part = _R23._Part
    share = _R23._tax_share

    def values(
        amount: str, invoice: str, inv: str, member: str, payer: str, sign: str = "1"
    ) -> Any:
        tax = share(amount, inv)
        return (
            ("gross", _moved(amount, invoice, member, payer, dialect, False, sign)),
            ("tax", _moved(tax, invoice, member, payer, dialect, True, sign)),
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
        # The same, for a row of ``_ROWS`` (SQLite): a payment's columns and the sign to count
        # it with.
        "household_payment_signed": part(
            "rollup_payments",
            _ROWS,
            (
                ("day", "{r}.at - {r}.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
                ("method", "{r}.method"),
            ),
            values("{r}.amount", "i.id", "i", "m.id", "{r}.member_id", "{r}.sign"),
            (),
            "invoices i, members m",
            "i.id = {r}.invoice_id AND i.household"
            f" AND (m.id = {{r}}.member_id OR m.id IN {_lines_of('i.id')})",
            money,
            grouped=True,
            events=("INSERT",),
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


# SQLite runs a trigger's WHEN inside the trigger's program, whose registers and cursors it
# allocates and zeroes for every row written, whether the WHEN holds or not: as triggers of
# their own on payments, the household payment part (a few dozen subqueries) cost every payment
# insert of the renewal cycle 6.8 us (58% of the insert), and even a small trigger handing the
# row on 2.4 us. So on SQLite the payment triggers (0023's, as 0028 made them again) get one
# statement more each (``_PAYMENT_TRIGGERS``), which hands a household invoice's payment row, with its sign, to a
# view whose INSTEAD OF trigger holds the part: its program runs for household payments alone.
# (PostgreSQL tests a WHEN before it calls the trigger: there the part has triggers of its own.)
_ROWS = "rollup_household_payment_rows"
_ROW_COLUMNS = ("invoice_id", "member_id", "amount", "method", "at")
_PAYMENT_TRIGGERS = ("rollup_payment_in", "rollup_payment_up", "rollup_payment_del")
# An update trigger names the columns it reads (UPDATE OF): SQLite leaves it out of an update
# that sets none of them when compiling it, where a WHEN is only tested row by row (above).
_UPDATE_OF = {"invoices": "currency, tax, total", "members": "sites"}


def _handed_on(row: str) -> str:
    """The statement that hands ``row`` of payments to the view when its invoice is a
    household's (SQLite)."""
    columns = ", ".join(_ROW_COLUMNS)
    values = ", ".join(f"{row}.{c}" for c in _ROW_COLUMNS)
    sign = -1 if row == "OLD" else 1
    return (
        f"INSERT INTO {_ROWS} ({columns}, sign) SELECT {values}, {sign} WHERE EXISTS"
        f" (SELECT 1 FROM invoices h WHERE h.id = {row}.invoice_id AND h.household)"
    )


def _payment_triggers(dialect: str, household: bool) -> list[tuple[str, list[str]]]:
    """The payment triggers as 0028 makes them (name, statements), with ``household`` the row
    handed on too (SQLite)."""
    made = {name: s for name, _, s in _R28._statements(dialect) if name in _PAYMENT_TRIGGERS}
    events = {_R23._SHORT[e]: e for e in _R23.EVENTS}
    out = []
    for name in _PAYMENT_TRIGGERS:
        statements = made[name]
        if household:
            rows = _R23._TIMING_ROW[events[name.rsplit("_", 1)[1]]]
            extra = "; ".join(_handed_on(row) for row in rows)
            statements = [
                f"{s[: s.rindex('; END')]}; {extra}; END" if s.startswith("CREATE TRIGGER") else s
                for s in statements
            ]
        out.append((name, statements))
    return out


def _statements(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(trigger name, table, the statements that make it), as 0023 makes its parts'."""
    out = []
    parts = _parts(dialect)
    signed = parts.pop("household_payment_signed")
    if dialect == "sqlite":
        del parts["household_payment"]
        columns = ", ".join(_ROW_COLUMNS)
        view = f"CREATE VIEW {_ROWS} AS SELECT {columns}, 1 AS sign FROM payments WHERE 0"
        trigger = "rollup_household_payment_apply"
        made = [
            f"CREATE TRIGGER {trigger} INSTEAD OF INSERT ON {_ROWS} FOR EACH ROW BEGIN "
            f"{signed.apply('NEW', 1)}; END"
        ]
        out.append((trigger, _ROWS, [view, *(_R28._no_in_list(s) for s in made)]))
    for name, part in parts.items():
        for event in part.events:
            when = _R23._when(part.counts, part.reads, event)
            body = [part.apply(row, -1 if row == "OLD" else 1) for row in _R23._TIMING_ROW[event]]
            guard = _R23._either(part.guard, event) if part.guard else ""
            trigger = f"rollup_{name}_{_R23._SHORT[event]}"
            kind = (
                f"UPDATE OF {_UPDATE_OF[part.source]}"
                if event == "UPDATE" and part.source in _UPDATE_OF
                else event
            )
            made = _R23._trigger(dialect, trigger, "AFTER", kind, part.source, when, guard, body)
            out.append((trigger, part.source, [_R28._no_in_list(s) for s in made]))
    return out


def trigger_names(dialect: str = "sqlite") -> list[tuple[str, str]]:
    """(trigger, table) of every trigger this migration makes (0023's payment triggers, which
    it makes again on SQLite, are not among them)."""
    return [(name, table) for name, table, _ in _statements(dialect)]


def _replace_payment_triggers(dialect: str, household: bool) -> None:
    _R23._drop(dialect, [(name, "payments") for name in _PAYMENT_TRIGGERS])
    for _, statements in _payment_triggers(dialect, household):
        for statement in statements:
            op.execute(statement)


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
    if dialect == "sqlite":
        _replace_payment_triggers(dialect, household=True)
    # Household payments booked before this migration are counted whole under the payer's
    # sites: move each to its members' parts, as the triggers would have.
    op.execute(_every_payment(dialect, 1))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _R23._drop(dialect, trigger_names(dialect))
    if dialect == "sqlite":
        _replace_payment_triggers(dialect, household=False)
        op.execute(f"DROP VIEW IF EXISTS {_ROWS}")
    # Each household payment counts whole under its member's sites again, as 0023 counts it.
    op.execute(_every_payment(dialect, -1))
