"""``gated run`` whose door kills the daemon (SIGKILL) the instant its relay opens.

Run by tests/test_qr_restart.py as ``python -m tests.qr_kill_child .../gated run -c CONFIG`` (the
arguments after the first are the usual command line): the real daemon on gpiozero's mock pins,
except that the relay's pin is an edge-signalling one (tests/doorpins.py) whose rising edge ends
the process inside the decision, before the spent QR nonce or the entry event is handed to the
cache writer: the worst moment a power cut or an OOM kill can choose.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import gated.door
from gated.cli import gated_app
from tests.doorpins import edge_factory

RELAY_PIN = 17  # [door] relay_pin's default, active high


def main() -> None:
    factory = edge_factory()

    def on_edge(level: bool) -> None:
        if level:
            os.kill(os.getpid(), signal.SIGKILL)

    factory.pin(RELAY_PIN).on_edge = on_edge

    def open_pin_factory(name: str) -> Any:
        return factory

    gated.door.open_pin_factory = open_pin_factory
    gated_app(sys.argv[2:])


if __name__ == "__main__":
    main()
