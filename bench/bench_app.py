"""Benchmark: the member app and the staff console over a real ``gated-billing serve``.

    .venv/bin/python bench/bench_app.py load [--members 100000] [--clients 50] [--db sqlite|postgres]
        [--cycles own-process|in-process] [--cycle-nice N] [--cycle-share F] [--settle]
    .venv/bin/python bench/bench_app.py pass [--seconds 300]
    .venv/bin/python bench/bench_app.py signup [--runs 30]
    .venv/bin/python bench/bench_app.py console [--consoles 20] [--gates 10] [--rate 20]

Every subcommand starts its own mosquitto, ``gated-billing serve`` (simulated payment gateway;
notices to an SMTP sink in this process) and, where it needs one, a real gate (``gated run``,
mock GPIO), on loopback ports, and prints one JSON document: percentiles in milliseconds, the
CPU seconds ``serve`` and this process used in each phase (this machine is shared: wall time is
mostly waiting for a core when the load is above its two), and the load average.

* ``load``: ``--members`` members seeded straight into the store (SQLite or a throwaway
  PostgreSQL), each renewing half an hour from now; ``--clients`` of them signed in through the
  real sign-in (the code from the mail). Each client loops: ``GET /app/``, ``GET /api/v1/me``,
  ``GET /api/v1/me/invoices``, ``POST /app/contact`` (phone changed), with ``--think`` seconds
  (uniform 0.5x..1.5x) between requests. Phase one (``--idle`` seconds) is the baseline; then
  the billing clock is moved on an hour (``gated-billing clock advance``'s store offset) and
  ``serve``'s own cycle renews every member while the clients keep going: phase two lasts until
  ``serve`` logs the cycle's end, or ``--during`` seconds (the renewals made meanwhile are
  counted). ``--cycles``: ``[serve] cycles``, the cycle in a process of its own (the default)
  or in ``serve``'s threads; ``--cycle-nice``: the cycle process's niceness (serve runs at the
  bench's, which may be raised for the benchmark lock; without it, ``[serve] cycle_nice``'s
  default: 10 steps nicer than serve); ``--cycle-share``: ``[serve] cycle_share``, the fraction
  of its wall time the cycle may be busy (unset: the default). Each phase reports ``serve``'s CPU
  milliseconds per request and the cycle process's CPU apart. ``--settle``: the store vacuumed,
  analyzed and checkpointed after the seed (bench_console's ``settle_store``), so no autovacuum
  or checkpoint of 100,000 rows just loaded runs under the timed requests. Rate limits count each client by an ``X-Forwarded-For``
  address (``[http] trusted_proxies`` names loopback, as behind a proxy): the bench's one
  address would otherwise be over the sign-in limit after 20 members. This process's collector
  is off while it times (``bench_gc_*`` counts any pass): its pauses would count as ``serve``'s.
* ``pass``: the browser tests' stack (tests/web/conftest.py: pass codes every 2 s) and Debian's
  Chromium with ``Date`` ten minutes ahead; the pass's ``data-code`` is read every 100 ms for
  ``--seconds`` and each new code is badged at the gate over its control socket. Also the pass
  page's weight (HTML, scripts, stylesheets) and the requests it makes while offline.
* ``signup``: ``--runs`` online sign-ups (``/app/join``, paid with the simulator's ``pm_sim_ok``
  through ``/app/join/pay``); before paying, the bench enrols a card for the new member in the
  store, as a front desk could. Timed from the pay form's answer (the payment succeeded) to the
  gate first answering ALLOW for that card (``badge`` over the control socket every 5 ms); the
  time from the pay form's submission is given too.
* ``console``: ``--consoles`` staff sessions (front desk, signed in with a password) each
  reading the check-in feed (``GET /desk/feed/events``, Server-Sent Events); ``--gates`` gates'
  events published over mosquitto at ``--rate`` per second in all, as gates send them (QoS 1,
  ``gated/v1/sites/downtown/gates/g{n}/events``). Latency runs from the publish to each feed's
  receipt of the row (event id). A baseline first: one event a second for ``--baseline``
  seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_console import settle_store
from gated.billing_sync import schema
from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.crashing import billing_for
from tests.gatefixture import GateProcess, write_config
from tests.services import free_port, run_mosquitto, run_postgres
from tests.web.conftest import BIN, CHROMIUM, CHROMIUM_ARGS, Inbox
from tests.web.helpers import hidden

PASSWORD = "front desk password"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pct(samples: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of durations in seconds, as milliseconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int, command: str) -> list[int]:
    """The processes whose parent is ``pid`` running ``gated-billing COMMAND`` (``serve``'s
    cycle process: ``run``; its publisher process: ``publish``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
            if argv[3:4] == [command.encode()]:
                found.append(int(stat.parent.name))
    return found


class Meter:
    """CPU seconds of ``serve``, of its cycle process (``[serve] cycles = "own-process"``), of
    its publisher process (``[serve] publisher``) and of this process, and wall time, since the
    last ``take``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last = self._now()

    def _now(self) -> tuple[float, float, float, float, float]:
        kids = {"run": 0.0, "publish": 0.0}
        for command in kids:
            for child in children(self.pid, command):
                with contextlib.suppress(OSError):  # it ended meanwhile
                    kids[command] += cpu_s(child)
        return (
            time.monotonic(),
            cpu_s(self.pid),
            kids["run"],
            kids["publish"],
            time.process_time(),
        )

    def take(self) -> dict[str, float]:
        now = self._now()
        wall, serve, cycle, publisher, bench = (b - a for a, b in zip(self.last, now, strict=True))
        self.last = now
        return {
            "wall_s": round(wall, 1),
            "serve_cpu_s": round(serve, 2),
            "cycle_process_cpu_s": round(cycle, 2),
            "publisher_process_cpu_s": round(publisher, 2),
            "bench_cpu_s": round(bench, 1),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        }


class GcPauses:
    """This process's garbage-collector pauses (a pause here delays the replies the clients
    time, and would be counted as the server's latency)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: list[float] = []
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self.started)

    def take(self) -> dict[str, float]:
        taken, self.pauses = self.pauses, []
        return {"bench_gc_n": len(taken), "bench_gc_max_ms": round(max(taken, default=0) * 1000, 1)}


