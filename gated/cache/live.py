"""The live member index: rows committed through the cache writer, then put into the in-memory
index the hot path reads, a slice at a time, so a badge never waits behind a sync burst.

Each write's index records are made on the writer's thread as the rows are stored; the loop only
puts them in, APPLY_SLICE per pass. New records are frozen out of the collector's generations
every FREEZE_EVERY (a full collection must never walk a million records during a badge).
"""

from __future__ import annotations

import asyncio
import gc
import operator
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from gated.cache.index import MEMBER_COLUMNS, MemberIndex, Record, record_from_row
from gated.cache.store import CacheStore, CacheWriter
from gated.placement import gather_readers, spread_readers

T = TypeVar("T")

# Index updates applied per loop iteration (~4-7 µs each): a badge waits ~0.1 ms at most.
APPLY_SLICE = 16
INDEX_COLUMNS = tuple(c.strip() for c in MEMBER_COLUMNS.split(","))
_index_values = operator.itemgetter(*INDEX_COLUMNS)
# Members applied between two gc.freeze() calls (see LiveIndex.freeze_new_members).
FREEZE_EVERY = 5000


class IndexHolder(Protocol):
    """Whoever holds the index decisions read (the gate): a cold start swaps in a new one."""

    index: MemberIndex


class _Made(NamedTuple, Generic[T]):
    """What the writer's thread made with a commit: the write's own result, and the index records
    with their digest terms for the loop to put, or a whole new index to swap in."""

    value: T
    members: list[Record]
    terms: list[int]
    new_index: MemberIndex | None = None
    generation: int = 0  # the cache's member generation once this write is in it


def _store_and_make(
    write: Callable[[CacheStore, Callable[[dict[str, Any]], None]], T], store: CacheStore
) -> _Made[T]:
    """On the writer's thread: ``write`` with a callback that makes each applied row's index
    record as the row is stored, while a snapshot's next rows are still being made; with the
    row's digest term, that leaves the loop's index slices a third of the work."""
    members: list[Record] = []
    terms: list[int] = []

    def make(row: dict[str, Any]) -> None:
        members.append(record_from_row(_index_values(row)))
        terms.append(row["digest_term"])

    return _Made(write(store, make), members, terms)


