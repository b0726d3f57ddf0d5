"""invoices: the issuing site, a legal number per site and year, and when issued; the counters
the numbers come from. Invoices already in the store are numbered in the order they were made
(a sign-up not yet paid stays a draft). Notices: the invoices whose PDFs a mail carries.
Closed accounting periods. Subscriptions: the renewal announced ahead of time. Members: when the card on file expires, and
the expiry they were warned about.

Revision ID: 0010_invoice_documents
Revises: 0009_reconciliation
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010_invoice_documents"
down_revision = "0009_reconciliation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_counters",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("series", sa.String(length=16), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("site", "year", "series", name=op.f("pk_document_counters")),
    )
    # Columns added in place and a unique index, not a constraint: on SQLite a constraint
    # means copying the table, which the tables referring to invoices forbid.
    op.add_column("invoices", sa.Column("site", sa.String(length=64), nullable=True))
    op.add_column("invoices", sa.Column("number", sa.String(length=64), nullable=True))
    op.add_column("invoices", sa.Column("issued_at", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_invoices_number"), "invoices", ["number"], unique=True)
    _number_existing(op.get_bind())
    op.add_column("notifications", sa.Column("invoice_ids", sa.Text(), nullable=True))
    op.add_column("subscriptions", sa.Column("reminded_through", sa.BigInteger(), nullable=True))
    op.create_index("ix_subscriptions_paid_through", "subscriptions", ["paid_through"])
    op.add_column("members", sa.Column("card_expires_at", sa.BigInteger(), nullable=True))
    op.add_column("members", sa.Column("card_expiry_noticed", sa.BigInteger(), nullable=True))
    op.create_index("ix_members_card_expires_at", "members", ["card_expires_at"])
    op.create_table(
        "closed_periods",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("closed_at", sa.BigInteger(), nullable=False),
        sa.Column("closed_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_closed_periods")),
    )


def _number_existing(conn: sa.Connection) -> None:
    """Number the invoices made before numbering existed, oldest first, per site and year."""
    rows = conn.execute(
        sa.text(
            "SELECT i.id, i.created_at, m.sites, s.paid_at, s.member_id AS signup"
            " FROM invoices i JOIN members m ON m.id = i.member_id"
            " LEFT JOIN signups s ON s.invoice_id = i.id ORDER BY i.id"
        )
    ).all()
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        sites = json.loads(r.sites) or ["-"]
        site = sites[0]
        values: dict[str, object] = {"id": r.id, "site": site, "number": None, "at": None}
        if r.signup is None or r.paid_at is not None:
            year = datetime.fromtimestamp(int(r.created_at), UTC).year
            n = last[(site, year)] = last.get((site, year), 0) + 1
            values.update(number=f"{site}-{year}-{n:06d}", at=int(r.created_at))
        conn.execute(
            sa.text(
                "UPDATE invoices SET site = :site, number = :number, issued_at = :at WHERE id = :id"
            ),
            values,
        )
    for (site, year), n in last.items():
        conn.execute(
            sa.text(
                "INSERT INTO document_counters (site, year, series, last)"
                " VALUES (:site, :year, 'invoice', :n)"
            ),
            {"site": site, "year": year, "n": n},
        )


def downgrade() -> None:
    op.drop_index("ix_members_card_expires_at", table_name="members")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("card_expiry_noticed")
        batch_op.drop_column("card_expires_at")
    op.drop_index("ix_subscriptions_paid_through", table_name="subscriptions")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("reminded_through")
    op.drop_table("closed_periods")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("invoice_ids")
    op.drop_index(op.f("ix_invoices_number"), table_name="invoices")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("issued_at")
        batch_op.drop_column("number")
        batch_op.drop_column("site")
    op.drop_table("document_counters")
