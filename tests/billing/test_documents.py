"""Invoice PDFs: read back with a real PDF reader, they carry the issuing site's name, address
and tax id from ``[sites.<id>]``, the legal number, the member, each line, the tax and the
totals in the invoice's currency; a draft has none; the same invoice gives the same bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, make_billing
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
