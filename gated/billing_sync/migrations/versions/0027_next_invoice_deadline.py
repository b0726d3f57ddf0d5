"""next_invoice_deadline: an index on the lines sold on the next invoice that still wait, by the
time of their sale, for the cycle's look for those that have waited ``next_invoice_max_days``
(then billed on their own).

Revision ID: 0027_next_invoice_deadline
Revises: 0026_desk_flashes_in_cookie
Create Date: 2026-12-07 19:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_next_invoice_deadline"
down_revision = "0026_desk_flashes_in_cookie"
branch_labels = None
depends_on = None


def upgrade() -> None:
    waiting = sa.text("invoice_id IS NULL")
    op.create_index(
        "ix_pending_lines_waiting",
        "pending_lines",
        ["created_at"],
        sqlite_where=waiting,
        postgresql_where=waiting,
    )


def downgrade() -> None:
    op.drop_index("ix_pending_lines_waiting", table_name="pending_lines")
