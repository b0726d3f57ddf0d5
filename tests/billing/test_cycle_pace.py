"""A cycle busy for at most a share of its wall time (``[serve] cycle_share``, ``run --share``):
after each batch it rests in proportion to the batch's wall time, so the member app gets the
host (and, on PostgreSQL, the server's cores, which niceness cannot give it) between batches."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from gated.billing_sync import cycle
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.cli import app
from gated.billing_sync.config import ServeConfig
from gated.billing_sync.cycle import Pace
from gated.billing_sync.cycle_process import child_command
from tests.billing.helpers import make_billing, write_cli_config

MEMBERS = 6
BATCH = 2


def test_a_paced_cycle_rests_in_proportion_to_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing, clock = make_billing(tmp_path, batch_size=BATCH)
    for i in range(MEMBERS):
        billing.add_member(
            f"m{i:02d}", f"Member {i}", plan_id="monthly", payment_method="pm_sim_ok"
        )
    clock.advance(31)  # every member's renewal is due
    busy: list[float] = []
    took = Pace.batch_took

    def record(pace: Pace, seconds: float) -> None:
        busy.append(seconds)
        took(pace, seconds)

    monkeypatch.setattr(cycle.Pace, "batch_took", record)
    share = 0.5
    billing.cycle_share = share
    began = time.monotonic()
    report = billing.run_cycle()
    wall = time.monotonic() - began

    assert report.renewals == MEMBERS and report.batches == MEMBERS // BATCH == len(busy)
    # Each batch but the last was followed by a rest as long as its wall time (at 0.5), and
    # the cycle took at least its batches and its rests.
    owed = sum(busy[:-1]) * (1 - share) / share
    assert owed > 0
    assert report.rested_s >= owed
    assert wall >= report.rested_s + sum(busy)


def test_an_unpaced_cycle_never_rests(tmp_path: Path) -> None:
    billing, clock = make_billing(tmp_path, batch_size=BATCH)
    for i in range(2 * BATCH):
        billing.add_member(
            f"m{i:02d}", f"Member {i}", plan_id="monthly", payment_method="pm_sim_ok"
        )
    clock.advance(31)
    report = billing.run_cycle()  # a cycle run in process (or by hand) has the whole host
    assert report.batches == 2 and report.rested_s == 0


def test_stopping_ends_a_rest_at_once() -> None:
    pace = Pace(0.05)
    pace.batch_took(10.0)  # 190 s owed
    stopping = threading.Event()
    stopping.set()
    report = CycleReport()
    began = time.monotonic()
    pace.rest(stopping, report)
    assert time.monotonic() - began < 5 and report.rested_s < 5


def test_the_share_is_validated(tmp_path: Path) -> None:
    assert ServeConfig().cycle_share == 0.5
    for bad in (0, 0.01, 1.5, "half"):
        with pytest.raises(ValidationError, match="cycle_share"):
            ServeConfig.model_validate({"cycle_share": bad})
    cfg = write_cli_config(tmp_path)
    refused = CliRunner().invoke(app, ["run", "--share", "0", "-c", str(cfg)])
    assert refused.exit_code == 2 and "--share" in refused.output


def test_serves_cycle_process_is_given_the_share(tmp_path: Path) -> None:
    command = child_command(tmp_path / "billing.toml", 60.0, 0.3)
    assert command[command.index("--share") + 1] == "0.3"
