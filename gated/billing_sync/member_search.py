"""Finding a member at the front desk: by card UID (as a reader types it), exact member id, part
of a name or an e-mail address, or part of a phone number. One answer on SQLite and PostgreSQL:
the matching members in the sites a staff account covers, ordered by name then id (code point
order on both), a page of ``SEARCH_LIMIT`` at a time, and whether more match after the page.

The desk shows 25 members, so no query sorts more matches than it must. Most queries match a
few members: all of them (at most ``BROAD``) are found through the trigram indexes and sorted.
A broad one (``weber``, 12,500 of 100,000 members) walks the members in name order through
``ix_members_name_order`` (migration 0020) and stops at the 26th match; only when that walk of
``WALK_ROWS`` members finds too few (matches crowded late in the alphabet) are every match's
name and id sorted. On PostgreSQL the first 1,001 matches already say where the page ends at
the latest (their 26th in order): the index counts the members up to there first, so a walk
that would fall short is never started, and only the matches up to there are sorted. On SQLite the walk matches with LIKE, which folds the case of ASCII letters
only, where its FTS5 index folds every letter's: a query with other characters is not walked
there, but sorted whole."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    true,
    tuple_,
)

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.front_desk import ALL_SITES, in_scope
from gated.contract import ContractError, normalize_uid

SEARCH_LIMIT = 25
# More matches than this and a query is broad: its first page comes from the walk in name order.
BROAD = 1000
# How many members in name order the walk reads at most before sorting every match instead
# (a broad query whose matches spread evenly has its 26th within the first 2,600 or so).
WALK_ROWS = 4000
# A query that reads as (part of) a phone number, and the separators both sides may use.
_PHONE_QUERY = re.compile(r"\+?[0-9 ()./-]{4,32}")
_PHONE_SEPARATORS = (" ", "-", "(", ")", "/", ".", "+")


@dataclass(frozen=True)
class Found:
    """A page of search results: the members (in order) and whether more match after them
    (the next page starts after the last one's id)."""

    members: list[dict[str, Any]]
    more: bool


def _digits_only(column: Any) -> Any:
    """``column`` with what people put between a phone number's digits taken out. The
    separators are SQL text, not parameters, so the expression is the one PostgreSQL's trigram
    index on it was made for (migration 0018) in every plan."""
    for sep in _PHONE_SEPARATORS:
        column = func.replace(column, literal_column(f"'{sep}'"), literal_column("''"))
    return column


def _fts_rows(column: str, text: str) -> Any:
    """The rowids of the members whose ``column`` of SQLite's trigram index ``member_search``
    (migration 0013, kept by triggers: ``who`` is the name and e-mail, ``phone`` the phone's
    digits) contains ``text`` (3 characters or more, any case)."""
    phrase = column + ' : "' + text.replace('"', '""') + '"'
    return (
        select(literal_column("rowid"))
        .select_from(table("member_search"))
        .where(literal_column("member_search").op("MATCH")(phrase))
    )


def _fts(column: str, text: str) -> ColumnElement[bool]:
    """Members whose ``column`` of the trigram index contains ``text`` (``_fts_rows``)."""
    return literal_column("members.rowid").in_(_fts_rows(column, text))


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _phone_digits(query: str) -> str | None:
    """The digits of a query that reads as a phone number (leading zeros dropped, so a trunk
    prefix `030 …` or `0049 …` finds `+49 30 …`), or None."""
    if not _PHONE_QUERY.fullmatch(query):
        return None
    digits = "".join(ch for ch in query if ch.isdigit()).lstrip("0")
    return digits if len(digits) >= 4 else None


def _text_condition(query: str, c: Any, how: str) -> ColumnElement[bool] | None:
    """Members whose name, e-mail address or phone (its digits) contains ``query``, as a
    condition on the columns ``c``; None for a query too short to mean anything. ``how``:
    ``fts`` through SQLite's trigram index, ``like`` with LIKE on each column (what
    PostgreSQL's trigram indexes serve), ``who`` with LIKE on the name and e-mail as the one
    text SQLite's index holds (its walk in name order, ASCII queries only)."""
    conditions: list[ColumnElement[bool]] = []
    if len(query) >= 2:
        pattern = f"%{_like_escaped(query.lower())}%"
        if how == "fts" and len(query) >= 3:
            conditions.append(_fts("who", query))
        elif how == "who":
            who = func.coalesce(c.name, "") + " " + func.coalesce(c.email, "")
            conditions.append(func.lower(who).like(pattern, escape="\\"))
        else:
            conditions.append(func.lower(c.name).like(pattern, escape="\\"))
            conditions.append(func.lower(c.email).like(pattern, escape="\\"))
    digits = _phone_digits(query)
    if digits is not None:
        conditions.append(
            _fts("phone", digits) if how == "fts" else _digits_only(c.phone).like(f"%{digits}%")
        )
    return or_(*conditions) if conditions else None


def _fts_broad(conn: Connection, query: str) -> bool:
    """Whether more than ``BROAD`` members may match ``query`` on SQLite: its trigram index
    counts each phrase's rows up to ``BROAD`` + 1 (a LIMIT it stops at), and a two-character
    query, which the index cannot take, counts its LIKE the same way."""
    m = s.members
    counted: list[Any] = []
    if len(query) >= 3:
        counted.append(_fts_rows("who", query))
    elif len(query) == 2:
        condition = _text_condition(query, m.c, "like")
        assert condition is not None  # two characters are a condition
        counted.append(select(m.c.id).where(condition))
    digits = _phone_digits(query)
    if digits is not None:
        counted.append(_fts_rows("phone", digits))
    return any(
        conn.execute(
            select(func.count()).select_from(rows.limit(BROAD + 1).subquery())
        ).scalar_one()
        > BROAD
        for rows in counted
    )


def _scope(c: Any, staff_sites: Sequence[str]) -> ColumnElement[bool]:
    """Members of any of ``staff_sites`` (their ``sites`` is a JSON list of ids)."""
    if ALL_SITES in staff_sites:
        return true()
    if not staff_sites:
        return false()
    return or_(*(c.sites.like(f'%"{_like_escaped(site)}"%', escape="\\") for site in staff_sites))


def _order(c: Any, postgres: bool) -> tuple[Any, Any]:
    """Name then id, in code point order: SQLite's BINARY collation, PostgreSQL's "C" (whatever
    the database's own collation), and Python's comparison of strings."""
    if postgres:
        return c.name.collate("C"), c.id.collate("C")
    return c.name, c.id


def search(ctx: Context, query: str, staff_sites: Sequence[str], after: str | None = None) -> Found:
    """Members matching ``query`` within ``staff_sites``, by name then id, erased ones never:
    the first ``SEARCH_LIMIT``, or the next ones after the member ``after`` (a page's last)."""
    query = query.strip()[:200]
    if not query:
        return Found([], False)
    m = s.members
    postgres = ctx.engine.dialect.name == "postgresql"
    text = _text_condition(query, m.c, "like" if postgres else "fts")
    with ctx.reader.connect() as conn:
        start = None
        if after is not None:
            start = conn.execute(select(m.c.name, m.c.id).where(m.c.id == after)).first()

        def keyset(c: Any) -> ColumnElement[bool]:
            if start is None:
                return true()
            return tuple_(*_order(c, postgres)) > tuple_(literal(start.name), literal(start.id))

        def wanted(c: Any) -> ColumnElement[bool]:
            return and_(c.erased.is_(False), _scope(c, staff_sites))

        hits = set(_exact(ctx, conn, query, and_(wanted(m.c), keyset(m.c))))
        if text is not None:

            def matching(how: str) -> Callable[[Any], ColumnElement[bool]]:
                def where(c: Any) -> ColumnElement[bool]:
                    # on the table's columns, or on the walk's
                    condition = _text_condition(query, c, how)
                    assert condition is not None  # as for the table's
                    return and_(wanted(c), condition)

                return where

            # SQLite's LIKE folds the case of ASCII letters only, its trigram index that of
            # every letter: a query with others is never walked there.
            walk = "like" if postgres else "who" if query.isascii() else None
            broad = postgres or _fts_broad(conn, query)
            hits.update(
                _matching(
                    conn,
                    matching("like" if postgres else "fts"),
                    matching(walk) if walk and broad else None,
                    keyset,
                    postgres,
                )
            )
        page = sorted(hits)[: SEARCH_LIMIT + 1]
        rows = _details(conn, [member_id for _, member_id in page[:SEARCH_LIMIT]])
    # Scoped in SQL already; checked again on what leaves, as every desk read is.
    found = [r for r in rows if in_scope(r["sites"], staff_sites)]
    return Found(found, len(page) > SEARCH_LIMIT)


def _exact(
    ctx: Context, conn: Connection, query: str, where: ColumnElement[bool]
) -> list[tuple[str, str]]:
    """(name, id) of the member whose id is ``query`` and of those holding the card whose UID
    it is (as a reader types it: any case or separators): point lookups, never a scan."""
    m = s.members
    ids = [query]
    try:
        lookup = ctx.keys.uid_lookup(normalize_uid(query))
    except ContractError:
        lookup = None
    if lookup is not None:
        ids += conn.execute(
            select(s.cards.c.member_id).where(
                s.cards.c.uid_lookup == lookup, s.cards.c.revoked_at.is_(None)
            )
        ).scalars()
    rows = conn.execute(select(m.c.name, m.c.id).where(m.c.id.in_(ids), where))
    return [(r.name, r.id) for r in rows]


def _matching(
    conn: Connection,
    where: Callable[[Any], ColumnElement[bool]],
    walk_where: Callable[[Any], ColumnElement[bool]] | None,
    keyset: Callable[[Any], ColumnElement[bool]],
    postgres: bool,
) -> list[tuple[str, str]]:
    """(name, id) of the first ``SEARCH_LIMIT`` + 1 members in order that meet ``where`` and
    come after the ``keyset`` (conditions on a set of member columns), or more; a broad query
    walks the members in name order with ``walk_where`` (None: no walk)."""
    m = s.members
    want = SEARCH_LIMIT + 1

    def upto(c: Any) -> ColumnElement[bool]:
        return true()

    if postgres:
        # Every match when there are few: the trigram indexes find them, Python sorts them.
        bounded = conn.execute(
            select(m.c.name, m.c.id).where(where(m.c), keyset(m.c)).limit(BROAD + 1)
        ).all()
        if len(bounded) <= BROAD:
            return [(r.name, r.id) for r in bounded]
        # The page ends at the latest at the 26th of these in order. The walk below finds it
        # for certain if the name-order index holds at most WALK_ROWS members up to there
        # (counted in the index alone); else only the matches up to there are sorted, without
        # the walk that would find too few. (A walk bounded there too is planned by PostgreSQL
        # as a sort of the whole range: it underestimates how many match.)
        if len(bounded) >= want:
            last = sorted((r.name, r.id) for r in bounded)[want - 1]

            def upto(c: Any) -> ColumnElement[bool]:
                return tuple_(*_order(c, postgres)) <= tuple_(literal(last[0]), literal(last[1]))

            span = (
                select(m.c.id)
                .where(keyset(m.c), upto(m.c))
                .order_by(*_order(m.c, postgres))
                .limit(WALK_ROWS + 1)
                .subquery()
            )
            if conn.execute(select(func.count()).select_from(span)).scalar_one() > WALK_ROWS:
                walk_where = None
    if walk_where is not None:
        # A broad query: walk the members in name order (the index's range from the keyset)
        # and stop at the page's end.
        walked = (
            select(m.c.id, m.c.name, m.c.email, m.c.phone, m.c.sites, m.c.erased)
            .where(keyset(m.c))
            .order_by(*_order(m.c, postgres))
            .limit(WALK_ROWS)
            .subquery("walked")
        )
        first = conn.execute(
            select(walked.c.name, walked.c.id)
            .where(walk_where(walked.c))
            .order_by(*_order(walked.c, postgres))
            .limit(want)
        ).all()
        if len(first) == want:
            return [(r.name, r.id) for r in first]
    # Every match's name and id, sorted by the database. Materialized on PostgreSQL, so its
    # planner cannot make it the walk in name order, unbounded: a query whose matches crowd
    # late in the alphabet would read nearly every member before the first.
    hits = (
        select(m.c.name, m.c.id)
        .where(where(m.c), keyset(m.c), upto(m.c))
        .cte("hits")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    rows = conn.execute(
        select(hits.c.name, hits.c.id).order_by(*_order(hits.c, postgres)).limit(want)
    )
    return [(r.name, r.id) for r in rows]


def _details(conn: Connection, member_ids: list[str]) -> list[dict[str, Any]]:
    """What the results list shows of ``member_ids``, in that order."""
    if not member_ids:
        return []
    m, sub = s.members, s.subscriptions
    rows = conn.execute(
        select(m.c.id, m.c.name, m.c.email, m.c.phone, m.c.sites, sub.c.status, sub.c.plan_id)
        .outerjoin(sub, sub.c.member_id == m.c.id)
        .where(m.c.id.in_(member_ids))
    )
    by_id = {r.id: {**r._asdict(), "sites": json.loads(r.sites)} for r in rows}
    return [by_id[i] for i in member_ids if i in by_id]
