"""member_photos: the photo the front desk took or uploaded, re-encoded as a JPEG without
metadata; kept at head office only and erased with the member

Revision ID: 0011_member_photos
Revises: 0010_invoice_documents
Create Date: 2026-12-07 10:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_member_photos"
down_revision = "0010_invoice_documents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_photos",
        sa.Column("member_id", sa.String(length=64), sa.ForeignKey("members.id"), primary_key=True),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.BigInteger(), nullable=False),
        sa.Column("taken_by", sa.String(length=64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("member_photos")
