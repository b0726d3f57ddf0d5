"""`gated-billing serve` speaks the notify protocol its unit (Type=notify, WatchdogSec=) relies
on: READY=1 once it serves, WATCHDOG=1 well inside the interval, STOPPING=1 on SIGTERM. Checked
on a real process with a stand-in for systemd's notify socket (the gate's twin lives in
test_systemd_units.py)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.billing.test_crash import billing_for
from tests.billing.test_e2e_gate import billing_toml
from tests.services import Mosquitto

BIN = Path(sys.executable).parent / "gated-billing"


def test_billing_serve_speaks_the_notify_protocol(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = billing_toml(tmp_path, tmp_path / "keys", mosquitto.url)
    billing_for(config).engine.dispose()  # keys and store, as `keys init` would make them
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(15)
    watchdog_s = 0.4
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(int(watchdog_s * 1e6)))
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(BIN), "serve", "-c", str(config)], stdout=log, stderr=log, env=env, cwd=tmp_path
    )
    try:
        messages: list[tuple[float, str]] = []
        while sum(m == "WATCHDOG=1" for _, m in messages) < 4:
            messages.append((time.monotonic(), sock.recv(256).decode()))
        states = [m for _, m in messages]
        assert "READY=1" in states, states
        # Ready means serving: the HTTP port answers by the time READY=1 arrives.
        port = int(config.read_text().split("port = ")[1].split()[0])
        socket.create_connection(("127.0.0.1", port), 1).close()
        pets = [t for t, m in messages if m == "WATCHDOG=1"]
        assert max(b - a for a, b in itertools.pairwise(pets)) < watchdog_s
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        rest: list[str] = []
        while "STOPPING=1" not in rest:
            rest.append(sock.recv(256).decode())
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        sock.close()
        log.close()


def test_billing_serve_is_silent_without_systemd(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """No NOTIFY_SOCKET or WATCHDOG_USEC (a shell, a container): it serves and stops cleanly."""
    config = billing_toml(tmp_path, tmp_path / "keys", mosquitto.url)
    billing_for(config).engine.dispose()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    serve = subprocess.Popen(
        [str(BIN), "serve", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        port = int(config.read_text().split("port = ")[1].split()[0])
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and serve.poll() is None
                time.sleep(0.05)
        time.sleep(0.5)  # a returned watchdog task must not count as a part that ended
        assert serve.poll() is None
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=15)
        assert serve.returncode == 0, err[-3000:]
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
