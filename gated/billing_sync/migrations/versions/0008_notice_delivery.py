"""notifications: a claim (lease) per sending process, so each notice is sent once; a notice
refused for good is marked failed with the server's answer, and the member's address bounced

Revision ID: 0008_notice_delivery
Revises: 0007_online_signup
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_notice_delivery"
down_revision = "0007_online_signup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("claimed_until", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("failed_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_bounced_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("email_bounced_at")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("failed_at")
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("claim")
