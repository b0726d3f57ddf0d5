"""What a gate writes to its SD card per decision, measured on a real gate: a decision adds a few
WAL pages (its event row, and its counters for a reader badge) and the WAL never grows without
bound, because checkpoints fold it back into the database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.gatefixture import GateProcess, write_config

UID = "04A1B2C3D4E5F6"
WAL_HEADER, FRAME_HEADER = 32, 24
# A decision dirties its event's page and (for reader badges) its counters' page; an occasional
# b-tree split or the once-a-minute clock save may add one. More than this is a new write per
# decision that the SD card pays for on every badge.
MAX_PAGES_PER_DECISION = 3.5
# The store checkpoints every 1000 pages (~1 MiB at 1 KiB pages, ~4 MiB at 4 KiB); 2000 badges
# without checkpoints would leave a WAL several times larger than this.
MAX_WAL_BYTES = 4 * 2**20 + 2**16


def test_decisions_write_a_few_pages_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[metrics]\nlisten = ""\n')
    gate = GateProcess(config, tmp_path)
    members = tmp_path / "members.json"
    members.write_text(json.dumps([{"member_id": "m_1", "status": "active", "cards": [UID]}]))
    assert gate.gated("members", "import", str(members), "-c", str(config)).returncode == 0
    db = tmp_path / "state" / "cache.db"
    with sqlite3.connect(db) as conn:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start the count from an empty WAL
    wal = db.with_name("cache.db-wal")
    gate.start()
    try:
        start = wal.stat().st_size if wal.exists() else 0
        n = 150  # ~450 pages: well inside one checkpoint interval
        for _ in range(n):
            assert gate.request("badge", {"card": UID})["allow"]
        gate.request("events_tail", {"limit": 1})  # returns after the last commit
        frames = (wal.stat().st_size - max(start, WAL_HEADER)) / (page + FRAME_HEADER)
        assert 0 < frames / n <= MAX_PAGES_PER_DECISION, frames / n

        biggest = 0
        for _ in range(2000):
            gate.request("badge", {"card": UID})
            biggest = max(biggest, wal.stat().st_size)
        assert biggest <= MAX_WAL_BYTES, biggest
    finally:
        gate.stop()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] >= n + 2000
