from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.helpers import HeadOffice


def mqtt_section(url: str, heartbeat_s: float = 1.0, extra: str = "") -> str:
    return f'[mqtt]\nurl = "{url}"\nheartbeat_s = {heartbeat_s}\n{extra}'


@pytest.fixture
def gate(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[GateProcess]:
    """A real ``gated run`` subscribed to the test broker (not started yet)."""
    config = write_config(tmp_path / "gate", extra=mqtt_section(mosquitto.url))
    proc = GateProcess(config, tmp_path / "gate")
    yield proc
    proc.stop()


@pytest.fixture
def hq(gate: GateProcess, mosquitto: Mosquitto) -> Iterator[HeadOffice]:
    office = HeadOffice(gate.root / "keys", mosquitto.port)
    yield office
    office.close()
