"""Benchmark: ``serve``'s CPU per member request, in one process, without a network or a load.

    .venv/bin/python bench/bench_requests.py [--members 20000] [--rounds 300] [--db sqlite|postgres]
        [--profile FILE]

The member app's four requests of ``bench_app.py load`` (``GET /app/``, ``GET /api/v1/me``,
``GET /api/v1/me/invoices``, ``POST /app/contact``) through the real starlette app ``serve``
builds (``create_app`` with the web routes), over httpx's ASGI transport, for one member
signed in through the real sign-in (the code read from the outbox). Prints one JSON document:
the process CPU milliseconds per request of each kind (median of the rounds, after 20 not
counted), the statements and the pooled connections (each a transaction: on PostgreSQL a BEGIN
and a ROLLBACK round trip) each kind takes from the store, and with ``--profile`` writes a
cProfile of the rounds to FILE. The worker threads
of ``asyncio.to_thread`` are in this process, so its CPU time is all of a request's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, event, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_app import billing_toml, seed_members
from gated.billing_sync import schema
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.app import web_routes
from tests.billing.crashing import billing_for
from tests.gatefixture import write_config
from tests.services import run_postgres
from tests.web.helpers import hidden, parse_signin_mail

KINDS = ("GET /app/", "GET /api/v1/me", "GET /api/v1/me/invoices", "POST /app/contact")


async def sign_in(client: httpx.AsyncClient, billing: Billing, email: str) -> str:
    """The real sign-in by the code from the mail (read from the outbox); the CSRF token."""
    page = (await client.get("/app/signin")).text
    sent = await client.post("/app/signin", data={"email": email, "csrf": hidden(page, "csrf")})
    n = schema.notifications
    body = None
    while body is None:  # queued by a task of the sign-in's own
        await asyncio.sleep(0.05)
        with billing.engine.connect() as conn:
            body = conn.execute(select(n.c.body).where(n.c.to_addr == email)).scalar()
    code = parse_signin_mail(email, body).code
    done = await client.post(
        "/app/signin/code",
        data={"flow": hidden(sent.text, "flow"), "code": code, "csrf": hidden(sent.text, "csrf")},
    )
    assert done.status_code == 303, done.text[:300]
    return hidden((await client.get("/app/contact")).text, "csrf")


class StoreUse:
    """Statements executed and connections taken from the pool, counted as they happen."""

    def __init__(self, engine: Engine) -> None:
        self.statements = self.connections = 0
        self.pool = engine.pool
        # On every engine: the service's option engines (``store.reading``, the clock's) made
        # before this do not take a listener added to ``engine`` now.
        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(engine, "checkout", self._connection)

    def _statement(self, conn: Connection, *_: Any) -> None:
        if conn.engine.pool is self.pool:
            self.statements += 1

    def _connection(self, *_: Any) -> None:
        self.connections += 1

    def now(self) -> tuple[int, int]:
        return self.statements, self.connections


async def rounds(billing: Billing, count: int, profile: cProfile.Profile | None) -> Any:
    app = create_app(billing, None, web_routes(billing))
    use = StoreUse(billing.engine)
    store: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        csrf = await sign_in(client, billing, "m0000000@example.org")
        spent: dict[str, list[float]] = {k: [] for k in KINDS}
        for n in range(count + 20):
            for kind in KINDS:
                if profile is not None and n == 20:
                    profile.enable()
                t = time.process_time()
                before = use.now()
                if kind.startswith("POST"):
                    r = await client.post(
                        "/app/contact",
                        data={
                            "csrf": csrf,
                            "phone": f"+49 30 {1_000_000 + n}",
                            "emergency_contact": "Kim",
                        },
                    )
                    assert r.status_code in (200, 303), r.status_code
                else:
                    r = await client.get(kind.split()[1])
                    assert r.status_code == 200, (kind, r.status_code)
                if n >= 20:
                    spent[kind].append(time.process_time() - t)
                    after = use.now()
                    store[kind].append((after[0] - before[0], after[1] - before[1]))
        if profile is not None:
            profile.disable()
    cpu = {kind: round(statistics.median(v) * 1000, 2) for kind, v in spent.items()} | {
        "all_four_mean": round(sum(sum(v) for v in spent.values()) * 1000 / (4 * count), 2)
    }
    uses = {
        kind: {
            "statements": statistics.median(u[0] for u in v),
            "connections": statistics.median(u[1] for u in v),
        }
        for kind, v in store.items()
    }
    return cpu, uses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.db == "postgres":
            database_url = stack.enter_context(run_postgres()).create_database("bench")
        else:
            database_url = "sqlite:///billing.db"
        write_config(root / "gate")  # only for its keys
        config, _url = billing_toml(
            root, database_url, "mqtt://127.0.0.1:1", 1, root / "gate" / "keys"
        )
        billing = billing_for(config)
        billing.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        seed_members(billing, args.members, 10, billing.clock() + 1800)
        profile = cProfile.Profile() if args.profile else None
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        result, uses = asyncio.run(rounds(billing, args.rounds, profile))
        if profile is not None:
            profile.dump_stats(args.profile)
        print(
            json.dumps(
                {
                    "started": started,
                    "db": args.db,
                    "members": args.members,
                    "rounds": args.rounds,
                    "cpu_ms_per_request": result,
                    "store_per_request": uses,
                }
            )
        )


if __name__ == "__main__":
    main()
