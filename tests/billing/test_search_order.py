"""The member search's one contract on SQLite and PostgreSQL: every member matching a query
(part of the name or e-mail, the exact id, a card), within the staff account's sites, erased
ones never, ordered by name then id in code point order, a page at a time with ``more`` saying
whether another page follows. Paging from the first page to the last gives exactly the matches
a plain Python filter and sort give, through each of PostgreSQL's three ways to a page (every
match fetched and sorted; the walk in name order; every match sorted by the database after a
walk that found too few)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from gated.billing_sync import member_search
from gated.billing_sync.service import Billing
from tests.billing.helpers import make_billing

# Names that sort differently by code point than by any language's rules: upper case before
# lower, accented letters after z; matches crowded at the start and at the end of the order.
NAMES = (
    ["Aaron Abel", "Aaron Zeller", "aaron weber", "Anna Weber", "Anna weber", "ANNA WEBER"]
    + [f"Berta Kolb {i}" for i in range(12)]
    + ["Weber", "Webermann Zoë", "Zoë Weber", "Zoe Weber", "Ömer Weber", "Émile Weber"]
    + [f"Zacharias Weber {i}" for i in range(14)]
    + ["Zed Quinn", "Ulla Ott"]
)


def _members() -> list[dict[str, Any]]:
    rows = []
    for i, name in enumerate(NAMES):
        rows.append(
            {
                "member_id": f"m{i:03d}",
                "name": name,
                "plan": "monthly",
                "email": "webmaster@example.org" if name == "Ulla Ott" else f"p{i}@example.org",
                "sites": ["downtown"] if i % 3 else ["uptown"],
                "card": "pm_sim_ok",
            }
        )
    # A member whose id is the query, whose name does not contain it.
    rows.append({"member_id": "weber", "name": "Bert Lang", "plan": "monthly",
                 "email": None, "sites": ["uptown"], "card": "pm_sim_ok"})  # fmt: skip
    return rows


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A store on each database with the members above, one of them erased and one of them
    with a card (the tests only read it)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    overrides = {}
    if request.param == "postgres":
        # A database whose own collation sorts by language (ICU English: "aaron" beside
        # "Aaron"), so the search's code point order is its own doing.
        cluster = request.getfixturevalue("postgres_cluster")
        name = f"search_order_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(
                f"CREATE DATABASE {name} TEMPLATE template0"  # type: ignore[arg-type]
                " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            )
        overrides["database_url"] = cluster.url(name)
    b, _ = make_billing(tmp_path, **overrides)
    assert b.import_members("members.json", json.dumps(_members())) == len(NAMES) + 1
    b.erase("m003")  # "Anna Weber"
    b.assign_card("m006", "04A1B2C3D4E5F6")  # "Berta Kolb 0"
    yield b
    b.engine.dispose()


def _expected(query: str, sites: list[str]) -> list[str]:
    """The matches by a plain filter and sort over the members above."""
    q = query.lower()
    hits = [
        (m["name"], m["member_id"])
        for m in _members()
        if m["member_id"] != "m003"
        and ("*" in sites or any(site in sites for site in m["sites"]))
        and (q in m["name"].lower() or q in (m["email"] or "") or m["member_id"] == query)
    ]
    return [member_id for _, member_id in sorted(hits)]


def _pages(b: Billing, query: str, sites: list[str]) -> list[list[str]]:
    pages, after = [], None
    while True:
        found = b.search_members(query, sites, after)
        pages.append([m["id"] for m in found.members])
        assert len(found.members) == (
            member_search.SEARCH_LIMIT if found.more else len(found.members)
        )
        if not found.more:
            return pages
        after = found.members[-1]["id"]
        assert len(pages) < 20


# (BROAD, WALK_ROWS): every match sorted; the walk; a walk too short, then the database's sort
# (on PostgreSQL the sort alone: it counts first).
WAYS = {"every match": (1000, 4000), "the walk": (8, 4000), "walk, then sort": (8, 10)}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("sites", [["*"], ["uptown"]])
def test_pages_follow_name_then_id_in_code_point_order(
    store: Billing, monkeypatch: pytest.MonkeyPatch, way: str, sites: list[str]
) -> None:
    broad, walk = WAYS[way]
    monkeypatch.setattr(member_search, "SEARCH_LIMIT", 5)
    monkeypatch.setattr(member_search, "BROAD", broad)
    monkeypatch.setattr(member_search, "WALK_ROWS", walk)
    statements: list[str] = []
    event.listen(store.reader, "before_cursor_execute", lambda *a: statements.append(str(a[2])))
    for query in ("weber", "WEB", "zoë", "example.org", "Kolb 1"):
        pages = _pages(store, query, sites)
        assert [i for page in pages for i in page] == _expected(query, sites), (query, pages)
        assert pages[-1] or len(pages) == 1
    # Each way was taken (SQLite never walks for "zoë": its LIKE folds ASCII letters only).
    # PostgreSQL first counts the members in name order up to where the page ends at the
    # latest, and sorts instead of a walk that would stop short (a short walk may still do).
    walked = any("walked" in s for s in statements)
    if store.engine.dialect.name == "postgresql":
        assert walked == (way != "every match") or way == "walk, then sort"
        assert any("hits" in s for s in statements) == (way == "walk, then sort")
    else:
        assert walked == (way != "every match")
    # The first page of "weber" for everyone, spelled out: upper case before lower, the exact
    # id merged in by its name, the erased member gone, accented capitals after z.
    monkeypatch.setattr(member_search, "SEARCH_LIMIT", 25)
    everyone = [m["name"] for m in store.search_members("weber", ["*"]).members]
    assert everyone == ["ANNA WEBER", "Anna weber", "Bert Lang", "Weber", "Webermann Zoë"] + [
        f"Zacharias Weber {i}" for i in sorted(range(14), key=str)
    ] + ["Zoe Weber", "Zoë Weber", "aaron weber", "Émile Weber", "Ömer Weber"]


def test_a_card_and_an_id_are_found_in_the_same_order(store: Billing) -> None:
    assert [m["id"] for m in store.search_members("04:a1:b2:c3:d4:e5:f6", ["*"]).members] == [
        "m006"
    ]
    assert [m["id"] for m in store.search_members("weber", ["downtown"]).members] == _expected(
        "weber", ["downtown"]
    )
    assert store.search_members("m003", ["*"]).members == []  # erased
    assert store.search_members("weber", [], None).members == []
    # An unknown member to page after: the first page.
    assert store.search_members("kolb", ["*"], "nobody") == store.search_members("kolb", ["*"])
