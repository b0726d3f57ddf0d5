"""Invoice PDFs: read back with a real PDF reader, they carry the issuing site's name, address
and tax id from ``[sites.<id>]``, the legal number, the member, each line, the tax and the
totals in the invoice's currency; a draft has none; the same invoice gives the same bytes."""

from __future__ import annotations

import io
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from gated.billing_sync.cli import app
from gated.billing_sync.config import SmtpConfig
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.notices import deliver
from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, cli_ok, make_billing, write_cli_config
from tests.billing.test_notices import Inbox, smtp  # noqa: F401  (the fixture)
from tests.billing.test_signup import TERMS, applicant

SITES: dict[str, Any] = {
    "downtown": {
        "name": "Iron Temple Downtown GmbH",
        "address": "Hauptstraße 1\n10115 Berlin",
        "tax_id": "DE123456789",
        "currency": "EUR",
    },
    "uptown": {},
}


def gym(tmp_path: Path) -> tuple[Billing, Clock]:
    return make_billing(tmp_path, sites=SITES)


def text_of(pdf: bytes) -> str:
    """The text a reader extracts, one space between words."""
    assert pdf.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_an_invoice_pdf_names_the_site_the_number_the_lines_and_the_totals(
    tmp_path: Path,
) -> None:
    b, _ = gym(tmp_path)
    b.add_member("m1", "Zoë Ærø-Łukasz", plan_id="monthly", payment_method="pm_sim_ok")
    b.charge_extra("m1", "pt", "Personal training, 3 sessions", 9000)
    first, extra = (
        i["id"] for i in sorted(b.member_access().invoices("m1"), key=lambda i: i["id"])
    )
    name, pdf = b.invoice_pdf(first)
    assert name == "invoice-downtown-2026-000001.pdf"
    text = text_of(pdf)
    for expected in (
        "Iron Temple Downtown GmbH",
        "Hauptstraße 1",
        "10115 Berlin",
        "Tax ID: DE123456789",
        "Invoice downtown-2026-000001",
        "Date of issue: 2026-12-01",
        "Period: 2026-12-01 to 2027-01-01",
        "Zoë Ærø-Łukasz (member m1)",
        "Subtotal 49.90 EUR",
        "Tax 19 % 9.48 EUR",
        "Total 59.38 EUR",
        "Paid 59.38 EUR",
        "Paid on 2026-12-01",
    ):
        assert expected in text, (expected, text)
    assert "Amount due" not in text
    assert b.invoice_pdf(first)[1] == pdf  # the same invoice, the same document
    assert b"DejaVu" in pdf  # a name beyond Latin-1: the embedded font

    extra_text = text_of(b.invoice_pdf(extra)[1])
    assert "Invoice downtown-2026-000002" in extra_text
    assert "Personal training, 3 sessions 1 90.00 EUR 90.00 EUR" in extra_text
    assert "Total 107.10 EUR" in extra_text


def test_an_open_invoice_shows_what_is_due_and_a_site_without_settings_its_id(
    tmp_path: Path,
) -> None:
    b, _ = gym(tmp_path)
    b.add_member("u1", "Bo", plan_id="monthly", sites=["uptown"])  # no card: stays open
    (inv,) = b.member_access().invoices("u1")
    text = text_of(b.invoice_pdf(inv["id"])[1])
    assert text.startswith("uptown Invoice uptown-2026-000001")
    assert "Amount due 59.38 EUR" in text and "Tax ID" not in text
    assert b"DejaVu" not in b.invoice_pdf(inv["id"])[1]  # Latin-1 only: the core font


def test_a_draft_has_no_pdf_and_an_unknown_invoice_is_not_found(tmp_path: Path) -> None:
    b, _ = gym(tmp_path)
    member = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    (draft,) = b.member_access().invoices(member)
    with pytest.raises(BillingError, match="not issued yet"):
        b.invoice_pdf(draft["id"])
    with pytest.raises(NotFound):
        b.invoice_pdf(999)
    b.pay_signup(member, "pm_sim_ok", "k" * 20, "http://x/")
    assert "Invoice downtown-2026-000001" in text_of(b.invoice_pdf(draft["id"])[1])


def pdfs_in(message: Message) -> list[tuple[str, bytes]]:
    """The PDF attachments of a delivered mail: (file name, bytes)."""
    return [
        (part.get_filename() or "", part.get_payload(decode=True))
        for part in message.walk()
        if part.get_content_type() == "application/pdf"
    ]


def test_receipts_carry_the_invoice_pdf_card_desk_and_resent(
    tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811  (the fixture, imported)
) -> None:
    inbox, port = smtp
    b, clock = gym(tmp_path)
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.add_member("m2", "Bo", plan_id="monthly", email="bo@example.org")  # no card
    b.charge_extra("m2", "towel", "Towel", 300)
    b.record_payment("m2")  # both invoices at the desk: one receipt, two PDFs
    cfg = SmtpConfig(host="127.0.0.1", port=port, sender="billing@gym.example")
    assert deliver(b.engine, cfg, clock.now, documents=b.document_pdf) >= 2
    card, desk = (m for m in inbox.messages if m["Subject"].startswith("Receipt for invoice"))
    assert all(pdfs_in(m) == [] for m in inbox.messages if m not in (card, desk))
    ((name, pdf),) = pdfs_in(card)
    assert name == "invoice-downtown-2026-000001.pdf"
    assert "Paid 59.38 EUR" in text_of(pdf) and "Tax ID: DE123456789" in text_of(pdf)
    assert [n for n, _ in pdfs_in(desk)] == [
        "invoice-downtown-2026-000002.pdf",
        "invoice-downtown-2026-000003.pdf",
    ]
    assert desk["To"] == "bo@example.org" and "Towel" in text_of(pdfs_in(desk)[1][1])

    (notice,) = [n for n in b.notices("m1") if n.kind == "receipt"]
    b.resend_notice(notice.id)
    # Without a renderer (or for an invoice it cannot render) the mail still goes, bare.
    assert deliver(b.engine, cfg, clock.now) == 1
    assert pdfs_in(inbox.messages[-1]) == []
    b.resend_notice(notice.id)
    assert deliver(b.engine, cfg, clock.now, documents=b.document_pdf) == 1
    assert [n for n, _ in pdfs_in(inbox.messages[-1])] == ["invoice-downtown-2026-000001.pdf"]


def test_invoice_pdf_from_the_command_line(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    out = tmp_path / "ann.pdf"
    assert f"wrote {out}" in cli_ok(cfg, "invoice-pdf", "1", "--out", str(out))
    text = text_of(out.read_bytes())
    assert "Invoice downtown-" in text and "Ann (member m1)" in text
    missing = CliRunner().invoke(app, ["invoice-pdf", "7", "-c", str(cfg)])
    assert missing.exit_code == 2 and "no invoice 7" in missing.stderr
    nowhere = CliRunner().invoke(
        app, ["invoice-pdf", "1", "--out", str(tmp_path / "no/such/dir/x.pdf"), "-c", str(cfg)]
    )
    assert nowhere.exit_code == 2 and "No such file or directory" in nowhere.stderr
