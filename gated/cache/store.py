"""The cache on disk: SQLite in WAL mode, written by one thread that batches commits.

Card UIDs never reach this file: members carry only HMAC card keys. Every decision's event row,
its counters and a spent QR nonce go in one transaction; while decisions arrive faster than a
commit, they share commits (the SD card sees fewer, larger writes).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import operator
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, TypeVar

from gated.cache.image import ImageRefused, load_image
from gated.cache.index import MEMBER_COLUMNS, MemberIndex, member_row, record_from_row
from gated.contract import format_time
from gated.policy.decide import MemberCounters

log = logging.getLogger("gated.cache")
T = TypeVar("T")

SCHEMA = """
-- A rowid table: a member row (~250 bytes) would spill to overflow pages in a WITHOUT ROWID
-- table with 1 KiB pages, and start-up reads every row.
CREATE TABLE IF NOT EXISTS members (
    member_id TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    role TEXT NOT NULL,
    valid_from REAL,
    valid_until REAL,
    plan TEXT,
    schedule TEXT NOT NULL,
    zones TEXT NOT NULL,
    credentials BLOB,
    qr_key BLOB,
    daily_limit INTEGER,
    issued_at TEXT
);
-- No AUTOINCREMENT and no index on event_id: each would dirty one more page per decision, and an
-- SD card pays for every page. seq only orders delivery; receivers dedupe by event_id.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    member_id TEXT PRIMARY KEY,
    day INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    inside_since REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS qr_nonces (
    member_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (member_id, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS command_ids (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
-- One row: a random id for this cache file, and its member generation, raised in the same
-- transaction as every change to a member row. A saved index image (gated/cache/image.py) names
-- both, so a start never loads an image older than the rows, or made from another cache. Triggers,
-- not the writer's code: no path that writes a member (another release of gated, a technician's
-- sqlite3 shell) can change one without it.
CREATE TABLE IF NOT EXISTS members_generation (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    cache_id BLOB NOT NULL,
    generation INTEGER NOT NULL
);
INSERT OR IGNORE INTO members_generation VALUES (0, randomblob(16), 0);
CREATE TRIGGER IF NOT EXISTS members_inserted AFTER INSERT ON members BEGIN
    UPDATE members_generation SET generation = generation + 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS members_updated AFTER UPDATE ON members BEGIN
    UPDATE members_generation SET generation = generation + 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS members_deleted AFTER DELETE ON members BEGIN
    UPDATE members_generation SET generation = generation + 1 WHERE id = 0;
END;
-- Which member ids changed, and at about which generation (SQLite does not order triggers on
-- one event, so the number is the one before or after this change's own): a start whose image
-- is older than the rows (a kill -9 after member changes) applies just these rows over it
-- instead of rebuilding from every row. One row per member id, so it never outgrows members.
-- The log starts at the generation the cache had when it was made (kv members_log_from): an
-- image older than that is rebuilt from the rows.
CREATE TABLE IF NOT EXISTS members_changed (
    member_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO kv SELECT 'members_log_from', generation FROM members_generation;
CREATE TRIGGER IF NOT EXISTS members_inserted_log AFTER INSERT ON members BEGIN
    INSERT INTO members_changed
        SELECT NEW.member_id, generation FROM members_generation WHERE id = 0
        ON CONFLICT (member_id) DO UPDATE SET generation = excluded.generation;
END;
CREATE TRIGGER IF NOT EXISTS members_updated_log AFTER UPDATE ON members BEGIN
    INSERT INTO members_changed
        SELECT NEW.member_id, generation FROM members_generation WHERE id = 0
        ON CONFLICT (member_id) DO UPDATE SET generation = excluded.generation;
END;
CREATE TRIGGER IF NOT EXISTS members_renamed_log AFTER UPDATE OF member_id ON members
WHEN OLD.member_id IS NOT NEW.member_id BEGIN
    INSERT INTO members_changed
        SELECT OLD.member_id, generation FROM members_generation WHERE id = 0
        ON CONFLICT (member_id) DO UPDATE SET generation = excluded.generation;
END;
CREATE TRIGGER IF NOT EXISTS members_deleted_log AFTER DELETE ON members BEGIN
    INSERT INTO members_changed
        SELECT OLD.member_id, generation FROM members_generation WHERE id = 0
        ON CONFLICT (member_id) DO UPDATE SET generation = excluded.generation;
END;
"""

# Applies a state only if newer; the row of an erased member stays as its tombstone, so the highest
# version ever seen for an id is kept for ever. Positional parameters: binding thirteen named ones
# from a row dict cost ~1.7 µs a row more (0.17 s of a 100,000-member snapshot on the writer).
_STORED_COLUMNS = (*(c.strip() for c in MEMBER_COLUMNS.split(",")), "issued_at")
_stored_values = operator.itemgetter(*_STORED_COLUMNS)
# The member ids changed since a generation, and their rows (a start over an older image).
_CHANGED_SQL = "SELECT member_id FROM members_changed WHERE generation >= ?"
_CHANGED_ROWS_SQL = (
    f"SELECT {MEMBER_COLUMNS} FROM members WHERE member_id IN "
    "(SELECT member_id FROM members_changed WHERE generation >= ?) ORDER BY rowid"
)

_UPSERT = f"""
INSERT INTO members ({MEMBER_COLUMNS}, issued_at)
VALUES ({", ".join("?" * len(_STORED_COLUMNS))})
ON CONFLICT(member_id) DO UPDATE SET
    version = excluded.version, status = excluded.status, role = excluded.role,
    valid_from = excluded.valid_from, valid_until = excluded.valid_until, plan = excluded.plan,
    schedule = excluded.schedule, zones = excluded.zones, credentials = excluded.credentials,
    qr_key = excluded.qr_key, daily_limit = excluded.daily_limit, issued_at = excluded.issued_at
WHERE excluded.version > members.version
"""

# Rows to one executemany in upsert_batches. Small: between two batches the caller's Python
# work (a new index's puts) holds the GIL with no break, while SQLite lets it go for every row
# it stores; with 64 a badge during a cold start waited longer (p99 over the rows' phase
# 0.44-1.06 ms against 0.29-0.44 ms with 8, alternated runs), for no faster snapshot.
UPSERT_BATCH = 8

Durability = Literal["crash", "power"]


# The cache holds every member id, card HMAC and setting: nobody but the gate's user (and, where
# the state directory is set up for it, its group) may read it, whatever the umask.
PRIVATE_DIR_MODE = 0o700
GROUP_DIR_MODE = 0o750
CACHE_FILE_SUFFIXES = ("", "-wal", "-shm")


def _chmod(path: Path, mode: int, what: str) -> None:
    was = stat.S_IMODE(path.stat().st_mode)
    if was == mode:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:  # not ours to change (another owner): say so, serve on
        log.error(
            "event=state_permissions_unfixable path=%s mode=%o wanted=%o error=%s",
            path, was, mode, exc.strerror or exc,
        )  # fmt: skip
        return
    log.warning("event=state_permissions_fixed %s=%s mode_was=%o mode=%o", what, path, was, mode)


def make_private(path: Path) -> int:
    """Create the state directory of the cache ``path`` 0700, or fix it, and make the cache's
    files (database, WAL, shared memory) readable by no one else; returns the files' mode.

    A directory that already gives its group read access and others none (systemd's
    ``StateDirectoryMode=0750`` in the shipped unit, so technicians in group ``gated`` can run
    ``gatectl doctor``'s file checks) stays 0750 and its files become 0640. Anything else, a
    directory left 0755 by a run under umask 022 included, becomes 0700 with files 0600.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
    mode = stat.S_IMODE(directory.stat().st_mode)
    group = mode & 0o007 == 0 and mode & 0o050 == 0o050
    _chmod(directory, GROUP_DIR_MODE if group else PRIVATE_DIR_MODE, "dir")
    file_mode = 0o640 if group else 0o600
    # Created here with its mode, not by SQLite under the umask; SQLite then gives the WAL and
    # shared-memory files the database's mode.
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, file_mode))
    for suffix in CACHE_FILE_SUFFIXES:
        f = path.with_name(path.name + suffix)
        if f.exists():
            _chmod(f, file_mode, "file")
    return file_mode


def connect(path: Path, durability: Durability = "crash") -> sqlite3.Connection:
    """Open the cache database in WAL mode with the durability the config asks for, its files
    private (:func:`make_private`).

    ``crash`` (synchronous=NORMAL): a kill -9 loses nothing committed; a power cut may lose the
    last commits. ``power`` (synchronous=FULL): every commit is fsynced, at a cost per decision.
    """
    make_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    # 1 KiB pages: a decision dirties two pages (its event, its counters); at 4 KiB each would be
    # a fresh 4 KiB of WAL per commit. Takes effect only when the file is created.
    conn.execute("PRAGMA page_size=1024")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # A small page cache: the hot path reads memory, not SQLite, and the OS page cache serves
    # the rest; a big one would hold tens of MiB of a Pi's memory for nothing once loaded.
    conn.execute("PRAGMA cache_size=-4096")
    # Bound the WAL: checkpoint every 1,000 pages (~1 MiB) so it never grows on an SD card.
    conn.execute("PRAGMA wal_autocheckpoint=1000")
    conn.executescript(SCHEMA)
    return conn


def _time_or_none(value: float | None) -> str | None:
    return None if value is None else format_time(value)


class CacheStore:
    """Reads and writes of the cache database. Not thread-safe: one thread owns an instance
    (the :class:`CacheWriter`'s thread at run time; a CLI command's thread otherwise)."""

    def __init__(self, path: Path, durability: Durability = "crash") -> None:
        self.path = path
        self.conn = connect(path, durability)
        # What this transaction wrote that must not vanish if the disk refuses it: outbox rows
        # (event_id, payload) and spent QR nonces. The writer keeps whatever a rollback undid.
        self.written_events: list[tuple[str, str]] = []
        self.written_nonces: list[tuple[str, str, float]] = []
        self.loaded_from_image = False  # set by load_index
        # The generation of the image it loaded, older than the rows after a kill -9 (None: none).
        self.image_generation: int | None = None

    def close(self) -> None:
        self.conn.close()

    # -- members --------------------------------------------------------------------------

    def generation(self) -> tuple[bytes, int]:
        """(cache id, member generation): see ``members_generation`` in :data:`SCHEMA`."""
        cache_id, generation = self.conn.execute(
            "SELECT cache_id, generation FROM members_generation WHERE id = 0"
        ).fetchone()
        return bytes(cache_id), int(generation)

    def load_index(self, image: Path | None = None, tag: bytes = b"") -> MemberIndex:
        """Every member row (tombstones included) into a fresh in-memory index.

        With ``image``: from that saved index image when it was made from this cache with the
        same ``tag`` (gated/cache/image.py) at its current member generation, or at an older one
        ``members_changed`` reaches back to (the rows changed since are then applied over it),
        else from the rows, as without it. :attr:`loaded_from_image` says which.
        """
        self.loaded_from_image = False
        self.image_generation = None
        # One read transaction: the generation is the one of the rows read.
        self.conn.execute("BEGIN")
        try:
            cache_id, generation = self.generation()
            if image is not None:
                try:
                    since = int(self.get("members_log_from", generation))
                    index = load_image(image, cache_id, generation, tag, since)
                except FileNotFoundError:
                    log.info("event=index_image_missing path=%s", image)
                except ImageRefused as exc:
                    log.warning("event=index_image_refused path=%s reason=%s", image, exc)
                except OSError as exc:  # unreadable: the rows are the source of truth anyway
                    log.warning("event=index_image_unreadable path=%s error=%s", image, exc)
                else:
                    self.image_generation = index.generation
                    changed = self._catch_up(index, generation)
                    log.info(
                        "event=index_image_loaded members=%d generation=%d image_generation=%d "
                        "rows_changed_since=%d",
                        index.count, generation, self.image_generation, changed,
                    )  # fmt: skip
                    self.loaded_from_image = True
                    if not changed:
                        return index
            if not self.loaded_from_image:
                # Sized for every row at once, so the load never grows a table.
                (rows,) = self.conn.execute("SELECT count(*) FROM members").fetchone()
                index = MemberIndex(rows)
                index.load_table(self.conn)
                index.generation = generation
        finally:
            self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA shrink_memory")  # give back the pages the reads cached
        return index

    def _catch_up(self, index: MemberIndex, generation: int) -> int:
        """Bring an index loaded from an older image up to the rows at ``generation``: each
        member id logged in ``members_changed`` since the image's generation takes its row as it
        is now (whatever its version: the rows are the truth), or leaves the index if its row is
        gone. Returns how many ids were logged."""
        if index.generation == generation:
            return 0
        since = (index.generation,)
        changed = [r[0] for r in self.conn.execute(_CHANGED_SQL, since)]
        present: set[str] = set()
        lowered = False
        for row in self.conn.execute(_CHANGED_ROWS_SQL, since):
            record = record_from_row(row)
            present.add(record[0])
            lowered |= record[1] < index.version_of(record[0])
            index.put(record, force=True)
        for member_id in changed:
            if member_id not in present:
                lowered |= index.remove(member_id)
        if lowered:
            index.recount_max_version()
        index.generation = generation
        return len(changed)

    def apply_states(
        self,
        states: Iterable[Mapping[str, Any]],
        each: Callable[[dict[str, Any]], object] | None = None,
    ) -> list[dict[str, Any]]:
        """Upsert states in one transaction; returns the rows that were newer and applied.

        ``each`` is called with every applied row as it is applied (the gate makes its index
        records there, while a sync's next rows are still being made). Call inside
        :meth:`transaction` or alone (it opens its own).
        """
        return self.apply_rows((member_row(state) for state in states), each)

    def apply_rows(
        self,
        rows: Iterable[dict[str, Any]],
        each: Callable[[dict[str, Any]], object] | None = None,
    ) -> list[dict[str, Any]]:
        """As :meth:`apply_states`, for rows ``member_row`` already made."""
        applied: list[dict[str, Any]] = []

        def keep(row: dict[str, Any]) -> None:
            applied.append(row)
            if each is not None:
                each(row)

        self.upsert_rows(rows, keep)
        return applied

    def upsert_rows(
        self, rows: Iterable[dict[str, Any]], each: Callable[[dict[str, Any]], object]
    ) -> int:
        """As :meth:`apply_rows`, keeping no row: returns how many were newer and applied."""
        applied = 0
        with self.transaction():
            for row in rows:
                if self.conn.execute(_UPSERT, _stored_values(row)).rowcount:
                    applied += 1
                    each(row)
        return applied

    def upsert_batches(
        self, rows: Iterable[dict[str, Any]], each_batch: Callable[[list[dict[str, Any]]], object]
    ) -> int:
        """As :meth:`upsert_rows`, one ``executemany`` a batch of UPSERT_BATCH rows (less Python
        a row than an ``execute`` each), and ``each_batch`` called with every batch, newer rows
        or not: for a caller that applies versions by the same rule, as a new index does.
        Returns how many rows were newer and applied."""
        applied = 0
        with self.transaction():
            rows = iter(rows)
            while batch := list(itertools.islice(rows, UPSERT_BATCH)):
                # rowcount, not total_changes: the generation triggers' writes are not rows.
                applied += self.conn.executemany(_UPSERT, map(_stored_values, batch)).rowcount
                each_batch(batch)
        return applied

    def has_members(self) -> bool:
        """Whether the cache holds any member row (a tombstone counts)."""
        return self.conn.execute("SELECT 1 FROM members LIMIT 1").fetchone() is not None

    def rows_above(self, version: int) -> list[tuple[Any, ...]]:
        """Member rows (index columns) with a version above ``version``."""
        return list(
            self.conn.execute(f"SELECT {MEMBER_COLUMNS} FROM members WHERE version > ?", (version,))
        )

    def member_state(self, member_id: str) -> dict[str, Any] | None:
        """What the cache holds for a member, in MemberState field names (card keys counted, not
        shown)."""
        cur = self.conn.execute(
            f"SELECT {MEMBER_COLUMNS}, issued_at FROM members WHERE member_id = ?", (member_id,)
        )
        row = cur.fetchone()
        if row is None:
            return None
        state = dict(zip([d[0] for d in cur.description], row, strict=True))
        state["valid_from"] = _time_or_none(state["valid_from"])
        state["valid_until"] = _time_or_none(state["valid_until"])
        state["schedule"] = json.loads(state["schedule"])
        state["zones"] = json.loads(state["zones"])
        state["card_keys"] = len(state.pop("credentials") or b"") // 32
        state["qr_key"] = (
            None if state["qr_key"] is None else base64.b64encode(state["qr_key"]).decode()
        )
        return state

    def max_version(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(version), 0) FROM members").fetchone()[0])

    # -- events, counters, nonces ---------------------------------------------------------

    def add_event(self, event: Mapping[str, Any]) -> None:
        self.add_event_row(event["event_id"], json.dumps(event, separators=(",", ":")))

    def add_event_row(self, event_id: str, payload: str) -> None:
        """An outbox row from its id and payload JSON."""
        self.written_events.append((event_id, payload))  # first: a refused insert is held too
        self.conn.execute(
            "INSERT INTO outbox (event_id, payload) VALUES (?, ?)", (event_id, payload)
        )

    def put_counters(self, member_id: str, counters: MemberCounters) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO counters (member_id, day, entries, inside_since) VALUES (?,?,?,?)",
            (member_id, counters.day, counters.entries, counters.inside_since),
        )

    def load_counters(self) -> dict[str, MemberCounters]:
        return {
            m: MemberCounters(d, e, i)
            for m, d, e, i in self.conn.execute(
                "SELECT member_id, day, entries, inside_since FROM counters"
            )
        }

    def spend_nonce(self, member_id: str, nonce: str, expires_at: float) -> None:
        self.written_nonces.append((member_id, nonce, expires_at))
        self.conn.execute(
            "INSERT OR REPLACE INTO qr_nonces (member_id, nonce, expires_at) VALUES (?,?,?)",
            (member_id, nonce, expires_at),
        )

    def load_nonces(self, now: float) -> list[tuple[str, str, float]]:
        self.conn.execute("DELETE FROM qr_nonces WHERE expires_at <= ?", (now,))
        return [
            tuple(r)
            for r in self.conn.execute("SELECT member_id, nonce, expires_at FROM qr_nonces")
        ]

    def outbox_batch(self, limit: int = 100) -> list[tuple[int, str]]:
        """The oldest undelivered events as (seq, payload JSON), in order."""
        return [
            (int(s), str(p))
            for s, p in self.conn.execute(
                "SELECT seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            )
        ]

    def delete_events(self, seqs: Iterable[int]) -> None:
        """Drop events the broker has acknowledged (PUBACK)."""
        self.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def trim_outbox(self, keep: int) -> int:
        """Delete all but the newest ``keep`` events (a gate with no broker); returns how many."""
        cur = self.conn.execute(
            "DELETE FROM outbox WHERE seq <= (SELECT max(seq) FROM outbox) - ?", (keep,)
        )
        return int(cur.rowcount)

    def outbox_depth(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT payload FROM outbox ORDER BY seq DESC LIMIT ?", (limit,))
        return [json.loads(p) for (p,) in rows][::-1]

    # -- key/value (lockdown, clock, head-office contact) ---------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    # -- commands -------------------------------------------------------------------------

    def command_seen(self, command_id: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM command_ids WHERE id = ?", (command_id,)).fetchone()
            is not None
        )

    def remember_command(self, command_id: str, expires_at: float) -> None:
        self.conn.execute("DELETE FROM command_ids WHERE expires_at < ?", (time.time() - 86400,))
        self.conn.execute(
            "INSERT OR IGNORE INTO command_ids (id, expires_at) VALUES (?, ?)",
            (command_id, expires_at),
        )

    # -- transactions ---------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def stats(self) -> dict[str, Any]:
        size = sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists()
        )
        return {"db_path": str(self.path), "db_bytes": size, "outbox_depth": self.outbox_depth()}


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, nestable as a SAVEPOINT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.conn.in_transaction
        self.conn.execute("SAVEPOINT tx" if self.nested else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("RELEASE tx" if self.nested else "COMMIT")
        elif self.nested:
            self.conn.execute("ROLLBACK TO tx")
            self.conn.execute("RELEASE tx")
        else:
            self.conn.execute("ROLLBACK")


# Events and spent nonces a refusing disk (SQLITE_FULL, I/O errors) rolled back are held in memory
# and written again with the next commit that succeeds; beyond these the oldest are let go (events
# counted as lost; nonces expire within twice the QR window anyway).
MAX_HELD_EVENTS = 10_000
MAX_HELD_NONCES = 50_000
FAILURE_LOG_INTERVAL_S = 10.0


class CacheWriter:
    """One thread that owns the write connection and group-commits what it is given.

    ``submit(fn)`` queues ``fn(store)`` and returns a Future; everything queued while a commit is
    running goes into the next transaction together, each in its own savepoint so one failure
    cannot undo its neighbours. Callers on the event loop never wait on the disk.

    When the disk refuses a commit (full, failing), decisions go on: the events and spent QR
    nonces it undid are held here and written with the next commit that succeeds, and every
    event that could not be held is counted in :attr:`events_lost`, kept on disk as soon as the
    disk takes it (``gatectl status``, metrics, doctor).
    """

    def __init__(self, store: CacheStore, max_batch: int = 512) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[
            tuple[Callable[[CacheStore], Any], Future[Any] | None] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gated-cache-writer", daemon=True)
        self.commits = 0
        self.failures = 0
        # Written by the writer's thread only; the loop reads them (ints and a bool: atomic).
        self.events_lost = int(store.get("events_lost", 0))
        self._lost_saved = self.events_lost
        self.refusing: str | None = None  # the last commit's error while the disk refuses
        self._held_events: list[tuple[str, str]] = []
        self._held_nonces: list[tuple[str, str, float]] = []
        self._failure_logged = 0.0
        self._failures_unlogged = 0
        self._thread.start()

    @property
    def events_held(self) -> int:
        """Events rolled back by a refusing disk, waiting in memory for the next commit."""
        return len(self._held_events)

    def submit(self, fn: Callable[[CacheStore], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    def post(self, fn: Callable[[CacheStore], object]) -> None:
        """Queue ``fn(store)`` with no one waiting for it (a decision's event): no Future and
        its lock to make on the hot path; a failure is logged and counted here."""
        self._queue.put((fn, None))

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        conn = self.store.conn
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            results: list[tuple[Future[Any], Any, BaseException | None]] = []
            store = self.store
            store.written_events.clear()
            store.written_nonces.clear()
            # Held rows stay held until a commit with them succeeds.
            held = len(self._held_events), len(self._held_nonces)
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._write_held()
                for fn, future in batch:
                    # A caller that gave up (its task was cancelled) gets nothing run or set.
                    if future is not None and not future.set_running_or_notify_cancel():
                        continue
                    events, nonces = len(store.written_events), len(store.written_nonces)
                    conn.execute("SAVEPOINT op")
                    try:
                        value = fn(store)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back (a full disk)
                        # Whatever an op raises is its own failure, handed to its future: the
                        # writer (every later decision's event) must go on.
                        conn.execute("ROLLBACK TO op")
                        self._hold(store.written_events[events:], store.written_nonces[nonces:])
                        del store.written_events[events:], store.written_nonces[nonces:]
                        if future is None:
                            self.failures += 1
                            log.error("event=cache_op_failed error=%r", exc)
                        else:
                            results.append((future, None, exc))
                    else:
                        if future is not None:
                            results.append((future, value, None))
                    conn.execute("RELEASE op")
                if self.events_lost != self._lost_saved:
                    store.set("events_lost", self.events_lost)
                conn.execute("COMMIT")
                self.commits += 1
                self._lost_saved = self.events_lost
                del self._held_events[: held[0]], self._held_nonces[: held[1]]
                if self.refusing is not None:
                    self.refusing = None
                    log.warning(
                        "event=cache_commit_recovered events_lost=%d held=%d",
                        self.events_lost, len(self._held_events),
                    )  # fmt: skip
            except sqlite3.Error as exc:
                self.failures += 1
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self.refusing = str(exc)
                self._log_failure(exc, len(batch))
                # Nothing of the batch is stored. What was held is held again, and every op is
                # tried alone: what it writes and the disk refuses is held, and a read (the
                # outbox depth for status, a lookup) still answers.
                del self._held_events[held[0] :], self._held_nonces[held[1] :]
                results = []
                for fn, future in batch:
                    if future is None:
                        self._alone(fn)
                    elif future.running() or future.set_running_or_notify_cancel():
                        results.append((future, *self._alone(fn)))
            self._trim_held()
            for future, value, error in results:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
        if self._held_events:
            # Nothing more will be committed: what is still held is lost (the count is saved
            # with the next commit that succeeds, after a restart).
            self.events_lost += len(self._held_events)
            log.error(
                "event=events_lost count=%d total=%d reason=%r at=stop",
                len(self._held_events), self.events_lost, self.refusing,
            )  # fmt: skip
            self._held_events.clear()
        self.store.close()

    def _alone(self, fn: Callable[[CacheStore], Any]) -> tuple[Any, BaseException | None]:
        store, conn = self.store, self.store.conn
        store.written_events.clear()
        store.written_nonces.clear()
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = fn(store)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._hold(store.written_events, store.written_nonces)
            return None, exc
        return value, None

    def _write_held(self) -> None:
        """Write again, at the start of a transaction, what a refusing disk undid."""
        conn, now = self.store.conn, time.time()
        conn.executemany("INSERT INTO outbox (event_id, payload) VALUES (?, ?)", self._held_events)
        conn.executemany(
            "INSERT OR REPLACE INTO qr_nonces (member_id, nonce, expires_at) VALUES (?,?,?)",
            [n for n in self._held_nonces if n[2] > now],
        )

    def _hold(self, events: list[tuple[str, str]], nonces: list[tuple[str, str, float]]) -> None:
        self._held_events.extend(events)
        self._held_nonces.extend(nonces)

    def _trim_held(self) -> None:
        over = len(self._held_events) - MAX_HELD_EVENTS
        if over > 0:
            del self._held_events[:over]
            self.events_lost += over
        over = len(self._held_nonces) - MAX_HELD_NONCES
        if over > 0:
            del self._held_nonces[:over]

    def _log_failure(self, exc: sqlite3.Error, ops: int) -> None:
        """One line per interval while the disk refuses, not one per badge."""
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failure_logged < FAILURE_LOG_INTERVAL_S:
            return
        log.error(
            "event=cache_commit_failed error=%s ops=%d failures=%d held_events=%d "
            "held_nonces=%d events_lost=%d",
            exc, ops, self._failures_unlogged, len(self._held_events), len(self._held_nonces),
            self.events_lost,
        )  # fmt: skip
        self._failure_logged = now
        self._failures_unlogged = 0
