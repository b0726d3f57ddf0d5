"""``[serve] cycles``: a real ``gated-billing serve`` runs its billing cycles in a child process
it restarts and stops with itself ("own-process"), or runs none ("off"), and what the child
renews is what serve's HTTP side answers."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gated.billing_sync.service import PlanSpec
from tests.billing.crashing import billing_for
from tests.services import free_port
from tests.sync.helpers import wait_until

BIN = Path(sys.executable).parent / "gated-billing"
DAY = 86_400


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (zombies not counted)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def argv(pid: int) -> list[bytes]:
    """Process ``pid``'s command line (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Serve:
    """``gated-billing serve`` on a store with one member on a monthly plan."""

    def __init__(self, root: Path, cycles: str, extra: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.config = root / "billing.toml"
        self.config.write_text(
            'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
            "cycle_interval_s = 0.2\n"
            '[keys]\nhead_office_private_key_file = "keys/ho.pem"\n'
            'credential_key_file = "keys/credential.key"\ncard_encryption_key_file = "cards.key"\n'
            f'[http]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[serve]\ncycles = "{cycles}"\n{extra}'
        )
        self.billing = billing_for(self.config)
        self.billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
        self.billing.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
        self.token = self.billing.add_gate("downtown", "g1")
        self.log = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(BIN), "serve", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
            )
        wait_until(self.answering, timeout=60, what="serve answering")
        return self.process

    def answering(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.logged()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success
        except httpx.TransportError:
            return False

    def logged(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def valid_until(self) -> str:
        """m1's ``valid_until`` in the snapshot serve gives a gate."""
        r = httpx.get(
            f"http://127.0.0.1:{self.port}/v1/sites/downtown/snapshot",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        for line in gzip.decompress(r.content).splitlines():
            state = json.loads(line)
            if state.get("member_id") == "m1":
                return str(state["valid_until"])
        raise AssertionError("m1 is not in the snapshot")

    def cycle_child(self, other_than: int | None = None) -> int:
        """The pid of serve's one cycle process (a new one when ``other_than`` is given)."""
        assert self.process is not None
        serve = self.process.pid

        def found() -> int | None:
            # A child forked but not yet exec'd still shows serve's command line: wait for it.
            kids = [k for k in children(serve) if k != other_than]
            runs = [k for k in kids if argv(k)[3:5] == [b"run", b"--every"]]
            return runs[0] if len(kids) == 1 and runs else None

        pid = wait_until(found, timeout=60, what="serve's cycle process")
        assert pid is not None
        assert b"--no-notices" in argv(pid)  # serve alone delivers notices: none is sent twice
        return pid


@pytest.fixture
def serve_with(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Makes the store and config for ``serve`` with ``[serve] cycles`` set; kills what is left
    running at the end."""
    made: list[Serve] = []

    def make(cycles: str, extra: str = "") -> Serve:
        made.append(Serve(tmp_path, cycles, extra))
        return made[-1]

    yield make
    for s in made:
        if s.process is not None and s.process.poll() is None:
            s.process.kill()
            s.process.wait(10)
        s.billing.engine.dispose()


def test_cycles_run_in_a_child_restarted_when_killed_and_stopped_with_serve(
    serve_with: Callable[..., Serve],
) -> None:
    s = serve_with("own-process", "cycle_nice = 3\ncycle_share = 0.4\n")
    serve = s.start()
    child = s.cycle_child()
    # The members' requests get the cores first: the cycle runs nicer than serve, and rests.
    assert niceness(child) == min(19, niceness(serve.pid) + 3)
    command = argv(child)
    assert command[command.index(b"--share") + 1] == b"0.4"
    first = s.valid_until()

    s.billing.advance_clock(31 * DAY)  # the renewal is due: the child renews, serve shows it
    # A new child imports the service first: seconds on a loaded machine.
    renewed = wait_until(
        lambda: s.valid_until() != first and s.valid_until(), timeout=60, what="renewal"
    )
    assert s.billing.member("m1")["status"] == "active"

    os.kill(child, signal.SIGKILL)
    again = s.cycle_child(other_than=child)
    assert niceness(again) == min(19, niceness(serve.pid) + 3)
    assert "event=cycle_process_ended code=-9" in s.logged()
    s.billing.advance_clock(31 * DAY)  # the restarted child renews the next month too
    wait_until(lambda: s.valid_until() not in (first, renewed), timeout=60, what="second renewal")

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0, s.logged()
    assert not alive(again)
    assert f"event=cycle_process_stopped pid={again} code=0" in s.logged()


def test_the_cycle_process_stops_when_serve_is_killed(serve_with: Callable[..., Serve]) -> None:
    """A parent killed -9 stops nothing: its cycle process must notice on its own. Here the
    parent is a shell starting the command ``serve`` starts (cheaper than a serve)."""
    s = serve_with("own-process")
    log = s.root / "child.log"
    child = [sys.executable, "-m", "gated.billing_sync", "run", "--every", "0.2", "--no-notices"]
    shell = subprocess.Popen(
        [
            "sh",
            "-c",
            f'{" ".join(child)} --parent $$ -c {s.config} 2>"{log}" & echo $!; exec sleep 60',
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
    )
    assert shell.stdout is not None
    pid = int(shell.stdout.readline())
    wait_until(
        lambda: log.exists() and "event=cycles_every" in log.read_text(),
        timeout=60,
        what="the child running",
    )
    shell.kill()
    shell.wait(10)
    wait_until(lambda: not alive(pid), timeout=30, what="the orphaned cycle process ends")
    assert "event=cycle_process_orphaned" in log.read_text()


def test_serve_with_cycles_off_runs_none(serve_with: Callable[..., Serve]) -> None:
    s = serve_with("off")
    s.billing.advance_clock(31 * DAY)  # due before serve starts: a cycle of serve's would renew
    paid_through = s.billing.member("m1")["paid_through"]
    serve = s.start()
    wait_until(lambda: "cycles=off" in s.logged(), timeout=30, what="serve's start logged")
    assert children(serve.pid) == []
    assert s.billing.member("m1")["paid_through"] == paid_through
    # Still due: the one who renews is whoever runs the cycle (cron's `run`; here in process).
    assert s.billing.run_cycle().renewals == 1
    assert s.billing.member("m1")["paid_through"] > paid_through
