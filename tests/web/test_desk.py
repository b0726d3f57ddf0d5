"""The staff console in process (starlette's TestClient over the real app and a real SQLite
store): sign-in with password and TOTP, first-time setup, replayed and wrong codes, the
slow-down, and every guarded route and staff API call tried with each role, without a session,
with a member's session and without a CSRF token (table-driven from ``desk.RULES`` and the
permission table)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gated.billing_sync import totp
from gated.billing_sync.permissions import ROLES, allowed
from gated.billing_sync.service import Billing
from gated.web import desk
from gated.web.desk_core import Desk
from gated.web.security import csrf_token
from gated.web.slowdown import ACCOUNT_CAP_S, Slowdown
from tests.billing.helpers import Clock, make_billing
from tests.sync.helpers import wait_until
from tests.web.conftest import XSS_NAME
from tests.web.helpers import hidden

PASSWORD = "a long staff password"


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_member(
        "ann",
        XSS_NAME,
        plan_id="monthly",
        email="ann@example.com",
        sites=["downtown"],
        payment_method="pm_sim_ok",
    )
    b.add_member(
        "upt", "Una Uptown", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok"
    )
    access = b.staff_access()
    for role in ROLES:
        access.add(role, role.title(), role, ["downtown"], PASSWORD)
    return b, clock


def enrol(client: TestClient, b: Billing, clock: Clock, staff_id: str) -> bytes:
    """Sign in with the password and finish setup; returns the TOTP seed (if one was needed)."""
    r = signin(client, staff_id, PASSWORD)
    seed = b""
    if r.url.path == "/desk/setup":
        seed = b.staff_access().totp_pending(staff_id)
        csrf = hidden(r.text, "csrf")
        r = client.post("/desk/setup", data={"csrf": csrf, "code": totp.code_at(seed, clock())})
        assert r.status_code == 200 and "recovery codes" in r.text, r.text
    return seed


def signin(client: TestClient, staff_id: str, password: str, code: str = "") -> Any:
    csrf = hidden(client.get("/desk/signin").text, "csrf")
    return client.post(
        "/desk/signin",
        data={"csrf": csrf, "staff_id": staff_id, "password": password, "code": code},
    )


def test_password_then_totp_setup_then_totp_at_each_sign_in(
    client: TestClient, app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, clock = billing
    # An owner with a one-time password: setup asks for a new password and TOTP together.
    one_time = b.staff_access().add("olga", "Olga", "owner", [], None)
    r = signin(client, "olga", one_time)
    assert r.url.path == "/desk/setup"
    cookie = r.history[0].headers["set-cookie"]
    assert "gated-staff=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert 'src="data:image/svg+xml' in r.text  # the enrolment QR, inline
    key = re.search(r'<code id="totp-key">([A-Z2-7 ]+)</code>', r.text)
    assert key
    seed = b.staff_access().totp_pending("olga")
    assert key[1].replace(" ", "") == totp.b32(seed)
    # A setup session opens nothing else.
    assert client.get("/desk/").url.path == "/desk/setup"
    assert client.get("/api/v1/staff/session").status_code == 401
    csrf = hidden(r.text, "csrf")
    r = client.post(
        "/desk/setup",
        data={
            "csrf": csrf,
            "password": "new password 1",
            "password2": "new password 1",
            "code": "000000",
        },
    )
    assert r.status_code == 400 and "code is wrong" in r.text
    code = totp.code_at(seed, clock())
    r = client.post(
        "/desk/setup",
        data={
            "csrf": csrf,
            "password": "new password 1",
            "password2": "new password 1",
            "code": code,
        },
    )
    assert r.status_code == 200
    recovery = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", r.text)
    assert len(recovery) == 8
    assert client.get("/api/v1/staff/session").json()["role"] == "owner"

    # Next sign-in, in another browser: password + code; the same code a second time is
    # refused, a wrong one too; a recovery code works once.
    with TestClient(app) as other:
        assert signin(other, "olga", "new password 1").status_code == 400  # no code
        assert signin(other, "olga", "new password 1", code).status_code == 400  # replayed
        clock.now += 30
        fresh = totp.code_at(seed, clock())
        assert signin(other, "olga", "new password 1", "123456").status_code == 400
        # Three failures make the account wait a little; then the right code signs in.
        r = not_slowed(lambda: signin(other, "olga", "new password 1", fresh))
        assert r.status_code == 200 and r.url.path == "/desk/", r.text
    with TestClient(app) as third:
        assert signin(third, "olga", "new password 1", fresh).status_code == 400  # used
        r = not_slowed(lambda: signin(third, "olga", "new password 1", recovery[0]))
        assert r.url.path == "/desk/"
        third.cookies.clear()
        r = not_slowed(lambda: signin(third, "olga", "new password 1", recovery[0]))
        assert r.status_code == 400


def not_slowed(attempt: Any) -> Any:
    """The first answer to ``attempt`` that is not a 429 (the slow-down's wait passed)."""
    answers: list[Any] = []

    def tried() -> bool:
        answers.append(attempt())
        return bool(answers[-1].status_code != 429)

    wait_until(tried, timeout=10, what="the sign-in wait to pass")
    return answers[-1]


def test_failures_slow_down_per_account_and_client_without_locking_out(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    with TestClient(app) as c:
        for _ in range(3):
            assert signin(c, "front_desk", "wrong password!").status_code == 400
        r = signin(c, "front_desk", PASSWORD)  # right, but inside the wait: not even checked
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "Wait" in r.text
        assert not_slowed(lambda: signin(c, "front_desk", PASSWORD)).status_code == 200
        assert c.get("/api/v1/staff/session").json()["staff_id"] == "front_desk"
    with TestClient(app) as c:
        # Per client: many names guessed from one address slow that address down.
        for n in range(5):
            assert signin(c, f"guess{n}", "wrong password!").status_code == 400
        assert signin(c, "manager", PASSWORD).status_code == 429


def test_the_account_wait_is_capped_so_nobody_is_locked_out() -> None:
    now = [0.0]
    slow = Slowdown(3, ACCOUNT_CAP_S, clock=lambda: now[0])
    for _ in range(1000):
        slow.failed("olga")
    assert 0 < slow.wait("olga") <= ACCOUNT_CAP_S
    now[0] += ACCOUNT_CAP_S
    assert slow.wait("olga") == 0
    slow.succeeded("olga")
    assert slow.wait("olga") == 0


def _path(rule: desk.Rule) -> str:
    # (An account no role has: an owner allowed to act finds none, and no test account changes.)
    return (
        rule.path.replace("{member_id}", "ann")
        .replace("{report}", "revenue")
        .replace("{invoice_id}", "1")
        .replace("{note_id}", "1")
        .replace("{staff_id}", "nobody")
        .replace("{token_id}", "999999")
    )


def _session(b: Billing, role: str) -> str:
    return b.staff_access().open_session(role, "test", "127.0.0.1")


def _call(client: TestClient, rule: desk.Rule, **kwargs: Any) -> Any:
    if rule.handler == "feed_events":
        # The stream ends only when serve stops: stop it at once (the in-process client reads
        # a response whole).
        billing = app_web(client.app).billing
        billing.stopping.set()
        try:
            return client.get(_path(rule), follow_redirects=False, **kwargs)
        finally:
            billing.stopping.clear()
    if rule.method == "GET":
        return client.get(_path(rule), follow_redirects=False, **kwargs)
    return client.post(_path(rule), follow_redirects=False, **kwargs)


def _refused_without_staff(rule: desk.Rule, r: Any) -> None:
    if rule.path.startswith("/api/"):
        assert r.status_code == 401, (rule, r.status_code)
    else:
        assert r.status_code == 303 and r.headers["location"] == "/desk/signin", rule


def test_every_rule_with_every_role_and_without_a_staff_session(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    member_token = b.member_access().open_session("ann", "test")
    assert desk.RULES
    for rule in desk.RULES:
        with TestClient(app) as c:
            _refused_without_staff(rule, _call(c, rule))
            # A member's session, under its own cookie and under the staff one: nothing.
            c.cookies.set("gated-member", member_token)
            _refused_without_staff(rule, _call(c, rule))
            c.cookies.set("gated-staff", member_token)
            _refused_without_staff(rule, _call(c, rule))
        for role in ROLES:
            with TestClient(app) as c:
                token = _session(b, role)
                c.cookies.set("gated-staff", token)
                csrf = csrf_token(Desk(app_web(app)).csrf_key, token)
                if rule.method == "POST":
                    # Never without this browser's CSRF token, whatever the role.
                    assert _call(c, rule).status_code == 403, (rule, role)
                    r = _call(c, rule, headers={"x-csrf-token": csrf})
                else:
                    r = _call(c, rule)
                may = rule.action is None or allowed(role, rule.action)
                if may:
                    assert r.status_code not in (401, 403), (rule, role, r.status_code)
                    if rule.handler == "signout":
                        assert b.staff_access().session(token) is None
                    else:
                        assert r.headers.get("location") != "/desk/signin", (rule, role)
                else:
                    assert r.status_code == 403, (rule, role, r.status_code)


def app_web(app: Any) -> Any:
    from starlette.routing import Mount

    return next(m.app.state.web for m in app.routes if isinstance(m, Mount) and m.path == "/app")


def test_owners_browse_and_export_the_audit_log(app: Any, billing: tuple[Billing, Clock]) -> None:
    import csv
    import io

    from gated.billing_sync.audit import Actor

    b, _ = billing
    with b.audited(Actor("cli", "root", "shell", "local"), "freeze", "ann") as entry:
        b.freeze("ann", 1)
        entry.detail["months"] = 1
    with TestClient(app) as c:
        c.cookies.set("gated-staff", _session(b, "owner"))
        page = c.get("/desk/audit")
        assert page.status_code == 200 and "active → frozen" in page.text
        assert "Nothing recorded for upt" in c.get("/desk/audit?member=upt").text
        export = c.get("/desk/audit.csv")
        assert export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert rows[0]["action"] == "freeze" and rows[0]["actor"] == "root"
        assert '"status": ["active", "frozen"]' in rows[0]["changes"]
        api = c.get("/api/v1/staff/audit").json()["entries"]
        assert api[0]["changes"]["status"] == ["active", "frozen"]


def test_front_desk_search_member_page_and_audited_actions(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    b.assign_card("ann", "04A1B2C3")
    b.add_member(
        "dan",
        "Dan Owing",
        plan_id="monthly",
        sites=["downtown"],
        payment_method="pm_sim_decline_insufficient_funds",
    )
    with TestClient(app) as c:
        token = _session(b, "front_desk")
        c.cookies.set("gated-staff", token)
        # The reader types the UID as it reads it: another case and separators still match.
        r = c.get("/desk/", params={"q": "04:a1:b2:c3"})
        assert r.url.path == "/desk/members/ann"
        assert "&lt;img src=x onerror=alert(1)&gt;" in r.text and XSS_NAME not in r.text
        r = c.get("/desk/", params={"q": "owing"})
        assert r.url.path == "/desk/members/dan"
        assert "Dan Owing" in c.get("/desk/", params={"q": "an"}).text  # several: a list
        # Another site's member: neither found nor opened.
        assert "Una" not in c.get("/desk/", params={"q": "una"}).text
        assert c.get("/desk/members/upt").status_code == 404
        assert c.get("/api/v1/staff/members/upt").status_code == 404
        assert [
            m["id"] for m in c.get("/api/v1/staff/members?q=a1b2c3%3A04").json()["members"]
        ] == []
        assert [m["id"] for m in c.get("/api/v1/staff/members?q=04a1b2c3").json()["members"]] == [
            "ann"
        ]

        page = c.get("/desk/members/dan")
        csrf = hidden(page.text, "csrf")
        assert "59.38" in page.text  # 49.90 and 19 % tax
        key = hidden(page.text, "submit_key")
        # Every answer is a redirect back to the page (Post/Redirect/Get), which says once
        # what happened; a refused form may be corrected and sent again with its key.
        r = c.post(
            "/desk/members/dan/payment", data={"csrf": csrf, "amount": "abc", "submit_key": key}
        )
        assert r.history[0].status_code == 303 and "amount like 49.90" in r.text
        assert "amount like 49.90" not in c.get("/desk/members/dan").text  # shown once
        paid = {"csrf": csrf, "amount": "59.38", "submit_key": key}
        r = c.post("/desk/members/dan/payment", data=paid)
        assert r.url.path == "/desk/members/dan" and "Payment recorded." in r.text
        # The same form again (a double click, a resend): recorded once.
        r = c.post("/desk/members/dan/payment", data=paid)
        assert "already sent" in r.text
        r = c.post("/desk/members/dan/payment", data={**paid, "submit_key": "made-up"})
        assert "had expired" in r.text
        r = c.post("/desk/members/dan/freeze", data={"csrf": csrf, "months": "2"})
        assert "Membership frozen." in r.text
        c.post("/desk/members/dan/unfreeze", data={"csrf": csrf})
        c.post("/desk/members/dan/cards", data={"csrf": csrf, "uid": "DE:AD:BE:EF"})
        card = b.desk_member("dan", ["*"])["card_ids"][0]["id"]
        c.post("/desk/members/dan/cards/revoke", data={"csrf": csrf, "card": str(card)})
        r = c.post("/desk/members/dan/cancel", data={"csrf": csrf})
        assert "Membership cancelled." in r.text
        # The API twin, with the header token: a refusal is JSON with the error. (Dan owes
        # nothing now: ending the freeze at once gave back its whole fee, so the refusal is
        # the length's.)
        r = c.post(
            "/api/v1/staff/members/dan/freeze",
            headers={"x-csrf-token": csrf},
            data={"months": "4"},
        )
        assert r.status_code == 400 and "error" in r.json()
    rows = list(reversed(b.audit_entries(member_id="dan")))
    assert [r["action"] for r in rows] == [
        "take_payment",
        "freeze",
        "unfreeze",
        "assign_card",
        "revoke_card",
        "cancel",
    ]
    assert {(r["actor_kind"], r["actor"], r["role"]) for r in rows} == {
        ("staff", "front_desk", "front_desk")
    }
    assert rows[0]["changes"]["status"] == ["pending", "active"]
    assert rows[0]["changes"]["owed"] == [5938, 0] and rows[0]["detail"]["amount"] == 5938
    assert rows[1]["changes"]["status"] == ["active", "frozen"] and rows[1]["detail"] == {
        "months": 2
    }
    # The freeze fee went to the declining card; the freeze ended at once, so all of its fee
    # is credited back: active, owing nothing.
    assert rows[2]["changes"]["status"] == ["frozen", "active"]
    assert rows[2]["changes"]["owed"][1] == 0
    assert rows[3]["changes"] == {"cards": [0, 1]}
    assert rows[4]["changes"] == {"cards": [1, 0]} and rows[4]["detail"] == {"card": card}
    assert rows[5]["changes"]["cancel_at"][0] is None and rows[5]["detail"]["cancel_at"]


def test_front_desk_cannot_see_revenue_or_lock_down(
    app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    with TestClient(app) as c:
        token = _session(b, "front_desk")
        c.cookies.set("gated-staff", token)
        csrf = csrf_token(Desk(app_web(app)).csrf_key, token)
        for path in ("/desk/dashboard", "/desk/dashboard/revenue.csv", "/api/v1/staff/dashboard"):
            assert c.get(path, follow_redirects=False).status_code == 403, path
        for path in ("/desk/gates/lockdown", "/api/v1/staff/gates/lockdown"):
            r = c.post(
                path,
                data={"site": "downtown", "state": "on"},
                headers={"x-csrf-token": csrf},
                follow_redirects=False,
            )
            assert r.status_code == 403, path
        # What the desk may see: the gates and occupancy, without the lockdown switch.
        page = c.get("/desk/gates")
        assert page.status_code == 200 and "/desk/gates/lockdown" not in page.text
        assert c.get("/desk/occupancy").status_code == 200
    assert not [e for e in b.audit_entries() if e["action"].startswith("lockdown")]
