"""member app pass: key-registration challenges (registrations go to the audit log)

Revision ID: 0006_pass_keys
Revises: 0005_audit_log
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_pass_keys"
down_revision = "0005_audit_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pass_key_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_pass_key_nonces_member_id_members")
        ),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_pass_key_nonces")),
    )
    op.create_index(op.f("ix_pass_key_nonces_member_id"), "pass_key_nonces", ["member_id"])


def downgrade() -> None:
    op.drop_table("pass_key_nonces")
