"""The index image: the member index saved beside the cache, so a start reads it back in one pass
instead of rebuilding it from every SQLite row (a million members: ~0.12 s of CPU against ~5 s).

SQLite stays the source of truth. An image names the cache it was made from (a random id kept
in the cache) and the cache's member generation at that moment, which every change to a member
row raises in the same transaction (``members_generation`` in gated/cache/store.py). A start
loads the image only when both still match, the tag (the site and credential key it was made
for) matches, and its checksum holds; anything else (missing, stale, torn, from another cache,
site or key, another format) is refused with its reason and the index is rebuilt from the rows.
So a gate never answers from an image older than its cache.

The image is written whole to a temporary file, synced, and renamed over the old one. It is
copied from the live index by another thread a chunk at a time (a badge never waits for more
than one chunk's copy); a change to the index during the copy abandons it (:attr:`MemberIndex.changes`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import struct
import sys
import threading
import time
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from gated.cache import index as index_module
from gated.cache.index import MemberIndex, _Table
from gated.placement import keep_off_decisions

log = logging.getLogger("gated.cache")

IMAGE_NAME = "index.img"
MAGIC = b"GATEDIX1"
TRAILER = b"GATEDEND"
# 2: card keys placed by their first bytes (gated.cache.index.key_hash); 3: a slot is one
# record (gated.cache.index.SLOT) and a card key entry holds its slot (KEY_ENTRY).
FORMAT = 3
_HEAD = struct.Struct("<8sI")  # magic, header length
_TAIL = struct.Struct("<I8s")  # CRC-32 of everything before, trailer
# Bytes copied from the live index at a time, holding the GIL: a badge waits for one such copy
# at most (tens of µs on a desktop core).
CHUNK = 1 << 18
# Save again at most this often while the index keeps changing: a million members are ~110 MB
# written, and an SD card wears with every write. A clean stop saves in any case.
SAVE_INTERVAL_S = 3600.0
CHECK_INTERVAL_S = 60.0  # how often the keeper looks whether a save is due
# Card keys and qr keys replaced since the index was built stay in its buffers until a start
# from the rows: an image with more than this share of them is not saved, so the next start
# rebuilds a compact index.
MAX_WASTED = 0.25

# The index's buffers (slot records, ids, qr keys, card key entries), in image order.
_SECTIONS = ("_slots", "_idbuf", "_qrbuf", "_keys")
_TABLES = ("_ids", "_ktab")


# A slot record's profile id alone, to check or map every slot's at C speed.
_PROFILE_AT = 8
_PROFILE = struct.Struct("<I")
_PROFILE_COLUMN = struct.Struct(f"<{_PROFILE_AT}xI{index_module.SLOT.size - _PROFILE_AT - 4}x")


class ImageRefused(Exception):
    """An image that must not be loaded; the message is the reason (for the log)."""


def _typecode(buf: array[int] | bytearray) -> str:
    return buf.typecode if isinstance(buf, array) else "bytes"


def _itemsizes() -> dict[str, int]:
    return {c: array(c).itemsize for c in "BHIiQ"}


def _profile_json(profile: index_module.Profile) -> list[Any]:
    status, role, plan, schedule, zones, limit = profile
    return [status, role, plan, [list(w) for w in schedule], sorted(zones), limit]


def _profile_of_json(value: list[Any]) -> index_module.Profile:
    status, role, plan, schedule, zones, limit = value
    return (
        sys.intern(status),
        sys.intern(role),
        None if plan is None else sys.intern(plan),
        tuple((int(m), int(s), int(e)) for m, s, e in schedule),
        frozenset(zones),
        limit,
    )


@dataclass
class _Copy:
    """What the loop takes of the index before another thread copies its buffers."""

    index: MemberIndex
    changes: int
    header: dict[str, Any]
    parts: list[array[int] | bytearray]


def _begin(index: MemberIndex, cache_id: bytes, tag: bytes) -> _Copy:
    """On the loop: the header (small things: counts, profiles, the rare exact times) and the
    buffers to copy, at the index's current change count."""
    parts: list[array[int] | bytearray] = [getattr(index, name) for name in _SECTIONS]
    tables = []
    for name in _TABLES:
        table: _Table = getattr(index, name)
        tables.append(
            {"filled": table.filled, "live": table.live, "cursor": table.cursor,
             "old": table.old is not None}
        )  # fmt: skip
        parts.append(table.cells)
        if table.old is not None:
            parts.append(table.old)
    header = {
        "format": FORMAT,
        "byteorder": sys.byteorder,
        "itemsizes": _itemsizes(),
        "cache_id": cache_id.hex(),
        "generation": index.generation,
        "tag": tag.hex(),
        "count": index.count,
        "qr_held": index.qr_held,
        "max_version": index.max_version,
        "digest": index._digest,
        "hash_mask": index._hash_mask,
        "profiles": [_profile_json(p) for p in index_module._profiles],
        "exact_from": sorted(index._exact_from.items()),
        "exact_until": sorted(index._exact_until.items()),
        "tables": tables,
        "parts": [[_typecode(p), len(p) * (p.itemsize if isinstance(p, array) else 1)]
                  for p in parts],
    }  # fmt: skip
    return _Copy(index, index.changes, header, parts)


