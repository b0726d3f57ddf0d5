"""``gatectl doctor``: exit codes and findings for a healthy gate, a broken file, a dead daemon and
a full outbox, each through a real ``gated run`` subprocess and the real ``gatectl``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gated import control
from gated.clock import system_clock_synchronized
from gated.doctor import outbox_check
from gated.outbox_guard import OutboxGuard, OutboxState
from tests.gatefixture import GateProcess, gatectl_cmd, write_config

ACTIVE_UID = "04A1B2C3D4E5F6"


def import_member(gate: GateProcess) -> None:
    members = gate.root / "members.json"
    members.write_text(
        json.dumps([{"member_id": "m_1", "status": "active", "cards": [ACTIVE_UID]}])
    )
    out = gate.gated("members", "import", str(members), "-c", str(gate.config))
    assert out.returncode == 0, out.stderr


def doctor(gate: GateProcess) -> tuple[int, str, dict[str, dict[str, str]], list[str]]:
    out = gate.gatectl("doctor", "--json")
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    return out.returncode, report["result"], checks, [c["name"] for c in report["checks"]]


def test_healthy_gate_has_only_the_warnings_this_machine_explains(tmp_path: Path) -> None:
    # Port 0: a parallel test run holding 9464 must not turn the metrics line into a warning.
    gate = GateProcess(
        write_config(tmp_path, extra='[metrics]\nlisten = "127.0.0.1:0"\n'), tmp_path
    )
    import_member(gate)
    gate.start()
    try:
        code, result, checks, _ = doctor(gate)
    finally:
        gate.stop()
    # The door relay is simulated here (mock pins) and, where NTP is not running, the clock is
    # unsynchronized: those two, and nothing else, may warn. A real Pi passes with exit 0.
    expected_warns = {"gpio"} | ({"clock"} if system_clock_synchronized() is not True else set())
    warns = {name for name, c in checks.items() if c["level"] == "warn"}
    assert warns == expected_warns, checks
    assert not [c for c in checks.values() if c["level"] == "fail"], checks
    assert result == "warn" and code == 1
    for name in ("daemon", "config", "keys", "cache", "disk", "outbox", "reader sim-1", "metrics"):
        assert checks[name]["level"] == "ok", checks[name]
    assert checks["cache"]["message"].startswith("1 members")
    assert all(c["fix"] for c in checks.values() if c["level"] != "ok")


def test_broken_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="[door]\npulse_ms = -5\n")
    code, result, checks, names = doctor(GateProcess(config, tmp_path))
    assert code == 2 and result == "fail"
    assert names[0] == "daemon" and checks["daemon"]["level"] == "fail"
    assert checks["config"]["level"] == "fail" and "door.pulse_ms" in checks["config"]["message"]
    assert checks["config"]["fix"].startswith("fix the file")


def test_missing_config_file_is_a_finding_not_a_silence(tmp_path: Path) -> None:
    gate = GateProcess(tmp_path / "nowhere.toml", tmp_path)
    code, _, checks, _ = doctor(gate)
    assert code == 2 and "no such file" in checks["config"]["message"]


def test_daemon_down_says_so_first_and_still_checks_the_file(tmp_path: Path) -> None:
    gate = GateProcess(write_config(tmp_path), tmp_path)
    import_member(gate)
    code, result, checks, names = doctor(gate)
    assert code == 2 and result == "fail"
    assert names[0] == "daemon" and "not running" in checks["daemon"]["message"]
    assert checks["daemon"]["fix"].startswith("systemctl start gated")
    assert checks["config"]["level"] == "ok" and checks["keys"]["level"] == "ok"
    # With the daemon down the cache file itself is opened and integrity-checked.
    assert checks["cache"]["level"] == "ok" and "integrity ok" in checks["cache"]["message"]
    assert "disk" in checks and "clock" in checks


def wait_for(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def test_full_outbox_keeps_deciding_alarms_and_fails_doctor(tmp_path: Path) -> None:
    config = write_config(tmp_path, outbox_warn_events=8, outbox_max_events=10)
    gate = GateProcess(config, tmp_path)
    import_member(gate)
    gate.start()
    followed: list[str] = []

    def follow() -> None:  # what `gatectl events tail -f` shows a technician
        for ev in control.stream(gate.socket, "events_tail", {"limit": 0, "follow": True}):
            followed.append(ev["kind"])
            if ev["kind"] == "outbox_full":
                return

    try:
        tail = threading.Thread(target=follow, daemon=True)
        tail.start()
        # Badge until the follower sees one, so it is listening before the warning level (at
        # most one clock_unsynced event and five probes stay below it).
        for _ in range(5):
            assert gate.request("badge", {"card": ACTIVE_UID})["allow"]
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: followed, timeout=1)
                break
        assert followed, "the follower never saw an event"
        results = [gate.request("badge", {"card": ACTIVE_UID}) for _ in range(10)]
        # Decisions never wait on the outbox: every badge is still granted.
        assert all(r["allow"] for r in results)
        status = gate.request("status")
        assert status["outbox_dropped"] >= 2
        assert status["outbox_depth"] == 10
        code, _, checks, _ = doctor(gate)
        assert code == 2 and checks["outbox"]["level"] == "fail"
        assert "dropped" in checks["outbox"]["message"]
        log = wait_for(lambda: "event=outbox_full" in gate.log.read_text() and gate.log.read_text())
        assert "event=outbox_warn" in log
        tail.join(10)
        assert "outbox_warn" in followed and followed[-1] == "outbox_full", followed
    finally:
        gate.stop()


@pytest.mark.parametrize(
    ("depth", "dropped", "level"),
    [(0, 0, "ok"), (99, 0, "ok"), (100, 0, "warn"), (500, 0, "warn"), (1000, 0, "fail"),
     (10, 7, "ok"), (1000, 7, "fail")],
)  # fmt: skip
def test_outbox_check_levels(depth: int, dropped: int, level: str) -> None:
    check = outbox_check(depth, 100, 1000, dropped, drained=True)
    assert check.level == level
    assert (f"{dropped} events dropped" in check.message) == bool(dropped)
    assert bool(check.fix) == (level != "ok")


def test_outbox_guard_alarms_once_per_crossing_and_recovers_on_measurement() -> None:
    changes: list[tuple[OutboxState, int]] = []
    guard = OutboxGuard(warn=2, ceiling=4, depth=1, on_change=lambda s, d: changes.append((s, d)))
    assert [guard.admit() for _ in range(5)] == [True, True, True, False, False]
    assert guard.dropped == 2 and guard.depth == 4
    assert changes == [("warn", 2), ("full", 4)]
    # The broker took three events while two more were queued after the count was asked for.
    mark = guard.mark()
    assert guard.admit() is False  # still full until the measurement lands
    guard.measured(1, mark)
    assert guard.depth == 1 and changes[-1] == ("ok", 1)
    assert guard.admit() and guard.dropped == 3


@pytest.mark.parametrize(("synced", "level"), [(True, "ok"), (False, "warn"), (None, "warn")])
def test_clock_check_warns_while_unsynchronized_or_unknown(synced: bool | None, level: str) -> None:
    from gated.doctor import clock_check

    check = clock_check(synced)
    assert check.level == level and bool(check.fix) == (level != "ok")


def test_a_taken_metrics_port_warns_and_the_gate_still_decides(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        gate = GateProcess(config, tmp_path)
        import_member(gate)
        gate.start()
        try:
            assert gate.request("badge", {"card": ACTIVE_UID})["allow"]
            _, _, checks, _ = doctor(gate)
        finally:
            gate.stop()
    assert checks["metrics"]["level"] == "warn" and str(port) in checks["metrics"]["message"]
    assert "event=metrics_unavailable" in gate.log.read_text()


# A technician's gatectl: it reaches the socket but may not read the key. Rather than another user,
# who would also need to read this checkout and its .venv (not the case for a clone in a 0700 home
# such as /root/gated), the same process keeps its uid and loses the two capabilities that let
# root read any file; the key then belongs to someone else.
WITHOUT_FILE_OVERRIDE = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
)


def as_technician(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WITHOUT_FILE_OVERRIDE, *cmd], capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_a_technician_without_the_key_gets_no_false_failure(tmp_path: Path) -> None:
    """gatectl doctor run by someone who can reach the socket but not read the 0600 key: the
    daemon vouches for the key it loaded, so the file check's 'permission denied' does not fail."""
    config = write_config(tmp_path, extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    key = tmp_path / "keys" / "credential.key"
    os.chown(key, 65534, 65534)  # nobody's, mode 0600: the daemon (root) reads it all the same
    if as_technician("true").returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here (no CAP_SETPCAP)")
    if as_technician("cat", str(key)).returncode == 0:
        pytest.skip("dropping the capabilities does not stop root reading the key here")
    gate = GateProcess(config, tmp_path)
    import_member(gate)
    gate.start()
    try:
        out = as_technician(*gatectl_cmd("-c", str(config), "doctor", "--json"))
    finally:
        gate.stop()
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["keys"]["level"] == "ok", checks["keys"]
    assert not [c for c in checks.values() if c["level"] == "fail"], checks
    # With the daemon down nobody vouches: the same gatectl sees the key it cannot read.
    down = as_technician(*gatectl_cmd("-c", str(config), "doctor", "--json"))
    keys = {c["name"]: c for c in json.loads(down.stdout)["checks"]}["keys"]
    assert keys["level"] == "fail" and "ermission denied" in keys["message"], keys
