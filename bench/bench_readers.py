"""Reader latency and idle CPU on this machine's virtual stacks.

Latency is from a credential's presence (a card inserted in pcscd's virtual reader, a tag entering
the udp field, a scanner's final byte, a Wiegand frame's last bit) to ``emit`` on the event loop,
i.e. to the Credential entering the daemon's queue. Idle CPU is this process's CPU time while
every reader kind is configured and running with nothing to read.

    .venv/bin/python bench/bench_readers.py [--out bench/READERS_RESULTS.md]

Needs pcscd, vsmartcard-vpcd and pyscard (as the reader tests do); it starts and stops its own
pcscd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero.pins.mock import MockFactory

from gated.config import (
    HidQrReaderConfig,
    NfcReaderConfig,
    PcscReaderConfig,
    SerialQrReaderConfig,
    WiegandReaderConfig,
)
from gated.policy.credential import Credential
from gated.readers.base import Reader
from gated.readers.registry import build_reader
from gated.readers.wiegand import encode_34
from tests.readers import pcscd_stack
from tests.readers.nfc_tag import EmulatedTag
from tests.readers.vpcd_card import VirtualCard
from tests.services import free_port

CODE = b"GQ1.m_1001.1764144000.0123456789abcdef.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"


class Probe:
    """Runs one reader and records when each credential was emitted."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.queue: asyncio.Queue[tuple[Credential, int]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def emit(self, credential: Credential) -> None:
        self.queue.put_nowait((credential, time.monotonic_ns()))

    async def __aenter__(self) -> Probe:
        self.task = asyncio.create_task(self.reader.run(self.emit))
        await until(lambda: self.reader.health.state == "ok", 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def latency_ms(self, since_ns: int, timeout: float = 10) -> float:
        _, emitted = await asyncio.wait_for(self.queue.get(), timeout)
        return (emitted - since_ns) / 1e6


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


async def bench_wiegand(n: int) -> list[float]:
    pins = MockFactory()
    reader = build_reader(
        WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6, debounce_ms=0), pin_factory=pins
    )
    samples = []
    async with Probe(reader) as probe:
        for i in range(n):
            last = 0
            for bit in encode_34(f"{0x04000000 + i:08X}"):
                pin = pins.pin(6 if bit else 5)
                pin.drive_low()
                last = time.monotonic_ns()
                pin.drive_high()
                await asyncio.sleep(0)  # let the loop take the edge, as lgpio's thread would
            samples.append(await probe.latency_ms(last))
    return samples


async def bench_serial(n: int) -> list[float]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    reader = build_reader(SerialQrReaderConfig(id="s", port=path, debounce_ms=0))
    samples = []
    try:
        async with Probe(reader) as probe:
            for i in range(n):
                os.write(master, CODE + str(i).encode())
                sent = time.monotonic_ns()
                os.write(master, b"\r")  # the final byte
                samples.append(await probe.latency_ms(sent))
    finally:
        os.close(master)
        os.close(slave)
    return samples


def _card_absent(reader_name: str) -> bool:
    from smartcard import scard

    _, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    try:
        _, states = scard.SCardGetStatusChange(
            context, 0, [(reader_name, scard.SCARD_STATE_UNAWARE)]
        )
        return not states[0][1] & scard.SCARD_STATE_PRESENT
    finally:
        scard.SCardReleaseContext(context)


async def bench_pcsc(stack: pcscd_stack.PcscdStack, n: int) -> list[float]:
    reader = build_reader(PcscReaderConfig(id="p", reader_name=stack.reader, debounce_ms=0))
    samples = []
    async with Probe(reader) as probe:
        for i in range(n):
            card = VirtualCard(stack.port, f"04{i:012X}")
            card.insert()
            inserted = time.monotonic_ns()
            samples.append(await probe.latency_ms(inserted))
            card.remove()
            await until(lambda: _card_absent(stack.reader), 5)
    return samples


async def bench_nfc(n: int) -> list[float]:
    port = free_port()
    tag = EmulatedTag(port, "04A1B2C3D4E5F6")
    reader = build_reader(
        NfcReaderConfig(id="n", path=f"udp:127.0.0.1:{port}", targets=["106A"], debounce_ms=0)
    )
    samples = []
    try:
        async with Probe(reader) as probe:
            for _ in range(n):
                tag.present()
                presented = time.monotonic_ns()
                samples.append(await probe.latency_ms(presented))
                await asyncio.to_thread(tag.take_away)
    finally:
        tag.close()
    return samples


