"""The staff console in a real browser (headless Chromium) against a real ``gated-billing
serve``, a real mosquitto and a real gate (``gated run``): sign-in with password and TOTP (a
replayed code refused), a badge at the gate on the live check-in feed within a second with the
member's name as text and a refused member's "what to do", the member page with the phone and
emergency contact, member photos from Chromium's fake camera and from a file (on the page and
the feed), owners managing staff and API tokens, and axe-core on every console page at a 1024 px
desk screen and a 768 px tablet held upright, neither scrolling sideways."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gated.billing_sync import totp
from gated.billing_sync.service import PlanSpec
from tests.billing.crashing import billing_for
from tests.gatefixture import GateProcess, write_config
from tests.services import free_port, run_mosquitto
from tests.sync.helpers import wait_until
from tests.web.conftest import BIN, XSS_NAME, screenshot_dir
from tests.web.test_browser import AXE_RUN

pytestmark = pytest.mark.slow

PASSWORD = "front desk password"
ANN_CARD = "04A1B2C3D4E5F6"
DAN_CARD = "04D0D0D0D0D0D0"


@dataclass
class DeskStack:
    url: str
    gate: GateProcess
    seed: bytes
    log: Path
    config: Path
    gate2: GateProcess
    recovery: list[str]


@pytest.fixture(scope="module")
def desk_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeskStack]:
    root = tmp_path_factory.mktemp("desk")
    with run_mosquitto(root / "mosquitto") as broker:
        gate_root = root / "gate"
        desk_pub = root / "desk.pub"  # made by keys init below, before the gate starts
        extra = (
            f'desk_command_public_key_files = ["{desk_pub}"]\n'
            f'[mqtt]\nurl = "{broker.url}"\nheartbeat_s = 1\n'
        )
        gate = GateProcess(write_config(gate_root, extra=extra), gate_root)
        # A second gate at the site, with the same keys (one head office).
        gate2_root = root / "gate2"
        shutil.copytree(gate_root / "keys", gate2_root / "keys")
        gate2 = GateProcess(write_config(gate2_root, extra=extra, gate="t2"), gate2_root)
        keys = gate_root / "keys"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = root / "billing.toml"
        config.write_text(
            'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
            f'[keys]\nhead_office_private_key_file = "{keys}/head-office.key"\n'
            f'credential_key_file = "{keys}/credential.key"\ncard_encryption_key_file = "cards.key"\n'
            'desk_command_private_key_file = "desk.pem"\n'
            f'[mqtt]\nurl = "{broker.url}"\nclient_id = "billing-desk"\n'
            f'[http]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{url}"\n'
        )
        b = billing_for(config)
        b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        b.add_member("ann", XSS_NAME, plan_id="monthly", payment_method="pm_sim_ok")
        b.add_member(
            "dan", "Dan Owing", plan_id="monthly", payment_method="pm_sim_decline_card_declined"
        )
        b.assign_card("ann", ANN_CARD)
        b.update_contact("ann", "+49 30 1234567", XSS_NAME)
        b.assign_card("dan", DAN_CARD)
        access = b.staff_access()
        access.add("desk", "Dana Desk", "front_desk", ["downtown"], PASSWORD)
        access.add("olga", "Olga Owner", "owner", [], PASSWORD)
        seed = access.totp_pending("olga")
        # Enrolled with the previous step's code, so the current one still signs in once.
        recovery = access.totp_confirm("olga", totp.code_at(seed, b.clock() - 30))
        assert recovery is not None
        b.engine.dispose()
        log = root / "serve.log"
        with log.open("wb") as fh:
            serve = subprocess.Popen(
                [str(BIN), "serve", "-c", str(config)],
                stdout=fh,
                stderr=fh,
                env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
            )
        gate.start()
        gate2.start()
        try:

            def up() -> bool:
                assert serve.poll() is None, log.read_text()[-3000:]
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, timeout=30, what="serve answering")
            wait_until(lambda: gate.request("badge", {"card": ANN_CARD})["allow"], timeout=30)
            wait_until(lambda: gate2.request("badge", {"card": ANN_CARD})["allow"], timeout=30)
            yield DeskStack(url, gate, seed, log, config, gate2, recovery)
        finally:
            gate.stop()
            gate2.stop()
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(20)
            assert code == 0, log.read_text()[-3000:]


class Desk:
    """One browser context at a desk screen's width, recording dialogs and console errors."""

    def __init__(self, browser: Any, stack: DeskStack, axe: str) -> None:
        self.axe = axe
        self.context = browser.new_context(
            base_url=stack.url, viewport={"width": 1024, "height": 768}
        )
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )

    def signin(self, staff_id: str, password: str, code: str = "") -> None:
        page = self.page
        page.goto("/desk/signin")
        page.fill("#staff_id", staff_id)
        page.fill("#password", password)
        page.fill("#code", code)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()

    def check(self, shot: str | None = None) -> None:
        page = self.page
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{page.url} scrolls sideways at 1024 px: {width}"
        page.evaluate(self.axe)
        bad = [v for v in page.evaluate(AXE_RUN) if v["impact"] in ("serious", "critical")]
        assert not bad, f"{page.url}: {bad}"
        assert not self.errors and not self.dialogs, (self.errors, self.dialogs)
        where = screenshot_dir()
        if shot and where is not None:
            page.screenshot(path=str(where / f"desk-{shot}.png"), full_page=True)

    def check_tablet(self) -> None:
        """``check`` on a tablet held upright (768 px wide), then back at the desk's width."""
        self.page.set_viewport_size({"width": 768, "height": 1024})
        try:
            self.check()
        finally:
            self.page.set_viewport_size({"width": 1024, "height": 768})


