"""Opening the billing store: an SQLAlchemy engine (SQLite in WAL mode by default, PostgreSQL by
URL) migrated to the newest schema with Alembic, plus the few helpers every module shares."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Engine,
    Result,
    Select,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement

from gated.billing_sync import schema
from gated.errors import GatedError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration; a store already there skips loading Alembic (faster CLI start).
# tests/billing/test_store.py checks this against the migration scripts.
HEAD_REVISION = "0030_rollup_guards"


class StoreError(GatedError):
    """The billing store cannot be opened or is in an unexpected state."""


def digest(token: str) -> str:
    """How the store keeps a token (a session cookie, a sign-in or confirmation link): its
    SHA-256, so a copy of the store opens nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_usable(engine: Engine, table: Table, column: str, token: str, now: int) -> bool:
    """Whether ``table`` holds ``token`` (its digest in ``column``) unused and unexpired."""
    with engine.connect() as conn:
        row = conn.execute(
            select(table.c.id).where(
                table.c[column] == digest(token),
                table.c.used_at.is_(None),
                table.c.expires_at > now,
            )
        ).first()
    return row is not None


# Connections a store's pool keeps open (see open_store).
POOL_SIZE = 16


def warm_pool(engine: Engine, connections: int) -> int:
    """Open ``connections`` of the pool's connections now (at most its size) and leave them in
    it; returns how many it opened. A pool opens connections as it is first asked for them: on
    PostgreSQL each is a new server process and a login, and when the first members' requests
    came at once, the few that opened the pool's connections were the slowest of their minute
    (about 100 ms against a median of 13). SQLite's connections stay lazy: a file opened in the
    process, and sixteen of them at once added up to 0.8 s to a start on a loaded host."""
    pool = engine.pool
    if engine.dialect.name == "sqlite" or not isinstance(pool, QueuePool):
        return 0
    opened = [engine.connect() for _ in range(min(connections, pool.size()))]
    for conn in opened:
        conn.close()
    return len(opened)


def open_store(url: str, *, durability: str = "crash", migrate: bool = True) -> Engine:
    """Create the engine for ``url`` and bring its schema up to date.

    SQLite runs in WAL mode: ``synchronous=NORMAL`` survives kill -9 of this process; ``durability
    = "power"`` selects FULL for hosts that lose power without warning.
    """
    is_sqlite = url.startswith("sqlite")
    if is_sqlite and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # `serve` asks the store from its event loop, the worker threads of asyncio.to_thread (6 on
    # two cores) and its publisher, notices and intake: past the default pool of 5, every extra
    # connection was opened (7 pragmas on SQLite, a login on PostgreSQL) and closed again per
    # request.
    options: dict[str, Any] = {} if url == "sqlite:///:memory:" else {"pool_size": POOL_SIZE}
    engine = create_engine(url, future=True, **options)
    if is_sqlite:
        sync = "FULL" if durability == "power" else "NORMAL"

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # The driver left to itself begins a transaction only at the first INSERT, UPDATE or
            # DELETE, so the reads before it ran outside the transaction: another connection
            # could commit in between and be overwritten. SQLAlchemy's begin runs BEGIN instead.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            # A renewal cycle touches every member's rows; the default 2 MB page cache thrashes
            # past ~10k members (TESTSTACK.md: 2-3x faster upserts with a larger cache or mmap).
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA mmap_size=268435456")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get(_BEGIN, "IMMEDIATE")
            if mode != "IMMEDIATE":
                conn.exec_driver_sql(f"BEGIN {mode}")
                return
            _begin_immediate(conn)
            conn.info[_BEGAN] = time.perf_counter()

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _end(conn: Connection) -> None:
            began = conn.info.pop(_BEGAN, None)
            if began is not None:
                held = time.perf_counter() - began
                conn.info[_HELD] = max(conn.info.get(_HELD, 0.0), held)

    if migrate:
        upgrade(engine)
    return engine


# How a transaction begins on SQLite, as an execution option. By default IMMEDIATE: it takes the
# write lock at BEGIN, so what it reads cannot change before it writes (the billing cycle and a
# webhook booking the same charge, the front desk paying during a cycle), and it waits its turn
# (busy_timeout) instead of failing half way. ``reading`` engines begin DEFERRED.
_BEGIN = "gated_sqlite_begin"
# Each site's time zone (``[sites.<id>] timezone``), as an execution option the service's engine
# carries (``Context``): legal numbering reads it on the connection it numbers in, however deep
# in a transaction a document is issued.
_SITE_ZONES = "gated_site_zones"


