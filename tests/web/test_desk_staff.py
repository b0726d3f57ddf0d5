"""Owners manage staff in the console (in process, over a real SQLite store): a new account with
a one-time password that signs in to setup, a changed role, a reset, a disabled account whose
sessions end, the last owner kept, a site-scoped owner reaching only their sites' accounts, and
an audit row for each. Roles, no session and CSRF are tried on every route by test_desk.py's
table-driven test (``desk.RULES``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, make_billing
from tests.web.helpers import hidden
from tests.web.test_desk import PASSWORD, signin


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    access = b.staff_access()
    access.add("olga", "Olga", "owner", [], PASSWORD)
    access.add("ursula", "Ursula Uptown", "owner", ["uptown"], PASSWORD)
    access.add("desk", "Dana", "front_desk", ["downtown"], PASSWORD)
    return b, clock


def _as(b: Billing, c: TestClient, staff_id: str) -> str:
    """Sign ``c`` in as ``staff_id`` (a session made in the store); returns the page's CSRF."""
    c.cookies.set("gated-staff", b.staff_access().open_session(staff_id, "test", "127.0.0.1"))
    return hidden(c.get("/desk/staff").text, "csrf")


def test_an_owner_adds_changes_resets_and_disables_staff(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    access = b.staff_access()
    with TestClient(app) as c:
        csrf = _as(b, c, "olga")
        page = c.get("/desk/staff")
        assert page.status_code == 200 and 'data-staff="desk"' in page.text
        r = c.post(
            "/desk/staff",
            data={"csrf": csrf, "staff_id": "mia", "name": "Mia", "role": "manager", "sites": ""},
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        found = re.search(r'<code id="one-time-password">([^<]+)</code>', r.text)
        assert found
        one_time = found[1]
        mia = access.get("mia")
        assert (mia.role, mia.sites, mia.needs_setup) == ("manager", ("*",), True)
        # The one-time password opens setup only (a new password and TOTP).
        with TestClient(app) as other:
            assert signin(other, "mia", one_time).url.path == "/desk/setup"
        # A duplicate id, an unknown role, an unknown site: one line each, nothing made.
        for data, said in (
            ({"staff_id": "mia", "role": "manager"}, "exists"),
            ({"staff_id": "zed", "role": "janitor"}, "unknown role"),
            ({"staff_id": "zed", "role": "manager", "sites": "mars"}, "unknown site"),
            ({"staff_id": "bad id!", "role": "manager"}, "staff id is"),
        ):
            r = c.post("/desk/staff", data={"csrf": csrf, **data})
            assert r.history[0].status_code == 303 and said in r.text, (data, r.text[-500:])
        assert [a.id for a in access.accounts()] == ["desk", "mia", "olga", "ursula"]

        desk_session = access.open_session("desk", "ua", "127.0.0.1")
        r = c.post(
            "/desk/staff/desk/role", data={"csrf": csrf, "role": "manager", "sites": "downtown"}
        )
        assert r.url.path == "/desk/staff" and "Role changed." in r.text
        assert access.get("desk").role == "manager"
        assert access.session(desk_session) is None  # signs in again, now with TOTP to set up

        r = c.post("/desk/staff/desk/reset", data={"csrf": csrf})
        found = re.search(r'<code id="one-time-password">([^<]+)</code>', r.text)
        assert found and access.check_password("desk", found[1]) is not None
        r = c.post("/desk/staff/desk/disable", data={"csrf": csrf})
        assert "Account disabled." in r.text and access.get("desk").disabled
        assert c.post("/desk/staff/nobody/disable", data={"csrf": csrf}).status_code == 404

        # The JSON twin, with the header token.
        api = c.get("/api/v1/staff/accounts").json()["accounts"]
        assert {a["id"]: a["state"] for a in api}["desk"] == "disabled"
        r = c.post("/api/v1/staff/accounts/desk/reset", headers={"x-csrf-token": csrf})
        assert r.status_code == 200 and r.json()["one_time_password"]
        assert not access.get("desk").disabled

    rows = list(reversed([e for e in b.audit_entries() if e["action"].startswith("staff_")]))
    assert [(r["action"], r["actor"], r["role"]) for r in rows] == [
        ("staff_add", "olga", "owner"),
        ("staff_role", "olga", "owner"),
        ("staff_reset", "olga", "owner"),
        ("staff_disable", "olga", "owner"),
        ("staff_reset", "olga", "owner"),
    ]
    assert rows[0]["detail"] == {"staff": "mia", "role": "manager", "sites": ["*"]}
    assert rows[1]["detail"] == {
        "staff": "desk",
        "role": ["front_desk", "manager"],
        "sites": [["downtown"], ["downtown"]],
    }
    assert all(one_time not in str(r) for r in rows)  # never a password in the log


def test_the_last_owner_stays_and_a_site_owner_reaches_only_their_sites(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    access = b.staff_access()
    with TestClient(app) as c:
        csrf = _as(b, c, "olga")
        r = c.post("/desk/staff/ursula/disable", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303
        # Olga is now the only enabled owner: she can neither disable nor demote herself.
        r = c.post("/desk/staff/olga/disable", data={"csrf": csrf})
        assert r.history[0].status_code == 303 and "last owner" in r.text
        r = c.post("/desk/staff/olga/role", data={"csrf": csrf, "role": "manager"})
        assert r.history[0].status_code == 303 and "last owner" in r.text
        assert access.get("olga").role == "owner" and not access.get("olga").disabled
        c.post("/desk/staff/ursula/reset", data={"csrf": csrf})
        access.set_password("ursula", PASSWORD)

    with TestClient(app) as c:
        csrf = _as(b, c, "ursula")
        page = c.get("/desk/staff").text
        # Uptown's owner sees only accounts within uptown (her own), not all-site ones.
        assert 'data-staff="ursula"' in page and 'data-staff="olga"' not in page
        assert 'data-staff="desk"' not in page
        for path in ("/desk/staff/olga/disable", "/desk/staff/desk/reset"):
            assert c.post(path, data={"csrf": csrf}).status_code == 404, path
        # She grants only her own sites.
        r = c.post(
            "/desk/staff", data={"csrf": csrf, "staff_id": "al", "role": "front_desk", "sites": ""}
        )
        assert r.history[0].status_code == 303 and "only grant the sites you act on" in r.text
        r = c.post(
            "/desk/staff",
            data={"csrf": csrf, "staff_id": "al", "role": "front_desk", "sites": "uptown"},
        )
        assert r.status_code == 200 and access.get("al").sites == ("uptown",)
    assert not access.get("olga").disabled and not access.get("desk").disabled
