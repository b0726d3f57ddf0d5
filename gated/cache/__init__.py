"""The member cache: SQLite (WAL) on disk, an in-memory index for the hot path, the event outbox."""

from gated.cache.index import MemberIndex, member_from_state
from gated.cache.store import CacheStore, CacheWriter

__all__ = ["CacheStore", "CacheWriter", "MemberIndex", "member_from_state"]
