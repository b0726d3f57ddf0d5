"""A real ``gated-billing serve`` on SQLite answers a member's page while more writes than it
has worker threads wait for the store's write lock (held here, as a renewal batch holds it):
GETs have worker threads of their own (``gated.billing_sync.worker_lanes``)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx

from gated.billing_sync.service import PlanSpec
from gated.billing_sync.worker_lanes import WRITE_THREADS
from tests.billing.crashing import billing_for
from tests.services import free_port
from tests.sync.helpers import wait_until
from tests.web.conftest import running_serve
from tests.web.helpers import hidden

# asyncio's own default pool on two cores: min(32, cores + 4).
ONE_POOL_THREADS = 6


def sleeping_threads(pid: int) -> int:
    """Threads of ``pid`` asleep in a timed sleep: SQLite's busy handler, waiting for the lock
    (idle worker threads wait on a futex, the event loop in epoll)."""
    found = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += (task / "wchan").read_text() == "hrtimer_nanosleep"
        except OSError:  # the thread ended while we looked
            continue
    return found


def serve_pid(log: Path) -> int:
    """The pid of the one ``gated-billing serve`` writing ``log``."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "fd" / "1").resolve() == log and b"serve" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError("no serve writes " + str(log))


def test_a_page_answers_while_writes_wait_for_the_write_lock(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "billing.toml"
    config.write_text(
        'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
        '[keys]\nhead_office_private_key_file = "keys/ho.pem"\n'
        'credential_key_file = "keys/credential.key"\ncard_encryption_key_file = "cards.key"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{url}"\n'
        '[serve]\ncycles = "off"\n'
    )
    b = billing_for(config)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
    b.add_member("ann", "Ann", plan_id="monthly", email="ann@example.com")
    cookie = b.member_access().open_session("ann", "test")
    b.engine.dispose()
    writes = WRITE_THREADS + 2  # more than the write lane (and the one pool before it) holds

    async def run(pid: int) -> None:
        async with httpx.AsyncClient(
            base_url=url, cookies={"gated-member": cookie}, timeout=30
        ) as client:
            csrf = hidden((await client.get("/app/contact")).text, "csrf")
            lock = sqlite3.connect(tmp_path / "billing.db", isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                posts = [
                    asyncio.create_task(
                        client.post(
                            "/app/contact",
                            data={
                                "csrf": csrf,
                                "phone": f"+49 30 100000{n}",
                                "emergency_contact": "Kim +49 170 1",
                            },
                        )
                    )
                    for n in range(writes)
                ]
                # Every thread one pool would have is waiting for the lock.
                await asyncio.to_thread(
                    wait_until,
                    lambda: sleeping_threads(pid) >= ONE_POOL_THREADS,
                    timeout=10,
                    what="writes waiting for the lock",
                )
                async with asyncio.timeout(10):
                    page = await client.get("/app/")
                assert page.status_code == 200
                assert not any(p.done() for p in posts)  # the lock is still held
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            answers = await asyncio.gather(*posts)
            assert all("Details saved" in r.text for r in answers)

    with running_serve(config) as log:
        asyncio.run(run(serve_pid(log.resolve())))
