"""The convention both command lines share (gated.edge): a refused operation is one ``error:`` line
on stderr, exactly as the message says it, and exit code 2; the daemons log in one key=value
format. Run as real subprocesses, as an operator's terminal sees them."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.billing.helpers import write_cli_config
from tests.gatefixture import BIN, GateProcess, gatectl_cmd, write_config

# key=value from the first character: the level, the logger, then the event's own fields.
LOG_LINE = re.compile(r"^level=(DEBUG|INFO|WARNING|ERROR|CRITICAL) logger=[\w.]+ \S")


def run(*cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A narrow terminal: a line that would wrap there shows that nothing wraps it.
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "40", "NO_COLOR": "1", **env},
    )


def billing(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "gated-billing"), *args, **env)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_message_in_square_brackets_keeps_them(tmp_path: Path) -> None:
    """Rich reads ``[stripe]`` as markup and drops it unless the line is printed as text."""
    config = tmp_path / "billing.toml"
    config.write_text('sites = ["downtown"]\ngateway = "stripe"\n')
    line = one_error_line(billing("run", "-c", str(config)))
    assert line == (
        f'error: {config}: gateway = "stripe" needs a [stripe] section with api_key_file'
    )


@pytest.fixture
def billing_config(tmp_path: Path) -> Path:
    config = write_cli_config(tmp_path)
    made = billing("keys", "init", "-c", str(config))
    assert made.returncode == 0, made.stderr
    return config


def test_billing_refusals_exit_2_like_gatectl(billing_config: Path) -> None:
    line = one_error_line(billing("members", "show", "nobody", "-c", str(billing_config)))
    assert "no member 'nobody'" in line
    line = one_error_line(billing("clock", "advance", "soon", "-c", str(billing_config)))
    assert "not a duration: 'soon'" in line
    # The same convention in gatectl, for a request it refuses before asking any daemon.
    line = one_error_line(run(*gatectl_cmd("--socket", "/nonexistent", "cache", "lookup")))
    assert "give exactly one of --card UID or --member ID" in line


def test_a_bad_log_level_is_refused_by_both(billing_config: Path) -> None:
    for result in (
        billing("plans", "list", "-c", str(billing_config), GATED_LOG_LEVEL="LOUD"),
        run(str(BIN / "gated"), "config", "check", "x.toml", GATED_LOG_LEVEL="LOUD"),
    ):
        assert "log level 'LOUD': use one of DEBUG, INFO, WARNING, ERROR" in one_error_line(result)


def first_log_line(proc: subprocess.Popen[str], event: str, timeout: float = 30.0) -> str:
    """Read the child's stderr until a line with ``event`` arrives (or fail at the deadline)."""
    assert proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if event in line:
                return line.rstrip("\n")
    raise AssertionError(f"no {event} within {timeout}s:\n{''.join(seen)}")


def test_both_daemons_log_in_one_key_value_format(billing_config: Path, tmp_path: Path) -> None:
    config = billing_config.read_text() + "[http]\nport = 0\n"
    billing_config.write_text(config)
    serve = subprocess.Popen(
        [str(BIN / "gated-billing"), "serve", "-c", str(billing_config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "GATED_LOG_LEVEL"},
    )
    try:
        serving = first_log_line(serve, "event=serving")
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    assert LOG_LINE.match(serving), serving
    assert serving.startswith("level=INFO logger=gated.billing")
    # What the start built (the web, uvicorn) is frozen out of the collector's full passes,
    # which otherwise stalled every request while they walked it.
    frozen = re.search(r"frozen_objects=(\d+)", serving)
    assert frozen and int(frozen[1]) > 10_000, serving
    # A pooled connection for each worker thread is opened at the start on PostgreSQL only.
    assert "pooled_connections=0" in serving, serving

    gate = GateProcess(write_config(tmp_path / "gate"), tmp_path / "gate")
    gate.start()
    assert gate.stop() == 0
    ready = next(line for line in gate.log.read_text().splitlines() if "event=ready" in line)
    assert LOG_LINE.match(ready), ready
    assert ready.startswith("level=INFO logger=gated")