# How long a writer waits for SQLite's one write lock before giving up, and how often it tries.
# SQLite's own busy handler sleeps 1, 2, 5, 10 ... and then 100 ms between tries: a waiting
# writer (a member's form) missed the short gaps between a renewal batch's transactions and
# waited through several of them (p99 1.4 s during a cycle). Trying every 2 ms catches a gap.
BUSY_TIMEOUT_S = 10.0
LOCK_POLL_S = 0.002
# conn.info keys: when the connection's write transaction began; the longest it has held the
# write lock since ``longest_hold`` last asked.
_BEGAN = "gated_write_began"
_HELD = "gated_write_held_s"


def _begin_immediate(conn: Connection) -> None:
    """``BEGIN IMMEDIATE``, trying every ``LOCK_POLL_S`` for up to ``BUSY_TIMEOUT_S`` while
    another connection holds the write lock."""
    raw = conn.connection.driver_connection
    assert raw is not None
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while time.monotonic() < deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
            time.sleep(LOCK_POLL_S)
        # Once more through SQLAlchemy: the caller gets its OperationalError, as before.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")


def longest_hold(conn: Connection) -> float | None:
    """The longest time (seconds) a write transaction on ``conn`` held SQLite's write lock
    since the last call; None when none did (or on PostgreSQL, which has no such lock)."""
    held: float | None = conn.info.pop(_HELD, None)
    return held


def with_site_zones(engine: Engine, zones: Mapping[str, str]) -> Engine:
    """``engine`` whose connections know each site's time zone (see ``site_zone``)."""
    return engine.execution_options(**{_SITE_ZONES: dict(zones)})


def site_zone(conn: Connection, site: str) -> str:
    """The time zone of ``site`` for the store ``conn`` belongs to (UTC when not given)."""
    zones: Mapping[str, str] = conn.get_execution_options().get(_SITE_ZONES, {})
    return zones.get(site, "UTC")


def reading(engine: Engine) -> Engine:
    """``engine`` for work that only reads. On SQLite its transactions begin DEFERRED: a snapshot
    of the store that neither waits for nor blocks the writer (WAL). Nothing may be written
    through it: a write racing another writer would fail with "database is locked"."""
    return engine.execution_options(**{_BEGIN: "DEFERRED"})


# The connection ``one_read`` holds for the reads of one unit of work, with the pool it came
# from (reads of another store open their own); None outside ``one_read``.
_SHARED_READ: ContextVar[tuple[object, Connection] | None] = ContextVar(
    "gated_shared_read", default=None
)


@contextmanager
def one_read(reader: Engine) -> Iterator[None]:
    """Inside this block every ``read_connection`` of the same store is one connection in one
    transaction: one pool checkout, one BEGIN and one ROLLBACK for all the reads of a page, not
    one of each for every read it makes. On PostgreSQL each of those is a round trip to the
    server, and a worker thread waiting on one gives up the interpreter lock and then waits to
    get it back behind the other threads (a member's page made 28 round trips, 12 of them for
    its six connections). Only for work that reads; writes open their own connections."""
    shared = _SHARED_READ.get()
    if shared is not None and shared[0] is reader.pool:
        yield
        return
    with reader.connect() as conn:
        token = _SHARED_READ.set((reader.pool, conn))
        try:
            yield
        finally:
            _SHARED_READ.reset(token)


@contextmanager
def read_connection(reader: Engine) -> Iterator[Connection]:
    """A connection to read through: the one ``one_read`` holds for this store, else one of its
    own for the block."""
    shared = _SHARED_READ.get()
    if shared is not None and shared[0] is reader.pool:
        yield shared[1]
        return
    with reader.connect() as conn:
        yield conn


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (``alembic`` CLI-free)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every pending migration and make sure the version sequence row exists."""
    if current_revision(engine) != HEAD_REVISION:
        from alembic import command

        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    with engine.begin() as conn:
        if conn.execute(select(schema.version_head.c.value)).first() is None:
            conn.execute(insert(schema.version_head).values(id=1, value=0))


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the store is at (None for an empty database)."""
    with reading(engine).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@lru_cache(maxsize=256)
def _record_class(fields: tuple[str, ...]) -> type[tuple[Any, ...]]:
    return namedtuple("Record", fields, rename=True)


def _maker(result: Result[Any]) -> Callable[[Sequence[Any]], Any]:
    """Builds a named tuple of the result's columns from one row's values."""
    return _record_class(tuple(result.keys()))._make  # type: ignore[attr-defined,no-any-return]


def records(result: Result[Any]) -> list[Any]:
    """A result's rows as named tuples. Reading a field of an SQLAlchemy ``Row`` by attribute
    falls through a failed normal lookup first (~1 µs here); a named tuple reads it in a tenth of
    that, and the bulk paths read a dozen fields of every member of a batch, several times."""
    return list(map(_maker(result), result.all()))


