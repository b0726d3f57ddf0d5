"""The member app in a real browser (headless Chromium) against a real ``gated-billing serve``:
sign-in by code and by link, used codes refused, no user enumeration, CSRF, "sign out
everywhere", one member never reading another's data; every page passes axe-core without
serious or critical findings, fits a 375 px wide screen, and breaks no Content-Security-Policy
rule; a member-typed name is shown as text."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.web.conftest import BIN, XSS_NAME, Stack, screenshot_dir

pytestmark = pytest.mark.slow

AXE_RUN = """async (exclude) => {
  const context = exclude && exclude.length ? {exclude: exclude.map(s => [s])} : document;
  const result = await axe.run(context, {resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}));
}"""


NAV_SERVER_MS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return nav.responseEnd - nav.requestStart;
}"""


class Tab:
    """One browser context (its own cookies) with one page at a phone's width, recording
    JavaScript dialogs and console errors (a CSP violation is one)."""

    def __init__(self, browser: Any, stack: Stack, axe: str) -> None:
        self.stack = stack
        self.axe = axe
        self.context = browser.new_context(
            base_url=stack.url, viewport={"width": 375, "height": 740}
        )
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("console", self._console)
        self.page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # Pages answered with an error status on purpose (403, 404, 410) log their own load
        # as an error; a stylesheet or script that fails is caught by _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _response(self, response: Any) -> None:
        if response.request.resource_type != "document" and response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def check(self, shot: str | None = None, exclude: Sequence[str] = ()) -> None:
        """The page as it stands: no horizontal scroll at 375 px, no serious or critical axe
        finding (outside the ``exclude`` selectors), no console error; saved as ``shot`` when
        screenshots are asked for."""
        page = self.page
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{page.url} scrolls sideways at 375 px: {width}"
        page.evaluate(self.axe)
        found = page.evaluate(AXE_RUN, list(exclude))
        bad = [v for v in found if v["impact"] in ("serious", "critical")]
        assert not bad, f"{page.url}: {bad}"
        assert not self.errors, f"{page.url}: {self.errors}"
        where = screenshot_dir()
        if shot and where is not None:
            page.screenshot(path=str(where / f"web-{shot}.png"), full_page=True)

    def ask(self, email: str) -> Any:
        """Ask for a sign-in mail; returns the mail."""
        seen = self.stack.inbox.count(email)
        self.page.goto("/app/signin")
        self.page.fill("#email", email)
        self.page.get_by_role("button", name="Send me a code").click()
        self.page.wait_for_selector("#code")
        return self.stack.inbox.signin_mail(email, seen)

    def sign_in(self, email: str) -> None:
        mail = self.ask(email)
        self.page.fill("#code", mail.code)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_selector("#status-h")

    def api(self, path: str) -> int:
        return int(self.context.request.get(path).status)

    def close(self) -> None:
        self.context.close()


def tab_opener(browser: Any, stack: Stack, axe_source: str) -> Iterator[Any]:
    """For a ``tabs`` fixture: yields a function that opens a Tab (``init_script=`` runs in its
    pages before theirs), and closes every Tab it opened afterwards."""
    opened: list[Tab] = []

    def new(init_script: str | None = None) -> Tab:
        tab = Tab(browser, stack, axe_source)
        if init_script:
            tab.context.add_init_script(init_script)
        opened.append(tab)
        return tab

    yield new
    for tab in opened:
        tab.close()


@pytest.fixture
def tabs(browser: Any, stack: Stack, axe_source: str) -> Iterator[Any]:
    yield from tab_opener(browser, stack, axe_source)


def test_sign_in_by_code_and_see_the_membership(tabs: Any, stack: Stack) -> None:
    tab = tabs()
    page = tab.page
    page.goto("/app/")
    assert page.url.endswith("/app/signin")
    tab.check("signin")
    mail = tab.ask("ann@example.com")
    tab.check("signin-sent")
    flow = page.input_value("input[name=flow]")
    page.fill("#code", mail.code)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#status-h")
    assert page.inner_text("#status-h") == "Your membership is active."
    # The member's name is exactly what was typed, shown as text: no image, no script ran.
    assert page.inner_text("#member-name") == XSS_NAME
    assert page.locator("main img").count() == 0 and tab.dialogs == []
    tab.check("membership")
    page.get_by_role("link", name=str(stack.members["ann"]["invoices"][0]), exact=True).click()
    page.wait_for_selector("table")
    assert "Monthly" in page.inner_text("table") and "Tax 19 %" in page.inner_text("table")
    tab.check("invoice")

    # The code is used up: typed again in another browser, it is refused.
    other = tabs()
    other.page.goto("/app/signin")
    other.page.fill("#email", "nobody@example.com")
    other.page.get_by_role("button", name="Send me a code").click()
    other.page.wait_for_selector("#code")  # the code page has loaded: its flow field is there
    other.page.evaluate("f => document.querySelector('input[name=flow]').value = f", flow)
    other.page.fill("#code", mail.code)
    with other.page.expect_response("**/app/signin/code") as answer:
        other.page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 400
    assert "wrong, used or expired" in other.page.inner_text("main")
    other.check()
    assert other.api("/api/v1/me") == 401


