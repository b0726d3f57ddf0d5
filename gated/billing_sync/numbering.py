"""Legal document numbers: one series per site, year and kind of document, without gaps.

A number is ``{site}-{year}-{n:06d}`` for an invoice (``downtown-2026-000123``) and
``{site}-CN-{year}-{n:06d}`` for a credit note; ``n`` starts at 1 each year. The year is the
issue date's in the issuing site's time zone (``[sites.<id>] timezone``, UTC by default), the
date printed on the document: an invoice issued at 00:30 on 1 January in Berlin (23:30 UTC the
day before) is the new year's. Numbers come from a counter row
(``document_counters``) that the taking transaction holds locked until it commits: a database
sequence would lose the numbers of a transaction that rolls back, and tax law wants no gaps.
On PostgreSQL the ``UPDATE ... RETURNING`` that takes the numbers locks the row (as
``SELECT ... FOR UPDATE`` would, in one round trip); a second issuer waits for the first to
commit or roll back, then continues from what it left. On SQLite every writing transaction
begins with ``BEGIN IMMEDIATE``, so the store's one write lock serializes issuers.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, select, update

from gated.billing_sync import schema as s
from gated.billing_sync.periods import ensure_issuable
from gated.billing_sync.store import bulk, insert_ignore, many, site_zone

# Series → the code between site and year in a number.
SERIES: dict[str, str] = {"invoice": "", "credit_note": "CN-"}

_C = s.document_counters
# Built once: a statement built per call costs more to build and key than the update itself.
_TAKE = (
    update(_C)
    .where(
        _C.c.site == bindparam("s"),
        _C.c.year == bindparam("y"),
        _C.c.series == bindparam("se"),
    )
    .values(last=_C.c.last + bindparam("n"))
    .returning(_C.c.last)
)


def year_of(ts: int, zone: str = "UTC") -> int:
    """The year a document issued at ``ts`` is numbered in: the year in the issuing site's time
    zone ``zone``, as its printed date of issue."""
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).year


def site_year(conn: Connection, site: str, ts: int) -> int:
    """The year a document ``site`` issues at ``ts`` is numbered in (``year_of`` in the site's
    ``[sites.<id>] timezone``)."""
    return year_of(ts, site_zone(conn, site))


def format_number(site: str, year: int, series: str, n: int) -> str:
    """The printed number of the ``n``-th document of a series."""
    return f"{site}-{SERIES[series]}{year}-{n:06d}"


def take_numbers(conn: Connection, site: str, year: int, series: str, count: int) -> list[str]:
    """The next ``count`` numbers of a series, in order, inside the caller's transaction (which
    keeps the counter row locked until it ends: a rollback gives the numbers back)."""
    if series not in SERIES:
        raise ValueError(f"unknown document series {series!r}")
    if count <= 0:
        return []
    take = {"s": site, "y": year, "se": series, "n": count}
    last = conn.execute(_TAKE, take).scalar()
    if last is None:
        # The first document of a series makes its row; two issuers making it at once: the
        # second waits for the first's commit (unique key), inserts nothing, and then takes
        # the numbers after the first's.
        insert_ignore(conn, _C, [{"site": site, "year": year, "series": series, "last": 0}])
        last = conn.execute(_TAKE, take).scalar_one()
    first = int(last) - count + 1
    return [format_number(site, year, series, n) for n in range(first, int(last) + 1)]


def next_number(conn: Connection, site: str, year: int, series: str = "invoice") -> str:
    """The next number of a series (see ``take_numbers``); for credit notes ``series`` is
    ``"credit_note"``."""
    return take_numbers(conn, site, year, series, 1)[0]


def number_rows(conn: Connection, rows: list[dict[str, Any]], now: int) -> None:
    """Give each invoice row to be inserted (with its ``site``) its number and issue time: one
    counter update per site, in row order. Refused (``PeriodClosed``) when ``now``'s month is
    closed at one of the rows' sites."""
    if not rows:
        return
    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_site[row["site"]].append(row)
    ensure_issuable(conn, now, by_site)
    for site in sorted(by_site):  # one order for every issuer: no deadlock between two
        group = by_site[site]
        year = site_year(conn, site, now)
        for row, number in zip(
            group, take_numbers(conn, site, year, "invoice", len(group)), strict=True
        ):
            row["number"] = number
            row["issued_at"] = now


def issue_drafts(conn: Connection, invoice_ids: list[int], now: int) -> None:
    """Number the draft invoices among ``invoice_ids`` (a sign-up's first invoice, once paid)."""
    if not invoice_ids:
        return
    inv = s.invoices
    drafts = [
        {"iid": int(r.id), "site": r.site}
        for r in conn.execute(
            select(inv.c.id, inv.c.site)
            .where(inv.c.id.in_(many(invoice_ids)), inv.c.number.is_(None))
            .order_by(inv.c.id)
        )
    ]
    number_rows(conn, drafts, now)
    bulk(
        conn,
        update(inv)
        .where(inv.c.id == bindparam("iid"))
        .values(number=bindparam("nb"), issued_at=bindparam("ia")),
        [{"iid": d["iid"], "nb": d["number"], "ia": d["issued_at"]} for d in drafts],
    )