def wasted_share(index: MemberIndex) -> float:
    """The share of card-key and qr-key entries no member holds any more."""
    keys = index.key_entries()
    qrs = len(index._qrbuf) // 32
    used = index._ktab.live + index.qr_held
    total = keys + qrs
    return 0.0 if total == 0 else (total - used) / total


def _write(copy: _Copy, path: Path, mode: int) -> bool:
    """Copy and write the image; False (and no file) if the index changed meanwhile."""
    header = json.dumps(copy.header, separators=(",", ":")).encode()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            head = _HEAD.pack(MAGIC, len(header))
            f.write(head)
            f.write(header)
            crc = zlib.crc32(header, zlib.crc32(head))
            for part, (_, nbytes) in zip(copy.parts, copy.header["parts"], strict=True):
                step = CHUNK // (part.itemsize if isinstance(part, array) else 1)
                count = nbytes // (part.itemsize if isinstance(part, array) else 1)
                for start in range(0, count, step):
                    # A slice is a copy made under the GIL: the loop cannot change it half-way.
                    chunk = part[start : min(start + step, count)]
                    if copy.index.changes != copy.changes:
                        return False
                    crc = zlib.crc32(chunk, crc)
                    f.write(chunk)
            if copy.index.changes != copy.changes:
                return False
            f.write(_TAIL.pack(crc, TRAILER))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def save_image(index: MemberIndex, path: Path, cache_id: bytes, tag: bytes = b"") -> bool:
    """Write ``index`` as the image ``path`` (made from the cache ``cache_id`` at
    ``index.generation``), all at once, from this thread: for tools and tests, and for a caller
    that owns the index alone. Returns False if another thread changed the index meanwhile."""
    return _write(_begin(index, cache_id, tag), path, _file_mode(path))


def _file_mode(path: Path) -> int:
    """The image holds what the cache holds, so it gets the cache files' mode: 0640 in a state
    directory set up for the group (0750), else 0600 (store.make_private's rule)."""
    mode = os.stat(path.parent).st_mode & 0o777
    return 0o640 if mode & 0o007 == 0 and mode & 0o050 == 0o050 else 0o600


def _read_exact(f: Any, buf: Any, what: str) -> None:
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ImageRefused(f"torn: {what} cut short")
        got += n


def load_image(
    path: Path, cache_id: bytes, generation: int, tag: bytes = b"", since: int | None = None
) -> MemberIndex:
    """The index saved in ``path``, if it was made from cache ``cache_id`` at ``generation`` for
    ``tag`` (or, with ``since``, at any generation from ``since`` to ``generation``: the caller
    brings it up to the rows; its ``generation`` says which). Raises FileNotFoundError (or
    another OSError), or :class:`ImageRefused` with the reason."""
    try:
        return _load(path, cache_id, generation, tag, generation if since is None else since)
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
        # Only a damaged or foreign file gets here: the checksum covers what this release wrote.
        raise ImageRefused(f"inconsistent: {type(exc).__name__}") from exc


_TYPECODES = ("bytes", "B", "H", "I", "i", "Q")


