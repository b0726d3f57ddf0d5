"""A frozen broker (SIGSTOP) that resumes: the gate is back within the backoff in force + 5 s,
because a CONNECT sent while the broker was frozen waits for its CONNACK only connect_timeout_s,
not the minutes a reply may take."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import EventSink, wait_until

FREEZE_S = 5.0
BACKOFF_MAX_S = 2.0
# Short timers so the freeze is noticed, and a reconnect tried, while the broker is frozen.
TIMERS = f"keepalive_s = 1\nconnect_timeout_s = 2\nbackoff_max_s = {BACKOFF_MAX_S}\n"


def test_gate_is_back_soon_after_a_frozen_broker_resumes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    root = tmp_path / "gate"
    gate = GateProcess(write_config(root, extra=mqtt_section(mosquitto.url, 1.0, TIMERS)), root)
    sink = EventSink(mosquitto.port)
    try:
        gate.start()
        wait_until(lambda: gate.request("status")["sync"]["subscribed"], what="subscribed")
        connects = gate.request("status")["sync"]["connects"]
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: not gate.request("status")["sync"]["connected"],
                timeout=10,
                what="the gate notices the frozen broker",
            )
            # The freeze itself (not a wait for an event): the gate reconnects meanwhile, and a
            # CONNECT goes unanswered.
            time.sleep(FREEZE_S)
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()

        def back() -> bool:
            sync = gate.request("status")["sync"]
            return bool(sync["connected"] and sync["subscribed"] and sync["connects"] > connects)

        wait_until(back, timeout=BACKOFF_MAX_S + 5, what="the gate back after the broker resumed")
        assert time.monotonic() - resumed <= BACKOFF_MAX_S + 5
        # And events flow again.
        before = set(sink.unique())
        gate.request("badge", {"card": "04FFFFFFFFFFFF"})
        wait_until(
            lambda: [
                e
                for k, e in sink.unique().items()
                if k not in before and e.get("credential_kind") == "card"
            ],
            timeout=5,
            what="the badge's event through the broker",
        )
    finally:
        gate.stop()
        sink.close()