def fetch(
    conn: Connection, stmt: Select[Any], params: Mapping[str, Any] | None = None
) -> list[Any]:
    """Run a select and return its rows as named tuples (see ``records``). ``params`` gives the
    values of the statement's unvalued bind parameters (a statement built once, see ``in_list``).

    With a driver that takes ``?`` placeholders (SQLite) the statement's compiled form is cached
    by shape and its ``IN`` lists are spelled out here: SQLAlchemy renders and names each element
    of an expanding parameter on every execution, which cost more than SQLite's own work for the
    batches of hundreds of ids the cycle reads. Other drivers take SQLAlchemy's own path.
    """
    compiled, bound = compiled_for(conn, stmt)
    order = compiled.positiontup
    if order is None or compiled.literal_execute_params:
        return records(conn.execute(stmt, params))
    if params:
        bound.update(params)
    sql = compiled.string
    values: list[Any] = []
    for name in order:
        value = bound[name]
        if compiled.binds[name].expanding:
            if not value:  # SQLAlchemy spells an empty IN its own way
                return records(conn.execute(stmt, params))
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(value)), 1)
            values.extend(value)
        else:
            values.append(value)
    result = conn.exec_driver_sql(sql, tuple(values))
    make = _maker(result)
    rows: Sequence[Any] = result.cursor.fetchall()  # plain tuples: no Row objects to build
    result.close()
    # The driver's values as they are, but for the types SQLAlchemy converts (booleans on
    # SQLite): in each row when they are few, else a column at a time.
    convert = _converters.get(compiled)
    if convert is None:
        # Once per compiled shape: a new statement object works its selected columns out again
        # (~0.2 ms for a batch's member join).
        convert = _converters[compiled] = _result_converters(conn, stmt)
    if convert and rows:
        if len(convert) * 4 <= len(rows[0]):
            # A few columns of many (a batch's member rows: 2 of 35): converted in each row,
            # which costs half of turning every column of every row around twice.
            out = []
            for row in rows:
                values = list(row)
                for i, proc in convert:
                    values[i] = proc(values[i])
                out.append(make(values))
            return out
        columns = list(zip(*rows, strict=True))
        for i, proc in convert:
            columns[i] = tuple(map(proc, columns[i]))
        rows = list(zip(*columns, strict=True))
    return list(map(make, rows))


def _result_converters(
    conn: Connection, stmt: Select[Any]
) -> list[tuple[int, Callable[[Any], Any]]]:
    """(column index, converter) for the selected columns whose driver values SQLAlchemy
    converts."""
    out: list[tuple[int, Callable[[Any], Any]]] = []
    for i, col in enumerate(stmt.selected_columns):
        proc = col.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None)
        if proc is not None:
            out.append((i, proc))
    return out


def in_list(name: str = "ids") -> BindParameter[Any]:
    """An IN list given when the statement runs (``fetch(conn, stmt, {"ids": [...]})``), so a
    statement can be built once at import."""
    return bindparam(name, expanding=True)


def many(values: Iterable[Any]) -> BindParameter[Any]:
    """A list for ``column.in_(...)`` as one expanding parameter: building one bound literal per
    element cost more than the query for batches of hundreds of ids."""
    return bindparam(None, list(values), expanding=True)


# Compiled SQL per (dialect, statement shape, parameter keys): the hot bulk statements are built
# anew each batch, and compiling them cost as much as a quarter of the SQL they run.
_compiled: dict[tuple[Any, ...], SQLCompiler] = {}
_COMPILED_MAX = 512
# The result converters ``fetch`` applies, per compiled statement (as long as it is kept: a
# statement without a cache key is compiled anew each time).
_converters: weakref.WeakKeyDictionary[SQLCompiler, list[tuple[int, Callable[[Any], Any]]]] = (
    weakref.WeakKeyDictionary()
)


def compiled_for(
    conn: Connection, stmt: ClauseElement, column_keys: list[str] | None = None
) -> tuple[SQLCompiler, dict[str, Any]]:
    """``stmt`` compiled for the connection's dialect (cached by the statement's shape) and the
    values this statement instance binds (literals such as ``.values(state="created")``)."""
    key = stmt._generate_cache_key()
    if key is None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=conn.dialect, column_keys=column_keys))
        return compiled, dict(compiled.params)
    slot = (conn.dialect, key.key, tuple(column_keys or ()))
    cached = _compiled.get(slot)
    if cached is None:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        # The cache key goes with it so later statements of this shape can hand in their values.
        cached = cast(
            SQLCompiler,
            stmt.compile(dialect=conn.dialect, column_keys=column_keys, cache_key=key),
        )
        _compiled[slot] = cached
    params = cached.construct_params(extracted_parameters=key.bindparams, _check=False)
    return cached, dict(params)