def test_a_link_signs_in_only_by_its_button(tabs: Any) -> None:
    mail = tabs().ask("cat@example.com")
    tab = tabs()  # the browser the mail app opens
    page = tab.page
    page.goto(mail.link)
    assert tab.api("/api/v1/me") == 401  # opening the link alone signs nobody in
    tab.check("signin-link")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#status-h")
    assert tab.api("/api/v1/me") == 200
    page.goto(mail.link)
    assert "used already" in page.inner_text("main")
    tab.check()


def test_unknown_addresses_get_the_same_answer_as_fast(tabs: Any) -> None:
    tab = tabs()
    page = tab.page
    answers: dict[str, list[str]] = {"bob@example.com": [], "nobody@example.com": []}
    took: dict[str, list[float]] = {k: [] for k in answers}
    for _ in range(3):
        for email in answers:
            page.goto("/app/signin")
            page.fill("#email", email)
            page.get_by_role("button", name="Send me a code").click()
            page.wait_for_selector("#code")
            # The server's answer time as the browser measured it (request sent to response
            # received), which is what someone probing addresses can see.
            took[email].append(page.evaluate(NAV_SERVER_MS) / 1000)
            answers[email].append(page.inner_text("main"))
    assert answers["bob@example.com"] == answers["nobody@example.com"]
    known, unknown = (statistics.median(took[e]) for e in answers)
    assert abs(known - unknown) < 0.1, took


def test_a_form_without_its_csrf_token_is_refused(tabs: Any) -> None:
    tab = tabs()
    page = tab.page
    page.goto("/app/signin")
    page.evaluate("document.querySelector('input[name=csrf]').remove()")
    page.fill("#email", "cat@example.com")
    with page.expect_response("**/app/signin") as answer:
        page.get_by_role("button", name="Send me a code").click()
    assert answer.value.status == 403
    assert page.inner_text("h1") == "Please try again"
    tab.check()


def test_sign_out_everywhere_ends_the_other_browsers_session(tabs: Any) -> None:
    laptop, phone = tabs(), tabs()
    laptop.sign_in("cat@example.com")
    phone.sign_in("cat@example.com")
    assert phone.api("/api/v1/me") == 200
    # JSON without the token is refused too, and changes nothing.
    status = laptop.page.evaluate(
        "async () => (await fetch('/api/v1/session/signout-everywhere', {method: 'POST',"
        " headers: {'Content-Type': 'application/json'}, body: '{}'})).status"
    )
    assert status == 403 and phone.api("/api/v1/me") == 200
    laptop.page.get_by_role("button", name="Sign out everywhere").click()
    laptop.page.wait_for_selector("#email")
    assert laptop.api("/api/v1/me") == 401
    phone.page.reload()
    assert phone.page.url.endswith("/app/signin")
    assert phone.api("/api/v1/me") == 401


def test_a_member_cannot_read_another_members_data(tabs: Any, stack: Stack) -> None:
    tab = tabs()
    tab.sign_in("ann@example.com")
    bob = stack.members["bob"]
    for invoice_id in bob["invoices"]:
        response = tab.page.goto(f"/app/invoices/{invoice_id}")
        assert response is not None and response.status == 404
        assert bob["name"] not in tab.page.content()
        assert tab.api(f"/api/v1/me/invoices/{invoice_id}") == 404
    tab.check()
    me = tab.context.request.get("/api/v1/me").json()
    assert me["member_id"] == "ann" and me["name"] == XSS_NAME
    mine = tab.context.request.get("/api/v1/me/invoices").json()["invoices"]
    assert {i["id"] for i in mine} == set(stack.members["ann"]["invoices"])


def test_visits_the_data_download_and_an_erasure_request(tabs: Any, stack: Stack) -> None:
    tab = tabs()
    page = tab.page
    tab.sign_in("bob@example.com")
    assert page.locator("#visits tbody tr").count() >= 1  # this month, with no visits yet
    page.get_by_role("link", name="Your data").click()
    page.wait_for_selector("#erasure-h")
    assert "bookkeeping law" in page.inner_text("main")
    tab.check("data")
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("^Download my data")).click()
    data = json.loads(download.value.path().read_text())
    assert data["profile"]["name"] == "Bob Private" and len(data["invoices"]) == 2
    page.get_by_label("I want my data erased").check()
    page.get_by_role("button", name="Ask for erasure").click()
    page.wait_for_selector("#erasure-confirmed")
    assert "You asked for erasure on" in page.inner_text("#erasure-asked")
    tab.check("data-erasure")
    listed = subprocess.run(
        [str(BIN), "members", "erasure-requests", "--csv", "-c", str(stack.config)],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert [line.split(",")[0] for line in listed.stdout.splitlines()] == ["member", "bob"]
