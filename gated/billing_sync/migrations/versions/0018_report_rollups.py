"""report_rollups: daily (and 15-minute) sums the reports and dashboards read instead of every
payment, invoice and gate event, kept by triggers in the transaction of the row they count, and
filled from the rows already stored; on PostgreSQL also pg_trgm indexes for the member search

Why triggers, not the writers: a payment, an invoice's status, a subscription's dates or a gate
event are written from many places (the cycle, webhooks, the desk, refunds, imports, the
benchmark's bulk seeding), and a rollup one of them forgets is wrong for good without an error.
A trigger runs in the writer's transaction whoever the writer is, on SQLite and PostgreSQL alike.

How a row is counted: each rollup is one grouped SELECT over the raw rows (``_Rollup``), and a
trigger adds the SELECT for the changed key (a payment, an invoice, a member). Where a row can
change after it was counted, a BEFORE trigger takes the key's part out as it stood and the AFTER
trigger puts it back as it is now, so no trigger has to know how a change moves a number. The
backfill is the same SELECT over every row.

Revision ID: 0018_report_rollups
Revises: 0017_products
Create Date: 2026-12-07 13:00:00.000000
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision = "0018_report_rollups"
down_revision = "0017_products"
branch_labels = None
depends_on = None

log = logging.getLogger("gated.billing.migrations")

NOT_MONEY = "('credit_note', 'write_off', 'payment_plan')"
# 30.4375 days: the months a renewal's period spans, rounded half up.
MONTH_S = 2_629_800


def _year(ts: str, dialect: str) -> str:
    if dialect == "sqlite":
        return f"CAST(strftime('%Y', {ts}, 'unixepoch') AS INTEGER)"
    return f"CAST(EXTRACT(YEAR FROM to_timestamp({ts}) AT TIME ZONE 'UTC') AS INTEGER)"


def _month0(ts: str, dialect: str) -> str:
    if dialect == "sqlite":
        return f"(CAST(strftime('%m', {ts}, 'unixepoch') AS INTEGER) - 1)"
    return f"(CAST(EXTRACT(MONTH FROM to_timestamp({ts}) AT TIME ZONE 'UTC') AS INTEGER) - 1)"


class _Rollup(NamedTuple):
    """One grouped SELECT over raw rows, upserted into ``table``: ``keys`` are (column,
    expression), ``values`` (column, aggregate, how a new part combines: ``+`` or ``|``)."""

    table: str
    keys: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, str, str], ...]
    source: str
    where: str

    def apply(self, match: str, sign: int) -> str:
        """Add (sign 1) or take out (sign -1) the part of the rows that ``match``."""
        cols = [k for k, _ in self.keys] + [v for v, _, _ in self.values]
        exprs = [e for _, e in self.keys] + [
            e if sign > 0 else f"-({e})" for _, e, _ in self.values
        ]
        sets = ", ".join(f"{v} = {self.table}.{v} {op_} excluded.{v}" for v, _, op_ in self.values)
        return (
            f"INSERT INTO {self.table} ({', '.join(cols)}) SELECT {', '.join(exprs)}"
            f" FROM {self.source} WHERE ({self.where}) AND ({match})"
            f" GROUP BY {', '.join(e for _, e in self.keys)}"
            f" ON CONFLICT ({', '.join(k for k, _ in self.keys)}) DO UPDATE SET {sets}"
        )


def _rollups(d: str) -> dict[str, _Rollup]:
    tax_share = (
        "CASE WHEN i.total <= 0 THEN 0"
        " WHEN p.amount >= 0 THEN (p.amount * i.tax * 2 + i.total) / (2 * i.total)"
        " ELSE -((-p.amount * i.tax * 2 + i.total) / (2 * i.total)) END"
    )
    span = f"((2 * (i.period_end - i.period_start) + {MONTH_S}) / {2 * MONTH_S})"
    monthly = f"i.subtotal / (CASE WHEN {span} > 1 THEN {span} ELSE 1 END)"
    renewal_paid = (
        "i.kind = 'renewal' AND i.status = 'paid'"
        " AND i.period_start IS NOT NULL AND i.period_end IS NOT NULL"
    )
    granted = "e.kind = 'entry' AND coalesce(e.reason, '') <> 'not_passed'"
    subs = "subscriptions sub JOIN members m ON m.id = sub.member_id"
    first_failure = (
        "f.state = 'failed' AND NOT EXISTS (SELECT 1 FROM payment_attempts a"
        " WHERE a.invoice_id = f.invoice_id AND a.state = 'failed'"
        " AND (a.created_at < f.created_at OR (a.created_at = f.created_at AND a.id < f.id)))"
    )
    recovered_amount = (
        "coalesce((SELECT sum(q.amount) FROM payments q WHERE q.invoice_id = i.id"
        f" AND q.method NOT IN {NOT_MONEY} AND q.at >= f.created_at), 0)"
    )
    return {
        "payments": _Rollup(
            "rollup_payments",
            (
                ("day", "p.at - p.at % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
                ("method", "p.method"),
            ),
            (
                ("gross", "sum(p.amount)", "+"),
                ("tax", f"sum({tax_share})", "+"),
                ("payments", "count(*)", "+"),
            ),
            "payments p JOIN invoices i ON i.id = p.invoice_id JOIN members m ON m.id = p.member_id",
            f"p.method NOT IN {NOT_MONEY}",
        ),
        "entries": _Rollup(
            "rollup_entries",
            (("slot", "e.at - e.at % 900"), ("site", "e.site")),
            (("entries", "count(*)", "+"),),
            "gate_events e",
            granted,
        ),
        "visits": _Rollup(
            "rollup_visits",
            (("site", "e.site"), ("member_id", "e.member_id"), ("year", _year("e.at", d))),
            (("months", f"sum(DISTINCT 1 << {_month0('e.at', d)})", "|"),),
            "gate_events e",
            f"{granted} AND e.member_id IS NOT NULL",
        ),
        "started": _Rollup(
            "rollup_subscriptions",
            (
                ("day", "sub.started_at - sub.started_at % 86400"),
                ("sites", "m.sites"),
                ("plan_id", "sub.plan_id"),
            ),
            (("started", "count(*)", "+"), ("ended", "0", "+")),
            subs,
            "1 = 1",
        ),
        "ended": _Rollup(
            "rollup_subscriptions",
            (
                ("day", "sub.cancel_at - sub.cancel_at % 86400"),
                ("sites", "m.sites"),
                ("plan_id", "sub.plan_id"),
            ),
            (("started", "0", "+"), ("ended", "count(*)", "+")),
            subs,
            "sub.cancel_at IS NOT NULL",
        ),
        "mrr_from": _Rollup(
            "rollup_mrr",
            (
                ("day", "i.period_start - i.period_start % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
            ),
            (("amount", f"sum({monthly})", "+"), ("renewals", "count(*)", "+")),
            "invoices i JOIN members m ON m.id = i.member_id",
            renewal_paid,
        ),
        "mrr_until": _Rollup(
            "rollup_mrr",
            (
                ("day", "i.period_end - i.period_end % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
            ),
            (("amount", f"-sum({monthly})", "+"), ("renewals", "-count(*)", "+")),
            "invoices i JOIN members m ON m.id = i.member_id",
            renewal_paid,
        ),
        "recovery": _Rollup(
            "rollup_recovery",
            (
                ("day", "f.created_at - f.created_at % 86400"),
                ("sites", "m.sites"),
                ("currency", "i.currency"),
                ("decline_class", "coalesce(f.decline_class, 'unknown')"),
            ),
            (
                ("failed", "count(*)", "+"),
                ("failed_amount", "sum(i.total)", "+"),
                ("recovered_amount", f"sum({recovered_amount})", "+"),
                ("recovered", "sum(CASE WHEN i.status = 'paid' THEN 1 ELSE 0 END)", "+"),
            ),
            "payment_attempts f JOIN invoices i ON i.id = f.invoice_id"
            " JOIN members m ON m.id = f.member_id",
            first_failure,
        ),
        "statuses": _Rollup(
            "rollup_statuses",
            (("status", "sub.status"), ("sites", "m.sites")),
            (("members", "count(*)", "+"),),
            subs,
            "NOT m.erased",
        ),
    }


def _changed(*columns: str) -> str:
    return " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)


# Every member-keyed rollup, taken out before and put back after a member's sites change (the
# reports choose a site's numbers by the member's sites) or erasure (statuses leave them out).
_BY_MEMBER = (
    ("payments", "p.member_id = {r}.id"),
    ("started", "sub.member_id = {r}.id"),
    ("ended", "sub.member_id = {r}.id"),
    ("mrr_from", "i.member_id = {r}.id"),
    ("mrr_until", "i.member_id = {r}.id"),
    ("recovery", "f.member_id = {r}.id"),
    ("statuses", "sub.member_id = {r}.id"),
)
_INVOICE_PARTS = (
    ("payments", "p.invoice_id = {r}.id"),
    ("mrr_from", "i.id = {r}.id"),
    ("mrr_until", "i.id = {r}.id"),
    ("recovery", "f.invoice_id = {r}.id"),
)
_SUBSCRIPTION_PARTS = (
    ("started", "sub.member_id = {r}.member_id"),
    ("ended", "sub.member_id = {r}.member_id"),
    ("statuses", "sub.member_id = {r}.member_id"),
)
_INVOICE_COLUMNS = (
    "status",
    "kind",
    "subtotal",
    "tax",
    "total",
    "currency",
    "period_start",
    "period_end",
    "member_id",
)
_SUBSCRIPTION_COLUMNS = ("started_at", "cancel_at", "plan_id", "status", "member_id")
_ATTEMPT_COLUMNS = ("state", "created_at", "decline_class", "invoice_id", "member_id")
_MONEY = f"NEW.method NOT IN {NOT_MONEY}"
_FAILED = "NEW.state = 'failed'"

# (name, table, event, when, parts): each part is (rollup, which rows) and runs as a pair, taken
# out in a BEFORE trigger (OLD's rows, or NEW's for an insert) and put back in an AFTER trigger
# (NEW's rows; none for a delete).
_TRIGGERS: tuple[tuple[str, str, str, str | None, tuple[tuple[str, str], ...]], ...] = (
    ("payment_in", "payments", "INSERT", _MONEY, (("recovery", "f.invoice_id = {r}.invoice_id"),)),
    ("invoice_in", "invoices", "INSERT", None, _INVOICE_PARTS),
    ("invoice_up", "invoices", "UPDATE", _changed(*_INVOICE_COLUMNS), _INVOICE_PARTS),
    ("invoice_del", "invoices", "DELETE", None, _INVOICE_PARTS),
    ("subscription_in", "subscriptions", "INSERT", None, _SUBSCRIPTION_PARTS),
    (
        "subscription_up",
        "subscriptions",
        "UPDATE",
        _changed(*_SUBSCRIPTION_COLUMNS),
        _SUBSCRIPTION_PARTS,
    ),
    ("subscription_del", "subscriptions", "DELETE", None, _SUBSCRIPTION_PARTS),
    ("member_up", "members", "UPDATE", _changed("sites", "erased"), _BY_MEMBER),
    (
        "attempt_in",
        "payment_attempts",
        "INSERT",
        _FAILED,
        (("recovery", "f.invoice_id = {r}.invoice_id"),),
    ),
    (
        "attempt_up",
        "payment_attempts",
        "UPDATE",
        f"({_changed(*_ATTEMPT_COLUMNS)}) AND (OLD.state = 'failed' OR {_FAILED})",
        (("recovery", "f.invoice_id = {r}.invoice_id"),),
    ),
)
# An insert adds to what its invoice already counted (a payment, a failed attempt): its part is
# taken out first. Every other insert is a new key with nothing counted yet.
_INSERT_MOVES = ("payment_in", "attempt_in")
# Rows that are only ever added: counted once, after the insert.
_ADD_ONLY = (
    ("payment_add", "payments", "p.id = NEW.id", ("payments",)),
    ("event_add", "gate_events", "e.event_id = NEW.event_id", ("entries", "visits")),
)


def _statements(dialect: str) -> list[str]:
    """CREATE TRIGGER (and on PostgreSQL its function) for every trigger."""
    rollups = _rollups(dialect)
    out: list[str] = []

    def trigger(
        name: str, timing: str, event: str, table: str, when: str | None, body: list[str]
    ) -> None:
        if dialect == "sqlite":
            cond = f" WHEN {when}" if when else ""
            out.append(
                f"CREATE TRIGGER {name} {timing} {event} ON {table} FOR EACH ROW{cond} BEGIN "
                + "; ".join(body)
                + "; END"
            )
            return
        back = "OLD" if event == "DELETE" else "NEW"
        out.append(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            + "; ".join(body)
            + f"; RETURN {back}; END $$"
        )
        cond = f" WHEN ({when})" if when else ""
        out.append(
            f"CREATE TRIGGER {name} {timing} {event} ON {table} FOR EACH ROW{cond}"
            f" EXECUTE FUNCTION {name}()"
        )

    for name, table, event, when, parts in _TRIGGERS:
        if event != "INSERT" or name in _INSERT_MOVES:
            old = "NEW" if event == "INSERT" else "OLD"
            out_parts = [rollups[r].apply(m.format(r=old), -1) for r, m in parts]
            trigger(f"rollup_{name}_before", "BEFORE", event, table, when, out_parts)
        if event != "DELETE":
            in_parts = [rollups[r].apply(m.format(r="NEW"), 1) for r, m in parts]
            trigger(f"rollup_{name}_after", "AFTER", event, table, when, in_parts)
    for name, table, match, names in _ADD_ONLY:
        trigger(
            f"rollup_{name}",
            "AFTER",
            "INSERT",
            table,
            None,
            [rollups[r].apply(match, 1) for r in names],
        )
    return out


def _trigger_names() -> list[tuple[str, str]]:
    names = []
    for name, table, event, _, _ in _TRIGGERS:
        if event != "INSERT" or name in _INSERT_MOVES:
            names.append((f"rollup_{name}_before", table))
        if event != "DELETE":
            names.append((f"rollup_{name}_after", table))
    names += [(f"rollup_{name}", table) for name, table, _, _ in _ADD_ONLY]
    return names


_ROLLUP_TABLES = (
    "rollup_payments",
    "rollup_entries",
    "rollup_visits",
    "rollup_subscriptions",
    "rollup_mrr",
    "rollup_recovery",
    "rollup_statuses",
)


def _tables() -> None:
    """The rollups; on SQLite without rowids, so a report's range scan reads the rows in key
    order from the primary key itself."""
    big = sa.BigInteger()

    def sites() -> sa.Column[str]:
        return sa.Column("sites", sa.Text(), nullable=False)

    op.create_table(
        "rollup_payments",
        sa.Column("day", big, nullable=False),
        sites(),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("gross", big, nullable=False),
        sa.Column("tax", big, nullable=False),
        sa.Column("payments", big, nullable=False),
        sa.PrimaryKeyConstraint("day", "sites", "currency", "method", name="pk_rollup_payments"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_entries",
        sa.Column("slot", big, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("entries", big, nullable=False),
        sa.PrimaryKeyConstraint("site", "slot", name="pk_rollup_entries"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_visits",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("months", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("site", "member_id", "year", name="pk_rollup_visits"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_subscriptions",
        sa.Column("day", big, nullable=False),
        sites(),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("started", big, nullable=False),
        sa.Column("ended", big, nullable=False),
        sa.PrimaryKeyConstraint("day", "sites", "plan_id", name="pk_rollup_subscriptions"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_mrr",
        sa.Column("day", big, nullable=False),
        sites(),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", big, nullable=False),
        sa.Column("renewals", big, nullable=False),
        sa.PrimaryKeyConstraint("day", "sites", "currency", name="pk_rollup_mrr"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_recovery",
        sa.Column("day", big, nullable=False),
        sites(),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("decline_class", sa.String(length=16), nullable=False),
        sa.Column("failed", big, nullable=False),
        sa.Column("failed_amount", big, nullable=False),
        sa.Column("recovered_amount", big, nullable=False),
        sa.Column("recovered", big, nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "sites", "currency", "decline_class", name="pk_rollup_recovery"
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "rollup_statuses",
        sa.Column("status", sa.String(length=16), nullable=False),
        sites(),
        sa.Column("members", big, nullable=False),
        sa.PrimaryKeyConstraint("status", "sites", name="pk_rollup_statuses"),
        sqlite_with_rowid=False,
    )
    # A member's payments (taken out and put back when their sites change), the cancellations
    # of today (the current month's churn up to now) and the renewals starting or ending today
    # (this month's MRR at this instant).
    op.create_index("ix_payments_member_id", "payments", ["member_id"])
    op.create_index("ix_payment_attempts_member_id", "payment_attempts", ["member_id"])
    op.create_index("ix_subscriptions_cancel_at", "subscriptions", ["cancel_at"])
    op.create_index("ix_invoices_period_start", "invoices", ["period_start"])
    op.create_index("ix_invoices_period_end", "invoices", ["period_end"])


def _search_indexes() -> None:
    """pg_trgm GIN indexes on what the member search matches, where the extension can be made
    (it ships with PostgreSQL, but creating it needs the right to); without it the search scans."""
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        log.warning(
            "event=search_index_skipped reason=%r hint=%s",
            str(exc.orig).splitlines()[0] if exc.orig else str(exc),
            "run CREATE EXTENSION pg_trgm as a superuser, then migrate again",
        )
        return
    for name, expr in _SEARCH_EXPRESSIONS:
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON members USING gin (({expr}) gin_trgm_ops)"
        )


# The expressions front_desk.search matches on PostgreSQL, exactly as it writes them (the phone
# with its separators taken out), so the planner can use each index.
_PHONE_DIGITS = "phone"
for _sep in (" ", "-", "(", ")", "/", ".", "+"):
    _PHONE_DIGITS = f"replace({_PHONE_DIGITS}, '{_sep}', '')"
_SEARCH_EXPRESSIONS = (
    ("ix_members_name_trgm", "lower(name)"),
    ("ix_members_email_trgm", "lower(email)"),
    ("ix_members_phone_trgm", _PHONE_DIGITS),
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _tables()
    rollups = _rollups(dialect)
    for name in ("payments", "entries", "visits", "started", "ended", "mrr_from", "mrr_until",
                 "recovery", "statuses"):  # fmt: skip
        op.execute(rollups[name].apply("1 = 1", 1))
    for statement in _statements(dialect):
        op.execute(statement)
    # Statistics for the planner now, not at autovacuum's next round: the reports' queries
    # are planned from the first page on.
    for table in _ROLLUP_TABLES:
        op.execute(f"ANALYZE {table}")
    if dialect == "postgresql":
        _search_indexes()


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table in _trigger_names():
        op.execute(
            f"DROP TRIGGER IF EXISTS {name}" + ("" if dialect == "sqlite" else f" ON {table}")
        )
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    if dialect == "postgresql":
        for name, _ in _SEARCH_EXPRESSIONS:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    for index, table in (
        ("ix_invoices_period_end", "invoices"),
        ("ix_invoices_period_start", "invoices"),
        ("ix_subscriptions_cancel_at", "subscriptions"),
        ("ix_payment_attempts_member_id", "payment_attempts"),
        ("ix_payments_member_id", "payments"),
    ):
        op.drop_index(index, table_name=table)
    for table in reversed(_ROLLUP_TABLES):
        op.drop_table(table)
