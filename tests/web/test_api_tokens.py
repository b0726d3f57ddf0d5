"""API tokens for integrators (in process, real SQLite store): an owner makes one in the console
and sees it once, the store keeps only its digest, it reads the staff API's GET routes with its
role's permissions and its sites, never changes anything, never opens a console page, and is
dead once revoked; each step audited. Roles, no session, a member's session and CSRF on the
token pages: test_desk.py's table-driven test over ``desk.RULES``."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock
from tests.web.helpers import hidden
from tests.web.test_desk import _session, billing  # noqa: F401 (the module's store)


def _make(c: TestClient, csrf: str, name: str, role: str, sites: str) -> tuple[int, str]:
    r = c.post("/desk/tokens", data={"csrf": csrf, "name": name, "role": role, "sites": sites})
    assert r.status_code == 200, re.findall(r"role=\"alert\">([^<]*)", r.text)
    found = re.search(
        r"Token ([0-9]+): copy it now.*?<code id=\"new-token\">(gat_[^<]+)</code>", r.text, re.S
    )
    assert found, r.text[-800:]
    return int(found[1]), found[2]


def test_an_owner_issues_a_read_only_scoped_token_and_revokes_it(
    app: Any,
    billing: tuple[Billing, Clock],  # noqa: F811
) -> None:
    b, clock = billing
    with TestClient(app) as owner:
        # The downtown owner grants only downtown.
        owner.cookies.set("gated-staff", _session(b, "owner"))
        csrf = hidden(owner.get("/desk/tokens").text, "csrf")
        r = owner.post("/desk/tokens", data={"csrf": csrf, "name": "x", "role": "manager"})
        assert r.history[0].status_code == 303 and "only grant the sites you act on" in r.text
    b.staff_access().add("boss", "Boss", "owner", [], "a long staff password")
    with TestClient(app) as owner:
        owner.cookies.set("gated-staff", _session(b, "boss"))
        csrf = hidden(owner.get("/desk/tokens").text, "csrf")
        desk_id, desk_token = _make(owner, csrf, "Door sign", "front_desk", "downtown")
        _, manager_token = _make(owner, csrf, "Accounts <b>tool</b>", "manager", "")
        listed = owner.get("/desk/tokens").text
        assert desk_token not in listed and "Accounts &lt;b&gt;tool&lt;/b&gt;" in listed
        r = owner.post("/desk/tokens", data={"csrf": csrf, "name": "", "role": "manager"})
        assert r.history[0].status_code == 303 and "give the token a name" in r.text
        r = owner.post("/desk/tokens", data={"csrf": csrf, "name": "x", "role": "king"})
        assert r.history[0].status_code == 303 and "unknown role" in r.text

    # Only digests in the store: the token's text is nowhere in the database file.
    b.engine.dispose()
    database = Path(str(b.engine.url.database))
    files = list(database.parent.glob(database.name + "*"))  # with the WAL, if any
    assert database in files
    for path in files:
        assert desk_token.encode() not in path.read_bytes(), path
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from api_tokens").fetchone() == (2,)

    def get(path: str, token: str | None, scheme: str = "Bearer") -> Any:
        with TestClient(app) as c:  # no cookie: the token alone
            headers = {"authorization": f"{scheme} {token}"} if token else {}
            return c.get(path, headers=headers, follow_redirects=False)

    found = get("/api/v1/staff/members?q=ann", desk_token).json()["members"]
    assert [m["id"] for m in found] == ["ann"]
    assert get("/api/v1/staff/members/upt", desk_token).status_code == 404  # not its site
    assert get("/api/v1/staff/members/upt", manager_token).status_code == 200  # all sites
    # Its role's permissions: the front desk's token reads no revenue.
    assert get("/api/v1/staff/dashboard", desk_token).status_code == 403
    assert get("/api/v1/staff/dashboard", manager_token).status_code == 200
    assert get("/api/v1/staff/session", desk_token).json()["staff_id"] == f"token-{desk_id}"
    for token, scheme in (("gat_wrong", "Bearer"), (desk_token, "Basic"), ("", "Bearer")):
        r = get("/api/v1/staff/members?q=ann", token or " ", scheme)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), scheme
    # Never a console page, never a change, whatever else the request carries.
    assert get("/desk/", desk_token).headers["location"] == "/desk/signin"
    with TestClient(app) as c:
        r = c.post(
            "/api/v1/staff/members/ann/freeze",
            headers={"authorization": f"Bearer {manager_token}", "x-csrf-token": "x"},
        )
        assert r.status_code == 403 and "only read" in r.json()["error"]
    assert b.desk_member("ann", ["*"])["status"] == "active"

    assert b.list_api_tokens()[-1]["last_used_at"] == clock()
    with TestClient(app) as owner:
        owner.cookies.set("gated-staff", _session(b, "boss"))
        csrf = hidden(owner.get("/desk/tokens").text, "csrf")
        r = owner.post(f"/desk/tokens/{desk_id}/revoke", data={"csrf": csrf})
        assert "Token revoked." in r.text
        assert owner.post(f"/desk/tokens/{desk_id}/revoke", data={"csrf": csrf}).status_code == 404
        api = owner.get("/api/v1/staff/tokens").json()["tokens"]
        assert [t["revoked_at"] is not None for t in api] == [False, True]
    assert get("/api/v1/staff/members?q=ann", desk_token).status_code == 401

    rows = [e for e in reversed(b.audit_entries()) if e["action"].startswith("api_token")]
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("api_token_create", "boss"),
        ("api_token_create", "boss"),
        ("api_token_revoke", "boss"),
    ]
    assert rows[0]["detail"] == {"token_id": desk_id, "role": "front_desk", "sites": ["downtown"]}
    assert all(desk_token not in str(r) for r in rows)
