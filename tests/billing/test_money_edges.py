"""The edges of the money a finance manager meets: charges below the processor's minimum, the
invoices' legal numbers in notices, the refund notice and its credit note, credit-note PDFs."""

from __future__ import annotations

import json
import os
import select as io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from gated.billing_sync import schema
from gated.billing_sync.cli import app
from gated.billing_sync.config import SmtpConfig
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import FaultyGateway, GatewayRejected
from gated.billing_sync.notices import deliver
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import (
    Clock,
    cli_ok,
    make_billing,
    published,
    step,
    write_cli_config,
)
from tests.billing.test_documents import SITES, pdfs_in, text_of
from tests.billing.test_notices import Inbox, smtp  # noqa: F401  (the fixture)
from tests.services import LocalStripe

# The monthly plan: 49.90 + 19 % = 59.38 a month.
RENEWAL = 5938


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    clock = Clock()
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock)
    return b, clock


def rows(b: Billing, table: Any, **where: Any) -> list[Any]:
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with b.engine.connect() as conn:
        return list(conn.execute(q.order_by(table.c.id)))


def set_card(b: Billing, member_id: str, pm: str) -> None:
    with b.engine.begin() as conn:
        conn.execute(
            update(schema.members).where(schema.members.c.id == member_id).values(payment_method=pm)
        )


# --- charges below the processor's minimum ------------------------------------------------------


