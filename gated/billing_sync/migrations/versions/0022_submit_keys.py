"""submit_keys, desk_flashes: the console's forms that act once, and its one-time messages, kept
in the store so they hold across a restart of serve and between serve processes;
pending_lines: products sold on the next invoice; one holder per card (a partial unique index)

Revision ID: 0022_submit_keys
Revises: 0020_member_name_order
Create Date: 2026-12-07 15:50:00.000000
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0022_submit_keys"
down_revision = "0020_member_name_order"
branch_labels = None
depends_on = None

log = logging.getLogger("gated.billing")


def upgrade() -> None:
    op.create_table(
        "submit_keys",
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.String(length=300), nullable=True),
        sa.Column("told", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("key_sha256", name=op.f("pk_submit_keys")),
    )
    op.create_index(op.f("ix_submit_keys_used_at"), "submit_keys", ["used_at"], unique=False)
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
    op.create_table(
        "pending_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=False),
        sa.Column("tax_rate_bp", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_pending_lines_invoice_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_pending_lines_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_pending_lines_product_id_products")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_lines")),
    )
    op.create_index(
        "ix_pending_lines_member_id", "pending_lines", ["member_id", "invoice_id"], unique=False
    )
    # Two desks lending one card at the same instant could each find it free and both insert
    # it. Should a store already hold such a pair, the first holder keeps the card (as the
    # check would have decided had they come one after the other) and the later rows are
    # revoked, so the index can be made; each is logged by row id, never by UID.
    cards = sa.table(
        "cards",
        sa.column("id", sa.Integer()),
        sa.column("uid_lookup", sa.String()),
        sa.column("revoked_at", sa.BigInteger()),
        sa.column("assigned_at", sa.BigInteger()),
    )
    conn = op.get_bind()
    held = cards.c.revoked_at.is_(None)
    first = (
        sa.select(sa.func.min(cards.c.id))
        .where(held)
        .group_by(cards.c.uid_lookup)
        .having(sa.func.count() > 1)
    )
    doubles = sa.select(cards.c.uid_lookup).where(held, cards.c.id.in_(first))
    later = conn.execute(
        sa.select(cards.c.id, cards.c.assigned_at)
        .where(held, cards.c.uid_lookup.in_(doubles), cards.c.id.not_in(first))
        .order_by(cards.c.id)
    ).all()
    for row in later:
        log.warning("event=card_held_twice card=%d action=revoked", row.id)
        conn.execute(
            sa.update(cards).where(cards.c.id == row.id).values(revoked_at=row.assigned_at)
        )
    op.create_index(
        "ux_cards_held_uid_lookup",
        "cards",
        ["uid_lookup"],
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_cards_held_uid_lookup", table_name="cards")
    op.drop_index("ix_pending_lines_member_id", table_name="pending_lines")
    op.drop_table("pending_lines")
    op.drop_index(op.f("ix_desk_flashes_at"), table_name="desk_flashes")
    op.drop_index(op.f("ix_desk_flashes_cookie_sha256"), table_name="desk_flashes")
    op.drop_table("desk_flashes")
    op.drop_index(op.f("ix_submit_keys_used_at"), table_name="submit_keys")
    op.drop_table("submit_keys")