def wait(check: Any, timeout: float = 30.0, step: float = 0.005, what: str = "") -> float:
    """Poll ``check`` until true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(step)
    raise TimeoutError(f"not reached within {timeout} s: {what}")


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[Inbox, int]]:
    """An SMTP sink (the browser tests' ``Inbox``) on a free port."""
    from aiosmtpd.controller import Controller

    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def billing_toml(
    root: Path, database_url: str, mqtt_url: str, smtp_port: int, keys: Path, extra: str = ""
) -> tuple[Path, str]:
    """A billing.toml in ``root`` signing with the gate's keys in ``keys``; (its path, the URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = root / "billing.toml"
    config.write_text(
        f'database_url = "{database_url}"\nstate_dir = "state"\nsites = ["downtown"]\n{extra}'
        f'[keys]\nhead_office_private_key_file = "{keys}/head-office.key"\n'
        f'credential_key_file = "{keys}/credential.key"\ncard_encryption_key_file = "cards.key"\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "billing-bench"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{url}"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
    )
    return config, url


@contextlib.contextmanager
def serving(config: Path, url: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``gated-billing serve -c config`` until the block ends; (the process, its log)."""
    log_path = config.parent / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [str(BIN), "serve", "-c", str(config)],
            stdout=log,
            stderr=log,
            env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
        )

    def up() -> bool:
        assert serve.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait(up, timeout=120, step=0.2, what="serve answering")
        yield serve, log_path
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)


def gate_in(root: Path, mqtt_url: str) -> GateProcess:
    """A gate (``gated run``, mock GPIO) at site downtown, its keys made in ``root/keys``."""
    return GateProcess(
        write_config(root, extra=f'[mqtt]\nurl = "{mqtt_url}"\nheartbeat_s = 1\n'), root
    )


async def sign_in_member(client: httpx.AsyncClient, inbox: Inbox, email: str) -> str:
    """The real sign-in by the code from the mail; returns the session's CSRF token."""
    page = (await client.get("/app/signin")).text
    seen = inbox.count(email)
    sent = await client.post("/app/signin", data={"email": email, "csrf": hidden(page, "csrf")})
    flow = hidden(sent.text, "flow")
    mail = await asyncio.to_thread(inbox.signin_mail, email, seen, 30.0)
    done = await client.post(
        "/app/signin/code",
        data={"flow": flow, "code": mail.code, "csrf": hidden(sent.text, "csrf")},
    )
    assert done.status_code == 303 and done.headers["location"] == "/app/", done.text[:500]
    return hidden((await client.get("/app/contact")).text, "csrf")


