"""plan changes and price changes: a plan booked for the next renewal, a member's own
(grandfathered) price, plans that grandfather, and price changes announced ahead

Revision ID: 0015_plan_changes
Revises: 0014_credit_notes_refunds
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_plan_changes"
down_revision = "0014_credit_notes_refunds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN: a batch copy of plans would be dropped under the foreign
    # keys of a store with members in it (SQLite enforces them), and none is needed to add.
    op.add_column(
        "plans", sa.Column("grandfather", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("subscriptions", sa.Column("next_plan_id", sa.String(length=64), nullable=True))
    op.add_column("subscriptions", sa.Column("price", sa.BigInteger(), nullable=True))
    op.create_table(
        "price_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", sa.BigInteger(), nullable=False),
        sa.Column("announced_at", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_price_changes_plan_id_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_changes")),
    )
    op.create_index(op.f("ix_price_changes_plan_id"), "price_changes", ["plan_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_price_changes_plan_id"), table_name="price_changes")
    op.drop_table("price_changes")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("price")
        batch_op.drop_column("next_plan_id")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("grandfather")
