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
from gated.billing_sync.config import SmtpConfig
from gated.billing_sync.notices import TEMPLATES, deliver, format_amount, render
from gated.billing_sync.service import PlanSpec
from tests.billing.crashing import billing_for
from tests.billing.helpers import cli_ok, make_billing, notices, step
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
    n = render(
        "suspension", "a@x", "m1", name="Ann", amount="59.38 EUR", invoice="downtown-2026-000001"
    )
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
        "date",
        "expiry",
        "old",
        "new",
        "since",
        "how",
        "credit_note",
        "fee_rule",
        "what",
        "returned",
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
    tmp_path: Path, smtp: tuple[Inbox, int], postgres_store_url: str
) -> None:
    inbox, port = smtp
    b, clock = make_billing(tmp_path, database_url=postgres_store_url)
    for i in range(3):
        b.add_member(f"m{i}", "Ann", plan_id="monthly", email=f"m{i}@example.org")
    cfg = SmtpConfig(host="127.0.0.1", port=port)
    assert deliver(b.engine, cfg, clock.now, limit=2) == 2  # a round stops at its limit
    assert deliver(b.engine, cfg, clock.now) == 1
    assert deliver(b.engine, cfg, clock.now) == 0
    assert sorted(m["To"] for m in inbox.messages) == [f"m{i}@example.org" for i in range(3)]


class RefusingInbox(Inbox):
    """A mail server that refuses one recipient for good (550), as a mistyped address is."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused
        self.refusals = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == self.refused:
            self.refusals += 1
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_refused_address_is_marked_and_blocks_no_other_notice(tmp_path: Path) -> None:
    inbox = RefusingInbox("ann@exmaple.org")
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        config_path = write_config(tmp_path, None)
        with config_path.open("a") as f:
            f.write(f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n')
        b = billing_for(config_path)
        b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
        for member_id, email in (
            ("m0", "ann@exmaple.org"),  # mistyped at the desk
            ("m1", "bob@example.org"),
            ("m2", "cem@example.org"),
        ):
            b.add_member(member_id, "A", plan_id="monthly", email=email, payment_method="pm_sim_ok")
        assert "notices sent: 2" in cli_ok(config_path, "run")
        assert sorted(m["To"] for m in inbox.messages) == ["bob@example.org", "cem@example.org"]
        assert b.member("m0")["email_bounced"] is True
        listed = cli_ok(config_path, "notices", "list", "--csv").splitlines()
        assert listed[0] == "notice,member,kind,to,state,created,sent,error"
        failed = [line for line in listed if ",failed," in line]
        assert len(failed) == 1 and failed[0].startswith("1,m0,receipt,ann@exmaple.org,")
        assert "550 5.1.1 no such user" in failed[0]
        # Later notices to the bounced address wait for a corrected one: no new refusal.
        b.charge_extra("m0", "towel", "Towel", 300)
        assert notices(b, "m0") == ["receipt", "receipt"]
        assert "notices sent: 0" in cli_ok(config_path, "run")
        assert inbox.refusals == 1
        assert "bounced before" in b.notices("m0", "failed")[0].error
        # The front desk corrects the address: what never reached Ann goes out to it.
        assert "ann@example.org" in cli_ok(
            config_path, "members", "edit", "m0", "--email", "ann@example.org"
        )
        assert b.member("m0")["email_bounced"] is False
        assert "notices sent: 2" in cli_ok(config_path, "run")
        assert [m["To"] for m in inbox.messages[2:]] == ["ann@example.org"] * 2
        # And any notice can be sent again.
        assert "notice 1 queued again as" in cli_ok(config_path, "notices", "resend", "1")
        assert "notices sent: 1" in cli_ok(config_path, "run")
        assert inbox.messages[-1]["To"] == "ann@example.org"
        queued = cli_ok(config_path, "notices", "list", "--state", "queued", "--csv")
        assert queued.splitlines()[1:] == []
    finally:
        controller.stop()


def test_an_address_the_member_confirms_by_link_clears_its_bounce(tmp_path: Path) -> None:
    inbox = RefusingInbox("ann@exmaple.org")
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        b, clock = make_billing(tmp_path)
        b.add_member("m0", "Ann", plan_id="monthly", email="ann@exmaple.org")
        cfg = SmtpConfig(host="127.0.0.1", port=port)
        assert deliver(b.engine, cfg, clock.now) == 0
        assert b.member("m0")["email_bounced"] is True
        b.request_email_change("m0", "ann@example.org", "http://x/app/email/")
        n = schema.notifications
        with b.engine.connect() as conn:
            body = conn.execute(select(n.c.body).where(n.c.kind == "email_change")).scalar_one()
        assert b.confirm_email_change(body.split("http://x/app/email/")[1].split()[0]) == "m0"
        assert b.member("m0")["email_bounced"] is False
        assert deliver(b.engine, cfg, clock.now) == 2  # the link's mail, and the bounced notice
        assert sorted(m["To"] for m in inbox.messages) == ["ann@example.org"] * 2
    finally:
        controller.stop()