# --- load: member requests during a 100k-member renewal cycle -----------------------------


def seed_members(billing: Billing, count: int, with_email: int, due_at: int) -> None:
    """``count`` members on plan monthly, each renewing at ``due_at``; the first
    ``with_email`` have an e-mail address (the others get no mail, so the cycle's receipts
    do not flood the sink)."""
    now = billing.clock()
    ids = [f"m{i:07d}" for i in range(count)]
    chunk = 10_000
    for start in range(0, count, chunk):
        part = ids[start : start + chunk]
        with billing.engine.begin() as conn:
            conn.execute(
                schema.members.insert(),
                [
                    {
                        "id": m,
                        "name": f"Member {m}",
                        "email": f"{m}@example.org" if start + k < with_email else None,
                        "sites": '["downtown"]',
                        "role": "member",
                        "customer_ref": f"cus_sim_{m}",
                        "payment_method": "pm_sim_ok",
                        "erased": False,
                        "created_at": now - 86_400,
                        "phone": "+49 30 1000000",
                    }
                    for k, m in enumerate(part)
                ],
            )
            conn.execute(
                schema.subscriptions.insert(),
                [
                    {
                        "member_id": m,
                        "plan_id": "monthly",
                        "started_at": now - 86_400,
                        "paid_through": due_at,
                        "status": "active",
                        "retries_done": 0,
                        "needs_new_card": False,
                        "review_at": due_at,
                        # Told of this renewal a week ago, as in a running system (else the
                        # first cycle would announce every renewal at once).
                        "reminded_through": due_at,
                    }
                    for m in part
                ],
            )


async def member_loop(
    client: httpx.AsyncClient,
    csrf: str,
    think: float,
    stop: asyncio.Event,
    samples: list[tuple[float, str, float, int]],
) -> None:
    """GET /app/, GET /api/v1/me, GET /api/v1/me/invoices, POST /app/contact, round and
    round, ``think`` seconds apart on average; each sample (start, kind, seconds, status)."""
    rng = random.Random()
    await asyncio.sleep(rng.uniform(0, think))  # the clients do not march in step
    n = 0
    while not stop.is_set():
        step = n % 4
        n += 1
        started = time.monotonic()
        t = time.perf_counter()
        try:
            if step == 0:
                r = await client.get("/app/")
            elif step == 1:
                r = await client.get("/api/v1/me")
            elif step == 2:
                r = await client.get("/api/v1/me/invoices")
            else:
                phone = f"+49 30 {rng.randrange(1_000_000, 9_999_999)}"
                r = await client.post(
                    "/app/contact",
                    data={"csrf": csrf, "phone": phone, "emergency_contact": "Kim +49 170 1"},
                )
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        took = time.perf_counter() - t
        samples.append((started, "post" if step == 3 else "get", took, status))
        await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))


def cycle_done(log: Path, members: int) -> bool:
    """Whether ``serve`` logged a cycle that renewed at least ``members``."""
    for found in re.finditer(r"event=cycle .*?renewals=(\d+)", log.read_text(errors="replace")):
        if int(found[1]) >= members:
            return True
    return False


def per_request(summary: Any, usage: dict[str, float]) -> dict[str, float]:
    """``serve``'s CPU milliseconds per member request in a phase (all four kinds together;
    the cycle's process, when it has one, is counted apart)."""
    n = summary["get"].get("n", 0) + summary["post"].get("n", 0)
    return {"serve_cpu_ms_per_request": round(usage["serve_cpu_s"] * 1000 / max(n, 1), 2)}


def summarize(samples: list[tuple[float, str, float, int]], since: float, until: float) -> Any:
    inside = [s for s in samples if since <= s[0] < until]
    return {
        "get": pct([s[2] for s in inside if s[1] == "get"]),
        "post": pct([s[2] for s in inside if s[1] == "post"]),
        # A GET answers 200 (a redirect would be a lost session); the contact form 200 or 303.
        "unexpected_status": sorted(
            {f"{s[1]} {s[3]}" for s in inside if s[3] != 200 and (s[1], s[3]) != ("post", 303)}
        ),
        "requests_per_s": round(len(inside) / max(until - since, 1e-9), 1),
    }


