"""A disk that refuses writes: decisions go on, no event vanishes uncounted, a spent QR nonce
stays spent. The writer against SQLite's own "full" (max_page_count, the SQLITE_FULL path a full
card takes), and a real ``gated run`` on a real full file system (a small tmpfs)."""

from __future__ import annotations

import base64
import contextlib
import math
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

import gated.cache.store as store_module
from gated.cache.store import CacheStore, CacheWriter
from gated.config import load_gate_config
from gated.contract import load_credential_key, mint_qr_code
from tests.gatefixture import GateProcess, write_config
from tests.sync.helpers import member, uid_for, wait_until

APP_SEED = bytes(range(32, 64))


def event(n: int) -> dict[str, object]:
    return {
        "event_id": f"e{n:05d}",
        "kind": "entry",
        "pad": "x" * 3000,
    }  # overflow pages: none fits


def test_events_and_nonces_a_full_database_refused_are_held_then_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_HELD_EVENTS", 50)
    store = CacheStore(tmp_path / "cache.db")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")  # full: no page more
    writer = CacheWriter(store)
    for n in range(80):
        writer.post(lambda s, n=n: s.add_event(event(n)))
    writer.post(lambda s: s.spend_nonce("m_1", "0123456789abcdef", time.time() + 60))
    assert writer.submit(lambda s: s.outbox_depth()).result() == 0, "a read still answers"
    assert writer.refusing is not None and "full" in writer.refusing
    assert writer.events_held == 50 and writer.events_lost == 30  # the oldest beyond the cap

    writer.submit(lambda s: s.conn.execute("PRAGMA max_page_count=1000000")).result()
    writer.post(lambda s: s.add_event(event(99)))
    assert writer.submit(lambda s: s.outbox_depth()).result() == 51
    assert writer.refusing is None and writer.events_held == 0
    ids = [e["event_id"] for e in writer.submit(lambda s: s.recent_events(100)).result()]
    assert ids == [f"e{n:05d}" for n in range(30, 80)] + ["e00099"]
    writer.close()

    reopened = CacheStore(tmp_path / "cache.db")
    assert reopened.get("events_lost") == 30, "the count survives a restart"
    assert [n for _, n, _ in reopened.load_nonces(time.time())] == ["0123456789abcdef"]
    reopened.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a real file system that fills up (needs root, as this test stack runs)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of the file system."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_real_full_disk_loses_no_event_and_no_spent_nonce(
    tmp_path: Path, small_disk: Path
) -> None:
    root = tmp_path / "gate"
    config = write_config(root, state_dir=str(small_disk / "state"))
    cfg = load_gate_config(config)
    key = load_credential_key(cfg.keys.credential_key_file)
    app = member("m_app", 2, key=key)
    app["qr_key"] = base64.b64encode(bytes(nacl.signing.SigningKey(APP_SEED).verify_key)).decode()
    store = CacheStore(cfg.cache_path)
    store.apply_states([member("m_1", 1, cards=[uid_for(1)], key=key), app])
    store.close()
    gate = GateProcess(config, root)
    gate.start()
    try:
        assert gate.badge(card=uid_for(1))["allow"]
        filler = fill(small_disk)
        decisions = 1
        while gate.request("status")["cache_writes_refused"] is None:
            assert gate.badge(card=uid_for(1))["allow"]
            decisions += 1
            assert decisions < 5000, "the full disk never refused a commit"
        for _ in range(300):  # decisions go on
            assert gate.request("badge", {"card": uid_for(1)})["allow"]
        decisions += 300
        nonce = secrets.token_hex(8)
        # Dated the next whole second: a code from the second the gate started in is refused
        # (codes minted before a start are, and this test can run within that second).
        code = mint_qr_code(APP_SEED, "m_app", math.ceil(time.time()), nonce)
        first = gate.badge(qr=code)
        assert first["allow"], first
        assert gate.badge(qr=code)["reason"] == "qr_replayed"
        decisions += 2
        status = gate.request("status")
        assert status["events_held"] > 300 and status["events_lost"] == 0
        checks = {c["name"]: c for c in gate.request("doctor")["checks"]}
        assert checks["cache writes"]["level"] == "fail"
        assert "events held in memory" in checks["cache writes"]["message"]
        assert "event=cache_commit_failed" in gate.log.read_text()

        filler.unlink()  # room again: what was held is written with the next commit
        assert gate.badge(card=uid_for(1))["allow"]
        decisions += 1
        wait_until(lambda: gate.request("status")["events_held"] == 0, what="held events written")
        checks = {c["name"]: c for c in gate.request("doctor")["checks"]}
        assert checks["cache writes"]["level"] == "ok"
        events = gate.request("events_tail", {"limit": 10000})["events"]
        kept = {e["event_id"] for e in events if e["kind"] in ("entry", "deny")}
        assert len(kept) == decisions, "every decision's event kept"

        gate.stop()
        # Spent while the disk was full, and on disk now (a restarted gate would also refuse the
        # code for being minted before its start: tests/test_qr_restart.py).
        store = CacheStore(cfg.cache_path)
        assert nonce in [n for _, n, _ in store.load_nonces(time.time())]
        store.close()
        gate.start()
        assert not gate.badge(qr=code)["allow"]
    finally:
        gate.stop()
