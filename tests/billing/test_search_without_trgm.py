"""A store on PostgreSQL whose role may not create the pg_trgm extension (no CREATE right on
the database, as on many managed servers): the migrations still reach the head, say once why
the search has no trigram index and what to do, and the search gives the same answers, in the
same order and pages, by scanning the members."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from gated.billing_sync import member_search
from gated.billing_sync.store import HEAD_REVISION
from tests.billing.helpers import make_billing
from tests.services import Postgres


def _database_without_extension_rights(cluster: Postgres) -> str:
    """A new database where a plain role (not a superuser, not the owner, no CREATE on the
    database) may create tables in the public schema, and its URL as that role."""
    role, name = f"clerk_{uuid.uuid4().hex[:8]}", f"no_trgm_{uuid.uuid4().hex[:8]}"
    admin = f"host=127.0.0.1 port={cluster.port} user=postgres"
    with psycopg.connect(f"{admin} dbname=postgres", autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    with psycopg.connect(f"{admin} dbname={name}", autocommit=True) as conn:
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")  # type: ignore[arg-type]
    return f"postgresql+psycopg://{role}@127.0.0.1:{cluster.port}/{name}"


def test_without_pg_trgm_the_store_migrates_and_the_search_scans(
    tmp_path: Path,
    postgres_cluster: Postgres,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _database_without_extension_rights(postgres_cluster)
    with caplog.at_level(logging.WARNING, logger="gated.billing.migrations"):
        b, _ = make_billing(tmp_path, database_url=url)
    skipped = [r.getMessage() for r in caplog.records if "search_index_skipped" in r.getMessage()]
    assert len(skipped) == 1, caplog.text
    assert "permission denied" in skipped[0] and "CREATE EXTENSION pg_trgm" in skipped[0]
    with b.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            HEAD_REVISION
        )
        indexes = set(
            conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'members'"))
            .scalars()
            .all()
        )
        extensions = conn.execute(text("SELECT extname FROM pg_extension")).scalars().all()
    assert "pg_trgm" not in extensions
    assert not {i for i in indexes if i.endswith("_trgm")}, indexes
    assert "ix_members_name_order" in indexes  # the walk in name order needs no extension

    for i, (name, email, phone) in enumerate(
        [
            ("Anna Weber", "anna.weber@example.org", "+49 30 1047110"),
            ("Ben Weberling", "ben@example.org", "+49 (170) 555-0101"),
            ("Clara Koch", "clara.k@example.net", None),
            ("anna weber", "aw@example.net", None),
        ]
        + [(f"Zora Weber {k}", None, None) for k in range(6)]
    ):
        b.add_member(f"m{i}", name, plan_id="monthly", sites=["downtown"], email=email)
        if phone:
            b.edit_member(f"m{i}", phone=phone)
    b.assign_card("m2", "04A1B2C3D4E5F6")

    def found(query: str) -> list[str]:
        return [m["id"] for m in b.search_members(query, ["*"]).members]

    weber = ["m0", "m1"] + [f"m{k}" for k in range(4, 10)] + ["m3"]  # by name, code points
    assert found("weber") == weber
    assert found("WEBERL") == ["m1"]
    assert found("clara.k@example") == ["m2"]
    assert found("030 1047110") == ["m0"]
    assert found("0170 5550101") == ["m1"]
    assert found("04:a1:b2:c3:d4:e5:f6") == ["m2"]
    assert found("m1") == ["m1"]
    assert found("nobody") == []
    # Pages of three through the walk in name order, then through the sort of every match.
    monkeypatch.setattr(member_search, "SEARCH_LIMIT", 3)
    monkeypatch.setattr(member_search, "BROAD", 2)
    for walk in (100, 2):
        monkeypatch.setattr(member_search, "WALK_ROWS", walk)
        pages, after = [], None
        while True:
            page = b.search_members("weber", ["*"], after)
            pages += [m["id"] for m in page.members]
            if not page.more:
                break
            after = page.members[-1]["id"]
        assert pages == weber, walk
    b.engine.dispose()
