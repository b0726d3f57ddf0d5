"""End to end: a real ``gated run`` subprocess driven through ``gatectl`` and the control socket."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gatefixture import GateProcess, write_config

ACTIVE_UID = "04A1B2C3D4E5F6"
FROZEN_UID = "04A1B2C3D4E5F7"
PULSE_MS = 400


def write_members(root: Path) -> Path:
    members = [
        {"member_id": "m_1", "status": "active", "cards": ["04:a1:b2:c3:d4:e5:f6"]},
        {"member_id": "m_2", "status": "frozen", "cards": [FROZEN_UID]},
        {"member_id": "m_3", "status": "active", "cards": ["04A1B2C3D4E5F8"]},
    ]
    path = root / "members.json"
    path.write_text(json.dumps(members))
    return path


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[GateProcess]:
    config = write_config(
        tmp_path, extra=f"[policy]\nanti_passback_s = 600\n[door]\npulse_ms = {PULSE_MS}\n"
    )
    proc = GateProcess(config, tmp_path)
    out = proc.gated("members", "import", str(write_members(tmp_path)), "-c", str(config))
    assert out.returncode == 0, out.stderr
    proc.start()
    yield proc
    proc.stop()


def relay_timeline(gate: GateProcess, seconds: float) -> list[tuple[float, bool]]:
    """Poll the daemon's relay state; returns (monotonic time, energized) at each change."""
    changes: list[tuple[float, bool]] = []
    last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = gate.request("status")["door"]["relay_energized"]
        if state != last:
            changes.append((time.monotonic(), state))
            last = state
        time.sleep(0.005)
    return changes


def test_badge_pulses_relay_and_records_event(gate: GateProcess) -> None:
    result = gate.badge(card=ACTIVE_UID)  # through gatectl, as a technician would
    assert result["allow"] is True and result["reason"] == "ok" and result["member_id"] == "m_1"
    assert set(result) == {"allow", "reason", "member_id", "latency_us"}
    assert 0 < result["latency_us"] < 100_000
    events = json.loads(gate.gatectl("events", "tail", "--json").stdout)["events"]
    entry = [e for e in events if e["kind"] == "entry"][-1]
    assert entry["reason"] == "ok" and entry["member_id"] == "m_1"
    assert entry["latency_us"] == result["latency_us"]
    assert entry["source"] == "control" and entry["operator"]
    assert len(entry["event_id"]) == 26 and entry["at"].endswith("Z")

    # The pulse itself, timed straight on the socket (no process start inside the measurement).
    time.sleep(PULSE_MS / 1000 + 0.2)
    assert gate.request("status")["door"]["relay_energized"] is False
    t0 = time.monotonic()
    assert gate.request("badge", {"card": ACTIVE_UID})["allow"] is True
    changes = relay_timeline(gate, PULSE_MS / 1000 + 0.8)
    assert changes[0][1] is True, "relay should be energized right after the grant"
    off = [t for t, energized in changes if not energized]
    assert off, "relay never released"
    assert PULSE_MS / 1000 * 0.9 <= off[0] - t0 <= PULSE_MS / 1000 + 0.5


def test_denied_badges_and_exit_codes(gate: GateProcess) -> None:
    frozen = gate.gatectl("badge", "--card", FROZEN_UID)
    assert frozen.returncode == 1 and "frozen" in frozen.stdout
    unknown = gate.badge(card="0011223344")
    assert unknown == {**unknown, "allow": False, "reason": "unknown_credential", "member_id": None}
    random_id = gate.badge(card="08112233")  # a random-ID UID changes on every read
    assert random_id["reason"] == "unknown_credential"
    assert gate.request("status")["rejected"]["random_uid"] == 1
    assert gate.request("status")["door"]["relay_energized"] is False


def test_card_uid_is_normalized_like_a_reader(gate: GateProcess) -> None:
    for form in (
        "04a1b2c3d4e5f6",
        "04:A1:B2:C3:D4:E5:F6",
        "04-a1-b2-c3-d4-e5-f6",
        "04 A1 B2 C3 D4 E5 F6",
    ):
        found = json.loads(gate.gatectl("cache", "lookup", "--card", form, "--json").stdout)
        assert found["found"] and found["member"]["member_id"] == "m_1"
    bad = gate.gatectl("badge", "--card", "not-hex")
    assert bad.returncode == 2 and "hex" in bad.stderr


def test_lockdown_survives_restart(gate: GateProcess) -> None:
    assert gate.gatectl("lockdown", "on").returncode == 0
    assert gate.badge(card=ACTIVE_UID)["reason"] == "lockdown"
    gate.stop()
    gate.start()
    assert gate.request("status")["lockdown"] is True
    assert gate.badge(card=ACTIVE_UID)["reason"] == "lockdown"
    assert gate.gatectl("lockdown", "off").returncode == 0
    assert gate.badge(card=ACTIVE_UID)["allow"] is True