def bulk(
    conn: Connection,
    stmt: UpdateBase,
    rows: Sequence[Mapping[str, Any]],
    common: Mapping[str, Any] | None = None,
) -> int:
    """Run ``stmt`` once per row as one driver ``executemany``; returns the rows it changed
    (the driver's count: on SQLite, of every row's run).

    The statement is compiled once per shape for the connection's dialect and the rows go to
    the driver as they are, skipping SQLAlchemy's per-row parameter processing (which cost more
    than the SQL on the renewal path). Rows hold plain ints, strings, bytes and None; every row
    has the same keys; values fixed in the statement (``.values(state="created")``) or given in
    ``common`` (the same for every row, e.g. the time) fill the rest.
    """
    if not rows:
        return 0
    keys = list(rows[0])
    compiled, fixed = compiled_for(conn, stmt, keys)
    if common:
        fixed.update(common)
    order = compiled.positiontup
    params: Any
    if order is not None:
        missing = [k for k in order if k not in rows[0]]
        if missing:
            extra = {k: fixed[k] for k in missing}
            rows = [{**r, **extra} for r in rows]
        pick = itemgetter(*order)
        params = [pick(r) for r in rows] if len(order) > 1 else [(pick(r),) for r in rows]
    else:
        params = [{**fixed, **r} for r in rows]
    return int(conn.exec_driver_sql(compiled.string, params).rowcount)


def insert_ids(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows (as ``bulk`` takes them) and return their integer primary keys in row order.

    PostgreSQL gets SQLAlchemy's batched INSERT ... RETURNING, sorted by parameter order. SQLite
    cannot order RETURNING rows, so there SQLAlchemy falls back to one statement per row (three
    times the cost of the whole executemany); instead the rows go in as one executemany and the
    ids are counted back from ``last_insert_rowid()``: the statement holds the write lock, so
    nothing else inserts meanwhile, and SQLite gives every new row the largest rowid plus one.
    The one exception (a table whose largest rowid is the largest integer) is caught, not trusted.
    """
    if not rows:
        return []
    if conn.dialect.name == "sqlite":
        bulk(conn, insert(table), rows)
        last, top = conn.exec_driver_sql(
            f"SELECT last_insert_rowid(), (SELECT max(rowid) FROM {table.name})"
        ).one()
        if last != top:
            raise StoreError(f"{table.name}: rowids are no longer assigned in order")
        return list(range(int(last) - len(rows) + 1, int(last) + 1))
    pk = next(iter(table.primary_key.columns))
    stmt = insert(table).returning(pk, sort_by_parameter_order=True)
    return [int(i) for i in conn.execute(stmt, list(rows)).scalars()]


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping those whose primary key already exists; return how many were new."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(table).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    else:
        raise StoreError(f"unsupported database dialect {dialect!r}")
    # Counted from RETURNING: psycopg reports rowcount -1 for an INSERT … ON CONFLICT, which
    # read as "new" would let a webhook or a form sent twice act twice on PostgreSQL.
    pk = next(iter(table.primary_key.columns))
    return len(conn.execute(stmt.returning(pk), rows).all())


def next_versions(conn: Connection, count: int = 1) -> int:
    """Take ``count`` consecutive numbers of the head-office-wide version sequence and return the
    first (inside the caller's transaction, so a rolled-back change never publishes its numbers;
    the row lock serializes concurrent writers on PostgreSQL)."""
    head = schema.version_head
    row = conn.execute(
        update(head)
        .where(head.c.id == 1)
        .values(value=head.c.value + count)
        .returning(head.c.value)
    ).one()
    return int(row[0]) - count + 1


def raise_version_floor(conn: Connection, floor: int) -> None:
    """Never hand out a version at or below ``floor`` (e.g. a retained manifest's max_version)."""
    head = schema.version_head
    conn.execute(update(head).where(head.c.id == 1, head.c.value < floor).values(value=floor))


def get_meta(conn: Connection, key: str, default: Any = None) -> Any:
    row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).first()
    return default if row is None else json.loads(row[0])


def set_meta(conn: Connection, key: str, value: Any) -> None:
    text = json.dumps(value)
    done = conn.execute(update(schema.meta).where(schema.meta.c.key == key).values(value=text))
    if done.rowcount == 0:
        conn.execute(insert(schema.meta).values(key=key, value=text))
