from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, run_mosquitto

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
if "/usr/sbin" not in os.environ["PATH"].split(":"):
    os.environ["PATH"] += ":/usr/sbin:/sbin"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on an ephemeral loopback port, with persistence, for one test."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
