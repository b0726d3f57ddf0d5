"""The shipped systemd units pass ``systemd-analyze verify`` and stay as tight as measured, and
the daemon speaks the notify protocol they rely on.

systemd-analyze runs offline against a throwaway root (the units, stand-in executables and the
distribution's own unit files), so no running systemd is needed; those tests are skipped where
systemd-analyze is missing.
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gated.config import GateConfig
from tests.gatefixture import GateProcess, write_config

REPO = Path(__file__).resolve().parent.parent
UNITS = ("gated.service", "gated-billing.service")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
# Exposure measured when the units were written (docs/operations.md); a change that loosens the
# sandbox has to update both numbers on purpose.
# gated.service: 2.1 since the decision thread runs real-time (RestrictRealtime=no, capped by
# LimitRTPRIO=); it was 1.9 before.
MAX_EXPOSURE = {"gated.service": 2.1, "gated-billing.service": 1.1}

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze (Debian package systemd) is not installed here",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    bin_dir = root / "opt/gated/venv/bin"
    bin_dir.mkdir(parents=True)
    for name in ("gated", "gated-billing"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    # verify resolves the default dependencies (sysinit.target, ...) inside the root.
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, units / unit)
    return root


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert analyze is not None
    return subprocess.run(
        [analyze, *args, f"--root={root}"], capture_output=True, text=True, timeout=60
    )


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_cleanly(root: Path, unit: str) -> None:
    out = _analyze(root, "verify", "--man=no", unit)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_stays_low(root: Path, unit: str) -> None:
    out = _analyze(root, "security", "--offline=yes", "--no-pager", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE[unit], out.stdout


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / unit).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_gate_unit_keeps_the_hardware_and_the_clock_check_reachable() -> None:
    d = _directives("gated.service")
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"]
    assert d["User"] == ["gated"] and d["SupplementaryGroups"] == ["gpio dialout input plugdev"]
    assert {"char-gpiochip rw", "char-ttyACM rw", "char-hidraw rw", "char-usb_device rw"} <= set(
        d["DeviceAllow"]
    )
    # The deny list removes @clock; adjtimex must come back after it or doctor loses the clock.
    filters = d["SystemCallFilter"]
    assert filters.index("adjtimex") > filters.index("~@privileged @resources")
    assert "ProtectClock" not in d and "PrivateDevices" not in d
    # The decision thread's SCHED_FIFO: the syscall comes back after the deny list (@resources),
    # and the limit allows the configured default priority and no more.
    assert filters.index("sched_setscheduler") > filters.index("~@privileged @resources")
    # ... and so does sched_setaffinity (@resources), which puts it on its CPU (decision_cpu).
    assert filters.index("sched_setaffinity") > filters.index("~@privileged @resources")
    assert d["RestrictRealtime"] == ["no"]
    assert d["LimitRTPRIO"] == [str(GateConfig(site="s", gate="g").realtime_priority)]
    assert d["RuntimeDirectory"] == ["gated"] and d["StateDirectory"] == ["gated"]


def test_daemon_speaks_the_notify_protocol_the_unit_expects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Type=notify and WatchdogSec= only work if the daemon says READY=1 once it serves, pets
    WATCHDOG=1 well inside the interval, and says STOPPING=1 on SIGTERM: checked here on a real
    gate with a stand-in for systemd's notify socket."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(10)
    watchdog_s = 0.4
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(watchdog_s * 1e6)))
    gate = GateProcess(write_config(tmp_path), tmp_path)
    gate.start()
    try:
        messages: list[tuple[float, str]] = []
        while sum(m == "WATCHDOG=1" for _, m in messages) < 4:
            messages.append((time.monotonic(), sock.recv(256).decode()))
        assert messages[0][1] == "READY=1", messages
        pets = [t for t, m in messages if m == "WATCHDOG=1"]
        # Petted at half the interval: never a gap that would get the gate killed.
        assert max(b - a for a, b in itertools.pairwise(pets)) < watchdog_s
        assert gate.stop() == 0
        rest: list[str] = []
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(256).decode())
    finally:
        gate.stop()
        sock.close()
