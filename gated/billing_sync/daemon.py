"""``gated-billing serve``: billing cycles (in its threads, or in a child process it supervises:
``[serve] cycles``), the HTTP server (webhooks, snapshots, the web), the MQTT publisher (on its
loop, or in a child process: ``[serve] publisher``) and event intake, and notice delivery, as
tasks of one asyncio program that stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.routing import BaseRoute

from gated.billing_sync.cycle_process import child_command, cycle_once, supervise
from gated.billing_sync.notices import deliver
from gated.billing_sync.publisher import GateIntake, Publisher
from gated.billing_sync.publisher_process import PublisherProcess, runs_own_process
from gated.billing_sync.server import QuietServer, create_app
from gated.billing_sync.service import Billing
from gated.billing_sync.store import warm_pool
from gated.billing_sync.worker_lanes import READ_THREADS, WRITE_THREADS, LaneExecutor
from gated.systemd import Notifier

log = logging.getLogger("gated.billing")


async def _cycles(billing: Billing) -> None:
    while True:
        await asyncio.to_thread(cycle_once, billing)
        await asyncio.sleep(billing.config.cycle_interval_s)


async def _notices(billing: Billing, wake: asyncio.Event) -> None:
    smtp = billing.config.smtp
    assert smtp is not None
    while True:
        wake.clear()
        await asyncio.to_thread(
            deliver, billing.engine, smtp, billing.clock(), documents=billing.document_pdf
        )
        # A sign-in mail queued by the member app goes out at once, not on the next round.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await wake.wait()


def freeze_served_app() -> int:
    """Freeze what the start built after the service was wired (the web's modules, routes and
    templates, uvicorn, the publisher): it lives as long as the process. Returns how many objects
    the collector no longer walks.

    ``settle_collector`` froze the service, but the start adds ~26,000 objects after it, and a
    full collection walking them stopped the event loop for ~70 ms under member requests on a
    loaded host (a stall in every page and form then in flight)."""
    before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count() - before


# Builds the web routes (gated.web.app.web_routes) from the service and a callable that wakes
# notice delivery; passed in by the command so billing never imports the web.
WebRoutes = Callable[[Billing, Callable[[], None]], list[BaseRoute]]


async def serve_forever(
    billing: Billing, web: WebRoutes | None = None, config_path: Path | None = None
) -> int:
    """Run every part of the billing companion until a signal arrives; the exit code.

    Cycles run as ``[serve] cycles`` says; ``"own-process"`` starts ``gated-billing run
    --every`` with ``config_path`` (the file ``billing`` was built from)."""
    config = billing.config
    webhook_secret = None
    if config.stripe is not None and config.stripe.webhook_secret_file is not None:
        webhook_secret = config.stripe.webhook_secret_file.read_text().strip()
    mail_wake = asyncio.Event()
    server = QuietServer(
        uvicorn.Config(
            create_app(billing, webhook_secret, web(billing, mail_wake.set) if web else ()),
            host=config.http.host,
            port=config.http.port,
            log_level="warning",
            lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()
    # GETs' store work in threads that writes waiting for SQLite's lock cannot take.
    loop.set_default_executor(LaneExecutor())
    # A connection for each worker thread before the first request (store.warm_pool).
    pooled = await asyncio.to_thread(warm_pool, billing.engine, READ_THREADS + WRITE_THREADS)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    if config.serve.cycles == "in-process":
        tasks.append(asyncio.create_task(_cycles(billing), name="cycles"))
    elif config.serve.cycles == "own-process":
        if config_path is None:
            raise ValueError('cycles = "own-process" needs the path of billing.toml')
        command = child_command(config_path, config.cycle_interval_s, config.serve.cycle_share)
        cycles = supervise(command, "cycle_process", config.serve.cycle_nice)
        tasks.append(asyncio.create_task(cycles, name="cycle-process"))
    if config.mqtt is not None and runs_own_process(config, config_path):
        assert config_path is not None
        child = PublisherProcess(config_path)
        # Payments recorded in worker threads wake the child at once (p99 < 2 s to the gate).

        def wake_child() -> None:
            loop.call_soon_threadsafe(child.wake)

        billing.published_hook = wake_child
        tasks.append(asyncio.create_task(child.run(), name="publisher-process"))
        intake = GateIntake(
            config.mqtt,
            config.sites,
            billing.record_gate_events,
            record_status=billing.record_gate_status,
        )
        tasks.append(asyncio.create_task(intake.run(), name="gate-intake"))
    elif config.mqtt is not None:
        publisher = Publisher(
            billing.engine,
            config.mqtt,
            billing.keys.current_signer,
            config.sites,
            billing.clock,
            billing.record_gate_events,
            record_status=billing.record_gate_status,
        )
        # Payments recorded in worker threads wake the publisher at once (p99 < 2 s to the gate).

        def wake_publisher() -> None:
            loop.call_soon_threadsafe(publisher.wake.set)

        billing.published_hook = wake_publisher
        tasks.append(asyncio.create_task(publisher.run(), name="publisher"))
    if config.smtp is not None:
        tasks.append(asyncio.create_task(_notices(billing, mail_wake), name="notices"))
    http = asyncio.create_task(server.serve(), name="http")
    tasks.append(http)
    # READY=1 only once the port is bound: a unit ordered after us may send webhooks or fetch
    # snapshots at once. A bind failure ends the http task and is handled below.
    while not server.started and not http.done():
        await asyncio.sleep(0.02)
    frozen = freeze_served_app() if server.started else 0
    notifier = Notifier()
    # Kept out of `tasks`: without WatchdogSec= it returns at once, which is not a failure.
    watchdog = asyncio.create_task(notifier.watchdog(), name="watchdog")
    if server.started:
        notifier.notify("READY=1")
    log.info(
        "event=serving http=%s:%d mqtt=%s cycles=%s publisher=%s frozen_objects=%d "
        "pooled_connections=%d",
        config.http.host,
        config.http.port,
        config.mqtt.url if config.mqtt else "off",
        config.serve.cycles,
        "own-process" if runs_own_process(config, config_path) else "in-process",
        frozen,
        pooled,
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = False
    for task in done:
        if task is not stopper:
            # No part is meant to finish on its own: stop everything and exit non-zero so the
            # service manager restarts us (every part resumes from the store).
            failed = True
            log.error("event=task_ended task=%s error=%r", task.get_name(), task.exception())
    notifier.notify("STOPPING=1")
    # A cycle running in its thread makes no new gateway call and ends after its batch.
    billing.stopping.set()
    server.should_exit = True
    for task in tasks:
        if task.get_name() != "http":
            task.cancel()
    watchdog.cancel()
    await asyncio.gather(*tasks, watchdog, return_exceptions=True)
    stopper.cancel()
    log.info("event=stopped failed=%s", failed)
    return 1 if failed else 0