def test_control_badges_do_not_count_toward_anti_passback(gate: GateProcess) -> None:
    # Operator badges are recorded but never counted: anti-passback (600 s here) must not trip.
    assert gate.badge(card=ACTIVE_UID)["allow"]
    assert gate.badge(card=ACTIVE_UID)["allow"]
    reset = gate.gatectl("antipassback", "reset", "m_1", "--json")
    assert reset.returncode == 0 and json.loads(reset.stdout)["reset"] is True
    unknown = gate.gatectl("antipassback", "reset", "nobody")
    assert unknown.returncode == 2 and "unknown member" in unknown.stderr


def test_door_pulse_is_recorded_with_operator(gate: GateProcess) -> None:
    out = gate.gatectl("door", "pulse", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["pulse_ms"] == PULSE_MS
    gate.request("door_pulse")  # straight on the socket: no process start between pulse and look
    assert gate.request("status")["door"]["relay_energized"] is True
    events = gate.request("events_tail", {"limit": 5})["events"]
    pulse = [e for e in events if e["reason"] == "door_pulse"]
    assert pulse and pulse[-1]["source"] == "control" and pulse[-1]["operator"]


def test_garbage_on_control_socket_is_answered_and_counted(gate: GateProcess) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(gate.socket))
        s.sendall(b"\xff\xfe not json\n")
        reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and "bad request" in reply["error"]
        s.sendall(b'{"cmd": "no_such_thing"}\n')
        reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and "unknown command" in reply["error"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(gate.socket))
        s.sendall(b"x" * 200_000 + b"\n")  # an overlong line
        assert b'"ok":false' in s.makefile("rb").readline()
    # The daemon is still deciding.
    assert gate.badge(card=ACTIVE_UID)["allow"] is True
    assert gate.request("status")["rejected"]["control_unknown_command"] == 1


def test_events_follow_streams_new_events(gate: GateProcess) -> None:
    import subprocess

    from tests.gatefixture import gatectl_cmd

    gate.badge(card=ACTIVE_UID)  # at least one event to read back
    follower = subprocess.Popen(
        gatectl_cmd("-c", str(gate.config), "events", "tail", "-f", "-n", "1", "--json"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The daemon follows before it sends the backlog: once the last event is read back, the
        # badge after it is streamed.
        json.loads(follower.stdout.readline())
        gate.badge(card=FROZEN_UID)
        event = json.loads(follower.stdout.readline())
        assert event["kind"] == "deny" and event["reason"] == "frozen"
    finally:
        follower.terminate()
        follower.wait(5)


def test_import_into_running_daemon_is_picked_up(gate: GateProcess, tmp_path: Path) -> None:
    extra = tmp_path / "more.csv"
    extra.write_text("member_id,status,cards,zones\nm_9,active,04AABBCCDD,main\n")
    out = gate.gated("members", "import", str(extra), "-c", str(gate.config), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "file": str(extra),
        "read": 1,
        "applied": 1,
        "daemon_refreshed": True,
        "index_image_saved": False,  # the running gate saves its own
    }
    assert gate.badge(card="04aabbccdd")["member_id"] == "m_9"


def test_raw_uids_never_reach_disk_or_logs(gate: GateProcess, tmp_path: Path) -> None:
    gate.badge(card=ACTIVE_UID)
    gate.stop()
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("cache.db*"))
    blobs += gate.log.read_bytes()
    for uid in (ACTIVE_UID, FROZEN_UID):
        assert uid.encode() not in blobs and uid.lower().encode() not in blobs


def test_gatectl_without_daemon_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = GateProcess(config, tmp_path)
    out = proc.gatectl("status")
    assert out.returncode == 3
    assert "gated is not running" in out.stderr and "Traceback" not in out.stderr
    doctor = proc.gatectl("doctor", "--json")
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 2 and report["result"] == "fail"
    assert report["checks"][0]["name"] == "daemon" and report["checks"][0]["level"] == "fail"
    assert {"config", "keys", "disk", "clock"} <= {c["name"] for c in report["checks"]}


def test_sigterm_stops_cleanly(gate: GateProcess) -> None:
    assert gate.stop() == 0
    assert not gate.socket.exists()
    assert "event=stopped" in gate.log.read_text()


def test_events_follow_keeps_the_backlog_that_arrives_with_the_head(gate: GateProcess) -> None:
    from gated import control

    for _ in range(3):
        gate.request("badge", {"card": FROZEN_UID})
    for _ in range(10):  # the backlog often shares a segment with the head line
        stream = control.stream(gate.socket, "events_tail", {"limit": 3, "follow": True})
        got = [next(stream)["reason"] for _ in range(3)]
        stream.close()
        assert got == ["frozen", "frozen", "frozen"]
