"""The decision thread runs real-time (SCHED_FIFO) and nothing it starts does: checked on a real
``gated run`` through /proc, its status and ``gatectl doctor``; a refused priority is reported,
not fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gatefixture import GateProcess, write_config


def fifo_allowed() -> bool:
    """Whether a process here may take SCHED_FIFO 10 (root or an RLIMIT_RTPRIO of 10)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def policies(pid: int) -> dict[int, int]:
    """Scheduling policy of each thread of ``pid``, by thread id (the main thread's is pid)."""
    return {int(tid): os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def observe(gate: GateProcess) -> tuple[dict[str, Any], dict[int, int], dict[str, Any]]:
    """Start the gate, decide one badge, and return its status, each thread's policy and the
    doctor's scheduling check."""
    gate.start()
    try:
        assert gate.request("badge", {"card": "04A1B2C3D4E5F6"})["reason"] == "unknown_credential"
        status = gate.request("status")
        assert gate.proc is not None
        threads = policies(gate.proc.pid)
        doctor = json.loads(gate.gatectl("doctor", "--json").stdout)
    finally:
        gate.stop()
    return status, threads, next(c for c in doctor["checks"] if c["name"] == "scheduling")


@pytest.mark.skipif(not fifo_allowed(), reason="SCHED_FIFO is not permitted on this machine")
def test_only_the_decision_thread_runs_realtime(tmp_path: Path) -> None:
    gate = GateProcess(write_config(tmp_path), tmp_path)
    status, threads, check = observe(gate)
    assert status["scheduling"] == "fifo 10"
    # The event loop runs on the main thread; the cache writer, the reader's thread and the
    # executors were started from it and did not inherit the policy (SCHED_RESET_ON_FORK).
    assert gate.proc is not None
    assert threads.pop(gate.proc.pid) == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    assert threads and set(threads.values()) == {os.SCHED_OTHER}, threads
    assert check["level"] == "ok" and "SCHED_FIFO 10" in check["message"]


def test_priority_zero_keeps_the_normal_policy(tmp_path: Path) -> None:
    status, threads, check = observe(
        GateProcess(write_config(tmp_path, realtime_priority=0), tmp_path)
    )
    assert status["scheduling"] == "normal (realtime_priority = 0)"
    assert set(threads.values()) == {os.SCHED_OTHER}
    assert check["level"] == "ok"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_refused_priority_is_logged_and_doctor_warns(tmp_path: Path) -> None:
    # Without CAP_SYS_NICE (and no RLIMIT_RTPRIO) the kernel refuses SCHED_FIFO, as it would a
    # unit whose LimitRTPRIO= was removed: the gate still starts and decides.
    no_nice = ("setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice")
    gate = GateProcess(write_config(tmp_path), tmp_path, prefix=no_nice)
    status, threads, check = observe(gate)
    assert status["scheduling"] == "normal (SCHED_FIFO 10 refused: Operation not permitted)"
    assert set(threads.values()) == {os.SCHED_OTHER}
    assert "event=realtime_unavailable priority=10" in gate.log.read_text()
    assert check["level"] == "warn"  # a warning, not a failure: the gate decides
    assert check["message"] == (
        "decisions under the normal policy (SCHED_FIFO 10 refused: Operation not permitted): "
        "a badge can wait milliseconds behind a busy board"
    )
    assert "LimitRTPRIO=10" in check["fix"]
