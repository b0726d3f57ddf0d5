from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.services import Mosquitto, run_mosquitto

# Hypothesis: "ci" (the default) is derandomized, so a run explores the same examples every
# time and a test's CI size is a property of the tree (tests/mutants/check relies on it);
# HYPOTHESIS_PROFILE=dev explores new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
# tests/mutants/check: the CI examples, reporting the first failure without shrinking it.
settings.register_profile(
    "mutants", derandomize=True, phases=[Phase.explicit, Phase.generate], print_blob=True
)

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
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _stores_from_a_migrated_template() -> Iterator[None]:
    """New SQLite billing stores start from one migrated once per process (tests/store_template.py)."""
    try:
        from tests import store_template

        undo = store_template.install()
    except ImportError:  # a gate-only install: no billing store to open
        yield
        return
    yield
    undo()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on an ephemeral loopback port, with persistence, for one test."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
