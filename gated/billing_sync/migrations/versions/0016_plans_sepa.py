"""plans.sepa: plans whose online sign-up may pay by SEPA Direct Debit

Revision ID: 0016_plans_sepa
Revises: 0015_plan_changes
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_plans_sepa"
down_revision = "0015_plan_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing plans take cards only, as before. A plain ADD COLUMN (not a batch, which on
    # SQLite copies and drops the table that subscriptions and sign-ups refer to).
    op.add_column(
        "plans", sa.Column("sepa", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("sepa")
