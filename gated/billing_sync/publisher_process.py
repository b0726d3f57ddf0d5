"""The MQTT publisher in a process of its own: ``[serve] publisher = "own-process"``.

Signing and publishing the states a 100,000-member cycle writes is some 37 s of Python work
(about 370 µs a state: reading it, signing it, handing it to the broker, marking it sent). On
``serve``'s event loop it held the interpreter lock while the members' requests waited for it
(BENCHMARKS.md, "Member app"). Here ``serve`` starts ``gated-billing publish`` as a child, as it
starts its cycle process (``cycle_process.supervise``: restarted when it dies, stopped with
``serve``), and keeps only the gates' events and statuses (``publisher.GateIntake``), which feed
the console's live pages inside ``serve``.

The child publishes under ``<[mqtt] client_id>-publisher``: ``serve``'s intake keeps the fixed
``client_id`` and with it the broker's queue of gate events. The child's stdin is a pipe from
``serve``: each byte wakes the drain at once (a payment booked in ``serve`` reaches the gates
within milliseconds, not at the next quarter-second look at the outbox), and its end (``serve``
stopped or killed -9) stops the child, so two publishers never drain one store for long.
Nothing is lost to a killed child: a row leaves the outbox only after the broker acknowledged it,
and the next child publishes what is left (the same versions: gates skip what they have).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from gated.billing_sync.config import BillingConfig, BillingMqttConfig
from gated.billing_sync.cycle_process import supervise
from gated.billing_sync.publisher import Publisher
from gated.billing_sync.service import Billing

log = logging.getLogger("gated.billing")

# More unread wake bytes than this in the pipe: the child is busy draining, and it looks at the
# outbox again when its drain ends anyway.
WAKE_BACKLOG_BYTES = 64


def publisher_client_id(cfg: BillingMqttConfig) -> str:
    """The publisher process's fixed client id, apart from ``serve``'s (its gate-event queue)."""
    return f"{cfg.client_id}-publisher"


def child_command(config_path: Path) -> list[str]:
    """The publisher process ``serve`` starts: this interpreter, so it runs the same code."""
    return [sys.executable, "-m", "gated.billing_sync", "publish", "-c", str(config_path)]


def runs_own_process(config: BillingConfig, config_path: Path | None) -> bool:
    """Whether ``serve`` leaves publishing to a child: ``[serve] publisher``, or, unset, as the
    cycles run (a child's 100,000 renewals are what would fill ``serve``'s loop); never without
    ``[mqtt]`` or a config file the child can read."""
    if config.mqtt is None or config_path is None:
        return False
    wanted = config.serve.publisher
    if wanted is None:
        return config.serve.cycles == "own-process"
    return wanted == "own-process"


class PublisherProcess:
    """``serve``'s side: supervises the child and wakes it."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.stdin: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        """Run, restart and (when cancelled) stop the publisher process."""
        await supervise(child_command(self.config_path), "publisher_process", 0, self._started)

    def _started(self, child: asyncio.subprocess.Process) -> None:
        self.stdin = child.stdin

    def wake(self) -> None:
        """Tell the child that the outbox has new rows (on ``serve``'s event loop). A child that
        is gone or busy is not written to: the next one drains at its start, a busy one when
        its drain ends."""
        pipe = self.stdin
        if pipe is None or pipe.is_closing():
            return
        if pipe.transport.get_write_buffer_size() > WAKE_BACKLOG_BYTES:
            return
        pipe.write(b"w")


class _WakePipe(asyncio.Protocol):
    """The child's end of ``serve``'s pipe: a byte wakes the drain, the end stops the child."""

    def __init__(self, wake: asyncio.Event, gone: asyncio.Event) -> None:
        self.wake = wake
        self.gone = gone

    def data_received(self, data: bytes) -> None:
        self.wake.set()

    def eof_received(self) -> bool:
        self.gone.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()


async def publish_until_stopped(billing: Billing) -> None:
    """``gated-billing publish``: drain the outbox to the broker until SIGTERM or SIGINT, or
    until stdin ends (``serve`` gone); stdin's bytes wake the drain."""
    config = billing.config
    if config.mqtt is None:
        raise ValueError("publish needs an [mqtt] section")
    publisher = Publisher(
        billing.engine,
        config.mqtt,
        billing.keys.current_signer,
        config.sites,
        billing.clock,
        client_id=publisher_client_id(config.mqtt),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    gone = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    transport, _ = await loop.connect_read_pipe(
        lambda: _WakePipe(publisher.wake, gone), os.fdopen(sys.stdin.fileno(), "rb", closefd=False)
    )
    log.info("event=publisher_process_running client_id=%s", publisher.client_id)
    task = asyncio.create_task(publisher.run(), name="publisher")
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(gone.wait()), task]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        transport.close()
    if gone.is_set() and not stop.is_set():
        log.warning("event=publisher_process_orphaned")
    failed = None if task.cancelled() else task.exception()
    if failed is not None:
        raise failed
    log.info("event=publisher_process_stopped published=%d", publisher.published)
