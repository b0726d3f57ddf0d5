"""The decision CPU (gated.placement): the loop's thread and the readers' threads on one CPU, the
gate's other threads off it, read back from the kernel; the setting checked; a gate that cannot
pin (one CPU, a CPU outside its set) runs on and says so."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gpiozero.pins.mock import MockFactory

from gated import placement
from gated.cache.index import member_row
from gated.cache.live import APPLY_SLICE
from gated.config import (
    ConfigError,
    SerialQrReaderConfig,
    WiegandReaderConfig,
    load_gate_config,
)
from gated.daemon import Gate
from gated.readers.device import Link, ThreadedReader
from gated.readers.wiegand import WiegandReader, encode_26
from tests.gatefixture import GateProcess, write_config
from tests.test_snapshot_apply import state

T = TypeVar("T")
ALLOWED = frozenset(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs in the allowed set")


def in_thread(fn: Callable[[], T]) -> T:
    """``fn`` on a thread of its own, so the placement it makes never pins the test's thread."""
    out: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            failed.append(exc)
        finally:
            placement.release_decisions()

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if failed:
        raise failed[0]
    return out[0]


def affinity_of(fn: Callable[[], Any]) -> frozenset[int]:
    """The CPUs a new thread runs on after calling ``fn`` first."""
    return in_plain_thread(lambda: (fn(), frozenset(os.sched_getaffinity(0)))[1])


def in_plain_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    return out[0]


