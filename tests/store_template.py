"""Fresh SQLite billing stores from one migrated template per test process.

Every test that opens a new store ran every migration from 0001 (0.3-0.5 s of CPU each, several
hundred times a suite). While the suite runs, ``gated.billing_sync.store.upgrade`` (which
``open_store`` calls) first fills an empty SQLite file from a store that the real migrations
brought to head once in this process (SQLite's online backup: page for page, into the engine's own
connection), then runs the real upgrade, which finds the head and only checks its version row.

Nothing else changes: a store that is not empty (a test that migrated it to an older revision
itself), a store on PostgreSQL or in memory, and every ``gated-billing`` process the tests start
run the migrations themselves; the template is built by them too, so a broken migration still
fails the tests that open a store.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TEMPLATE: list[Path] = []
# Stores written to memory-backed /dev/shm where there is one (as the money machine's).
_TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _template(real_upgrade: Callable[[Any], None]) -> Path:
    """A store at head, migrated once per process by the real migrations."""
    if not _TEMPLATE:
        from gated.billing_sync.store import open_store

        where = Path(tempfile.mkdtemp(prefix="gated-store-template-", dir=_TMP_ROOT))
        atexit.register(shutil.rmtree, where, True)
        engine = open_store(f"sqlite:///{where}/billing.db", migrate=False)
        real_upgrade(engine)
        engine.dispose()  # the last connection closed: the WAL is checkpointed into the file
        _TEMPLATE.append(where / "billing.db")
    return _TEMPLATE[0]


def _empty_sqlite_file(engine: Any) -> bool:
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return False
    with engine.connect() as conn:
        return bool(conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() == 0)


def install() -> Callable[[], None]:
    """Route the store's upgrade through the template; returns the function that undoes it."""
    from gated.billing_sync import store

    real_upgrade = store.upgrade

    def upgrade(engine: Any) -> None:
        if _empty_sqlite_file(engine):
            source = sqlite3.connect(_template(real_upgrade))
            raw = engine.raw_connection()
            try:
                source.backup(raw.driver_connection)
            finally:
                raw.close()
                source.close()
        real_upgrade(engine)

    upgrade.__doc__ = real_upgrade.__doc__
    store.upgrade = upgrade  # type: ignore[assignment]

    def undo() -> None:
        store.upgrade = real_upgrade  # type: ignore[assignment]

    return undo
