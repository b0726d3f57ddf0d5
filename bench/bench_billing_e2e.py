"""Benchmark: payment recorded → gate decision changed, end to end on loopback.

    .venv/bin/python bench/bench_billing_e2e.py [--rounds 30]

Starts mosquitto, `gated-billing serve` (simulated gateway) and a real gate (`gated run`, mock
GPIO). Each round puts the member into debt past grace (a declined extra, clock moved on) and
waits until the gate denies, then records a front-desk payment and times how long until the gate
allows the card again (polled through the control socket every 5 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gated.billing_sync.config import load_billing_config
from gated.billing_sync.context import db_clock
from gated.billing_sync.keys import Keys, init_keys
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store
from tests.gatefixture import GateProcess, write_config
from tests.services import free_port, run_mosquitto

UID = "04A1B2C3D4E5F6"
BIN = Path(sys.executable).parent / "gated-billing"


def wait(check: object, timeout: float = 20.0, step: float = 0.005) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(step)
    raise TimeoutError("condition not reached")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_mosquitto(Path(tmp) / "mqtt") as broker:
        root = Path(tmp)
        gate = GateProcess(
            write_config(root / "gate", extra=f'[mqtt]\nurl = "{broker.url}"\nheartbeat_s = 1\n'),
            root / "gate",
        )
        keys = root / "gate" / "keys"
        cfg_path = root / "billing.toml"
        cfg_path.write_text(
            'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
            f"cycle_interval_s = 0.2\n[dunning]\ngrace_days = 0\n[keys]\n"
            f'head_office_private_key_file = "{keys}/head-office.key"\n'
            f'credential_key_file = "{keys}/credential.key"\ncard_encryption_key_file = "cards.key"\n'
            f'[mqtt]\nurl = "{broker.url}"\n[http]\nport = {free_port()}\n'
        )
        config = load_billing_config(cfg_path)
        init_keys(config.keys)
        engine = open_store(config.database_url)
        clock = db_clock(engine)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        gw = SimulatedGateway(config.state_dir / "simulated-gateway.db", clock=clock)
        billing = Billing(engine, config, gw, Keys.load(config.keys), clock)
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
        billing.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
        billing.assign_card("m1", UID)
        billing.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
        serve = subprocess.Popen(
            [str(BIN), "serve", "-c", str(cfg_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gate.start()
        latencies = []
        try:

            def allowed() -> bool:
                return bool(gate.request("badge", {"card": UID})["allow"])

            wait(allowed)
            for _ in range(args.rounds):
                billing.charge_extra("m1", "class_pack", "Class", 1000)
                billing.advance_clock(2)
                billing.run_cycle()
                wait(lambda: not allowed())
                billing.record_payment("m1")  # committed: the payment is recorded
                latencies.append(wait(allowed))
        finally:
            gate.stop()
            serve.send_signal(signal.SIGTERM)
            serve.wait(15)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            json.dumps(
                {
                    "rounds": len(latencies),
                    "p50_ms": round(statistics.median(latencies) * 1000, 1),
                    "p99_ms": round(p99 * 1000, 1),
                    "max_ms": round(latencies[-1] * 1000, 1),
                    "cpu_count": os.cpu_count(),
                }
            )
        )


if __name__ == "__main__":
    main()