async def load_phases(
    url: str, inbox: Inbox, args: argparse.Namespace, billing: Billing, serve: Any, log: Path
) -> dict[str, Any]:
    clients = [
        httpx.AsyncClient(
            base_url=url,
            timeout=30,
            headers={"X-Forwarded-For": f"10.1.{i // 250}.{i % 250 + 1}"},
        )
        for i in range(args.clients)
    ]
    try:
        t = time.monotonic()
        csrfs = [
            await sign_in_member(c, inbox, f"m{i:07d}@example.org") for i, c in enumerate(clients)
        ]
        signin_s = time.monotonic() - t
        samples: list[tuple[float, str, float, int]] = []
        stop = asyncio.Event()
        # This process's collector off while it times (its ~180,000 long-lived objects frozen
        # first): its full passes paused every client 0.2-0.5 s, and even after the freeze one
        # pass over the phase's replies took ~100 ms, all counted as the server's latency. The
        # few minutes' garbage is collected after the phases.
        gc.collect()
        gc.freeze()
        gc.disable()
        pauses = GcPauses()
        meter = Meter(serve.pid)
        idle_from = time.monotonic()
        loops = [
            asyncio.create_task(member_loop(c, csrf, args.think, stop, samples))
            for c, csrf in zip(clients, csrfs, strict=True)
        ]
        await asyncio.sleep(args.idle)
        idle_to = time.monotonic()
        idle_cpu = {**meter.take(), **pauses.take()}
        before = await asyncio.to_thread(renewals, billing)
        await asyncio.to_thread(billing.advance_clock, 3600)
        cycle_from = time.monotonic()
        ended = False
        # Until the cycle ends, or for --during seconds of it (on a loaded machine a 100k
        # cycle can take most of an hour; the clients' latency is what is measured).
        while time.monotonic() - cycle_from < args.during:
            await asyncio.sleep(0.5)
            assert serve.poll() is None, log.read_text()[-3000:]
            if await asyncio.to_thread(cycle_done, log, args.members):
                ended = True
                break
        cycle_to = time.monotonic()
        cycle_cpu = {**meter.take(), **pauses.take()}
        stop.set()
        await asyncio.gather(*loops)
        gc.enable()
        renewed = await asyncio.to_thread(renewals, billing) - before
        idle = summarize(samples, idle_from, idle_to)
        during = summarize(samples, cycle_from, cycle_to)
        return {
            "signin_s": round(signin_s, 1),
            "idle": {**idle, **idle_cpu, **per_request(idle, idle_cpu)},
            "during_cycle": {
                **during,
                **cycle_cpu,
                **per_request(during, cycle_cpu),
                "cycle_ended": ended,
                "renewed_meanwhile": renewed,
            },
        }
    finally:
        for c in clients:
            await c.aclose()


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        inbox, smtp_port = stack.enter_context(smtp_sink())
        if args.db == "postgres":
            database_url = stack.enter_context(run_postgres()).create_database("bench")
        else:
            database_url = "sqlite:///billing.db"
        gate_in(root / "gate", broker.url)  # only for its keys: no gate runs here
        config, url = billing_toml(
            root,
            database_url,
            broker.url,
            smtp_port,
            root / "gate" / "keys",
            f'cycle_interval_s = 1\n[serve]\ncycles = "{args.cycles}"\n'
            + (f"cycle_share = {args.cycle_share}\n" if args.cycle_share is not None else ""),
        )
        billing = billing_for(config)
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        t = time.monotonic()
        seed_members(billing, args.members, args.clients, billing.clock() + 1800)
        seed_s = time.monotonic() - t
        if args.settle:
            settle_store(billing.engine.url.render_as_string(hide_password=False))
        serve, log = stack.enter_context(serving(config, url))
        if args.cycle_nice is not None and args.cycles == "own-process":
            # serve may run at a high priority (the bench's lock); its cycle process at this
            # niceness, as a deployment would Nice= a cycle runner apart.
            wait(lambda: len(children(serve.pid, "run")) == 1, what="serve's cycle process")
            (child,) = children(serve.pid, "run")
            os.setpriority(os.PRIO_PROCESS, child, args.cycle_nice)
        result = asyncio.run(load_phases(url, inbox, args, billing, serve, log))
        return {
            "db": args.db,
            "cycles": args.cycles,
            "cycle_nice": args.cycle_nice,
            "cycle_share": args.cycle_share,
            "members": args.members,
            "clients": args.clients,
            "think_s": args.think,
            "seed_s": round(seed_s, 1),
            **result,
        }


