"""The store: migrations, the version sequence, and the shortcut past Alembic."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect

from gated.billing_sync import schema
from gated.billing_sync.store import (
    HEAD_REVISION,
    MIGRATIONS,
    WAL_AUTOCHECKPOINT_PAGES,
    alembic_config,
    current_revision,
    next_versions,
    open_store,
    raise_version_floor,
)


def test_head_revision_constant_matches_the_migrations() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == HEAD_REVISION
    assert MIGRATIONS.is_dir()


def test_migrations_create_every_table_and_reopen_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    engine = open_store(url)
    assert current_revision(engine) == HEAD_REVISION
    assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        assert next_versions(conn) == 1
        assert next_versions(conn, 3) == 2
    engine.dispose()
    again = open_store(url)
    with again.begin() as conn:
        assert next_versions(conn) == 5  # never goes back across a restart
        raise_version_floor(conn, 100)
        raise_version_floor(conn, 50)  # a lower floor changes nothing
        assert next_versions(conn) == 101
    with again.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_rolled_back_change_does_not_consume_a_version(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/b.db")
    try:
        with engine.begin() as conn:
            next_versions(conn, 10)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with engine.begin() as conn:
        assert next_versions(conn) == 1


def test_shipped_example_config_is_valid() -> None:
    from gated.config import load_billing_config

    root = Path(__file__).resolve().parents[2]
    config = load_billing_config(root / "config" / "billing.toml")
    assert config.sites == ["downtown"] and config.dunning.retry_days == [3, 7]
    assert config.database_url.startswith("sqlite:////")  # made absolute from the file's folder


def test_commits_reach_the_database_file_on_the_checkpoint_thread(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    before = set(threading.enumerate())
    engine = open_store(f"sqlite:///{db}")
    threads = {t for t in set(threading.enumerate()) - before if t.name == "wal-checkpoint"}
    assert len(threads) == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (
            WAL_AUTOCHECKPOINT_PAGES
        )
    for i in range(20):  # far below the writer's own checkpoint
        with engine.begin() as conn:
            conn.execute(insert(schema.meta).values(key=f"k{i}", value="1"))

    def keys_in_the_file_alone() -> int:
        # The database file without its WAL holds only what a checkpoint copied back.
        copy = tmp_path / "copy.db"
        shutil.copyfile(db, copy)
        try:
            with closing(sqlite3.connect(copy)) as c:
                return int(c.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0])
        except sqlite3.DatabaseError:
            return -1  # copied halfway through a checkpoint

    deadline = time.monotonic() + 10
    while keys_in_the_file_alone() < 19 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Woken as the last commit starts, a checkpoint may copy all but that one.
    assert keys_in_the_file_alone() >= 19
    engine.dispose()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
