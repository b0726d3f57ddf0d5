"""End to end: a day pass sold to a walk-in at the desk lets their card in at a real gate
(`gated run`, through `gated-billing serve` and mosquitto) for its day, and not after."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from gated.billing_sync.audit import Actor
from gated.billing_sync.products import ProductSpec
from tests.billing.test_crash import billing_for
from tests.billing.test_e2e_gate import BIN, DAY, UID, billing_toml
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.helpers import wait_until


def test_a_day_pass_lets_a_walk_in_in_for_its_day(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gate_root = tmp_path / "gate"
    gate = GateProcess(
        write_config(gate_root, extra=f'[mqtt]\nurl = "{mosquitto.url}"\nheartbeat_s = 1\n'),
        gate_root,
    )
    config = billing_toml(tmp_path, gate_root / "keys", mosquitto.url)
    b = billing_for(config)
    pos = b.point_of_sale()
    pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1, site="downtown"))
    sale = pos.sell(
        Actor("staff", "desk", "front_desk", "127.0.0.1"), "day", walk_in="Gia", method="cash"
    )
    b.assign_card(sale.member_id, UID)
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

        wait_until(lambda: badge()["allow"], what="walk-in let in on a day pass")
        b.advance_clock(DAY + 60)  # the day is over: the pass has expired
        wait_until(lambda: not badge()["allow"], what="denied after the pass day")
        assert badge()["reason"] == "expired"
    finally:
        gate.stop()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0, (tmp_path / "serve.log").read_text()[-3000:]
