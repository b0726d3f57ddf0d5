"""ix_members_name_order: members by name then id in code point order, so a broad member search
walks them in the order the desk shows and stops at the page's end

Revision ID: 0020_member_name_order
Revises: 0019_freeze_fee_kept
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0020_member_name_order"
down_revision = "0019_freeze_fee_kept"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "C" whatever the database's collation: the order member_search sorts in on PostgreSQL,
    # the same as SQLite's own (BINARY) and Python's.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            'CREATE INDEX ix_members_name_order ON members (name COLLATE "C", id COLLATE "C")'
        )
    else:
        op.execute("CREATE INDEX ix_members_name_order ON members (name, id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_members_name_order")
