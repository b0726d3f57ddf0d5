"""online sign-up: sign-ups awaiting their first payment, signed contracts, e-mail changes,
and a member's phone and emergency contact

Revision ID: 0007_online_signup
Revises: 0006_pass_keys
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_online_signup"
down_revision = "0006_pass_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("emergency_contact", sa.String(length=200), nullable=True))
    op.create_table(
        "signups",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_signups_member_id_members")
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_signups_plan_id_plans")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_signups_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_signups")),
    )
    op.create_index(op.f("ix_signups_created_at"), "signups", ["created_at"])
    op.create_table(
        "contracts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("terms_version", sa.String(length=64), nullable=False),
        sa.Column("terms_sha256", sa.String(length=64), nullable=False),
        sa.Column("terms_text", sa.Text(), nullable=False),
        sa.Column("accepted_at", sa.BigInteger(), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_contracts_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contracts")),
    )
    op.create_index(op.f("ix_contracts_member_id"), "contracts", ["member_id"])
    op.create_table(
        "email_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("new_email", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_email_changes_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_changes")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_email_changes_token_sha256")),
    )
    op.create_index(op.f("ix_email_changes_member_id"), "email_changes", ["member_id"])


def downgrade() -> None:
    op.drop_table("email_changes")
    op.drop_table("contracts")
    op.drop_table("signups")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("emergency_contact")
        batch_op.drop_column("phone")