async def idle_cpu(stack: pcscd_stack.PcscdStack, seconds: float) -> tuple[float, float]:
    """(% of one core used by this process, by pcscd) with every reader kind running idle."""
    master, slave = os.openpty()
    port = free_port()
    tag = EmulatedTag(port, "04A1B2C3D4E5F6")  # out of the field: the nfc reader keeps polling
    readers = [
        build_reader(PcscReaderConfig(id="p", reader_name=stack.reader)),
        build_reader(NfcReaderConfig(id="n", path=f"udp:127.0.0.1:{port}")),
        build_reader(SerialQrReaderConfig(id="s", port=os.ttyname(slave))),
        build_reader(HidQrReaderConfig(id="h", device="/dev/input/by-id/no-scanner-here")),
        build_reader(WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6), pin_factory=MockFactory()),
    ]
    tasks = [asyncio.create_task(r.run(lambda c: None)) for r in readers]
    try:
        await until(lambda: all(r.health.state == "ok" for r in readers if r.kind != "hid_qr"), 15)
        await asyncio.sleep(2)  # settle
        assert stack.proc is not None
        pcscd_before, cpu_before, t0 = (
            _proc_cpu(stack.proc.pid),
            time.process_time(),
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        ours = (time.process_time() - cpu_before) / elapsed * 100
        theirs = (_proc_cpu(stack.proc.pid) - pcscd_before) / elapsed * 100
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tag.close()
        os.close(master)
        os.close(slave)
    return ours, theirs


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as Markdown to this file")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if why := pcscd_stack.missing():
        sys.exit(f"cannot run: {why}")
    rows: list[tuple[str, int, tuple[float, float, float], str]] = []
    with tempfile.TemporaryDirectory() as tmp, pcscd_stack.run_pcscd(Path(tmp)) as stack:
        for kind, n, run, note in [
            (
                "wiegand (34-bit, MockFactory edges)",
                100,
                lambda: bench_wiegand(100),
                "frame_timeout_ms = 20",
            ),
            ("serial_qr (pty, 96-byte code + CR)", 300, lambda: bench_serial(300), ""),
            (
                "pcsc (pcscd 1.9.9 + vpcd, GET DATA)",
                30,
                lambda: bench_pcsc(stack, 30),
                "pcscd polls vpcd every ~400 ms: the wait is pcscd's",
            ),
            (
                "nfc (nfcpy udp driver, NTAG213)",
                30,
                lambda: bench_nfc(30),
                "udp driver: an unanswered sense waits 1 s; tag shown just after one starts (worst case)",
            ),
        ]:
            runner: Callable[[], Awaitable[list[float]]] = run
            samples = await runner()
            rows.append((kind, n, summary(samples), note))
            print(
                f"{kind}: n={n} p50/p99/max = {'/'.join(f'{v:.2f}' for v in summary(samples))} ms",
                flush=True,
            )
        ours, pcscd = await idle_cpu(stack, args.idle_seconds)
        print(
            f"idle CPU with all five kinds running: gated {ours:.2f}% of one core, pcscd {pcscd:.2f}%"
        )
    if args.out:
        lines = [
            "# Reader benchmarks",
            "",
            f"Command: `.venv/bin/python bench/bench_readers.py --out {args.out}`",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}.",
            "",
            "Presence → Credential emitted on the event loop (ms):",
            "",
            "| reader | n | p50 | p99 | max | note |",
            "| --- | --- | --- | --- | --- | --- |",
            *(
                f"| {k} | {n} | {s[0]:.2f} | {s[1]:.2f} | {s[2]:.2f} | {note} |"
                for k, n, s, note in rows
            ),
            "",
            f"Idle CPU over {args.idle_seconds:.0f} s with a pcsc, nfc (udp, polling 106A/106B/212F), "
            "serial_qr, hid_qr (device absent, retrying) and wiegand reader running: "
            f"**{ours:.2f}% of one core** for the reader process, {pcscd:.2f}% for pcscd.",
            "",
            "hid_qr latency is not measured here: these machines have no /dev/uinput.",
        ]
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