def renewals(billing: Billing) -> int:
    """Renewal invoices in the store so far."""
    with billing.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(schema.invoices.c.kind == "renewal")
            ).scalar_one()
        )


# --- pass: every code the page shows, with the browser's clock ten minutes off ------------


def run_pass(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.web.conftest import _serve
    from tests.web.test_browser import Tab
    from tests.web.test_pass import CLOCK_AHEAD, CODE, let_in_once_published, make_pass

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        gate = gate_in(root / "gate", broker.url)
        web = stack.enter_context(contextlib.contextmanager(_serve)(root, gate, broker.url))
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        tab = Tab(browser, web, "")
        tab.context.add_init_script(CLOCK_AHEAD)
        page = tab.page
        first = make_pass(tab, "quinn@example.com")
        let_in_once_published(web, first)
        skew_s = (page.evaluate("Date.now()") - time.time() * 1000) / 1000

        # Weight: the pass reloaded, with its service worker in control (as a member opens it).
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10_000)
        weighed: list[Any] = []
        page.on("response", lambda r: weighed.append(r))
        page.reload()
        page.wait_for_selector(CODE)
        kinds = ("document", "script", "stylesheet")
        weight = {
            r.url.removeprefix(web.url): len(r.body())
            for r in weighed
            if r.request.resource_type in kinds
        }

        seen: dict[str, dict[str, Any]] = {}
        badge_s: list[float] = []
        drift_s: list[float] = []
        samples = 0
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            code = str(page.get_attribute("#pass-code", "data-code"))
            samples += 1
            if code not in seen and code != first:
                t = time.perf_counter()
                seen[code] = gate.request("badge", {"qr": code})
                badge_s.append(time.perf_counter() - t)
                drift_s.append(int(code.split(".")[2]) - time.time())
            page.wait_for_timeout(100)
        refused = {c: d["reason"] for c, d in seen.items() if not d["allow"]}

        # Each request's URL and when it was issued, in seconds after going offline (a
        # negative one was on its way as the network went).
        requests: list[tuple[str, float]] = []
        offline_started = time.monotonic() + 3600.0
        page.on("request", lambda r: requests.append((r.url, time.monotonic() - offline_started)))
        tab.context.set_offline(True)
        offline_codes: dict[str, bool] = {}
        try:
            offline_started = time.monotonic()
            while time.monotonic() - offline_started < args.offline_seconds:
                code = str(page.get_attribute("#pass-code", "data-code"))
                if code not in offline_codes and code not in seen:
                    offline_codes[code] = bool(gate.request("badge", {"qr": code})["allow"])
                page.wait_for_timeout(100)
        finally:
            offline_s = time.monotonic() - offline_started
            tab.context.set_offline(False)
        # Back online, the page asks head office at once (its "online" handler): not counted.
        offline_requests = [(u, round(t, 2)) for u, t in requests if t < offline_s]
        tab.close()
        return {
            "seconds": args.seconds,
            "browser_clock_ahead_s": round(skew_s, 1),
            "samples": samples,
            "codes_shown": len(seen),
            "codes_accepted": len(seen) - len(refused),
            "refused": refused,
            "code_ts_minus_real_s": {"min": min(drift_s), "max": max(drift_s)} if drift_s else {},
            "badge_over_socket": pct(badge_s),
            "page_weight_bytes": sum(weight.values()),
            "page_parts": weight,
            "offline_seconds": args.offline_seconds,
            "offline_codes": len(offline_codes),
            "offline_accepted": sum(offline_codes.values()),
            "offline_requests": offline_requests,
        }


# --- signup: paid → the gate lets the new member in ---------------------------------------

JOIN = {
    "site": "downtown",
    "plan": "monthly",
    "phone": "+49 30 1234567",
    "emergency_contact": "Max +49 30 7654321",
    "accept": "yes",
}


