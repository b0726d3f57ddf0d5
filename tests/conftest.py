from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.services import Mosquitto, run_mosquitto

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
os.environ.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
if "/usr/sbin" not in os.environ["PATH"].split(":"):
    os.environ["PATH"] += ":/usr/sbin:/sbin"

# scripts/fuzz runs tests/test_fuzz.py with HYPOTHESIS_PROFILE=fuzz: random, long passes (CI runs
# them derandomized and short). Failures are kept in .hypothesis/ and replayed first next pass.
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("GATED_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on an ephemeral loopback port, with persistence, for one test."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
