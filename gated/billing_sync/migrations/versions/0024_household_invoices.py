"""household invoices: a payer's renewal invoice carries a line for each dependant renewing
with the payer; the lines say whose they are and which period they pay for.

Revision ID: 0024_household_invoices
Revises: 0023_rollup_deltas
Create Date: 2026-12-07 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_household_invoices"
down_revision = "0023_rollup_deltas"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch copy (see 0014 and 0018's triggers): every column is nullable
    # or has a default.
    op.add_column(
        "invoices",
        sa.Column("household", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("invoice_lines", sa.Column("member_id", sa.String(length=64), nullable=True))
    op.add_column("invoice_lines", sa.Column("period_start", sa.BigInteger(), nullable=True))
    op.add_column("invoice_lines", sa.Column("period_end", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_invoice_lines_member",
        "invoice_lines",
        ["member_id"],
        unique=False,
        sqlite_where=sa.text("member_id IS NOT NULL"),
        postgresql_where=sa.text("member_id IS NOT NULL"),
    )
    op.create_index(
        "ix_members_payer",
        "members",
        ["payer_id"],
        unique=False,
        sqlite_where=sa.text("payer_id IS NOT NULL"),
        postgresql_where=sa.text("payer_id IS NOT NULL"),
    )


def downgrade() -> None:
    # Plain DROP COLUMN, not a batch copy: copying a table on SQLite drops the report rollups'
    # triggers on it (0018).
    op.drop_index("ix_members_payer", table_name="members")
    op.drop_index("ix_invoice_lines_member", table_name="invoice_lines")
    op.drop_column("invoice_lines", "period_end")
    op.drop_column("invoice_lines", "period_start")
    op.drop_column("invoice_lines", "member_id")
    op.drop_column("invoices", "household")
