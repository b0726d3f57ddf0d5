"""Notices: rendered from templates into the outbox and delivered to a real SMTP server
(aiosmtpd on loopback); a server that is down leaves them queued."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from string import Template
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.notices import TEMPLATES, deliver, format_amount, render
from gated.billing_sync.service import PlanSpec
from gated.config import SmtpConfig
from tests.billing.crashing import billing_for
from tests.billing.helpers import make_billing, notices, step
from tests.billing.test_crash import cli, write_config
from tests.services import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_amounts_and_templates() -> None:
    assert format_amount(4990, "EUR") == "49.90 EUR"
    assert format_amount(5, "EUR") == "0.05 EUR"
    assert format_amount(-1250, "GBP") == "-12.50 GBP"
    n = render("suspension", "a@x", "m1", name="Ann", amount="59.38 EUR")
    assert "59.38 EUR" in n.body and n.subject == "Your membership is suspended"
    with pytest.raises(KeyError):
        render("receipt", "a@x", "m1", name="Ann")  # a missing placeholder is a bug


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_templates_fill_as_string_template_does(kind: str) -> None:
    # Values with braces and dollars are data, never placeholders.
    names = {
        "name",
        "amount",
        "invoice",
        "reason",
        "retry_on",
        "next_step",
        "link",
        "plan",
        "code",
        "minutes",
        "at",
        "hours",
    }
    values = {k: f"{{{k}}} $$x ${{y}}" for k in names | {"start", "end"}}
    n = render(kind, "a@x", "m1", **values)
    subject, body = TEMPLATES[kind]
    assert (n.subject, n.body) == (
        Template(subject).substitute(values),
        Template(body).substitute(values),
    )


def test_dunning_notices_are_delivered_by_smtp(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    b, clock = make_billing(tmp_path)
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 35)  # renewal fails, retry fails, suspension
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok")  # no e-mail: none
    cfg = SmtpConfig(host="127.0.0.1", port=port, sender="billing@gym.example")
    sent = deliver(b.engine, cfg, clock.now)
    assert sent == len(inbox.messages) == 4
    subjects = [m["Subject"] for m in inbox.messages]
    assert subjects[0].startswith("Receipt for invoice")
    assert subjects[1] == "Your payment of 59.38 EUR did not go through"
    assert subjects[2] == "We tried your payment again"
    assert subjects[3] == "Your membership is suspended"
    assert all(
        m["To"] == "ann@example.org" and m["From"] == "billing@gym.example" for m in inbox.messages
    )
    assert deliver(b.engine, cfg, clock.now) == 0  # nothing sent twice
    with b.engine.connect() as conn:
        assert all(conn.execute(select(schema.notifications.c.sent_at)).scalars())


def test_smtp_down_keeps_notices_queued(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    cfg = SmtpConfig(host="127.0.0.1", port=free_port())
    assert deliver(b.engine, cfg, clock.now) == 0
    with b.engine.connect() as conn:
        assert conn.execute(select(schema.notifications.c.sent_at)).scalars().all() == [None]


class HeldInbox(Inbox):
    """An inbox whose first message waits in DATA until ``release`` is set: the first sender is
    caught in the middle of its round."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.holding.is_set():
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return await super().handle_DATA(server, session, envelope)


def test_run_beside_serve_sends_each_notice_once(tmp_path: Path) -> None:
    """``serve``'s delivery is mid-round (its first mail not yet accepted) when cron's
    ``gated-billing run`` delivers too: every notice reaches the server once."""
    inbox = HeldInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        config_path = write_config(tmp_path, None)
        with config_path.open("a") as f:
            f.write(f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n')
        b = billing_for(config_path)
        b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
        for i in range(5):
            b.add_member(f"m{i}", "Ann", plan_id="monthly", email=f"m{i}@example.org")
        queued = len(notices(b))
        assert queued == 5
        assert b.config.smtp is not None
        with ThreadPoolExecutor(1) as pool:
            serving = pool.submit(deliver, b.engine, b.config.smtp, b.clock())
            assert inbox.holding.wait(10)
            cron = cli(config_path, "run")
            inbox.release.set()
            assert cron.returncode == 0, cron.stderr
            serving.result(30)
    finally:
        inbox.release.set()
        controller.stop()
    to = sorted(m["To"] for m in inbox.messages)
    assert to == [f"m{i}@example.org" for i in range(5)]


def test_delivery_claims_work_on_postgres(
    tmp_path: Path, smtp: tuple[Inbox, int], postgres_url: str
) -> None:
    inbox, port = smtp
    b, clock = make_billing(tmp_path, database_url=postgres_url)
    for i in range(3):
        b.add_member(f"m{i}", "Ann", plan_id="monthly", email=f"m{i}@example.org")
    cfg = SmtpConfig(host="127.0.0.1", port=port)
    assert deliver(b.engine, cfg, clock.now, limit=2) == 2  # a round stops at its limit
    assert deliver(b.engine, cfg, clock.now) == 1
    assert deliver(b.engine, cfg, clock.now) == 0
    assert sorted(m["To"] for m in inbox.messages) == [f"m{i}@example.org" for i in range(3)]
