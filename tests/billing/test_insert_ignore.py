"""``insert_ignore`` counts the rows it inserted, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from gated.billing_sync import schema as s
from gated.billing_sync.service import Billing
from gated.billing_sync.store import insert_ignore
from tests.billing.helpers import Clock, make_billing


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Billing, Clock]:
    """The service over SQLite, or over PostgreSQL (a database of its own)."""
    if request.param == "sqlite":
        return make_billing(tmp_path)
    return make_billing(tmp_path, database_url=request.getfixturevalue("postgres_store_url"))


def test_insert_ignore_counts_only_the_new_rows(store: tuple[Billing, Clock]) -> None:
    # On PostgreSQL the driver's rowcount is -1 for INSERT … ON CONFLICT: read as a count, a
    # dispute webhook sent twice booked its money twice and a payment form resent paid again.
    b, _ = store
    row = {"key_sha256": "a", "used_at": 1}
    with b.engine.begin() as conn:
        assert insert_ignore(conn, s.submit_keys, [row]) == 1
        assert insert_ignore(conn, s.submit_keys, [row]) == 0
        more = [row, {**row, "key_sha256": "b"}, {**row, "key_sha256": "c"}]
        assert insert_ignore(conn, s.submit_keys, more) == 2
