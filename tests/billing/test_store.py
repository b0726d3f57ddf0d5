"""The store: migrations, the version sequence, and the shortcut past Alembic."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from gated.billing_sync import schema
from gated.billing_sync.store import (
    HEAD_REVISION,
    MIGRATIONS,
    alembic_config,
    current_revision,
    fetch,
    longest_hold,
    next_versions,
    open_store,
    raise_version_floor,
    reading,
)


def test_head_revision_constant_matches_the_migrations() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == HEAD_REVISION
    assert MIGRATIONS.is_dir()


def test_migrations_create_every_table_and_reopen_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    engine = open_store(url)
    assert current_revision(engine) == HEAD_REVISION
    assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        assert next_versions(conn) == 1
        assert next_versions(conn, 3) == 2
    engine.dispose()
    again = open_store(url)
    with again.begin() as conn:
        assert next_versions(conn) == 5  # never goes back across a restart
        raise_version_floor(conn, 100)
        raise_version_floor(conn, 50)  # a lower floor changes nothing
        assert next_versions(conn) == 101
    with again.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_rolled_back_change_does_not_consume_a_version(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/b.db")
    try:
        with engine.begin() as conn:
            next_versions(conn, 10)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with engine.begin() as conn:
        assert next_versions(conn) == 1


def test_shipped_example_config_is_valid() -> None:
    from gated.billing_sync.config import load_billing_config

    root = Path(__file__).resolve().parents[2]
    config = load_billing_config(root / "config" / "billing.toml")
    assert config.sites == ["downtown"] and config.dunning.retry_days == [3, 7]
    assert config.database_url.startswith("sqlite:////")  # made absolute from the file's folder


@pytest.mark.parametrize("value", ["0", "33", '"eight"'])
def test_a_bad_stripe_concurrency_is_refused_by_name(tmp_path: Path, value: str) -> None:
    from gated.billing_sync.config import load_billing_config
    from gated.config import ConfigError

    shipped = Path(__file__).resolve().parents[2] / "config" / "billing.toml"
    path = tmp_path / "billing.toml"
    path.write_text(
        shipped.read_text()
        + f'\n[stripe]\napi_key_file = "{tmp_path}/stripe.key"\nconcurrency = {value}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_billing_config(path)
    message = str(info.value)
    assert "\n" not in message and "stripe.concurrency" in message


def test_fetch_reads_what_sqlalchemy_reads_with_booleans_converted(tmp_path: Path) -> None:
    """``fetch`` converts the driver's values as SQLAlchemy does, whether in each row (a few
    converted columns of many: a batch's member rows) or a column at a time (plans: 4 of 15)."""
    from sqlalchemy import update

    from gated.billing_sync.facts import _ALL_PLANS, _LOAD_MEMBERS
    from tests.billing.helpers import make_billing

    b, _ = make_billing(tmp_path)
    for m in ("m0", "m1", "m2"):
        b.add_member(m, m, plan_id="monthly", payment_method="pm_sim_ok")
    with b.engine.begin() as conn:
        conn.execute(update(schema.members).where(schema.members.c.id == "m1").values(erased=True))
        conn.execute(
            update(schema.subscriptions)
            .where(schema.subscriptions.c.member_id == "m2")
            .values(needs_new_card=True)
        )
        for stmt, params in ((_LOAD_MEMBERS, {"ids": ["m0", "m1", "m2"]}), (_ALL_PLANS, None)):
            want = sorted(tuple(r) for r in conn.execute(stmt, params))
            got = sorted(tuple(r) for r in fetch(conn, stmt, params))
            assert got == want
            assert {type(v) for r in got for v in r if isinstance(v, int)} == {int, bool}


def test_a_waiting_writer_tries_for_the_write_lock_every_few_milliseconds(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock, with short gaps between its transactions as
    a renewal cycle's batches have. SQLite's own busy handler tried once in 100 ms after the
    first 228 ms and missed them (a member's form waited through several batches); the store
    tries every LOCK_POLL_S, and gets in as soon as the lock is free."""
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    holder = sqlite3.connect(tmp_path / "billing.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    tries: list[str] = []
    waiting = threading.Event()
    done: list[float] = []

    def write() -> None:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.set_trace_callback(lambda sql: tries.append(sql) if "BEGIN" in sql else None)
            waiting.set()
            with conn.begin():
                done.append(time.monotonic())
                conn.execute(text("SELECT 1"))
            raw.set_trace_callback(None)

    writer = threading.Thread(target=write)
    writer.start()
    assert waiting.wait(10)
    deadline = time.monotonic() + 10
    while len(tries) < 20 and time.monotonic() < deadline:  # it keeps trying while we hold it
        time.sleep(0.01)
    assert not done  # still held
    holder.execute("COMMIT")
    released = time.monotonic()
    writer.join(10)
    holder.close()
    engine.dispose()
    assert len(tries) >= 20  # SQLite's busy handler: one statement, retried inside it
    assert done and done[0] - released < 1.0


def test_a_write_transaction_reports_how_long_it_held_the_lock(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with engine.connect() as conn:
        with conn.begin():
            time.sleep(0.02)  # the work the transaction does under the lock
        with conn.begin():
            pass
        held = longest_hold(conn)
        assert held is not None and held >= 0.02  # the longer of the two
        assert longest_hold(conn) is None  # asked once
    with reading(engine).connect() as conn:
        with conn.begin():  # a reader takes no write lock
            pass
        assert longest_hold(conn) is None
    engine.dispose()
