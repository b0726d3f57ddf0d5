"""The member app in process (starlette's TestClient over the real app and a real SQLite store):
sign-in by code and link, CSRF, session revocation, rate limits, and that a member's session
reaches only that member's data on every API route. The same flows run in a real browser in
test_browser.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.member_access import CODE_ATTEMPTS
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.web.app import web_routes
from gated.web.security import client_address, parse_proxies
from tests.billing.helpers import Clock, checkouts, make_billing, statements
from tests.sync.helpers import wait_until
from tests.web.helpers import SigninMail, hidden, parse_signin_mail


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path, http={"trusted_proxies": ["10.0.0.0/8"]})
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="Ann@Example.com", payment_method="pm_sim_ok"
    )
    b.add_member(
        "bob", "Bob Secret", plan_id="monthly", email="bob@example.com", payment_method="pm_sim_ok"
    )
    b.charge_extra("bob", "training", "Personal training", 3000)
    return b, clock


@pytest.fixture
def wakes() -> list[int]:
    return []


@pytest.fixture
def app(billing: tuple[Billing, Clock], wakes: list[int]) -> Any:
    b, _ = billing
    return create_app(b, None, web_routes(b, lambda: wakes.append(1)))


def settled(app: Any) -> None:
    """Wait until the sign-in work requests started apart from themselves has finished."""
    web = next(m.app.state.web for m in app.routes if isinstance(m, Mount) and m.path == "/app")
    wait_until(lambda: not web.tasks, what="sign-in work done")


def latest_mail(b: Billing, to: str) -> SigninMail | None:
    n = schema.notifications
    with b.engine.connect() as conn:
        body = conn.execute(
            select(n.c.body)
            .where(n.c.kind == "signin", func.lower(n.c.to_addr) == to.lower())
            .order_by(n.c.id.desc())
            .limit(1)
        ).scalar()
    return parse_signin_mail(to, body) if body else None


def ask(client: TestClient, email: str, **headers: str) -> tuple[str, str, Any]:
    """Ask for a sign-in; returns (csrf, flow, response)."""
    csrf = hidden(client.get("/app/signin", headers=headers).text, "csrf")
    r = client.post("/app/signin", data={"email": email, "csrf": csrf}, headers=headers)
    flow = hidden(r.text, "flow") if r.status_code == 200 else ""
    settled(client.app)
    return csrf, flow, r


def sign_in(client: TestClient, b: Billing, email: str) -> None:
    csrf, flow, r = ask(client, email)
    assert r.status_code == 200
    mail = latest_mail(b, email)
    assert mail is not None
    r = client.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": mail.code})
    assert r.status_code == 200 and str(r.url).endswith("/app/"), r.text


def test_a_members_page_and_its_json_take_one_connection_each(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    for path in ("/app/", "/api/v1/me", "/api/v1/me/invoices"):
        # The session's lookup and the reads in one worker-thread trip on one connection.
        with checkouts(b.engine) as n:
            r = client.get(path)
        assert r.status_code == 200, path
        assert n[0] == 1, path
    assert client.get("/api/v1/me").json()["member_id"] == "ann"
    assert [i["kind"] for i in client.get("/api/v1/me/invoices").json()["invoices"]] == ["renewal"]
    client.cookies.clear()
    assert client.get("/app/", follow_redirects=False).headers["location"] == "/app/signin"
    assert client.get("/api/v1/me/invoices").status_code == 401


# The statements each member GET runs (the store's round trips: on PostgreSQL most of the
# request's wall time), SQLite's BEGIN included. A page reads the member's facts once: not every
# plan, not the subscription, plan, open invoices or member row a second time, not a count of
# cards it does not show (16, 12 and 4 before).
MEMBER_GET_STATEMENTS = {"/app/": 12, "/api/v1/me": 9, "/api/v1/me/invoices": 4}


def test_a_members_page_and_its_json_run_a_pinned_number_of_statements(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    for path, pinned in MEMBER_GET_STATEMENTS.items():
        with statements(b.engine) as run:
            r = client.get(path)
        assert r.status_code == 200, path
        assert len(run) == pinned, (path, run)
        assert not any("FROM cards" in q for q in run), path
        # Plans are read by id (the member's own), never all of them.
        assert not any(" ".join(q.split()).endswith("FROM plans") for q in run), path


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for path in ("/app/signin", "/app/static/app.css", "/api/v1/me", "/app/nowhere", "/api/v1/x"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert client.get("/app/signin").headers["cache-control"] == "no-store"
    assert client.get("/api/v1/me").status_code == 401


def test_a_browser_gone_while_its_form_is_read_is_one_log_line_not_a_traceback(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A double-clicked button cancels the first submit while serve reads its body: the
    request ends with a line in the log, not an unhandled exception."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/app/contact",
        "raw_path": b"/app/contact",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", b"40"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level("INFO", logger="gated.web.app"):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert "event=client_gone method=POST path=/app/contact" in caplog.text


def test_a_code_signs_in_once_and_the_cookie_is_http_only(
    client: TestClient, billing: tuple[Billing, Clock], app: Any, wakes: list[int]
) -> None:
    b, _ = billing
    csrf, flow, r = ask(client, "ann@example.com")  # another case than stored
    mail = latest_mail(b, "Ann@Example.com")
    assert mail is not None and wakes == [1]
    r = client.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": mail.code})
    assert "Ann" in r.text and "Your membership" in r.text
    cookie = r.history[0].headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "gated-member=" in cookie
    assert client.get("/api/v1/me").json()["member_id"] == "ann"
    # The same code again, from another browser: refused.
    with TestClient(app) as other:
        csrf2 = hidden(other.get("/app/signin").text, "csrf")
        r = other.post("/app/signin/code", data={"csrf": csrf2, "flow": flow, "code": mail.code})
        assert r.status_code == 400 and "wrong, used or expired" in r.text
        assert other.get("/api/v1/me").status_code == 401
        # ...and its link was used up with it.
        assert other.get("/app/signin/link/" + mail.link.rsplit("/", 1)[1]).status_code == 410


def test_a_link_shows_a_button_and_only_its_post_signs_in(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    ask(client, "bob@example.com")
    mail = latest_mail(b, "bob@example.com")
    assert mail is not None
    path = "/app/signin/link/" + mail.link.rsplit("/", 1)[1]
    page = client.get(path)
    page = client.get(path)  # a mail scanner's prefetch, then the member: still usable
    assert page.status_code == 200 and "<button" in page.text
    assert client.get("/api/v1/me").status_code == 401
    token, csrf = hidden(page.text, "token"), hidden(page.text, "csrf")
    r = client.post("/app/signin/link", data={"csrf": csrf, "token": token})
    assert r.status_code == 200 and client.get("/api/v1/me").json()["member_id"] == "bob"
    again = client.post("/app/signin/link", data={"csrf": hidden(r.text, "csrf"), "token": token})
    assert again.status_code == 410
    assert client.get(path).status_code == 410


def test_codes_expire_after_15_minutes(client: TestClient, billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    csrf, flow, _ = ask(client, "bob@example.com")
    mail = latest_mail(b, "bob@example.com")
    assert mail is not None
    clock.now += 15 * 60
    r = client.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": mail.code})
    assert r.status_code == 400
    assert client.get("/api/v1/me").status_code == 401


def test_wrong_codes_use_up_the_sign_in(client: TestClient, billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    csrf, flow, _ = ask(client, "bob@example.com")
    mail = latest_mail(b, "bob@example.com")
    assert mail is not None
    wrong = f"{(int(mail.code) + 1) % 1_000_000:06d}"
    for _ in range(CODE_ATTEMPTS):
        r = client.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": wrong})
        assert r.status_code == 400
    r = client.post("/app/signin/code", data={"csrf": csrf, "flow": flow, "code": mail.code})
    assert r.status_code == 400 and client.get("/api/v1/me").status_code == 401


def test_the_answer_does_not_say_whether_an_address_is_known(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing

    def answer(email: str) -> tuple[int, str]:
        csrf, flow, r = ask(client, email)
        return r.status_code, r.text.replace(flow, "FLOW").replace(csrf, "CSRF")

    assert answer("bob@example.com") == answer("nobody@example.com")
    assert latest_mail(b, "nobody@example.com") is None


def test_state_changes_need_this_browsers_csrf_token(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, _ = billing
    client.get("/app/signin")
    assert client.post("/app/signin", data={"email": "bob@example.com"}).status_code == 403
    with TestClient(app) as other:  # a token from another browser is no good either
        foreign = hidden(other.get("/app/signin").text, "csrf")
    r = client.post("/app/signin", data={"email": "bob@example.com", "csrf": foreign})
    assert r.status_code == 403 and latest_mail(b, "bob@example.com") is None
    sign_in(client, b, "bob@example.com")
    assert client.post("/app/signout-everywhere", data={}).status_code == 403
    assert client.post("/api/v1/session/signout", json={}).status_code == 403
    token = client.get("/api/v1/session").json()["csrf_token"]
    bad = client.post("/api/v1/session/signout", json={}, headers={"X-CSRF-Token": foreign})
    assert bad.status_code == 403
    assert client.get("/api/v1/me").status_code == 200
    ok = client.post("/api/v1/session/signout", json={}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and client.get("/api/v1/me").status_code == 401


def test_sign_out_everywhere_ends_the_other_devices_sessions(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, _ = billing
    sign_in(client, b, "bob@example.com")
    with TestClient(app) as phone, TestClient(app) as ann:
        sign_in(phone, b, "bob@example.com")
        sign_in(ann, b, "ann@example.com")
        assert phone.get("/api/v1/me").status_code == 200
        page = client.get("/app/")
        r = client.post("/app/signout-everywhere", data={"csrf": hidden(page.text, "csrf")})
        assert str(r.url).endswith("/app/signin")
        assert phone.get("/api/v1/me").status_code == 401
        assert client.get("/api/v1/me").status_code == 401
        assert ann.get("/api/v1/me").status_code == 200  # another member is untouched
        assert "/app/signin" in str(phone.get("/app/").url)


def _member_routes(app: Any) -> list[str]:
    """Every GET route of the API, as declared (so a new route is checked as soon as it exists)."""
    paths = []
    for mount in app.routes:
        if isinstance(mount, Mount) and mount.path == "/api/v1":
            for route in mount.routes:
                if (
                    isinstance(route, Route)
                    and "GET" in (route.methods or ())
                    and "{rest" not in route.path
                ):
                    paths.append("/api/v1" + route.path)
    assert paths, "no API routes found"
    return paths


def test_a_member_reads_only_their_own_data_on_every_api_route(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, _ = billing
    with b.engine.connect() as conn:
        bob_invoices = list(
            conn.execute(
                select(schema.invoices.c.id).where(schema.invoices.c.member_id == "bob")
            ).scalars()
        )
    assert len(bob_invoices) == 2
    sign_in(client, b, "ann@example.com")
    checked = 0
    for template in _member_routes(app):
        ids = bob_invoices if "{invoice_id}" in template else [None]
        for invoice_id in ids:
            path = template.replace("{invoice_id}", str(invoice_id))
            r = client.get(path)
            text = r.text
            assert "Bob Secret" not in text and "bob@example.com" not in text, path
            assert '"member_id":"bob"' not in text.replace(" ", ""), path
            if invoice_id is not None:
                assert r.status_code == 404, path
            checked += 1
    assert checked >= 5
    for invoice_id in bob_invoices:
        assert client.get(f"/app/invoices/{invoice_id}").status_code == 404
    assert "Bob" not in client.get("/app/").text
    mine = client.get("/api/v1/me/invoices").json()["invoices"]
    assert [i["id"] for i in mine] and not set(i["id"] for i in mine) & set(bob_invoices)


def test_sign_in_requests_are_limited_per_address_and_per_client(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    for _ in range(5):
        assert ask(client, "bob@example.com")[2].status_code == 200
    r = ask(client, "BOB@example.com")[2]
    assert r.status_code == 429 and r.headers["retry-after"]
    assert ask(client, "nobody@example.com")[2].status_code == 200  # another address
    # The test client is not a trusted proxy: a forged X-Forwarded-For changes nothing.
    codes = [
        ask(client, f"x{i}@example.com", **{"X-Forwarded-For": f"10.9.9.{i}"})[2].status_code
        for i in range(14)
    ]
    assert codes == [200] * 13 + [429]


def _request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return Request({"type": "http", "client": (peer, 1234), "headers": headers})


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not from a proxy: header ignored
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3", "198.51.100.1"),  # left part is forged
        ("10.0.0.2", "10.0.0.3", "10.0.0.3"),  # only proxies: the farthest
        ("10.0.0.2", "not-an-ip", "10.0.0.2"),
        ("10.0.0.2", None, "10.0.0.2"),
    ],
)
def test_the_client_address_behind_trusted_proxies(
    peer: str, forwarded: str | None, client: str
) -> None:
    proxies = parse_proxies(["10.0.0.0/8"])
    assert client_address(_request(peer, forwarded), proxies) == client


def test_a_suspended_member_is_told_why_what_is_owed_and_how_to_pay(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, clock = billing
    b.set_payment_method("bob", "pm_sim_decline_insufficient_funds")
    for _ in range(36):
        clock.advance(1)
        b.run_cycle()
    assert b.member("bob")["status"] == "suspended"
    sign_in(client, b, "bob@example.com")
    page = client.get("/app/").text
    assert "Your membership is suspended." in page
    owed = b.member("bob")["owed"]
    assert f"{owed // 100}.{owed % 100:02d} EUR is unpaid" in page
    assert re.search(r'href="http://127\.0\.0\.1:8080/pay/\d+\.[A-Za-z0-9_-]+"', page)
    me = client.get("/api/v1/me").json()
    assert me["status"] == "suspended" and me["owed"] == owed and me["open_invoices"]
    assert me["status_words"]["gates_let_in"] is False
