"""The browser test stack, shared by a module: one real ``gated-billing serve`` (simulated payment
gateway, notices to an SMTP sink in this process) publishing to a real mosquitto, a real gate
(``gated run``) subscribed to it, and one headless Chromium (Debian's, driven by Playwright;
never a downloaded browser). Each test opens its own browser contexts (cookie jars)."""

from __future__ import annotations

import contextlib
import email.policy
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.config import load_billing_config
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.app import web_routes
from tests.billing.test_crash import billing_for
from tests.gatefixture import GateProcess, write_config
from tests.services import free_port, run_mosquitto
from tests.sync.helpers import wait_until
from tests.web.helpers import SigninMail, parse_signin_mail

BIN = Path(sys.executable).parent / "gated-billing"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A camera for the console's member photos: Chromium's fake device, allowed without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
XSS_NAME = "<img src=x onerror=alert(1)>"


@dataclass
class Inbox:
    """An SMTP sink (aiosmtpd) that keeps every message it accepts."""

    messages: list[EmailMessage] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=email.policy.default)
        with self.arrived:
            self.messages.append(msg)  # type: ignore[arg-type]
            self.arrived.notify_all()
        return "250 OK"

    def count(self, to: str) -> int:
        return sum(1 for m in self.messages if m["To"] == to)

    def signin_mail(self, to: str, seen: int, timeout: float = 10.0) -> SigninMail:
        """The sign-in mail to ``to`` after the first ``seen`` ones (waits for it)."""
        with self.arrived:
            ok = self.arrived.wait_for(lambda: self.count(to) > seen, timeout)
        assert ok, f"no sign-in mail to {to} within {timeout} s"
        msg = [m for m in self.messages if m["To"] == to][seen]
        body = msg.get_content() if isinstance(msg, EmailMessage) else str(msg.get_payload())
        return parse_signin_mail(to, body)


@dataclass
class Stack:
    url: str
    inbox: Inbox
    members: dict[str, dict[str, Any]]
    log: Path
    config: Path
    # The gate on the members' site (None for a stack that has none).
    gate: GateProcess | None = None


def _require(what: str, missing: bool) -> None:
    if not missing:
        return
    message = f"{what} (scripts/bootstrap installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI bootstraps it: a skip there would hide a broken step
    pytest.skip(message)


# The in-process tests' app (a module's ``billing`` fixture gives the service it serves; a module
# may define its own ``app``) and a TestClient over it.
@pytest.fixture
def app(billing: tuple[Billing, Any]) -> Any:
    b, _ = billing
    return create_app(b, None, web_routes(b))


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``gated-billing serve`` with three members (one named like an attack), an SMTP sink,
    mosquitto and a gate on the members' site."""
    root = tmp_path_factory.mktemp("web")
    with run_mosquitto(root / "mosquitto") as broker:
        gate_root = root / "gate"
        gate = GateProcess(
            write_config(gate_root, extra=f'[mqtt]\nurl = "{broker.url}"\nheartbeat_s = 1\n'),
            gate_root,
        )
        yield from _serve(root, gate, broker.url)


def _serve(root: Path, gate: GateProcess, mqtt_url: str) -> Iterator[Stack]:
    from aiosmtpd.controller import Controller

    keys = gate.root / "keys"  # the gate trusts what this head office signs
    inbox = Inbox()
    smtp_port, http_port = free_port(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    url = f"http://127.0.0.1:{http_port}"
    config = root / "billing.toml"
    config.write_text(
        'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
        f'[keys]\nhead_office_private_key_file = "{keys}/head-office.key"\n'
        f'credential_key_file = "{keys}/credential.key"\ncard_encryption_key_file = "keys/cards.key"\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "billing-web"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\npublic_url = "{url}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        # A fresh pass code every 2 s (10 by default): the pass tests see several in seconds.
        "[app]\nqr_refresh_s = 2\n"
    )
    b = billing_for(config)
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    members = {
        "ann": {"name": XSS_NAME, "email": "ann@example.com"},
        "bob": {"name": "Bob Private", "email": "bob@example.com"},
        "cat": {"name": "Cat", "email": "cat@example.com"},
        # The pass's own members (test_pass.py): each registers devices of its own.
        "pia": {"name": "Pia Pass", "email": "pia@example.com"},
        "quinn": {"name": "Quinn Clock", "email": "quinn@example.com"},
        "fay": {"name": "Fay Frozen", "email": "fay@example.com"},
    }
    for member_id, m in members.items():
        b.add_member(
            member_id, m["name"], plan_id="monthly", email=m["email"], payment_method="pm_sim_ok"
        )
    b.charge_extra("bob", "training", "Personal training", 3000)
    b.freeze("fay", 1)
    for member_id, m in members.items():
        m["invoices"] = [i["id"] for i in b.member_access().invoices(member_id)]
    b.engine.dispose()
    try:
        with running_serve(config) as log_path:
            gate.start()
            try:
                yield Stack(url, inbox, members, log_path, config, gate)
            finally:
                gate.stop()
    finally:
        controller.stop()


@contextlib.contextmanager
def running_serve(config: Path) -> Iterator[Path]:
    """``gated-billing serve -c config`` until the block ends (then it must stop cleanly);
    yields its log file."""
    import httpx

    url = load_billing_config(config).http.public_url
    log_path = config.parent / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [str(BIN), "serve", "-c", str(config)],
            stdout=log,
            stderr=log,
            env=dict(os.environ, GATED_LOG_LEVEL="INFO"),
        )
    try:

        def up() -> bool:
            assert serve.poll() is None, log_path.read_text()[-3000:]
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, what="gated-billing serve answering")
        yield log_path
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(15)
        assert code == 0, log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    _require("Debian's chromium is not installed", not CHROMIUM.exists())
    _require(
        "the playwright package is not installed", importlib.util.find_spec("playwright") is None
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def axe_source() -> str:
    return (Path(__file__).parent / "vendor" / "axe.min.js").read_text()


def screenshot_dir() -> Path | None:
    """Where the browser tests save screenshots of the main pages (``GATED_WEB_SCREENSHOTS``,
    e.g. ``docs/img``), or None."""
    value = os.environ.get("GATED_WEB_SCREENSHOTS")
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path
