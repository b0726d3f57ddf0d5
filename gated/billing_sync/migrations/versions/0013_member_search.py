"""member_search: on SQLite, a trigram full-text index over each member's name and e-mail address
and phone digits, kept by triggers on members, so the front desk's substring search reads an
index instead of scanning every member (PostgreSQL keeps the scan)

Revision ID: 0013_member_search
Revises: 0012_api_tokens
Create Date: 2026-12-07 11:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0013_member_search"
down_revision = "0012_api_tokens"
branch_labels = None
depends_on = None

# What is searched (the trigram tokenizer folds case): name and e-mail as one column, the
# phone's digits as another, without the separators front_desk.search takes out of a query.
_VALUES = (
    "coalesce(new.name, '') || ' ' || coalesce(new.email, ''), "
    "replace(replace(replace(replace(replace(replace(replace(coalesce(new.phone, ''),"
    " ' ', ''), '-', ''), '(', ''), ')', ''), '/', ''), '.', ''), '+', '')"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE VIRTUAL TABLE member_search USING fts5(who, phone, tokenize='trigram')")
    op.execute(
        "INSERT INTO member_search (rowid, who, phone) SELECT rowid, "
        + _VALUES.replace("new.", "")
        + " FROM members"
    )
    op.execute(
        "CREATE TRIGGER member_search_insert AFTER INSERT ON members BEGIN "
        f"INSERT INTO member_search (rowid, who, phone) VALUES (new.rowid, {_VALUES}); END"
    )
    op.execute(
        "CREATE TRIGGER member_search_update AFTER UPDATE OF name, email, phone ON members BEGIN "
        "DELETE FROM member_search WHERE rowid = old.rowid; "
        f"INSERT INTO member_search (rowid, who, phone) VALUES (new.rowid, {_VALUES}); END"
    )
    op.execute(
        "CREATE TRIGGER member_search_delete AFTER DELETE ON members BEGIN "
        "DELETE FROM member_search WHERE rowid = old.rowid; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS member_search_{trigger}")
    op.execute("DROP TABLE IF EXISTS member_search")
