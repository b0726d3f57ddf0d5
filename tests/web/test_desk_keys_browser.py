"""A console form sent twice across a restart of serve, in headless Chromium against a real
``gated-billing serve`` killed with SIGKILL and started again: the sale and the payment act
once (the money tables do not change), and the browser is shown what the first did, not an
error."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gated.billing_sync import schema as s
from gated.billing_sync.products import ProductSpec
from gated.billing_sync.service import PlanSpec
from tests.billing.crashing import billing_for
from tests.services import free_port
from tests.sync.helpers import wait_until
from tests.web.conftest import BIN

pytestmark = pytest.mark.slow
PASSWORD = "a long staff password"
MONEY = (s.invoices, s.invoice_lines, s.payments, s.sales)


@dataclass
class Serve:
    """``gated-billing serve`` that a test can kill outright and start again."""

    config: Path
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.process = subprocess.Popen(
                [str(BIN), "serve", "-c", str(self.config)],
                stdout=fh,
                stderr=fh,
                env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
            )

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, what="gated-billing serve answering")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(20) == 0, self.tail()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("desk-keys")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = root / "billing.toml"
    config.write_text(
        'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
        '[keys]\nhead_office_private_key_file = "keys/head-office.key"\n'
        'credential_key_file = "keys/credential.key"\ncard_encryption_key_file = "keys/cards.key"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{url}"\n'
    )
    b = billing_for(config)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member(
        "dan", "Dan Owing", plan_id="monthly", payment_method="pm_sim_decline_card_declined"
    )
    b.point_of_sale().add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=5))
    b.staff_access().add("desk", "Dana Desk", "front_desk", ["downtown"], PASSWORD)
    b.engine.dispose()
    server = Serve(config, url, root / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def money(stack: Serve) -> dict[str, int]:
    """How many rows each money table holds."""
    b = billing_for(stack.config)
    try:
        with b.engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in MONEY
            }
    finally:
        b.engine.dispose()


def send_again(page: Any, action: str, body: dict[str, str]) -> None:
    """Send ``body`` to ``action`` as the browser sends a form (a resend from its history)."""
    page.evaluate(
        """([action, body]) => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = action;
            for (const [name, value] of Object.entries(body)) {
                const input = document.createElement("input");
                input.type = "hidden";
                input.name = name;
                input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }""",
        [action, body],
    )


def form_body(page: Any, selector: str) -> dict[str, str]:
    """The fields a form would send now."""
    return dict(
        page.evaluate("(sel) => [...new FormData(document.querySelector(sel)).entries()]", selector)
    )


def test_forms_sent_twice_across_a_killed_serve_act_once(browser: Any, serve: Serve) -> None:
    context = browser.new_context(base_url=serve.url, viewport={"width": 1024, "height": 768})
    page = context.new_page()
    try:
        page.goto("/desk/signin")
        page.fill("#staff_id", "desk")
        page.fill("#password", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        # A sale, kept as the browser sent it.
        page.goto("/desk/sell")
        page.select_option("#product", "towel")
        page.check("input[name=buyer][value=walk_in]")
        page.fill("#walk_in", "Tom Towel")
        page.select_option("#method", "cash")
        sale = form_body(page, "#sell-form")
        page.click("#sell-button")
        page.wait_for_url("**/desk/sales/*")
        receipt = page.url
        assert page.locator("p.flash").first.inner_text() == "Sold."
        # A payment at the desk, kept likewise.
        page.goto("/desk/members/dan")
        payment = form_body(page, "form[action$='/payment']")
        page.get_by_role("button", name="Record payment").click()
        page.wait_for_load_state()
        assert page.locator("p.flash").first.inner_text() == "Payment recorded."
        before = money(serve)

        serve.kill()
        serve.start()

        # Both forms sent again, to the new serve: nothing more is sold or paid, and each
        # answer is the first one's page with what was done.
        page.goto("/desk/")
        send_again(page, "/desk/sell", sale)
        page.wait_for_url(receipt)
        assert page.locator("p.flash").first.inner_text() == (
            "That form was already sent: done once, not again. Sold."
        )
        send_again(page, "/desk/members/dan/payment", payment)
        page.wait_for_url("**/desk/members/dan")
        assert page.locator("p.flash").first.inner_text() == (
            "That form was already sent: done once, not again. Payment recorded."
        )
        assert money(serve) == before
    finally:
        context.close()