class LiveIndex:
    """Applies member rows to the cache and then to ``holder.index`` (see module doc)."""

    def __init__(self, writer: CacheWriter, holder: IndexHolder) -> None:
        self._writer = writer
        self._holder = holder
        self._unfrozen = 0
        self.in_flight = 0  # writes submitted whose rows are not all in the index yet
        # The member generation the writer's last member write left (the writer's thread only).
        self._writer_generation = holder.index.generation
        # A member row changed by someone else (another process on the cache): the index lacks
        # it until a restart, so it is no image of the cache (gated.cache.image) until then.
        self.foreign_change = False

    def settled(self) -> bool:
        """Whether the index holds exactly the cache's member rows at ``index.generation``: every
        write it was given is in it, and nobody else changed a member meanwhile."""
        return self.in_flight == 0 and not self.foreign_change

    def _generation_around(
        self, write: Callable[[CacheStore], _Made[T]]
    ) -> Callable[[CacheStore], _Made[T]]:
        """On the writer's thread: ``write``, and the member generation it leaves."""

        def run(store: CacheStore) -> _Made[T]:
            _, before = store.generation()
            made = write(store)
            _, after = store.generation()
            if before != self._writer_generation:
                self.foreign_change = True
            self._writer_generation = after
            return made._replace(generation=after)

        return run

    def apply_states(self, states: list[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """Store member states (verified or locally trusted) and then apply them to the index.

        Returns a Future resolved with the rows that were newer, once they are committed and
        visible to decisions.
        """
        return self._commit_then_index(lambda s, each: s.apply_states(states, each))

    def apply_rows(self, rows: Iterable[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """As :meth:`apply_states`, for rows ``member_row`` already made (in the sync's verifier
        processes, so the writer thread holds the GIL less while decisions run)."""
        return self._commit_then_index(lambda s, each: s.apply_rows(rows, each))

    def apply_snapshot(self, rows: Iterable[dict[str, Any]]) -> Future[int]:
        """Store a verified snapshot's rows in one transaction, all or nothing, and put them in
        the index; resolves with how many were newer and applied, once decisions see them.

        The rows are not kept: each is freed as soon as it is stored, a chunk at a time on the
        writer's thread (freeing 100,000 in one go holds the GIL ~50 ms). Into an empty cache (a
        cold start) they go into a whole new index, built on the writer's thread as they are
        stored and swapped in with one assignment once committed: the loop does none of the
        index work, and until then decisions see the empty index (an unknown card), as before
        any snapshot. A snapshot refused or rolled back leaves cache and index as they were.
        """

        def write(store: CacheStore) -> _Made[int]:
            if store.has_members():
                return _store_and_make(lambda s, each: s.upsert_rows(rows, each), store)
            index = MemberIndex()
            put = index.put

            def put_all(batch: list[dict[str, Any]]) -> None:
                for row in batch:
                    put(record_from_row(_index_values(row)), row["digest_term"])

            return _Made(store.upsert_batches(rows, put_all), [], [], index)

        return self._index_when_committed(self._writer.submit(self._generation_around(write)))

    def _commit_then_index(
        self, write: Callable[[CacheStore, Callable[[dict[str, Any]], None]], T]
    ) -> Future[T]:
        return self._index_when_committed(
            self._writer.submit(self._generation_around(partial(_store_and_make, write)))
        )

    def _index_when_committed(self, committed: Future[_Made[T]]) -> Future[T]:
        """A Future of the write's own result, resolved once the index holds what it made."""
        loop = asyncio.get_running_loop()
        result: Future[T] = Future()
        if not self.in_flight:
            spread_readers()  # the loop will be busy with the index's slices
        self.in_flight += 1
        result.add_done_callback(self._landed)  # set on the loop's thread, so run there
        committed.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._apply_to_index, f, result)
        )
        return result

    def _apply_to_index(self, committed: Future[_Made[T]], result: Future[T]) -> None:
        try:
            made = committed.result()
        except Exception as exc:  # the writer's typed failures are handed on to the caller
            result.set_exception(exc)
            return
        if made.new_index is not None:
            # Built from an empty cache. Nothing reached the old, empty index meanwhile: the index
            # changes only after the writer commits, in the writer's order, and a later commit's
            # slices start after this call.
            made.new_index.generation = made.generation
            self._holder.index = made.new_index
            self.freeze_new_members(made.new_index.count)
            result.set_result(made.value)
            return
        self._apply_slice(made, 0, result)

    def _landed(self, _: Future[Any]) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            gather_readers()

    def _apply_slice(self, made: _Made[T], start: int, result: Future[T]) -> None:
        """Put records into the index a slice at a time, yielding to the loop between slices so a
        badge arriving during a 100k-member burst waits for one slice at most."""
        members, terms = made.members, made.terms
        end = min(start + APPLY_SLICE, len(members))
        index = self._holder.index
        put = index.put
        for i in range(start, end):
            put(members[i], terms[i])
        if end < len(members):
            asyncio.get_running_loop().call_soon(self._apply_slice, made, end, result)
        else:
            # Writes' slices interleave; once none is in flight the index is at the last one's.
            index.generation = max(index.generation, made.generation)
            self.freeze_new_members(len(members))
            result.set_result(made.value)

    def freeze_new_members(self, applied: int) -> None:
        """New members live as long as the gate: every few thousand, move them out of the
        collector's generations (as at start) so a full collection never walks them during a
        badge. Young cyclic garbage is collected first so it is not frozen with them."""
        self._unfrozen += applied
        if self._unfrozen >= FREEZE_EVERY:
            self._unfrozen = 0
            # While a snapshot holds the collector off, its young generations hold everything the
            # snapshot made: collecting them took ~70 ms of a badge's time (100k members).
            if gc.isenabled():
                gc.collect(1)
            gc.freeze()
