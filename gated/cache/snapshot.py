"""Site snapshots: fetch one, verify it whole, apply it in one transaction.

A big site syncs by snapshot (one signature for the whole site) rather than message by message:
an empty gate fetches one before it subscribes, a gate whose digest still differs from the signed
manifest once the traffic settles fetches one (anti-entropy), and ``gatectl resync`` fetches one.
A snapshot only ever adds newer states: the cache a gate decides from is never cleared. The
megabytes never cross into the daemon: a verifier process reads the file, verifies it and makes
the rows, and only pickled chunks of rows come back.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import queue
import shutil
import sqlite3
import ssl
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

from gated.cache.index import member_row
from gated.cache.verifier import VerifierPool, pickled, process_verifier
from gated.config import HeadOfficeConfig
from gated.contract import MEMBER_ID_RE, STATUSES, PayloadError, loads_bounded, verify_snapshot
from gated.errors import GatedError

SNAPSHOT_MAX_BYTES = 1 << 30
# A downloaded snapshot goes to its file this many bytes at a time, each write on a thread.
SNAPSHOT_WRITE_BYTES = 1 << 20
# A snapshot's verified body is cut into pieces of about this many bytes (~5,000 states) for the
# verifier processes to make rows from; each reads its piece from the body's file.
SNAPSHOT_PIECE_BYTES = 2 << 20
SNAPSHOT_TIMEOUT_S = 120.0

# Stores rows in one transaction and indexes them; resolves with how many were newer.
ApplySnapshot = Callable[[Iterator[dict[str, Any]]], "Future[int]"]


class SnapshotError(GatedError):
    """A snapshot refused (the cache untouched), in one line for a technician."""


class Loaded(NamedTuple):
    """A snapshot applied: its signed trailer, the rows that were newer, the rows for this site,
    and the states for other sites."""

    trailer: dict[str, Any]
    applied: int
    rows: int
    dropped: int


async def load_snapshot(
    head_office: HeadOfficeConfig,
    state_dir: Path,
    pool: VerifierPool,
    ours_max_version: Callable[[], int],
    apply: ApplySnapshot,
) -> Loaded:
    """Fetch, verify whole and apply the site snapshot. Raises SnapshotError (cache and index
    untouched) for anything refused on the way."""
    work: Path | None = None
    try:
        work = await asyncio.to_thread(_workdir, state_dir)
        source = await fetch_snapshot(head_office, work / "snapshot.gz")
        body = work / "body.jsonl"
        trailer, cuts = await pool.run(open_snapshot, str(source), str(body))
        if int(trailer["max_version"]) < ours_max_version():
            raise SnapshotError(
                f"snapshot max_version {trailer['max_version']} is older than ours "
                f"({ours_max_version()})"
            )
        applied, count, dropped = await _apply_body(body, cuts, pool, apply)
        return Loaded(trailer, applied, count, dropped)
    except SnapshotError:
        raise
    except (
        ValueError,  # ContractError among them
        KeyError,
        TypeError,
        OSError,
        sqlite3.Error,
        BrokenProcessPool,
    ) as exc:
        raise SnapshotError(str(exc)) from exc
    finally:
        if work is not None:
            await asyncio.to_thread(shutil.rmtree, work, True)


async def fetch_snapshot(head_office: HeadOfficeConfig, into: Path) -> Path:
    """The site snapshot as a file: a ``file://`` path is used where it lies, and
    ``https://``/``http://`` (bearer token in ``token_file``) is streamed into ``into``. A verifier
    process reads the file (:func:`open_snapshot`): handing megabytes to a process pool pickles
    them on a thread of the daemon that holds the GIL for milliseconds, and every badge waits.
    Raises SnapshotError."""
    url = head_office.snapshot_url
    if not url:
        raise SnapshotError("no [head_office] snapshot_url")
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except OSError as exc:
            raise SnapshotError(f"snapshot file {path}: {exc.strerror or exc}") from exc
        if size > SNAPSHOT_MAX_BYTES:
            raise SnapshotError(f"snapshot file {path} is larger than {SNAPSHOT_MAX_BYTES}")
        return path
    # Imported here, not at the top: httpx (and the CLI modules it loads) costs the gate ~6 MiB of
    # RSS for as long as it runs, and only a cold start without a snapshot file downloads one.
    import httpx

    headers = {"Accept": "application/gzip"}
    try:
        if head_office.token_file is not None:
            headers["Authorization"] = "Bearer " + head_office.token_file.read_text().strip()
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(head_office.ca_file))
            if head_office.ca_file is not None
            else True
        )
    except (OSError, ssl.SSLError) as exc:
        raise SnapshotError(f"[head_office] files: {exc}") from exc
    try:
        async with (
            httpx.AsyncClient(verify=verify, timeout=SNAPSHOT_TIMEOUT_S) as http,
            http.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise SnapshotError(f"snapshot: HTTP {response.status_code} from {url}")
            size = 0
            pending = bytearray()
            with into.open("wb") as out:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > SNAPSHOT_MAX_BYTES:
                        raise SnapshotError(
                            f"snapshot from {url} is larger than {SNAPSHOT_MAX_BYTES}"
                        )
                    pending += chunk
                    if len(pending) >= SNAPSHOT_WRITE_BYTES:
                        # Off the loop: a write to an SD card can block for a long time.
                        await asyncio.to_thread(out.write, bytes(pending))
                        pending.clear()
                await asyncio.to_thread(out.write, bytes(pending))
            return into
    except httpx.HTTPError as exc:
        raise SnapshotError(f"snapshot: {url}: {exc or type(exc).__name__}") from exc
    except OSError as exc:
        raise SnapshotError(f"snapshot: cannot store it in {into.parent}: {exc}") from exc


def _workdir(state_dir: Path) -> Path:
    """A private folder in the state directory for one snapshot's files (the download and the
    verified body), after removing any a killed gate left behind."""
    for stale in state_dir.glob(".snapshot-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".snapshot-", dir=state_dir))


def open_snapshot(source: str, body_path: str) -> tuple[dict[str, Any], list[int]]:
    """In a verifier process: verify the snapshot file ``source`` whole (signature, site, sha256),
    write its JSON Lines body to ``body_path`` and return (trailer, cuts): the body's offsets cut
    at the first line end past each SNAPSHOT_PIECE_BYTES, for :func:`snapshot_rows`. Only these
    few numbers cross back to the daemon, never the megabytes. Raises ContractError/SignatureError
    (or OSError, SnapshotError)."""
    verifier, site = process_verifier()
    with open(source, "rb") as f:
        data = f.read(SNAPSHOT_MAX_BYTES + 1)
    if len(data) > SNAPSHOT_MAX_BYTES:
        raise SnapshotError(f"snapshot is larger than {SNAPSHOT_MAX_BYTES}")
    trailer, body = verify_snapshot(data, verifier, site)
    del data
    with open(body_path, "xb") as out:
        out.write(body)
    cuts = [0]
    while cuts[-1] < len(body):
        end = body.find(b"\n", cuts[-1] + SNAPSHOT_PIECE_BYTES)
        cuts.append(len(body) if end < 0 else end + 1)
    return trailer, cuts


def snapshot_rows(body_path: str, start: int, end: int) -> tuple[list[bytes], int, int]:
    """In a verifier process: the cache rows of the states on bytes ``start:end`` of a verified
    snapshot body (whole lines) for this site, pickled in chunks (unpickling thousands of rows at
    once would hold the daemon's GIL for milliseconds; a chunk holds it well under one). Returns
    (chunks, rows, states for other sites). Raises SnapshotError/ContractError for a malformed
    state."""
    _verifier, site = process_verifier()
    rows: list[dict[str, Any]] = []
    dropped = 0
    with open(body_path, "rb") as f:
        piece = os.pread(f.fileno(), end - start, start)
    if len(piece) != end - start:
        raise SnapshotError("snapshot body is shorter than its cuts")
    for line in piece.splitlines():
        if not line:
            continue
        try:
            state = loads_bounded(line)
        except PayloadError as exc:
            raise SnapshotError(f"snapshot holds a line that is not a member state: {exc}") from exc
        if not isinstance(state, dict):
            raise SnapshotError("snapshot line is not an object")
        member_id = state.get("member_id")
        if (
            not isinstance(member_id, str)
            or not MEMBER_ID_RE.match(member_id)
            or type(state.get("version")) is not int
            or state.get("status") not in STATUSES
            or not isinstance(state.get("sites"), list)
        ):
            raise SnapshotError("snapshot holds a malformed member state")
        if site in state["sites"]:
            rows.append(member_row(state))
        else:
            dropped += 1
    return pickled(rows), len(rows), dropped


def _rows_from(chunks: queue.SimpleQueue[bytes | BaseException | None]) -> Iterator[dict[str, Any]]:
    """On the cache writer's thread: the rows of a snapshot as its pieces arrive (pickled by our
    own verifier processes, never by anyone else); an error ends the transaction."""
    while True:
        try:
            item = chunks.get(timeout=SNAPSHOT_TIMEOUT_S)
        except queue.Empty as exc:
            raise SnapshotError("snapshot rows stopped arriving") from exc
        if item is None:
            return
        if isinstance(item, BaseException):
            raise SnapshotError(f"snapshot refused: {item}") from item
        yield from pickle.loads(item)


async def _apply_body(
    body: Path, cuts: list[int], pool: VerifierPool, apply: ApplySnapshot
) -> tuple[int, int, int]:
    """Apply a verified snapshot's body (a file, cut into pieces of whole lines at ``cuts``)
    in one transaction, all or nothing: the writer takes each piece's rows while the verifier
    processes make the next ones. Returns (rows applied, rows for this site, states for other
    sites)."""
    chunks: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
    committed = asyncio.wrap_future(apply(_rows_from(chunks)))
    count = dropped = 0
    # Hundreds of thousands of new long-lived objects would set off full collections (tens of
    # milliseconds each, during badges): collect nothing until they are frozen.
    collecting = gc.isenabled()
    gc.disable()
    try:
        making = [pool.run(snapshot_rows, str(body), start, end) for start, end in pairwise(cuts)]
        for made in making:
            piece_chunks, rows, others = await made
            for chunk in piece_chunks:
                chunks.put(chunk)
            count += rows
            dropped += others
    except BaseException as exc:
        chunks.put(exc)  # the writer rolls the whole snapshot back
        await asyncio.gather(committed, return_exceptions=True)
        raise
    else:
        chunks.put(None)
        return await committed, count, dropped
    finally:
        # Freeze without collecting: a collection now would walk every object the snapshot
        # made (tens of milliseconds); what it made is rows and records, not cycles.
        gc.freeze()
        if collecting:
            gc.enable()
