"""reconciliation: the payment provider's balance movements and payouts, imported page by page
from stored cursors

Revision ID: 0009_reconciliation
Revises: 0008_notice_delivery
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_reconciliation"
down_revision = "0008_notice_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "processor_balance",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=True),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processor_balance")),
    )
    for column in ("created", "source", "payout_id"):
        op.create_index(
            op.f(f"ix_processor_balance_{column}"), "processor_balance", [column], unique=False
        )
    op.create_table(
        "processor_payouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("arrival", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processor_payouts")),
    )
    op.create_index(
        op.f("ix_processor_payouts_created"), "processor_payouts", ["created"], unique=False
    )
    op.create_table(
        "processor_fetches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=True),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processor_fetches")),
    )
    op.create_table(
        "processor_cursors",
        sa.Column("stream", sa.String(length=160), nullable=False),
        sa.Column("what", sa.String(length=16), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=True),
        sa.Column("hi", sa.BigInteger(), nullable=True),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.Column("after", sa.String(length=64), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_processor_cursors")),
    )


def downgrade() -> None:
    op.drop_table("processor_cursors")
    op.drop_table("processor_fetches")
    op.drop_index(op.f("ix_processor_payouts_created"), table_name="processor_payouts")
    op.drop_table("processor_payouts")
    for column in ("payout_id", "source", "created"):
        op.drop_index(op.f(f"ix_processor_balance_{column}"), table_name="processor_balance")
    op.drop_table("processor_balance")