def _load(path: Path, cache_id: bytes, generation: int, tag: bytes, since: int) -> MemberIndex:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise ImageRefused("torn: no header")
        magic, hlen = _HEAD.unpack(head)
        if magic != MAGIC:
            raise ImageRefused("not an index image")
        if hlen > size - _HEAD.size - _TAIL.size:
            raise ImageRefused("torn: header cut short")
        raw = f.read(hlen)
        try:
            header = json.loads(raw)
        except ValueError as exc:
            raise ImageRefused("torn: header unreadable") from exc
        if header.get("format") != FORMAT:
            raise ImageRefused(f"format {header.get('format')!r}, this release reads {FORMAT}")
        if header["byteorder"] != sys.byteorder or header["itemsizes"] != _itemsizes():
            raise ImageRefused("made on another kind of machine")
        if header["cache_id"] != cache_id.hex():
            raise ImageRefused("made from another cache")
        if header["tag"] != tag.hex():
            raise ImageRefused("made for another site or credential key")
        if not since <= header["generation"] <= generation:
            raise ImageRefused(
                f"stale: made at member generation {header['generation']}, the cache is at "
                f"{generation}"
            )
        parts_meta: list[list[Any]] = header["parts"]
        if size != _HEAD.size + hlen + sum(n for _, n in parts_meta) + _TAIL.size:
            raise ImageRefused("torn: wrong size")
        crc = zlib.crc32(raw, zlib.crc32(head))
        parts: list[array[int] | bytearray] = []
        for i, (typecode, nbytes) in enumerate(parts_meta):
            buf: array[int] | bytearray
            if typecode not in _TYPECODES or not isinstance(nbytes, int) or nbytes < 0:
                raise ImageRefused(f"inconsistent: part {i}")
            if typecode == "bytes":
                buf = bytearray(nbytes)
            else:
                itemsize = array(typecode).itemsize
                if nbytes % itemsize:
                    raise ImageRefused("torn: a part is not whole items")
                buf = array(typecode, [0]) * (nbytes // itemsize) if nbytes else array(typecode)
            _read_exact(f, buf, f"part {i}")
            crc = zlib.crc32(buf, crc)
            parts.append(buf)
        tail = f.read(_TAIL.size)
        if len(tail) != _TAIL.size:
            raise ImageRefused("torn: no trailer")
        stored_crc, trailer = _TAIL.unpack(tail)
        if trailer != TRAILER or stored_crc != crc:
            raise ImageRefused("torn: checksum does not match")
    return _assemble(header, parts)


def _assemble(header: dict[str, Any], parts: list[array[int] | bytearray]) -> MemberIndex:
    index = MemberIndex(0, hash_mask=header["hash_mask"])
    it = iter(parts)
    for name in _SECTIONS:
        setattr(index, name, next(it))
    for name, meta in zip(_TABLES, header["tables"], strict=True):
        table: _Table = getattr(index, name)
        table.cells = cast("array[int]", next(it))
        table.old = cast("array[int]", next(it)) if meta["old"] else None
        table.filled, table.live, table.cursor = meta["filled"], meta["live"], meta["cursor"]
    if not (
        len(index._slots) % index_module.SLOT.size == 0
        and len(index._keys) % index_module.KEY_ENTRY.size == 0
        and all(len(t.cells) & (len(t.cells) - 1) == 0 for t in (index._ids, index._ktab))
    ):
        raise ImageRefused("inconsistent: its parts are not whole records")
    # Profile ids are this process's: map the image's onto them (the same ids in a fresh
    # process, where the image's are the first interned).
    ids = [index_module._intern_profile(_profile_of_json(p)) for p in header["profiles"]]
    profiles = _PROFILE_COLUMN.iter_unpack(index._slots)
    if any(pid != i for i, pid in enumerate(ids)):
        at = 0
        for (pid,) in profiles:
            _PROFILE.pack_into(index._slots, at + _PROFILE_AT, ids[pid])
            at += index_module.SLOT.size
    elif index._slots and max(profiles)[0] >= len(ids):
        raise ImageRefused("inconsistent: a profile out of range")
    index._exact_from = {int(s): float(v) for s, v in header["exact_from"]}
    index._exact_until = {int(s): float(v) for s, v in header["exact_until"]}
    index.count = header["count"]
    index.qr_held = header["qr_held"]
    index.max_version = header["max_version"]
    index._digest = header["digest"]
    index.generation = header["generation"]
    return index


class LiveState(Protocol):
    """What the image keeper asks of the live index (gated.cache.live.LiveIndex)."""

    def settled(self) -> bool:
        """Whether the index holds exactly the cache's rows at ``index.generation``."""
        ...


class IndexHolder(Protocol):
    """Whoever holds the index decisions read (the gate: a cold start swaps in a new one)."""

    index: MemberIndex


class ImageKeeper:
    """Saves the gate's live index as its image: soon after a start that had to rebuild it,
    every :data:`SAVE_INTERVAL_S` at most while it changes, and at a clean stop.

    A save copies the index from a thread of its own while the loop goes on deciding; it is
    abandoned if the index changes during the copy (tried again at the next chance).
    """

    def __init__(
        self, path: Path, cache_id: bytes, tag: bytes, saved_generation: int | None
    ) -> None:
        self.path = path
        self.cache_id = cache_id
        self.tag = tag
        # The generation of the image on disk that matches the cache (None: none does).
        self.saved_generation = saved_generation
        self._last_attempt = -SAVE_INTERVAL_S
        self._thread: threading.Thread | None = None
        self.saves = 0
        self.abandoned = 0

    async def keep(self, holder: IndexHolder, live: LiveState) -> None:
        """Until cancelled: every :data:`CHECK_INTERVAL_S`, the first time at once, start a save
        if one is due (:meth:`maybe_save`)."""
        while True:
            self.maybe_save(holder.index, live)
            await asyncio.sleep(CHECK_INTERVAL_S)

    def maybe_save(self, index: MemberIndex, live: LiveState, *, now: float | None = None) -> bool:
        """On the loop: start a background save if one is due; True if one started."""
        now = time.monotonic() if now is None else now
        if (
            (self._thread is not None and self._thread.is_alive())
            or index.generation == self.saved_generation
            or (self.saved_generation is not None and now - self._last_attempt < SAVE_INTERVAL_S)
            or not live.settled()
        ):
            return False
        if wasted_share(index) > MAX_WASTED:
            return False
        self._last_attempt = now
        try:
            copy = _begin(index, self.cache_id, self.tag)
            self._thread = threading.Thread(
                target=self._save, args=(copy,), name="gated-index-image", daemon=True
            )
            self._thread.start()
        except Exception as exc:  # the gate serves on; the next start rebuilds from SQLite
            log.error("event=index_image_save_failed path=%s error=%r", self.path, exc)
            return False
        return True

    def save_at_stop(self, index: MemberIndex, live: LiveState) -> None:
        """At a clean stop, with the index no longer changing: save it if the image on disk is
        not already this generation."""
        if self._thread is not None:
            self._thread.join()
        if index.generation == self.saved_generation or not live.settled():
            return
        if wasted_share(index) > MAX_WASTED:
            return
        self._save(_begin(index, self.cache_id, self.tag))

    def _save(self, copy: _Copy) -> None:
        keep_off_decisions()  # started by the loop, whose CPU is the decisions'
        t0 = time.perf_counter()
        try:
            saved = _write(copy, self.path, _file_mode(self.path))
        except Exception as exc:  # a full or failing disk: the next start rebuilds from SQLite
            log.error("event=index_image_save_failed path=%s error=%s", self.path, exc)
            return
        if not saved:
            self.abandoned += 1
            log.info("event=index_image_save_abandoned reason=index_changed")
            return
        self.saves += 1
        self.saved_generation = copy.header["generation"]
        log.info(
            "event=index_image_saved members=%d generation=%d seconds=%.2f",
            copy.header["count"], copy.header["generation"], time.perf_counter() - t0,
        )  # fmt: skip


def image_tag(site: str, credential_key: bytes) -> bytes:
    """What an image is made for: its site and credential key (an HMAC, so the image says
    nothing of the key). An image copied from another site's or key's gate is refused."""
    return hmac.new(credential_key, b"gated index image\0" + site.encode(), "sha256").digest()[:16]
