"""desk_flashes_in_cookie: the console's one-time messages travel in a signed cookie of the
browser's, so whichever ``serve`` answers the next page shows them; the table that kept them
for the process that made them (and for its restart) goes.

Revision ID: 0026_desk_flashes_in_cookie
Revises: 0025_household_mrr
Create Date: 2026-12-07 18:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_desk_flashes_in_cookie"
down_revision = "0025_household_mrr"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Messages left in it were at most five minutes from being dropped unshown.
    op.drop_index(op.f("ix_desk_flashes_at"), table_name="desk_flashes")
    op.drop_index(op.f("ix_desk_flashes_cookie_sha256"), table_name="desk_flashes")
    op.drop_table("desk_flashes")


def downgrade() -> None:
    op.create_table(
        "desk_flashes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cookie_sha256", sa.String(length=64), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_desk_flashes")),
    )
    op.create_index(
        op.f("ix_desk_flashes_cookie_sha256"), "desk_flashes", ["cookie_sha256"], unique=False
    )
    op.create_index(op.f("ix_desk_flashes_at"), "desk_flashes", ["at"], unique=False)
