"""plan changes and price changes: a plan booked for the next renewal, a member's own
(grandfathered) price, plans that grandfather, and price changes announced ahead

Revision ID: 0011_plan_changes
Revises: 0010_invoice_documents
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_plan_changes"
down_revision = "0010_invoice_documents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("grandfather", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_plan_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("price", sa.BigInteger(), nullable=True))
        batch_op.create_foreign_key(
            "fk_subscriptions_next_plan_id_plans", "plans", ["next_plan_id"], ["id"]
        )
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
    with op.batch_alter_table("price_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_price_changes_plan_id"), ["plan_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("price_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_price_changes_plan_id"))
    op.drop_table("price_changes")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_subscriptions_next_plan_id_plans", type_="foreignkey")
        batch_op.drop_column("price")
        batch_op.drop_column("next_plan_id")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("grandfather")