def test_a_rest_below_the_minimum_is_written_off_not_charged_every_retry(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    set_card(b, "m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)  # the renewal is declined: dunning
    renewal = [i for i in rows(b, schema.invoices, member_id="m1") if i.kind == "renewal"][-1]
    assert renewal.status == "open" and published(b, "m1")["status"] == "grace"
    # The desk credits all but 0.20 of it: a rest Stripe would refuse to charge.
    b.credit(renewal.id, RENEWAL - 20)
    attempts_before = len(rows(b, schema.payment_attempts, invoice_id=renewal.id))
    step(b, clock, 8)  # past every retry of the schedule
    attempts = rows(b, schema.payment_attempts, invoice_id=renewal.id)
    assert len(attempts) == attempts_before
    assert all(a.amount >= 50 for a in attempts)
    (inv,) = rows(b, schema.invoices, id=renewal.id)
    assert inv.status == "written_off" and inv.amount_paid == inv.total
    assert [(p.method, p.amount) for p in rows(b, schema.payments, invoice_id=inv.id)][-1] == (
        "write_off",
        20,
    )
    assert published(b, "m1")["status"] == "active"


def test_a_rest_below_the_minimum_waits_for_the_desk_without_a_card(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    set_card(b, "m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)
    renewal = [i for i in rows(b, schema.invoices, member_id="m1") if i.kind == "renewal"][-1]
    b.credit(renewal.id, RENEWAL - 20)
    set_card(b, "m1", None)  # type: ignore[arg-type]
    step(b, clock, 1)
    (inv,) = rows(b, schema.invoices, id=renewal.id)
    assert inv.status == "open" and inv.total - inv.amount_paid == 20


def test_the_minimum_is_per_currency_and_configurable(tmp_path: Path) -> None:
    clock = Clock()
    b, _ = make_billing(
        tmp_path,
        gateway=SimulatedGateway(clock=clock),
        clock=clock,
        dunning={"minimum_charge": {"EUR": 100}},
    )
    assert b.config.dunning.minimum_for("EUR") == 100
    assert b.config.dunning.minimum_for("GBP") == 30
    assert b.config.dunning.minimum_for("XYZ") == 50


# --- notices name invoices by their legal number ------------------------------------------------


def bodies(b: Billing, member_id: str, kind: str) -> list[str]:
    n = schema.notifications
    with b.engine.connect() as conn:
        return list(
            conn.execute(
                select(n.c.subject + "\n" + n.c.body)
                .where(n.c.member_id == member_id, n.c.kind == kind)
                .order_by(n.c.id)
            ).scalars()
        )


def test_notices_name_invoices_by_their_legal_number(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    set_card(b, "m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)  # the renewal is declined
    step(b, clock, 4)  # and retried, and the member suspended
    first, renewal = rows(b, schema.invoices, member_id="m1")
    # Ids and numbers differ, so a notice naming the id is told apart from one naming the number.
    assert first.number == "downtown-2026-000001" and renewal.number == "downtown-2027-000001"
    (receipt,) = bodies(b, "m1", "receipt")
    assert f"invoice {first.number}" in receipt
    (failure,) = bodies(b, "m1", "failure")
    assert f"invoice {renewal.number} (insufficient funds)" in failure
    assert f"invoice {renewal.number}" in bodies(b, "m1", "retry")[0]
    assert f"(invoice {renewal.number})" in bodies(b, "m1", "suspension")[0]
    # A payment at the desk: the receipt names what it paid, by number.
    b.record_payment("m1", RENEWAL, "cash")
    assert f"invoice {renewal.number}." in bodies(b, "m1", "receipt")[-1]


# --- a refund at the desk tells the member, with its credit note --------------------------------


def test_a_refund_at_the_desk_sends_a_notice_with_its_credit_note(
    billing: tuple[Billing, Clock],
) -> None:
    b, _ = billing
    # A household paying at the desk: the payer is told about the dependant's money.
    b.add_member("p1", "Pat", plan_id="monthly", email="p@x")
    b.record_payment("p1", RENEWAL, "cash")
    b.add_member("k1", "Kid", plan_id="monthly", email="k@x", payer_id="p1")
    (inv,) = rows(b, schema.invoices, member_id="k1")
    b.record_payment("k1", RENEWAL, "cash")
    out = b.refund(inv.id, 500)
    (desk,) = bodies(b, "k1", "refund")
    assert "5.00 EUR" in desk and f"invoice {inv.number} at the front desk" in desk
    assert f"Credit note: {out.credit_notes[0]}." in desk
    n = schema.notifications
    with b.engine.connect() as conn:
        to = conn.execute(select(n.c.to_addr).where(n.c.kind == "refund")).scalar_one()
    assert to == "p@x"
    # A card refund (through the provider) names its credit note too.
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (card_inv,) = rows(b, schema.invoices, member_id="m1")
    card = b.refund(card_inv.id, 1000)
    (by_card,) = bodies(b, "m1", "refund")
    assert f"10.00 EUR of invoice {card_inv.number} to the way you paid it" in by_card
    assert f"Credit note: {card.credit_notes[0]}." in by_card


# --- credit-note PDFs ---------------------------------------------------------------------------


def test_a_credit_note_pdf_names_the_site_the_invoice_the_amount_and_why(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path, sites=SITES)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (inv,) = rows(b, schema.invoices, member_id="m1")
    out = b.refund(inv.id, 1190, reason="locker broken")
    (number,) = out.credit_notes
    assert number == "downtown-CN-2026-000001"
    name, pdf = b.credit_note_pdf(number)
    assert name == f"credit-note-{number}.pdf"
    text = text_of(pdf)
    for expected in (
        "Iron Temple Downtown GmbH",
        "Tax ID: DE123456789",
        f"Credit note {number}",
        "Date of issue: 2026-12-01",
        f"Credits invoice {inv.number} of 2026-12-01",
        "Ann (member m1)",
        "Refund 10.00 EUR",
        "Tax 1.90 EUR",
        "Total credited 11.90 EUR",
        "Reason: locker broken",
    ):
        assert expected in text, expected
    (note,) = rows(b, schema.credit_notes)
    assert b.credit_note_pdf(note.id) == (name, pdf)  # by id too, the same bytes
    with pytest.raises(NotFound):
        b.credit_note_pdf("downtown-CN-2026-000099")


def test_the_refund_notice_carries_the_credit_note_pdf(
    tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811  (the fixture, imported)
) -> None:
    inbox, port = smtp
    b, clock = make_billing(tmp_path, sites=SITES)
    b.add_member("m1", "Ann", plan_id="monthly", email="ann@example.org")
    b.record_payment("m1", RENEWAL, "cash")
    (inv,) = rows(b, schema.invoices, member_id="m1")
    (number,) = b.refund(inv.id, 500).credit_notes
    cfg = SmtpConfig(host="127.0.0.1", port=port, sender="billing@gym.example")
    assert deliver(b.engine, cfg, clock.now, documents=b.document_pdf) >= 2
    (refund,) = [m for m in inbox.messages if m["Subject"] == "We refunded 5.00 EUR"]
    ((name, pdf),) = pdfs_in(refund)
    assert name == f"credit-note-{number}.pdf" and "Total credited 5.00 EUR" in text_of(pdf)


def test_credit_note_pdf_from_the_command_line(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    cli_ok(cfg, "invoice", "refund", "1", "--amount", "1000")
    out = tmp_path / "cn.pdf"
    number = "downtown-CN-2026-000001"
    assert f"wrote {out}" in cli_ok(cfg, "credit-note-pdf", number, "--out", str(out))
    assert f"Credit note {number}" in text_of(out.read_bytes())
    missing = CliRunner().invoke(app, ["credit-note-pdf", "7", "-c", str(cfg)])
    assert missing.exit_code == 2 and "no credit note 7" in missing.stderr


# --- numbering years in the site's time zone ----------------------------------------------------


def test_a_documents_year_is_its_sites_local_year(tmp_path: Path) -> None:
    # 2026-12-31T23:30:00-05:00 in New York is 2027-01-01T04:30Z, 05:30 in Berlin.
    clock = Clock(int(datetime(2027, 1, 1, 4, 30, tzinfo=UTC).timestamp()))
    sites = {
        "downtown": {**SITES["downtown"], "timezone": "Europe/Berlin"},
        "uptown": {"timezone": "America/New_York"},
    }
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock, sites=sites)
    b.add_member("berlin", "Bea", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("ny", "Ned", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    (berlin,) = rows(b, schema.invoices, member_id="berlin")
    (ny,) = rows(b, schema.invoices, member_id="ny")
    assert berlin.number == "downtown-2027-000001"
    assert ny.number == "uptown-2026-000001"  # still New Year's Eve there
    assert "Date of issue: 2026-12-31" in text_of(b.invoice_pdf(ny.id)[1])
    assert "Date of issue: 2027-01-01" in text_of(b.invoice_pdf(berlin.id)[1])
    # A credit note, the same: its own series, in its site's year.
    assert b.refund(ny.id, 100).credit_notes == ["uptown-CN-2026-000001"]
    assert b.refund(berlin.id, 100).credit_notes == ["downtown-CN-2027-000001"]


# --- a freeze fee the plan keeps ----------------------------------------------------------------


def test_a_plan_that_keeps_its_freeze_fee_gives_nothing_back_on_unfreeze(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_plan(PlanSpec("kept", "Kept", 4990, "EUR", freeze_fee=500, freeze_fee_kept=True))
    b.add_member("m1", "Ann", plan_id="kept", email="a@x", payment_method="pm_sim_ok")
    b.freeze("m1", 3)
    clock.advance(1)
    paid_through = b.member("m1")["paid_through"]
    assert b.unfreeze("m1") is None
    assert rows(b, schema.credit_notes) == [] and rows(b, schema.refunds) == []
    assert b.member("m1")["status"] == "active" and b.member("m1")["paid_through"] < paid_through
    # The member was told when freezing, and is told again when it ends.
    (frozen,) = bodies(b, "m1", "freeze")
    assert "Fee: 15.00 EUR." in frozen
    assert "The fee is not refunded if the freeze ends early." in frozen
    (ended,) = bodies(b, "m1", "unfreeze")
    assert "Your plan keeps the freeze fee (15.00 EUR): none of it is refunded." in ended
    assert "given back" not in ended


def test_the_freeze_notices_say_what_an_early_end_gives_back(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_plan(PlanSpec("back", "Back", 4990, "EUR", freeze_fee=500))
    b.add_plan(PlanSpec("free", "Free", 4990, "EUR"))
    b.add_member("m1", "Ann", plan_id="back", email="a@x", payment_method="pm_sim_ok")
    b.add_member("m2", "Bo", plan_id="free", email="b@x", payment_method="pm_sim_ok")
    b.freeze("m1", 1)
    b.freeze("m2", 1, start_at=clock.now + 86_400 * 5)
    clock.advance(1.5)  # into the freeze's second day: 29 of its 31 days unused
    back = b.unfreeze("m1")
    assert back is not None and back.refunded == 500 * 29 // 31
    (frozen,) = bodies(b, "m1", "freeze")
    assert "If the freeze ends early, the unused part of the fee is given back." in frozen
    (ended,) = bodies(b, "m1", "unfreeze")
    assert "your freeze ended on 2026-12-02, before 2027-01-01 as it was booked" in ended
    assert (
        "The unused part of the freeze fee (5.00 EUR), 4.67 EUR, is given back: 4.67 EUR is"
        " refunded to the way it was paid." in ended
    )
    # No fee, nothing said of one; a freeze booked ahead and dropped is called off.
    assert b.unfreeze("m2") is None
    (frozen,) = bodies(b, "m2", "freeze")
    assert "Fee: 0.00 EUR." in frozen and "refunded" not in frozen and "given back" not in frozen
    (ended,) = bodies(b, "m2", "unfreeze")
    assert "is called off" in ended and "fee" not in ended


def _kept_fee_plan(cfg: Path) -> None:
    """A store with its keys and a plan whose 5.00 freeze fee is kept on an early end."""
    cli_ok(cfg, "keys", "init")
    cli_ok(
        cfg,
        "plans",
        "add",
        "kept",
        "--name",
        "Kept",
        "--price",
        "4990",
        "--freeze-fee",
        "500",
        "--freeze-fee-kept",
    )


def test_the_command_line_shows_a_kept_freeze_fee(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    _kept_fee_plan(cfg)
    cli_ok(cfg, "plans", "add", "back", "--name", "Back", "--price", "4990", "--freeze-fee", "500")
    listed = cli_ok(cfg, "plans", "list", "--csv")
    assert "kept,Kept,4990" in listed and ",500,no," in listed and ",500,unused part," in listed
    for member, plan in (("m1", "kept"), ("m2", "back")):
        cli_ok(cfg, "members", "add", member, "--name", "A", "--plan", plan, "--card", "pm_sim_ok")
    note = "The fee is not refunded if the freeze ends early."
    assert note in cli_ok(cfg, "freeze", "m1", "--yes")
    back = cli_ok(cfg, "freeze", "m2", "--yes")
    assert note not in back and "the unused part of the fee is given back" in back


def test_freeze_at_the_command_line_asks_before_booking(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    _kept_fee_plan(cfg)
    cli_ok(cfg, "members", "add", "m1", "--name", "A", "--plan", "kept", "--card", "pm_sim_ok")

    def frozen() -> object:
        return json.loads(cli_ok(cfg, "members", "show", "m1", "--json"))["freeze"]

    # A script without --yes (stdin not a terminal): one line, exit code 2, nothing booked.
    scripted = CliRunner().invoke(app, ["freeze", "m1", "-c", str(cfg)], input="y\n")
    assert scripted.exit_code == 2
    assert scripted.stderr.strip().splitlines() == [
        "error: not a terminal to confirm at: pass --yes to book without asking; nothing was booked"
    ]
    assert "fee 5.00 EUR, billed now" in scripted.stdout and frozen() is None
    # At a terminal: the fee and its rule come before the question, and nothing is booked
    # until the answer is yes.
    for answer, code in (("n", 1), ("y", 0)):
        shown, status = at_a_terminal(["freeze", "m1", "-c", str(cfg)], answer, frozen)
        assert status == code, shown
        before = shown.split("Book this freeze? [y/N]:")[0]
        assert "fee 5.00 EUR, billed now" in before
        assert "The fee is not refunded if the freeze ends early." in before
        if answer == "n":
            assert "not confirmed: nothing was booked" in shown and frozen() is None
    assert frozen() is not None


def at_a_terminal(args: list[str], answer: str, booked: Any) -> tuple[str, int]:
    """Run ``gated-billing ARGS`` on a pseudo-terminal, answer its question with ``answer``
    once it is asked (checking ``booked()`` is still None then), and return what it printed
    and its exit code."""
    main, side = os.openpty()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gated-billing"), *args],
        stdin=side,
        stdout=side,
        stderr=side,
        cwd=args[-1].rsplit("/", 1)[0],
    )
    os.close(side)
    shown = b""
    try:
        while b"[y/N]:" not in shown:
            ready, _, _ = io.select([main], [], [], 30)
            assert ready, f"no question within 30 s: {shown!r}"
            shown += os.read(main, 4096)
        assert booked() is None  # asked before anything is booked
        os.write(main, answer.encode() + b"\n")
        status = proc.wait(30)
        while io.select([main], [], [], 0)[0]:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return shown.decode(errors="replace"), status


# --- members import: all or nothing ------------------------------------------------------------

IMPORT = (
    "member_id,name,plan,email,card,cards,payer\n"
    "m1,Ann,monthly,a@x,{ok},04AABBCCDD,\n"
    "k1,Kid,monthly,,,,m1\n"
    "m2,Bo,monthly,b@x,{ok},,\n"
    "m3,Cy,monthly,c@x,{bad},,\n"
    "m4,Di,monthly,d@x,{ok},,\n"
)


def test_a_card_refused_mid_import_enrols_nobody_and_deletes_the_customers_made(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    deleted: list[str] = []

    class Refusing(FaultyGateway):
        """The simulator, refusing the card of member m3, recording deleted customers."""

        def attach_payment_method(self, customer_ref: str, payment_method: str) -> str:
            if payment_method == "pm_refused":
                raise GatewayRejected("Your card was declined.")
            return super().attach_payment_method(customer_ref, payment_method)

        def delete_customer(self, customer_ref: str) -> None:
            deleted.append(customer_ref)
            super().delete_customer(customer_ref)

    gw = Refusing(b.gateway, lambda _: None)
    refusing, _ = make_billing(b.config.state_dir, gateway=gw, clock=clock)
    text = IMPORT.format(ok="pm_sim_ok", bad="pm_refused")
    with pytest.raises(BillingError) as refused:
        refusing.import_members("members.csv", text)
    assert str(refused.value) == (
        "members.csv: line 5: Your card was declined.; nothing was imported"
    )
    assert rows(b, schema.members) == [] and rows(b, schema.cards) == []
    assert rows(b, schema.invoices) == [] and b.gateway.charged_total() == 0  # type: ignore[attr-defined]
    assert len(deleted) == 3  # m1's, m2's and m3's own: every customer made
    # The file with the card corrected imports whole, cards and household included.
    assert (
        refusing.import_members("members.csv", IMPORT.format(ok="pm_sim_ok", bad="pm_sim_ok")) == 5
    )
    assert {m.id for m in rows(b, schema.members)} == {"m1", "k1", "m2", "m3", "m4"}
    assert published(b, "k1")["status"] == "active" and len(rows(b, schema.cards)) == 1


def test_a_card_declined_mid_import_on_stripe_leaves_no_customer(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    import stripe

    from tests.billing.crashing import billing_for
    from tests.billing.test_crash import write_config

    b = billing_for(write_config(tmp_path, localstripe.url))
    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR"))
    text = IMPORT.format(ok="pm_card_visa", bad="pm_card_visa_chargeDeclined")
    with pytest.raises(BillingError, match=r"^members\.csv: line 5: .*; nothing was imported$"):
        b.import_members("members.csv", text)
    api = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    assert api.v1.customers.list().data == []  # none left behind at the provider
    assert rows(b, schema.members) == []
