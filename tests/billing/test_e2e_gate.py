"""End to end: `gated-billing serve` and a real gate (`gated run`) on a real mosquitto. A failed
renewal keeps the member in (grace), the failed retries lock them out (`suspended`), a front-desk
payment lets them in again within two seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gated.billing_sync.service import PlanSpec
from tests.billing.test_crash import billing_for
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto, free_port
from tests.sync.helpers import wait_until

BIN = Path(sys.executable).parent / "gated-billing"
UID = "04A1B2C3D4E5F6"
DAY = 86_400


def billing_toml(root: Path, keys: Path, mqtt_url: str) -> Path:
    path = root / "billing.toml"
    path.write_text(
        f'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
        f"cycle_interval_s = 0.3\n"
        f'[keys]\nhead_office_private_key_file = "{keys}/head-office.key"\n'
        f'credential_key_file = "{keys}/credential.key"\n'
        f'card_encryption_key_file = "cards.key"\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "billing-e2e"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )
    return path


def test_failed_charge_denies_and_payment_lets_in_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    gate_root = tmp_path / "gate"
    gate = GateProcess(
        write_config(gate_root, extra=f'[mqtt]\nurl = "{mosquitto.url}"\nheartbeat_s = 1\n'),
        gate_root,
    )
    config = billing_toml(tmp_path, gate_root / "keys", mosquitto.url)
    b = billing_for(config)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.assign_card("m1", UID)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(BIN), "serve", "-c", str(config)],
        stdout=log,
        stderr=log,
        env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
    )
    gate.start()
    try:

        def badge() -> dict[str, object]:
            return dict(gate.request("badge", {"card": UID}))

        wait_until(lambda: badge()["allow"], what="member let in")

        b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
        b.advance_clock(31 * DAY)  # the renewal fails: grace, still let in
        wait_until(lambda: b.member("m1")["status"] == "grace", what="grace")
        time.sleep(1.0)
        assert badge()["allow"] is True

        b.advance_clock(4 * DAY)  # retry fails, past grace_days: suspended
        wait_until(lambda: badge()["reason"] == "suspended", what="denied as suspended")
        assert badge()["allow"] is False

        paid = subprocess.run(
            [str(BIN), "pay", "m1", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
        assert paid.returncode == 0, paid.stderr
        started = time.monotonic()
        wait_until(lambda: badge()["allow"], timeout=5, what="let in after paying")
        assert time.monotonic() - started < 2.0
        assert badge()["reason"] == "ok"
    finally:
        gate.stop()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0, (tmp_path / "serve.log").read_text()[-3000:]


def test_serve_exits_non_zero_when_a_part_cannot_run(tmp_path: Path) -> None:
    """An HTTP port already taken must not leave a half-working billing process running."""
    import socket

    config = billing_toml(tmp_path, tmp_path / "keys", "mqtt://127.0.0.1:1")
    b = billing_for(config)  # creates keys and store
    b.engine.dispose()
    port = int(config.read_text().split("port = ")[1].split()[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [str(BIN), "serve", "-c", str(config)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