@pytest.fixture
def desk(browser: Any, desk_stack: DeskStack, axe_source: str) -> Iterator[Desk]:
    d = Desk(browser, desk_stack, axe_source)
    yield d
    d.context.close()


def test_owner_signs_in_with_totp_once_and_every_page_passes(
    desk: Desk, desk_stack: DeskStack, browser: Any, axe_source: str
) -> None:
    page = desk.page
    page.goto("/desk/signin")
    desk.check("signin")
    desk.check_tablet()
    code = totp.code_at(desk_stack.seed, time.time())
    desk.signin("olga", PASSWORD, "000000")
    assert page.locator("#signin-error").inner_text() == "The name, password or code is wrong."
    desk.signin("olga", PASSWORD, code)
    assert page.url.endswith("/desk/"), page.url
    desk.check("search")
    desk.check_tablet()
    # The same code from another browser: refused.
    other = Desk(browser, desk_stack, axe_source)
    other.signin("olga", PASSWORD, code)
    assert other.page.url.endswith("/desk/signin")
    other.context.close()
    page.fill("#q", "030 123 45 67")  # the phone number as a caller reads it out
    page.keyboard.press("Enter")
    page.wait_for_url("**/desk/members/ann")
    assert page.locator("#member-name").text_content() == XSS_NAME
    assert page.locator("#member-phone").text_content() == "+49 30 1234567"
    assert page.locator("#member-emergency").text_content() == XSS_NAME
    desk.check("member")
    desk.check_tablet()
    page.goto("/desk/audit")
    desk.check("audit")
    desk.check_tablet()
    page.goto("/desk/feed")
    desk.check("feed")
    desk.check_tablet()
    page.goto("/desk/?q=o")  # a results table (several members)
    desk.check_tablet()
    for path, shot in (("/desk/occupancy", "occupancy"), ("/desk/dashboard", "dashboard")):
        page.goto(path)
        page.locator("details").first.evaluate("d => d.open = true")
        desk.check(shot)
        # A tablet held upright: still no sideways scrolling, still no axe findings.
        desk.check_tablet()


