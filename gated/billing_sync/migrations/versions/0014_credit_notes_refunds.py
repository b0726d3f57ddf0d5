"""credit notes and refunds (their own tables), a dispute's amount and the provider's fee, and
the invoice of a freeze's fee

Revision ID: 0014_credit_notes_refunds
Revises: 0013_member_search
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_credit_notes_refunds"
down_revision = "0013_member_search"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=32), nullable=True),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_credit_notes_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["line_id"], ["invoice_lines.id"], name=op.f("fk_credit_notes_line_id_invoice_lines")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_credit_notes_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
        sa.UniqueConstraint("number", name=op.f("uq_credit_notes_number")),
    )
    op.create_index(op.f("ix_credit_notes_invoice_id"), "credit_notes", ["invoice_id"])
    op.create_index(op.f("ix_credit_notes_member_id"), "credit_notes", ["member_id"])
    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("gateway_ref", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("credit_note_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["credit_note_id"],
            ["credit_notes.id"],
            name=op.f("fk_refunds_credit_note_id_credit_notes"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_refunds_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["line_id"], ["invoice_lines.id"], name=op.f("fk_refunds_line_id_invoice_lines")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_refunds_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("gateway_ref", name=op.f("uq_refunds_gateway_ref")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_refunds_idempotency_key")),
    )
    op.create_index(op.f("ix_refunds_invoice_id"), "refunds", ["invoice_id"])
    op.create_index(op.f("ix_refunds_member_id"), "refunds", ["member_id"])
    op.create_index(op.f("ix_refunds_payment_id"), "refunds", ["payment_id"])
    op.create_index(op.f("ix_refunds_state"), "refunds", ["state"])
    # Plain ADD COLUMN, not a batch copy: copying ``freezes`` on SQLite reflects every table it
    # points at (and warns on the members' expression index) and drops a table other rows
    # reference. SQLite takes the foreign key inline, PostgreSQL as a named constraint.
    fk_name = op.f("fk_freezes_invoice_id_invoices")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"ALTER TABLE freezes ADD COLUMN invoice_id INTEGER"
            f" CONSTRAINT {fk_name} REFERENCES invoices (id)"
        )
    else:
        op.add_column("freezes", sa.Column("invoice_id", sa.Integer(), nullable=True))
        op.create_foreign_key(fk_name, "freezes", "invoices", ["invoice_id"], ["id"])
    op.add_column("disputes", sa.Column("amount", sa.BigInteger(), nullable=True))
    op.add_column("disputes", sa.Column("currency", sa.String(length=3), nullable=True))
    op.add_column("disputes", sa.Column("fee", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_column("fee")
        batch_op.drop_column("currency")
        batch_op.drop_column("amount")
    with op.batch_alter_table("freezes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_freezes_invoice_id_invoices"), type_="foreignkey")
        batch_op.drop_column("invoice_id")
    op.drop_table("refunds")
    op.drop_table("credit_notes")
