"""The cache (every member id, card HMAC and setting) is readable by the gate's user only, whatever
the umask of whoever started the gate, on a real ``gated run``."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gatefixture import GateProcess, write_config

FILES = ("cache.db", "cache.db-wal", "cache.db-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A gate started by hand from a usual shell (the daemon inherits the umask)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def run_gate(root: Path) -> GateProcess:
    gate = GateProcess(write_config(root), root)
    gate.start()
    gate.badge(card="04A1B2C3D4E5F6")  # a write: the WAL and shared memory are in use
    return gate


def test_a_new_state_directory_and_cache_are_private(tmp_path: Path, umask_022: None) -> None:
    gate = run_gate(tmp_path)
    try:
        state = tmp_path / "state"
        assert mode(state) == 0o700
        assert {name: mode(state / name) for name in FILES} == dict.fromkeys(FILES, 0o600)
    finally:
        gate.stop()


def test_too_open_files_left_by_an_earlier_run_are_fixed_at_start(
    tmp_path: Path, umask_022: None
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    earlier = sqlite3.connect(state / "cache.db")  # as an earlier version left it: 0644
    earlier.execute("PRAGMA journal_mode=WAL")
    earlier.execute("CREATE TABLE leftover (x)")
    assert {mode(state / name) for name in FILES} == {0o644}
    gate = run_gate(tmp_path)
    try:
        assert mode(state) == 0o700
        assert {name: mode(state / name) for name in FILES} == dict.fromkeys(FILES, 0o600)
        log = gate.log.read_text()
        assert f"event=state_permissions_fixed dir={state} mode_was=755 mode=700" in log
        assert f"event=state_permissions_fixed file={state}/cache.db mode_was=644" in log
    finally:
        earlier.close()
        gate.stop()


def test_a_directory_set_up_for_its_group_keeps_group_read(tmp_path: Path, umask_022: None) -> None:
    """As systemd makes it (StateDirectoryMode=0750): technicians in the group can run doctor's
    file checks; others still get nothing, even a group-writable directory loses that."""
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o770)
    gate = run_gate(tmp_path)
    try:
        assert mode(state) == 0o750
        assert {name: mode(state / name) for name in FILES} == dict.fromkeys(FILES, 0o640)
    finally:
        gate.stop()
