"""plans.freeze_fee_kept: plans whose freeze fee is not refunded when a freeze ends early

Revision ID: 0019_freeze_fee_kept
Revises: 0018_report_rollups
Create Date: 2026-12-07 13:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_freeze_fee_kept"
down_revision = "0018_report_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing plans give back the unused part, as before. A plain ADD COLUMN (not a batch,
    # which on SQLite copies and drops the table that subscriptions and sign-ups refer to).
    op.add_column(
        "plans",
        sa.Column("freeze_fee_kept", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+ and PostgreSQL), not a batch: on SQLite a batch copies
    # and drops plans, which subscriptions, sign-ups and price changes refer to.
    op.execute("ALTER TABLE plans DROP COLUMN freeze_fee_kept")
