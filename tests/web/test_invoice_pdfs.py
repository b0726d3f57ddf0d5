"""Invoice and credit-note PDFs on the web, in process over the real app and a real SQLite
store: a member downloads their own documents and those of the members they pay for, and gets
the same 404 for anyone else's as for none; staff download documents issued by their own sites
only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.web.app import web_routes
from tests.billing.helpers import Clock, make_billing
from tests.billing.test_documents import SITES, text_of
from tests.web.test_member_app import sign_in


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path, sites=SITES)
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.com", payment_method="pm_sim_ok"
    )
    b.add_member("kid", "Kid", plan_id="monthly", payer_id="ann")
    b.add_member(
        "bob", "Bob", plan_id="monthly", email="bob@example.com", payment_method="pm_sim_ok"
    )
    b.add_member("una", "Una", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    b.staff_access().add("desk", "Desk", "front_desk", ["downtown"], "a long staff password")
    return b, clock


@pytest.fixture
def app(billing: tuple[Billing, Clock]) -> Any:
    b, _ = billing
    return create_app(b, None, web_routes(b))


def invoice_of(b: Billing, member_id: str) -> int:
    return int(b.member_access().invoices(member_id)[0]["id"])


def test_a_member_downloads_their_own_and_their_dependants_invoices_only(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    own, kid, bob = (invoice_of(b, m) for m in ("ann", "kid", "bob"))
    assert client.get(f"/app/invoices/{own}.pdf", follow_redirects=False).headers["location"] == (
        "/app/signin"
    )
    sign_in(client, b, "ann@example.com")
    r = client.get(f"/app/invoices/{own}.pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == (
        'attachment; filename="invoice-downtown-2026-000001.pdf"'
    )
    assert "no-store" in r.headers["cache-control"]
    text = text_of(r.content)
    assert "Iron Temple Downtown GmbH" in text and "Ann (member ann)" in text
    assert "Kid (member kid)" in text_of(client.get(f"/app/invoices/{kid}.pdf").content)
    for path in (f"/app/invoices/{bob}.pdf", "/app/invoices/999.pdf", "/app/invoices/x.pdf"):
        r = client.get(path)
        assert r.status_code == 404 and "No such invoice" in r.text, path
        assert "Bob" not in r.text
    # The pages link the document by its legal number.
    assert f'href="/app/invoices/{own}.pdf"' in client.get("/app/").text
    assert "downtown-2026-000001 (PDF)" in client.get(f"/app/invoices/{own}").text


def test_staff_download_the_invoices_of_their_own_sites(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    token = b.staff_access().open_session("desk", "test", "127.0.0.1")
    client.cookies.set("gated-staff", token)
    downtown, uptown = invoice_of(b, "bob"), invoice_of(b, "una")
    r = client.get(f"/desk/invoices/{downtown}.pdf")
    assert r.status_code == 200 and "Bob (member bob)" in text_of(r.content)
    assert client.get(f"/desk/invoices/{uptown}.pdf").status_code == 404  # not their site
    assert client.get("/desk/invoices/999.pdf").status_code == 404
    # An account for every site downloads both, and credit notes of both.
    b.staff_access().add("boss", "Boss", "owner", [], "a long owner password")
    client.cookies.set("gated-staff", b.staff_access().open_session("boss", "test", "127.0.0.1"))
    note = b.refund(uptown, 100).credit_notes[0]
    with b.engine.connect() as conn:
        note_id = conn.execute(
            select(schema.credit_notes.c.id).where(schema.credit_notes.c.number == note)
        ).scalar()
    for path in (
        f"/desk/invoices/{downtown}.pdf",
        f"/desk/invoices/{uptown}.pdf",
        f"/desk/credit-notes/{note_id}.pdf",
    ):
        assert client.get(path).status_code == 200, path
    client.cookies.clear()
    r = client.get(f"/desk/invoices/{downtown}.pdf", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/desk/signin"


def test_credit_note_pdfs_for_the_member_and_the_staff_of_its_site(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    notes = {m: b.refund(invoice_of(b, m), 100).credit_notes[0] for m in ("ann", "bob", "una")}
    with b.engine.connect() as conn:
        found = conn.execute(select(schema.credit_notes.c.number, schema.credit_notes.c.id))
        ids = {r.number: r.id for r in found}
    ann, bob, una = (ids[notes[m]] for m in ("ann", "bob", "una"))
    sign_in(client, b, "ann@example.com")
    r = client.get(f"/app/credit-notes/{ann}.pdf")
    assert r.status_code == 200 and r.headers["content-disposition"] == (
        f'attachment; filename="credit-note-{notes["ann"]}.pdf"'
    )
    assert "no-store" in r.headers["cache-control"]
    assert "Ann (member ann)" in text_of(r.content)
    # The invoice's page links its credit notes.
    page = client.get(f"/app/invoices/{invoice_of(b, 'ann')}").text
    assert f'href="/app/credit-notes/{ann}.pdf">Credit note {notes["ann"]} (PDF)' in page
    for path in (f"/app/credit-notes/{bob}.pdf", "/app/credit-notes/999.pdf"):
        r = client.get(path)
        assert r.status_code == 404 and "Bob" not in r.text, path
    client.cookies.clear()
    token = b.staff_access().open_session("desk", "test", "127.0.0.1")
    client.cookies.set("gated-staff", token)
    r = client.get(f"/desk/credit-notes/{bob}.pdf")
    assert r.status_code == 200 and "Bob (member bob)" in text_of(r.content)
    assert client.get(f"/desk/credit-notes/{una}.pdf").status_code == 404  # not their site