def test_a_badge_appears_on_the_feed_within_a_second(desk: Desk, desk_stack: DeskStack) -> None:
    page = desk.page
    desk.signin("desk", PASSWORD)
    # A keyboard-wedge reader types the UID into the focused search box and presses Enter.
    page.wait_for_selector("#q:focus")
    page.keyboard.type("04:a1:b2:c3:d4:e5:f6")
    page.keyboard.press("Enter")
    page.wait_for_url("**/desk/members/ann")
    page.goto("/desk/feed")
    # (Selectors, not wait_for_function: the page's CSP forbids evaluating strings.)
    page.wait_for_selector("#feed-state:text-is('Live')")
    rows = page.locator("#feed li")
    before = rows.count()

    started = time.monotonic()
    assert desk_stack.gate.request("badge", {"card": ANN_CARD})["allow"]
    page.wait_for_selector(f"#feed li:nth-child({before + 1})", timeout=5000)
    took = time.monotonic() - started
    assert took < 1.0, f"the badge took {took:.2f} s to reach the feed"
    first = rows.first
    assert first.locator(".who").text_content() == XSS_NAME  # text, never markup
    assert first.get_attribute("class") == "entered"

    assert not desk_stack.gate.request("badge", {"card": DAN_CARD})["allow"]
    page.wait_for_selector(f"#feed li:nth-child({before + 2})")
    refused = rows.first
    assert refused.get_attribute("class") == "refused"
    assert refused.locator(".who").text_content() == "Dan Owing"
    assert refused.locator(".todo").text_content() == "owes 59.38 EUR, card declined: take payment"
    desk.check("feed-live")


def test_let_in_once_pulses_the_relay_and_the_event_names_the_staff_member(
    desk: Desk, desk_stack: DeskStack
) -> None:
    page = desk.page
    desk.signin("desk", PASSWORD)
    page.goto("/desk/feed")
    page.wait_for_selector("#feed-state:text-is('Live')")
    gate = desk_stack.gate
    # (The last test's badge opened the door: wait for its pulse to end.)
    wait_until(lambda: not gate.request("status")["door"]["relay_energized"], what="door shut")
    page.select_option("#letin-gate", "downtown/t1")
    page.get_by_role("button", name="Open the gate once").click()
    page.wait_for_selector("p.note:text-is('Gate opened.')")
    # The gate's relay (gpiozero's MockFactory pin, read back through its status).
    wait_until(lambda: gate.request("status")["door"]["relay_energized"], what="relay pulsed")
    entry = page.locator("#feed li", has=page.locator(".operator:text-is('by desk')")).first
    entry.wait_for(timeout=5000)
    assert entry.locator(".words").text_content() == "Opened once"
    desk.check()
    b = billing_for(desk_stack.config)
    try:
        audited = b.audit_entries(limit=1)[0]
    finally:
        b.engine.dispose()
    assert (audited["action"], audited["actor"], audited["role"]) == (
        "let_in_once",
        "desk",
        "front_desk",
    )
    assert audited["detail"]["gate"] == "t1" and audited["address"] == "127.0.0.1"


def _gate_states(page: Any) -> dict[str, str]:
    page.reload()
    return {
        li.get_attribute("data-gate"): li.locator(".state").text_content()
        for li in page.locator("ul.gates > li").all()
    }


