"""How long after a frozen broker resumes a gate's link works again (BENCHMARKS.md, reconnect).

Each run: a real mosquitto and a real ``gated run`` at the default [mqtt] timers (or those given);
the broker is stopped with SIGSTOP for ``--freeze`` seconds and resumed with SIGCONT. Measured
from the SIGCONT: until an event made by a badge after it reaches a subscriber that connects
right after the resume (the link works, whether or not the gate reconnected), and until the gate
reports a new connection when it made one. The bound to compare with: the backoff in force (``backoff_max_s``) + the CONNACK wait
(``connect_timeout_s``) + a keepalive's notice.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_reconnect.py --runs 10 --freeze 60
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from tests.gatefixture import GateProcess, write_config
from tests.services import run_mosquitto
from tests.sync.helpers import EventSink

CARD = "04FFFFFFFFFFFF"


def one_run(root: Path, freeze_s: float, timers: str, limit_s: float) -> tuple[float, float | None]:
    """(seconds to the first event after the resume, seconds to a new connection or None)."""
    with run_mosquitto(root / "mosquitto") as broker:
        config = write_config(root / "gate", extra=f'[mqtt]\nurl = "{broker.url}"\n{timers}')
        gate = GateProcess(config, root / "gate")
        sink_id = f"bench-sink-{os.getpid()}"
        sink = EventSink(broker.port, client_id=sink_id)
        try:
            gate.start()
            deadline = time.monotonic() + 30
            while not gate.request("status")["sync"]["subscribed"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gate never subscribed")
                time.sleep(0.05)
            connects = gate.request("status")["sync"]["connects"]
            # The subscriber leaves for the freeze and comes back with the same persistent
            # session right after it: its own reconnect backoff is not what is measured.
            sink.close()
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(freeze_s)  # the freeze itself
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            resumed = time.monotonic()
            sink = EventSink(broker.port, client_id=sink_id)
            before = set(sink.unique())
            reconnected: float | None = None
            next_badge = 0.0
            while time.monotonic() - resumed < limit_s:
                now = time.monotonic()
                if now >= next_badge:
                    gate.request("badge", {"card": CARD})
                    next_badge = now + 0.5
                sync = gate.request("status")["sync"]
                if reconnected is None and sync["connected"] and sync["connects"] > connects:
                    reconnected = time.monotonic() - resumed
                if set(sink.unique()) - before:
                    return time.monotonic() - resumed, reconnected
                time.sleep(0.05)
            raise RuntimeError(f"no event within {limit_s:.0f} s of the resume")
        finally:
            gate.stop()
            sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--freeze", type=float, default=60.0, help="seconds the broker is stopped")
    parser.add_argument(
        "--timers",
        default="",
        help='extra [mqtt] lines, e.g. "keepalive_s = 1\\nbackoff_max_s = 2" (default: none)',
    )
    parser.add_argument("--limit", type=float, default=600.0, help="give a run up after this")
    args = parser.parse_args()
    timers = args.timers.replace("\\n", "\n")
    results: list[float] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
            back, reconnected = one_run(Path(tmp), args.freeze, timers, args.limit)
        results.append(back)
        again = "kept its link" if reconnected is None else f"reconnected at {reconnected:.1f} s"
        print(f"run {i + 1}: events flow {back:.1f} s after the resume ({again})", flush=True)
    print(
        f"freeze {args.freeze:.0f} s, {len(results)} runs: back after median "
        f"{statistics.median(results):.1f} s, max {max(results):.1f} s"
    )


if __name__ == "__main__":
    main()
