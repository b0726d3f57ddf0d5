"""The member's phone and emergency contact at the desk (in process, real SQLite store): found by
any part of the phone number however it is spaced, shown on the member page and in the results
as text, and scoped to the account's sites like every other search; a broad search pages on
through a link (and the API's `after`)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from starlette.testclient import TestClient

from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock
from tests.web.test_desk import _session, billing  # noqa: F401 (the module's store)


def test_phone_search_and_the_emergency_contact_on_the_member_page(
    app: Any,
    billing: tuple[Billing, Clock],  # noqa: F811
) -> None:
    b, _ = billing
    b.update_contact("ann", "+49 (30) 123-4567", "Bo <script>x</script> +49 170 1")
    b.update_contact("upt", "+49 30 1234567", "Uptown contact")
    b.add_member("cy", "Cy", plan_id="monthly", sites=["downtown"], payment_method="pm_sim_ok")
    b.update_contact("cy", "+49 30 7654321", "-")
    with TestClient(app) as c:
        c.cookies.set("gated-staff", _session(b, "front_desk"))

        def ids(q: str) -> list[str]:
            r = c.get("/api/v1/staff/members", params={"q": q})
            return [m["id"] for m in r.json()["members"]]

        # Typed as on the form, bare digits, with a different spacing, or only the end.
        for q in ("+49 (30) 123-4567", "49301234567", "030 123 4567", "1234567", "4567"):
            assert ids(q) == ["ann"], q  # never uptown's member with the same number
        assert ids("765 43 21") == ["cy"]
        assert ids("456") == []  # too short to mean a phone number
        r = c.get("/desk/", params={"q": "1234567"}, follow_redirects=False)
        assert r.headers["location"] == "/desk/members/ann"  # one hit: straight there
        page = c.get("/desk/members/ann").text
        assert (
            '<dd id="member-phone"><a href="tel:+49(30)123-4567">+49 (30) 123-4567</a></dd>' in page
        )
        assert "Bo &lt;script&gt;x&lt;/script&gt; +49 170 1" in page and "<script>x" not in page
        listed = c.get("/desk/", params={"q": "+49 30"}).text  # several: the table shows phones
        assert "+49 30 7654321" in listed and "+49 (30) 123-4567" in listed
        assert c.get("/api/v1/staff/members/ann").json()["emergency_contact"].startswith("Bo ")


def test_the_search_index_follows_every_change_and_takes_any_text(
    billing: tuple[Billing, Clock],  # noqa: F811
) -> None:
    b, _ = billing

    def ids(q: str) -> list[str]:
        return [m["id"] for m in b.search_members(q, ["*"]).members]

    # (SQLite: the trigram index kept by triggers, migration 0013; the scan elsewhere.)
    assert b.engine.dialect.name == "sqlite"
    b.add_member(
        "zed", 'Zoë "Quote" Ünal', plan_id="monthly", sites=["downtown"], email="Z@Example.org"
    )
    assert ids("zoë") == ["zed"] and ids("ÜNAL") == ["zed"] and ids("z@example") == ["zed"]
    assert ids('"quote"') == ["zed"] and ids('oë "q') == ["zed"]
    for odd in ('"', "* OR x", "a:b", "NEAR(", "zed AND", "\\%_"):
        assert ids(odd) == [], odd  # text, never query syntax
    b.update_contact("zed", "+49 89 5550123", "-")
    assert ids("089 555 0123") == ["zed"]
    b.update_contact("zed", "+49 89 7770123", "-")
    assert ids("089 555 0123") == [] and ids("7770123") == ["zed"]
    b.erase("zed")
    assert ids("zoë") == [] and ids("7770123") == []


def test_a_broad_search_pages_through_the_next_link_and_the_api(
    app: Any,
    billing: tuple[Billing, Clock],  # noqa: F811
) -> None:
    b, _ = billing
    rows = [
        {"member_id": f"w{i:02d}", "name": f"Wendy Weber {i:02d}", "plan": "monthly",
         "sites": ["downtown"], "card": "pm_sim_ok"}
        for i in range(30)
    ]  # fmt: skip
    assert b.import_members("w.json", json.dumps(rows)) == 30
    with TestClient(app) as c:
        c.cookies.set("gated-staff", _session(b, "front_desk"))
        first = c.get("/desk/", params={"q": "wendy"}).text
        assert first.count('href="/desk/members/w') == 25 and "w24" in first and "w25" not in first
        link = re.search(r'href="(/desk/\?[^"]+)" rel="next">see the next 25', first)
        assert link is not None, first
        second = c.get(html.unescape(link.group(1)), follow_redirects=False)
        assert second.status_code == 200  # one page of five: a list, not a redirect
        assert second.text.count('href="/desk/members/w') == 5 and 'rel="next"' not in second.text
        api = c.get("/api/v1/staff/members", params={"q": "wendy"}).json()
        assert (api["more"], api["next_after"], len(api["members"])) == (True, "w24", 25)
        rest = c.get("/api/v1/staff/members", params={"q": "wendy", "after": "w24"}).json()
        assert [m["id"] for m in rest["members"]] == [f"w{i}" for i in range(25, 30)]
        assert (rest["more"], rest["next_after"]) == (False, None)
        assert "No more members match" in c.get("/desk/?q=wendy&after=w29").text