def run_signup(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        _inbox, smtp_port = stack.enter_context(smtp_sink())
        gate = gate_in(root / "gate", broker.url)
        config, url = billing_toml(
            root,
            "sqlite:///billing.db",
            broker.url,
            smtp_port,
            root / "gate" / "keys",
            f'[serve]\npublisher = "{args.publisher}"\n',
        )
        billing = billing_for(config)
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        serve, _log = stack.enter_context(serving(config, url))
        gate.start()
        stack.callback(gate.stop)
        meter = Meter(serve.pid)
        from_response: list[float] = []
        from_submit: list[float] = []
        pay_s: list[float] = []
        # The first sign-up is not timed: the gate may still be subscribing after its start.
        for run in range(-1, args.runs):
            email = f"joiner{run + 1}@example.org"
            uid = f"05{run + 1:012X}"
            with httpx.Client(
                base_url=url,
                timeout=30,
                headers={"X-Forwarded-For": f"10.2.{run // 250 + 1}.{run % 250 + 1}"},
            ) as client:
                page = client.get("/app/join").text
                joined = client.post(
                    "/app/join",
                    data={
                        **JOIN,
                        "name": f"Joiner {run}",
                        "email": email,
                        "csrf": hidden(page, "csrf"),
                        "terms_sha256": hidden(page, "terms_sha256"),
                    },
                )
                assert joined.status_code == 303, joined.text[:500]
                with billing.engine.connect() as conn:
                    member_id = conn.execute(
                        select(schema.members.c.id).where(schema.members.c.email == email)
                    ).scalar_one()
                billing.assign_card(member_id, uid)
                page = client.get("/app/join/pay").text
                form = {"csrf": hidden(page, "csrf"), "key": hidden(page, "key")}
                submitted = time.perf_counter()
                paid = client.post("/app/join/pay", data={**form, "method": "pm_sim_ok"})
                answered = time.perf_counter()
                assert paid.headers.get("location") == "/app/join/welcome", paid.text[:500]
            wait(
                lambda uid=uid: gate.request("badge", {"card": uid})["allow"],
                what="the gate lets the new member in",
            )
            allowed = time.perf_counter()
            if run < 0:
                continue
            from_response.append(allowed - answered)
            from_submit.append(allowed - submitted)
            pay_s.append(answered - submitted)
        return {
            "runs": args.runs,
            "publisher": args.publisher,
            "paid_to_allow": pct(from_response),
            "pay_submitted_to_allow": pct(from_submit),
            "pay_request": pct(pay_s),
            **meter.take(),
        }


# --- console: a gate storm on every open check-in feed -------------------------------------


async def feed_reader(
    client: httpx.AsyncClient, got: dict[str, list[float]], ready: asyncio.Event
) -> None:
    """Read the check-in feed's events; each event id's receipt times."""
    async with client.stream("GET", "/desk/feed/events", timeout=None) as r:
        assert r.status_code == 200, r.status_code
        ready.set()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                item = json.loads(line[6:])
                got.setdefault(str(item["event_id"]), []).append(time.monotonic())


async def storm(
    mqtt_url: str,
    gates: int,
    rate: float,
    seconds: float,
    sent: dict[str, float],
    members: int,
) -> None:
    """Publish ``rate`` gate events a second for ``seconds``, round-robin over ``gates``."""
    import aiomqtt
    from ulid import ULID

    from gated.contract import events_topic

    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    rng = random.Random(3)
    async with aiomqtt.Client(host, int(port), identifier=f"bench-gates-{os.getpid()}") as client:
        start = time.monotonic()
        n = 0
        while n < rate * seconds:
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            gate = f"g{n % gates}"
            allow = rng.random() < 0.9
            event = {
                "event_id": str(ULID()),
                "site": "downtown",
                "gate": gate,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kind": "entry" if allow else "deny",
                "member_id": f"m{rng.randrange(members):07d}",
                "credential_kind": "card",
                "reader_id": "sim-1",
                "direction": "in",
                "reason": "ok" if allow else "suspended",
                "latency_us": 120,
                "source": "reader",
                "operator": None,
            }
            sent[event["event_id"]] = time.monotonic()
            await client.publish(
                events_topic("downtown", gate), json.dumps(event, separators=(",", ":")), qos=1
            )
            n += 1


async def staff_client(url: str, n: int) -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        base_url=url, timeout=30, headers={"X-Forwarded-For": f"10.3.0.{n + 1}"}
    )
    page = (await client.get("/desk/signin")).text
    r = await client.post(
        "/desk/signin",
        data={"staff_id": "desk", "password": PASSWORD, "csrf": hidden(page, "csrf")},
    )
    assert r.status_code == 303 and r.headers["location"] == "/desk/", r.text[:500]
    return client


