"""Badges while the control socket is flooded. Prints a Markdown report.

    .venv/bin/python bench/bench_control_flood.py --members 100000

A real ``gated run`` (mock GPIO, a real mosquitto) under ``prlimit --nofile=1024``, with the
members ``bench_gate.py`` builds. Card badges go through the control socket (``badge``, a new
connection each, as ``gatectl badge`` makes): the daemon's own latency (read → relay) and the
client's round trip, first idle, then while an attacker thread keeps opening connections without
pause, alternately idle and half-sent (32 KB of a request line never finished), holding the last
4,100 open (1,100 idle and 3,000 half-sent, as the adversarial run did). Also ``gatectl status``
through a new connection, the daemon's RSS, and the broker link (reconnects).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gate import build_site, pct, uid_of

from gated import control

BIN = Path(sys.executable).parent
HELD = 4100
HALF_SENT = b'{"cmd": "status", "args": {"pad": "' + b"x" * 32_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Attacker(threading.Thread):
    """Opens connections without pause, alternately idle and half-sent, keeping the last HELD."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.opened = 0
        self.held: collections.deque[socket.socket] = collections.deque()

    def run(self) -> None:
        while not self.stop.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(self.path))
                if self.opened % 4:  # three half-sent for every idle one, as 3,000 : 1,100
                    sock.send(HALF_SENT)
            except OSError:  # the queue is full, or the gate closed it already
                sock.close()
                time.sleep(0.0005)
                continue
            self.opened += 1
            self.held.append(sock)
            if len(self.held) > HELD:
                self.held.popleft().close()
        for sock in self.held:
            sock.close()


def badges(path: Path, n: int, members: int) -> dict[str, Any]:
    latency: list[int] = []
    round_trip: list[float] = []
    refused = 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            reply = control.request(path, "badge", {"card": uid_of(random.randrange(members))})
        except control.ControlError:
            refused += 1
            continue
        round_trip.append((time.perf_counter() - t0) * 1000)
        latency.append(int(reply["latency_us"]))
        assert reply["allow"] or reply["reason"] == "outside_schedule", reply
    return {"latency": latency, "round_trip": round_trip, "refused": refused}


def gatectl_status(config: Path, tries: int) -> list[float]:
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        out = subprocess.run(
            [str(BIN / "gatectl"), "-c", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise SystemExit(f"gatectl status failed: {out.stderr}")
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--badges", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gated-bench")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HELD + 512), hard))

    root = args.workdir / f"flood-{args.members}"
    _config, _ckey, _apps = build_site(root, args.members)
    keys = root / "keys"
    if not (keys / "head-office.pub").exists():
        subprocess.run([str(BIN / "gated"), "keys", "generate", "--out", str(keys)], check=True)
    port = free_port()
    (root / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
    )
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(root / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock_path = root / "state" / "control.sock"
    config = root / "flood.toml"
    config.write_text(
        f'site = "bench"\ngate = "g1"\ntimezone = "Europe/Berlin"\nstate_dir = "{root}/state"\n'
        f'control_socket = "{sock_path}"\n[keys]\ncredential_key_file = "{root}/credential.key"\n'
        f'head_office_public_key_files = ["{keys}/head-office.pub"]\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n[metrics]\nlisten = ""\n'
        '[door]\npin_factory = "mock"\npulse_ms = 3000\n[[readers]]\nkind = "sim"\n'
    )
    log = root / "gated.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    with log.open("wb") as fh:
        gate = subprocess.Popen(
            ["prlimit", "--nofile=1024:1024", str(BIN / "gated"), "run", "-c", str(config)],
            stdout=fh,
            stderr=fh,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if control.request(sock_path, "status")["sync"]["connected"]:
                    break
            except (control.DaemonNotRunning, OSError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline or gate.poll() is not None:
                raise SystemExit(f"gated not ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        idle_rss = rss_kb(gate.pid)
        idle = badges(sock_path, args.badges, args.members)
        idle_status = gatectl_status(config, 5)

        attacker = Attacker(sock_path)
        attacker.start()
        while attacker.opened < HELD:
            time.sleep(0.05)
        peak = rss_kb(gate.pid)
        attacked = badges(sock_path, args.badges, args.members)
        peak = max(peak, rss_kb(gate.pid))
        attacked_status = gatectl_status(config, 5)
        peak = max(peak, rss_kb(gate.pid))
        opened = attacker.opened
        attacker.stop.set()
        attacker.join()
        status = control.request(sock_path, "status")
        time.sleep(2)
        after_rss = rss_kb(gate.pid)
    finally:
        gate.terminate()
        gate.wait(30)
        broker.terminate()
        broker.wait(10)
    lines = log.read_text().splitlines()

    def row(name: str, xs: list[int] | list[float], unit: str) -> str:
        if not xs:
            return f"| {name} | – | – | – | {unit} |"
        return f"| {name} | {pct(xs, 50):.0f} | {pct(xs, 99):.0f} | {max(xs):.0f} | {unit} |"

    print(f"## Control-socket flood, {args.members:,} members, {args.badges} badges per phase\n")
    print("| measure | p50 | p99 | max | unit |")
    print("| --- | --- | --- | --- | --- |")
    print(row("badge read → relay, idle", idle["latency"], "µs"))
    print(row("badge read → relay, flooded", attacked["latency"], "µs"))
    print(row("badge round trip (new connection), idle", idle["round_trip"], "ms"))
    print(row("badge round trip (new connection), flooded", attacked["round_trip"], "ms"))
    print(row("gatectl status (process), idle", [t * 1000 for t in idle_status], "ms"))
    print(row("gatectl status (process), flooded", [t * 1000 for t in attacked_status], "ms"))
    print()
    print(
        f"- attacker connections opened: {opened:,}; badge requests refused while flooded: "
        f"{attacked['refused']} of {args.badges}"
    )
    print(f"- rejected: {json.dumps({k: v for k, v in status['rejected'].items()})}")
    print(
        f"- RSS: idle {idle_rss / 1024:.1f} MB, peak +{(peak - idle_rss) / 1024:.1f} MB, "
        f"2 s after +{(after_rss - idle_rss) / 1024:.1f} MB"
    )
    print(
        f"- broker link: connected {status['sync']['connected']}, connects "
        f"{status['sync']['connects']}; log lines {len(lines)}, tracebacks "
        f"{sum('Traceback' in line for line in lines)}"
    )


if __name__ == "__main__":
    main()
