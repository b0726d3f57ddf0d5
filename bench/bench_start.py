"""A real gate's start: ``gated run -c FILE`` from the exec to READY=1, and its memory.

    .venv/bin/python bench/bench_start.py DIR/gated.toml [--runs 5] [--settle 2]

Each run starts ``gated`` (the one beside this interpreter, importing whatever tree PYTHONPATH
names) with a NOTIFY_SOCKET of its own, as systemd would, and waits for READY=1. It prints one
JSON line a run: the wall time to READY=1; the process's CPU time (user + system, from
/proc/PID/stat) at READY=1, which a loaded machine does not inflate as it does the wall time;
VmRSS at READY=1 and ``--settle`` seconds later; whether the index came from its image. Then
SIGTERM, as systemd stops a gate (a clean stop saves the image the next start reads).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def one_start(config: Path, settle: float, timeout: float) -> dict[str, object]:
    gated = Path(sys.executable).with_name("gated")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.05)
        env = {**os.environ, "NOTIFY_SOCKET": path, "GATED_LOG_LEVEL": "INFO"}
        log = Path(tmp) / "gated.log"
        with log.open("w") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(gated), "run", "-c", str(config)], env=env, stdout=out, stderr=out
            )
            try:
                while True:
                    try:
                        message = sock.recv(4096).decode()
                    except TimeoutError:
                        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                            tail = log.read_text()[-2000:]
                            raise SystemExit(f"no READY=1 from gated:\n{tail}") from None
                        continue
                    if "READY=1" in message.split("\n"):
                        break
                wall = time.perf_counter() - t0
                cpu = _cpu_s(proc.pid)
                rss = _rss_bytes(proc.pid)
                time.sleep(settle)
                rss_settled = _rss_bytes(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                sock.close()
        text = log.read_text()
    return {
        "ready_wall_s": round(wall, 4),
        "ready_cpu_s": round(cpu, 3),
        "rss_ready_mb": round(rss / 1e6, 1),
        "rss_settled_mb": round(rss_settled / 1e6, 1),
        "from_image": "event=index_image_loaded" in text,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("config", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after READY=1 for RSS")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    for _ in range(args.runs):
        print(json.dumps(one_start(args.config, args.settle, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