async def console_phases(
    url: str, mqtt_url: str, args: argparse.Namespace, serve: Any
) -> dict[str, Any]:
    clients = [await staff_client(url, n) for n in range(args.consoles)]
    got: dict[str, list[float]] = {}
    ready = [asyncio.Event() for _ in clients]
    readers = [
        asyncio.create_task(feed_reader(c, got, e)) for c, e in zip(clients, ready, strict=True)
    ]
    try:
        for e in ready:
            await asyncio.wait_for(e.wait(), 30)
        meter = Meter(serve.pid)
        phases: dict[str, Any] = {}
        for name, rate, seconds in (
            ("baseline_1_per_s", 1.0, args.baseline),
            (f"storm_{args.rate:g}_per_s", args.rate, args.seconds),
        ):
            sent: dict[str, float] = {}
            meter.take()
            await storm(mqtt_url, args.gates, rate, seconds, sent, args.members)
            await asyncio.sleep(3)  # the last rows' way to every feed
            usage = meter.take()
            latencies = [t - sent[e] for e in sent for t in got.get(e, [])]
            missing = sum(args.consoles - len(got.get(e, [])) for e in sent)
            phases[name] = {
                "events": len(sent),
                "latency": pct(latencies),
                "rows_missing": missing,
                **usage,
            }
        return phases
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for c in clients:
            await c.aclose()


def run_console(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        _inbox, smtp_port = stack.enter_context(smtp_sink())
        gate_in(root / "gate", broker.url)  # only for its keys: the bench plays the gates
        config, url = billing_toml(
            root, "sqlite:///billing.db", broker.url, smtp_port, root / "gate" / "keys"
        )
        billing = billing_for(config)
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        seed_members(billing, args.members, 0, billing.clock() + 30 * 86_400)
        billing.staff_access().add("desk", "Dana Desk", "front_desk", ["downtown"], PASSWORD)
        billing.engine.dispose()
        serve, _log = stack.enter_context(serving(config, url))
        phases = asyncio.run(console_phases(url, broker.url, args, serve))
        return {
            "consoles": args.consoles,
            "gates": args.gates,
            "members": args.members,
            **phases,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="member requests during a renewal cycle")
    load.add_argument("--members", type=int, default=100_000)
    load.add_argument("--clients", type=int, default=50)
    load.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    load.add_argument(
        "--cycles",
        choices=("in-process", "own-process"),
        default="own-process",
        help="[serve] cycles",
    )
    load.add_argument(
        "--cycle-nice", type=int, help="set the cycle process to this niceness (own-process)"
    )
    load.add_argument(
        "--cycle-share", type=float, help="[serve] cycle_share (unset: the config's default)"
    )
    load.add_argument(
        "--settle", action="store_true", help="vacuum, analyze and checkpoint after the seed"
    )
    load.add_argument("--think", type=float, default=1.0, help="mean seconds between requests")
    load.add_argument("--idle", type=float, default=30.0, help="seconds of the baseline phase")
    load.add_argument(
        "--during", type=float, default=180.0, help="seconds of the cycle measured at most"
    )
    pass_ = sub.add_parser("pass", help="every pass code shown, clock 10 minutes off")
    pass_.add_argument("--seconds", type=float, default=300.0)
    pass_.add_argument("--offline-seconds", type=float, default=60.0)
    signup = sub.add_parser("signup", help="sign-up paid → first ALLOW at the gate")
    signup.add_argument("--runs", type=int, default=30)
    signup.add_argument(
        "--publisher",
        choices=("in-process", "own-process"),
        default="in-process",
        help="[serve] publisher",
    )
    console = sub.add_parser("console", help="gate storm → rows on open console feeds")
    console.add_argument("--consoles", type=int, default=20)
    console.add_argument("--gates", type=int, default=10)
    console.add_argument("--rate", type=float, default=20.0)
    console.add_argument("--seconds", type=float, default=60.0)
    console.add_argument("--baseline", type=float, default=20.0)
    console.add_argument("--members", type=int, default=1000)
    args = parser.parse_args()
    # Stopped from outside (kill PID), still stop serve, the gate, brokers and databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = {"load": run_load, "pass": run_pass, "signup": run_signup, "console": run_console}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    result = run[args.command](args)
    print(
        json.dumps(
            {
                "command": args.command,
                "started": started,
                "load_avg_before": round(load_before, 1),
                "load_avg_after": round(os.getloadavg()[0], 1),
                "cpu_count": os.cpu_count(),
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