def test_gates_lockdown_and_a_killed_gate_offline_by_its_last_will(
    desk: Desk, desk_stack: DeskStack
) -> None:
    page = desk.page
    gates = (desk_stack.gate, desk_stack.gate2)
    desk.signin("olga", PASSWORD, desk_stack.recovery[0])
    page.goto("/desk/gates")
    both = {"downtown/t1": "online", "downtown/t2": "online"}
    wait_until(lambda: _gate_states(page) == both, what="both gates online")
    card = page.locator("li[data-gate='downtown/t1']")
    assert card.locator("dd").nth(2).text_content() == "2 of 2"  # members, gate and manifest
    assert card.locator("dd").nth(4).text_content() == "yes"  # digest as the manifest's
    assert "sim-1 (sim): ok" in (card.locator("dd").nth(6).text_content() or "")
    desk.check("gates")
    desk.check_tablet()

    # Lockdown: every gate of the site gets the signed command and reports it.
    page.get_by_role("button", name="Lock down downtown").click()
    page.wait_for_selector("p.note:text-is('Lockdown sent.')")
    for gate in gates:
        wait_until(lambda g=gate: g.request("status")["lockdown"], what="gate locked down")
        refused = gate.request("badge", {"card": ANN_CARD})
        assert (refused["allow"], refused["reason"]) == (False, "lockdown")

    def shown_locked() -> bool:
        page.reload()
        return page.locator("ul.gates .lockdown").count() == 2

    wait_until(shown_locked, what="the page showing both gates locked down")
    api = page.request.get("/api/v1/staff/gates").json()["gates"]
    assert [(g["gate"], g["lockdown"]) for g in api] == [("t1", True), ("t2", True)]
    page.get_by_role("button", name="Lift the lockdown at downtown").click()
    page.wait_for_selector("p.note:text-is('Lockdown lifted.')")
    for gate in gates:
        wait_until(lambda g=gate: not g.request("status")["lockdown"], what="lockdown lifted")
    assert desk_stack.gate.request("badge", {"card": ANN_CARD})["allow"]
    b = billing_for(desk_stack.config)
    try:
        lifted, locked = b.audit_entries(limit=2)
    finally:
        b.engine.dispose()
    assert (locked["action"], locked["actor"], locked["role"]) == ("lockdown_on", "olga", "owner")
    assert lifted["action"] == "lockdown_off" and lifted["detail"]["gates"] == ["t1", "t2"]

    # A gate killed outright: its last will marks it offline.
    started = time.monotonic()
    desk_stack.gate2.stop(signal.SIGKILL)
    wait_until(
        lambda: _gate_states(page) == {**both, "downtown/t2": "offline"},
        timeout=5,
        what="the killed gate offline",
    )
    assert time.monotonic() - started < 5
    # As last reported while online (the will itself was written when the gate connected).
    offline = page.locator("li[data-gate='downtown/t2']")
    assert offline.locator("dd").nth(2).text_content() == "2 of 2"
    desk.check("gates-offline")


def test_an_owner_adds_a_staff_account_in_the_browser(desk: Desk, desk_stack: DeskStack) -> None:
    page = desk.page
    desk.signin("olga", PASSWORD, desk_stack.recovery[1])
    page.get_by_role("link", name="Staff", exact=True).click()
    page.wait_for_url("**/desk/staff")
    desk.check("staff")
    desk.check_tablet()
    page.fill("#new-id", "kim")
    page.fill("#new-name", "Kim <b>Desk</b>")
    page.select_option("#new-role", "front_desk")
    page.fill("#new-sites", "downtown")
    page.get_by_role("button", name="Add account").click()
    one_time = page.locator("#one-time-password").text_content()
    assert one_time and len(one_time) >= 12
    row = page.locator("tr[data-staff='kim']")
    assert row.locator("td").first.text_content() == "Kim <b>Desk</b> kim"  # text, never markup
    desk.check()
    desk.check_tablet()
    row.get_by_role("button", name="Disable kim").click()
    page.wait_for_selector("p.note:text-is('Account disabled.')")
    assert page.locator("tr[data-staff='kim'] .state").text_content() == "disabled"
    # Only owners see the page; the front desk's role is refused on the server.
    other = Desk(page.context.browser, desk_stack, desk.axe)
    other.signin("desk", PASSWORD)
    assert other.page.get_by_role("link", name="Staff", exact=True).count() == 0
    assert other.page.goto(f"{desk_stack.url}/desk/staff").status == 403
    other.context.close()
    b = billing_for(desk_stack.config)
    try:
        disabled, added = b.audit_entries(limit=2)
    finally:
        b.engine.dispose()
    assert (added["action"], added["actor"], added["detail"]["staff"]) == (
        "staff_add",
        "olga",
        "kim",
    )
    assert disabled["action"] == "staff_disable" and disabled["address"] == "127.0.0.1"


