"""SIGKILL a real gate while badges flow: the cache must open clean and keep every event that
had been committed (shown by ``events tail``) before the kill, in both durability settings.

A kill -9 is what a crash, an OOM kill or a watchdog restart does to the process. A power cut
additionally loses what the OS had not written; that cannot be staged here, which is what
``durability = "power"`` (synchronous=FULL) is for: it must at least survive the same kill.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from gated import control
from tests.gatefixture import GateProcess, write_config

UIDS = ["04A1B2C3D4E5F6", "04A1B2C3D4E5F7", "04A1B2C3D4E5F8"]


@pytest.mark.parametrize("durability", ["crash", "power"])
def test_kill_during_badges_loses_no_committed_event(tmp_path: Path, durability: str) -> None:
    config = write_config(tmp_path, durability=durability)
    gate = GateProcess(config, tmp_path)
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            [{"member_id": f"m_{i}", "status": "active", "cards": [u]} for i, u in enumerate(UIDS)]
        )
    )
    assert gate.gated("members", "import", str(members), "-c", str(config)).returncode == 0
    gate.start()
    assert gate.proc is not None

    seen: set[str] = set()  # event ids the daemon reported as stored before the kill
    badges = 0
    killed = threading.Event()

    def kill_soon() -> None:
        # Somewhere inside the flow, not at a quiet moment.
        killed.wait(random.uniform(0.4, 1.2))
        gate.kill()
        killed.set()

    killer = threading.Thread(target=kill_soon)
    killer.start()
    try:
        while not killed.is_set():
            try:
                gate.request("badge", {"card": UIDS[badges % len(UIDS)]})
                badges += 1
                if badges % 5 == 0:
                    tail = gate.request("events_tail", {"limit": 50})["events"]
                    seen.update(e["event_id"] for e in tail)
            except (control.DaemonNotRunning, control.ControlError, OSError, ValueError):
                break  # the kill landed mid-request
    finally:
        killer.join()
    assert badges >= 10 and len(seen) >= 5, (badges, len(seen))

    db = tmp_path / "state" / "cache.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT event_id FROM outbox")}
    finally:
        conn.close()
    assert seen <= stored, f"{len(seen - stored)} committed events lost"

    # The gate starts on the same cache and shows them too.
    gate.start()
    try:
        tail = gate.request("events_tail", {"limit": 10_000})["events"]
        assert seen <= {e["event_id"] for e in tail}
        assert gate.request("badge", {"card": UIDS[0]})["allow"] is True
    finally:
        gate.stop()