def cpus_of_threads(pid: int) -> dict[int, str]:
    """Each thread's Cpus_allowed_list, by thread id."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            for line in fh:
                if line.startswith("Cpus_allowed_list:"):
                    found[int(tid)] = line.split(":", 1)[1].strip()
    return found


@pytest.mark.parametrize(
    ("raw", "kept"), [("auto", "auto"), ("off", "off"), (1, "1"), ("0", "0"), (0, "0")]
)
def test_the_setting_takes_auto_off_or_a_cpu(tmp_path: Path, raw: object, kept: str) -> None:
    assert load_gate_config(write_config(tmp_path, decision_cpu=raw)).decision_cpu == kept


def test_the_default_is_auto(tmp_path: Path) -> None:
    assert load_gate_config(write_config(tmp_path)).decision_cpu == "auto"


@pytest.mark.parametrize("raw", [-1, "first", True, 1.5, "", "-2"])
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, raw: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_gate_config(write_config(tmp_path, decision_cpu=raw))
    message = str(err.value)
    assert "decision_cpu" in message and '"auto", "off" or a CPU number' in message
    assert "\n" not in message


@two_cpus
def test_the_loop_and_readers_share_one_cpu_and_the_rest_keep_off() -> None:
    cpu = max(ALLOWED)
    others = ALLOWED - {cpu}
    started = threading.Event()
    before: list[int] = []

    def bystander() -> None:  # a thread running before the pin, as the cache writer is
        before.append(threading.get_native_id())
        started.set()
        release.wait(30)

    release = threading.Event()
    waiting = threading.Thread(target=bystander, daemon=True)
    waiting.start()
    started.wait(30)

    def loop_thread() -> dict[str, Any]:
        placed = placement.place_decisions("auto")
        return {
            "placed": placed,
            "loop": frozenset(os.sched_getaffinity(0)),
            "reader": affinity_of(placement.join_decisions),
            "worker": affinity_of(placement.keep_off_decisions),
            "bystander": frozenset(os.sched_getaffinity(before[0])),
            "processes": placement.process_cpus(),
        }

    try:
        seen = in_thread(loop_thread)
    finally:
        release.set()
        waiting.join()
    assert seen["placed"].cpu == cpu and seen["placed"].others == others
    assert seen["placed"].detail == (
        f"cpu {cpu} (readers with it; other threads on {','.join(map(str, sorted(others)))})"
    )
    assert seen["loop"] == {cpu} and seen["reader"] == {cpu}
    assert seen["worker"] == others and seen["bystander"] == others
    assert seen["processes"] == ALLOWED  # verifier processes: the whole set
    # Released: nothing pinned for whoever places next, and the test's thread never was.
    assert placement.current().cpu is None and placement.process_cpus() is None
    assert frozenset(os.sched_getaffinity(0)) == ALLOWED


@two_cpus
def test_a_hardware_readers_thread_joins_the_decision_cpu() -> None:
    """The device thread every threaded reader (PC/SC, NFC, serial and HID scanners) runs in."""

    class Probe(ThreadedReader):
        kind = "probe"

        def __init__(self) -> None:
            super().__init__(SerialQrReaderConfig(id="probe-1"))
            self.seen: asyncio.Future[frozenset[int]] | None = None
            self.loop: asyncio.AbstractEventLoop | None = None

        def _session(self, stop: threading.Event, link: Link) -> None:
            assert self.loop is not None and self.seen is not None
            self.loop.call_soon_threadsafe(self.seen.set_result, frozenset(os.sched_getaffinity(0)))
            stop.wait()

    async def serve() -> frozenset[int]:
        reader = Probe()
        reader.loop = asyncio.get_running_loop()
        reader.seen = reader.loop.create_future()
        placement.place_decisions("auto")
        # The loop's own pin undone: the thread must join the CPU itself, not by inheriting it.
        os.sched_setaffinity(0, ALLOWED)
        task = asyncio.create_task(reader.run(lambda credential: None))
        try:
            return await asyncio.wait_for(reader.seen, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert in_thread(lambda: asyncio.run(serve())) == {max(ALLOWED)}


@two_cpus
def test_the_wiegand_edge_thread_joins_the_decision_cpu_at_its_first_edge() -> None:
    """The edge callbacks run on the GPIO library's thread (lgpio's on a Pi; here a thread of
    the test's, driving MockFactory pins as that thread would)."""
    factory = MockFactory()

    async def serve() -> tuple[frozenset[int], str]:
        reader = WiegandReader(WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6), factory)
        reads: asyncio.Queue[str] = asyncio.Queue()
        placement.place_decisions("auto")
        task = asyncio.create_task(
            reader.run(lambda credential: reads.put_nowait(credential.value))
        )
        try:
            while reader.health.state != "ok":
                await asyncio.sleep(0.01)

            def edges() -> frozenset[int]:
                # Started off the decision CPU, as the driver's thread may have been.
                os.sched_setaffinity(0, ALLOWED)
                for bit in encode_26(7, 4242):
                    pin = factory.pin(6 if bit else 5)
                    pin.drive_low()
                    pin.drive_high()
                return frozenset(os.sched_getaffinity(0))

            after = await asyncio.to_thread(in_plain_thread, edges)
            return after, await asyncio.wait_for(reads.get(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        after, value = in_thread(lambda: asyncio.run(serve()))
    finally:
        factory.reset()
    assert after == {max(ALLOWED)} and value == "w26:7:4242"


def test_one_allowed_cpu_pins_nothing() -> None:
    def one_cpu() -> placement.Placement:
        os.sched_setaffinity(0, {min(ALLOWED)})
        return placement.place_decisions("auto")

    placed = in_thread(one_cpu)
    assert placed.cpu is None and not placed.wanted  # nothing to warn about
    assert placed.detail == f"not pinned (one CPU allowed: {min(ALLOWED)})"


def test_a_cpu_outside_the_allowed_set_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outside = max(ALLOWED) + 1
    placed = in_thread(lambda: placement.place_decisions(str(outside)))
    assert placed.cpu is None and placed.wanted
    assert placed.detail == (
        f"not pinned (CPU {outside} is not in the allowed set {','.join(map(str, sorted(ALLOWED)))})"
    )
    assert "event=decision_cpu_unavailable" in caplog.text


def test_off_pins_nothing() -> None:
    placed = in_thread(lambda: placement.place_decisions("off"))
    assert placed.cpu is None and placed.detail == "not pinned (decision_cpu = off)"


def observe(gate: GateProcess) -> tuple[dict[str, Any], dict[int, str], dict[str, str]]:
    """Start the gate, decide one badge, and return its status, each thread's CPUs and doctor's
    decision_cpu check."""
    gate.start()
    try:
        assert gate.request("badge", {"card": "04A1B2C3D4E5F6"})["reason"] == "unknown_credential"
        status = gate.request("status")
        # doctor's hardware checks run on a worker thread the loop starts after the pin.
        doctor = json.loads(gate.gatectl("doctor", "--json").stdout)
        assert gate.proc is not None
        threads = cpus_of_threads(gate.proc.pid)
    finally:
        gate.stop()
    return status, threads, next(c for c in doctor["checks"] if c["name"] == "decision_cpu")


# A reader with a thread of its own: its device is absent, so the thread retries, and lives.
SERIAL = '[[readers]]\nkind = "sim"\nid = "sim-1"\n[[readers]]\nkind = "serial_qr"\nport = "/dev/gated-absent"\n'


@two_cpus
def test_a_running_gate_puts_its_loop_and_reader_thread_on_the_last_cpu(tmp_path: Path) -> None:
    gate = GateProcess(write_config(tmp_path, readers=SERIAL), tmp_path)
    status, threads, check = observe(gate)
    cpu, others = max(ALLOWED), ",".join(map(str, sorted(ALLOWED - {max(ALLOWED)})))
    assert gate.proc is not None
    assert threads.pop(gate.proc.pid) == str(cpu)  # the event loop's thread
    # The serial reader's thread joined it; every other thread (the cache writer, the metrics
    # server, the workers) is on the other CPUs.
    assert sorted(threads.values()) == sorted([str(cpu)] + [others] * (len(threads) - 1)), threads
    assert status["decision_cpu"] == f"cpu {cpu} (readers with it; other threads on {others})"
    assert check["level"] == "ok" and check["message"] == status["decision_cpu"]


def test_a_gate_given_a_cpu_it_may_not_use_runs_on_and_doctor_warns(tmp_path: Path) -> None:
    # Started on one CPU (as a container's cgroup or taskset would), asked for another.
    only = min(ALLOWED)
    gate = GateProcess(
        write_config(tmp_path, decision_cpu=only + 1), tmp_path, prefix=("taskset", "-c", str(only))
    )
    status, threads, check = observe(gate)
    assert set(threads.values()) == {str(only)}
    assert status["decision_cpu"] == (
        f"not pinned (CPU {only + 1} is not in the allowed set {only})"
    )
    assert "event=decision_cpu_unavailable" in gate.log.read_text()
    assert check["level"] == "warn" and "decision_cpu" in check["fix"]


@two_cpus
def test_the_readers_may_leave_the_cpu_while_the_loop_applies_a_burst(tmp_path: Path) -> None:
    """A real-time loop busy with a sync's burst never sleeps, and a reader's thread (normal
    policy) on its CPU then waited milliseconds in the middle of a hand-off (BENCHMARKS.md): while
    updates are being applied the readers may run on any CPU, and go back once they are in."""
    rows = [member_row(state(i, i + 1)) for i in range(APPLY_SLICE * 20)]

    async def burst() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
        gate = Gate(load_gate_config(write_config(tmp_path)), pin_factory=MockFactory())
        joined, finish, tid = threading.Event(), threading.Event(), []

        def reader() -> None:
            placement.join_decisions()
            tid.append(threading.get_native_id())
            joined.set()
            finish.wait(30)
            placement.leave_decisions()

        thread = threading.Thread(target=reader)
        try:
            placement.place_decisions("auto")
            thread.start()
            joined.wait(30)
            idle = frozenset(os.sched_getaffinity(tid[0]))
            applying = gate.apply_rows(iter(rows))
            during = frozenset(os.sched_getaffinity(tid[0]))
            await asyncio.wrap_future(applying)
            return idle, during, frozenset(os.sched_getaffinity(tid[0]))
        finally:
            finish.set()
            thread.join()
            gate.writer.close()

    idle, during, after = in_thread(lambda: asyncio.run(burst()))
    assert idle == {max(ALLOWED)} and during == ALLOWED and after == {max(ALLOWED)}