def test_photos_from_the_camera_and_a_file_show_on_the_member_page_and_the_feed(
    desk: Desk, desk_stack: DeskStack
) -> None:
    import io

    from PIL import Image

    page = desk.page
    desk.signin("desk", PASSWORD)
    # The camera (Chromium's fake device): a frame drawn to a canvas and sent as a JPEG.
    page.goto("/desk/members/dan")
    assert page.locator("#member-photo").count() == 0
    desk.check()
    page.get_by_role("button", name="Use the camera").click()
    page.get_by_role("button", name="Take the photo").click()
    page.wait_for_selector("#member-photo")
    loaded = page.locator("#member-photo").evaluate("img => img.complete && img.naturalWidth")
    assert loaded == 640, loaded  # the fake camera's 640×480 frame, re-encoded
    desk.check("member-photo")
    desk.check_tablet()
    # A file, for a browser without a camera.
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 10)).save(png, "PNG")
    page.goto("/desk/members/ann")
    page.set_input_files(
        "#photo-file",
        files=[{"name": "ann.png", "mimeType": "image/png", "buffer": png.getvalue()}],
    )
    page.wait_for_selector("#member-photo")
    assert page.locator("#member-photo").evaluate("img => img.naturalWidth") == 300
    # Not an image: said on the page, nothing replaced.
    page.set_input_files(
        "#photo-file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"nope"}]
    )
    page.wait_for_selector("#photo-state:has-text('Not saved')")
    assert "not a JPEG, PNG or WebP" in (page.locator("#photo-state").text_content() or "")

    # The feed shows the face beside the name, on the live row and on a reload.
    page.goto("/desk/feed")
    page.wait_for_selector("#feed-state:text-is('Live')")
    before = page.locator("#feed li").count()
    assert not desk_stack.gate.request("badge", {"card": DAN_CARD})["allow"]
    page.wait_for_selector(f"#feed li:nth-child({before + 1})")
    face = page.locator("#feed li").first.locator("img.face")
    face.wait_for()
    assert face.evaluate("img => img.complete && img.naturalWidth") == 640
    page.reload()
    assert page.locator("#feed li").first.locator("img.face").count() == 1
    desk.check("feed-photo")
    # Served to staff only: a browser without a staff session gets no photo.
    anonymous = httpx.get(f"{desk_stack.url}/desk/members/dan/photo", follow_redirects=False)
    assert anonymous.status_code == 303 and not anonymous.content.startswith(b"\xff\xd8")


def test_an_owner_makes_an_api_token_an_integrator_reads_with_it_until_revoked(
    desk: Desk, desk_stack: DeskStack
) -> None:
    page = desk.page
    desk.signin("olga", PASSWORD, desk_stack.recovery[2])
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_url("**/desk/tokens")
    desk.check("tokens")
    page.fill("#token-name", "Door sign")
    page.select_option("#token-role", "front_desk")
    page.get_by_role("button", name="Make token").click()
    token = page.locator("#new-token").text_content() or ""
    assert token.startswith("gat_")
    token_id = (page.locator("#made-h").text_content() or "").split()[1].rstrip(":")
    desk.check()
    desk.check_tablet()
    api = f"{desk_stack.url}/api/v1/staff/members"
    bearer = {"authorization": f"Bearer {token}"}
    found = httpx.get(api, params={"q": "ann"}, headers=bearer).json()["members"]
    assert [m["id"] for m in found] == ["ann"]
    assert httpx.get(f"{desk_stack.url}/api/v1/staff/dashboard", headers=bearer).status_code == 403
    page.goto("/desk/tokens")  # (a reload would send the form again: another token)
    assert page.locator("#new-token").count() == 0  # shown once
    page.get_by_role("button", name=f"Revoke token {token_id}", exact=True).click()
    page.wait_for_selector("p.note:text-is('Token revoked.')")
    assert httpx.get(api, params={"q": "ann"}, headers=bearer).status_code == 401
