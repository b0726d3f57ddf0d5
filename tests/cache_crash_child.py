"""Bulk-upserts members into a cache until killed, printing each committed max version.

Run by tests/test_cache.py::test_crash_loses_nothing_committed as
``python tests/cache_crash_child.py DB BATCH IDS``: member ``m_{v % IDS}`` gets version ``v``,
``BATCH`` versions per transaction, continuing above what the cache already holds. A line is
printed (and flushed) only after its transaction committed, so every printed version must survive
a SIGKILL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gated.cache.store import CacheStore

MAX_BATCHES = 5000  # stop on our own if the parent never kills us


def state(version: int, ids: int) -> dict[str, object]:
    return {
        "type": "member_state",
        "member_id": f"m_{version % ids}",
        "sites": ["downtown"],
        "version": version,
        "status": "erased" if version % 7 == 0 else "active",
        "role": "member",
        "valid_from": None,
        "valid_until": "2027-01-01T00:00:00Z",
        "plan": "full",
        "schedule": [],
        "zones": [],
        "credentials": [] if version % 7 == 0 else [os.urandom(32).hex()],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": "2026-11-26T08:00:00Z",
    }


def main() -> None:
    path, batch, ids = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store = CacheStore(path)
    version = store.max_version()
    for _ in range(MAX_BATCHES):
        states = [state(v, ids) for v in range(version + 1, version + 1 + batch)]
        store.apply_states(states)
        version += batch
        print(version, flush=True)


if __name__ == "__main__":
    main()
