"""Invoice and credit-note PDFs: the issuing site's name, address and tax id (``[sites.<id>]``),
the legal number, the member billed, the itemized lines, tax and totals in the invoice's
currency; a credit note names the invoice it credits, its amount with the tax in it, and why.

Rendered on demand from the store (fpdf2, pure Python), so what a member downloads and what a
receipt carries are the same document; the creation date inside is the issue date, so the same
document always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from sqlalchemy import Connection, select

from gated.billing_sync import schema as s
from gated.billing_sync.config import SiteConfig
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.front_desk import in_scope
from gated.billing_sync.notices import format_amount, format_day

# The PDF core font (Helvetica) covers Latin-1 and costs ~10 ms a document; a document with any
# other character (a name in Polish, Greek, Cyrillic...) embeds DejaVu Sans instead, which
# costs ~300 ms (parsing and subsetting the font). Debian's fonts-dejavu-core installs it here
# (scripts/bootstrap); without it, Helvetica prints the characters it lacks as "?".
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}


@dataclass(frozen=True)
class InvoiceDocument:
    """What an invoice PDF shows, read from the store and the site's settings."""

    number: str
    issued_at: int
    due_at: int
    period: tuple[int, int] | None
    status: str
    paid_at: int | None
    currency: str
    site: SiteConfig
    member_id: str
    member_name: str
    lines: list[tuple[str, str, int, int, int]]  # kind, description, quantity, unit, amount
    subtotal: int
    tax: int
    total: int
    paid: int

    @property
    def filename(self) -> str:
        """The attachment's and the download's file name."""
        return f"invoice-{self.number}.pdf"


def load_document(ctx: Context, conn: Connection, invoice_id: int) -> InvoiceDocument:
    """An issued invoice as its PDF shows it. A draft (a sign-up not paid yet) has no number and
    no document yet."""
    inv, ln, m = s.invoices, s.invoice_lines, s.members
    row = conn.execute(
        select(inv, m.c.name).join(m, m.c.id == inv.c.member_id).where(inv.c.id == invoice_id)
    ).first()
    if row is None:
        raise NotFound(f"no invoice {invoice_id}")
    if row.number is None:
        raise BillingError(
            f"invoice {invoice_id} is not issued yet (a sign-up's first invoice is issued when"
            " it is paid)"
        )
    lines = conn.execute(
        select(ln.c.kind, ln.c.description, ln.c.quantity, ln.c.unit_amount, ln.c.amount)
        .where(ln.c.invoice_id == invoice_id)
        .order_by(ln.c.id)
    ).all()
    period = None
    if row.period_start is not None and row.period_end is not None:
        period = (int(row.period_start), int(row.period_end))
    return InvoiceDocument(
        number=row.number,
        issued_at=int(row.issued_at),
        due_at=int(row.due_at),
        period=period,
        status=row.status,
        paid_at=None if row.paid_at is None else int(row.paid_at),
        currency=row.currency,
        site=ctx.config.site(row.site),
        member_id=row.member_id,
        member_name=row.name,
        lines=[
            (r.kind, r.description, int(r.quantity), int(r.unit_amount), int(r.amount))
            for r in lines
        ],
        subtotal=int(row.subtotal),
        tax=int(row.tax),
        total=int(row.total),
        paid=int(row.amount_paid),
    )


def invoice_pdf(ctx: Context, invoice_id: int) -> tuple[str, bytes]:
    """An issued invoice's PDF and its file name."""
    with ctx.reader.connect() as conn:
        doc = load_document(ctx, conn, invoice_id)
    return doc.filename, render(doc)


def member_invoice_pdf(ctx: Context, member_id: str, invoice_id: int) -> tuple[str, bytes] | None:
    """An invoice's PDF for a signed-in member: their own invoices and those of members they pay
    for. None for any other invoice, a draft or none at all (all look alike to the member)."""
    inv, m = s.invoices, s.members
    with ctx.reader.connect() as conn:
        owner = conn.execute(
            select(inv.c.member_id, inv.c.number, m.c.payer_id)
            .join(m, m.c.id == inv.c.member_id)
            .where(inv.c.id == invoice_id)
        ).first()
        if (
            owner is None
            or owner.number is None
            or member_id not in (owner.member_id, owner.payer_id)
        ):
            return None
        doc = load_document(ctx, conn, invoice_id)
    return doc.filename, render(doc)


def staff_invoice_pdf(
    ctx: Context, invoice_id: int, staff_sites: Sequence[str]
) -> tuple[str, bytes] | None:
    """An invoice's PDF for the console: only invoices issued by one of the staff member's
    sites (None otherwise, for a draft, or for no such invoice)."""
    with ctx.reader.connect() as conn:
        site = conn.execute(
            select(s.invoices.c.site).where(
                s.invoices.c.id == invoice_id, s.invoices.c.number.is_not(None)
            )
        ).scalar()
        if site is None or not in_scope([site], staff_sites):
            return None
        doc = load_document(ctx, conn, invoice_id)
    return doc.filename, render(doc)


@dataclass(frozen=True)
class CreditNoteDocument:
    """What a credit-note PDF shows: the note, the invoice it credits and the issuing site."""

    number: str
    issued_at: int
    kind: str
    reason: str
    amount: int
    tax: int
    currency: str
    site: SiteConfig
    member_id: str
    member_name: str
    invoice_number: str | None
    invoice_issued_at: int | None
    line: str | None

    @property
    def filename(self) -> str:
        """The attachment's and the download's file name."""
        return f"credit-note-{self.number}.pdf"


# How a credit note's kind reads on its PDF.
_CREDITED = {
    "refund": "Refund",
    "credit": "Credit",
    "void": "Invoice voided",
    "freeze": "Unused part of a freeze fee",
}


def credit_note_site(number: str) -> str:
    """The site that issued a credit note: the prefix of its number (``numbering``)."""
    return number.split("-CN-", 1)[0]


def load_credit_note(ctx: Context, conn: Connection, note_id: int) -> CreditNoteDocument:
    """A credit note as its PDF shows it."""
    cn, inv, m, ln = s.credit_notes, s.invoices, s.members, s.invoice_lines
    row = conn.execute(
        select(
            cn,
            m.c.name,
            inv.c.number.label("invoice_number"),
            inv.c.issued_at.label("invoice_issued_at"),
            ln.c.description.label("line"),
        )
        .join(m, m.c.id == cn.c.member_id)
        .join(inv, inv.c.id == cn.c.invoice_id)
        .join(ln, ln.c.id == cn.c.line_id, isouter=True)
        .where(cn.c.id == note_id)
    ).first()
    if row is None or row.number is None:
        raise NotFound(f"no credit note {note_id}")
    return CreditNoteDocument(
        number=row.number,
        issued_at=int(row.created_at),
        kind=row.kind,
        reason=row.reason,
        amount=int(row.amount),
        tax=int(row.tax),
        currency=row.currency,
        site=ctx.config.site(credit_note_site(row.number)),
        member_id=row.member_id,
        member_name=row.name,
        invoice_number=row.invoice_number,
        invoice_issued_at=None if row.invoice_issued_at is None else int(row.invoice_issued_at),
        line=row.line,
    )


def credit_note_pdf(ctx: Context, note: int | str) -> tuple[str, bytes]:
    """A credit note's PDF and its file name, by its id or its number
    (``downtown-CN-2026-000001``)."""
    cn = s.credit_notes
    with ctx.reader.connect() as conn:
        if isinstance(note, str) and not note.isdigit():
            found = conn.execute(select(cn.c.id).where(cn.c.number == note)).scalar()
            if found is None:
                raise NotFound(f"no credit note {note}")
            note = found
        doc = load_credit_note(ctx, conn, int(note))
    return doc.filename, render_credit_note(doc)


def member_credit_note_pdf(ctx: Context, member_id: str, note_id: int) -> tuple[str, bytes] | None:
    """A credit note's PDF for a signed-in member: their own and those of members they pay
    for; None for any other (it looks like one that does not exist)."""
    cn, m = s.credit_notes, s.members
    with ctx.reader.connect() as conn:
        owner = conn.execute(
            select(cn.c.member_id, m.c.payer_id)
            .join(m, m.c.id == cn.c.member_id)
            .where(cn.c.id == note_id)
        ).first()
        if owner is None or member_id not in (owner.member_id, owner.payer_id):
            return None
        doc = load_credit_note(ctx, conn, note_id)
    return doc.filename, render_credit_note(doc)


def staff_credit_note_pdf(
    ctx: Context, note_id: int, staff_sites: Sequence[str]
) -> tuple[str, bytes] | None:
    """A credit note's PDF for the console: only those issued by one of the staff member's
    sites (None otherwise, or for no such credit note)."""
    with ctx.reader.connect() as conn:
        number = conn.execute(
            select(s.credit_notes.c.number).where(s.credit_notes.c.id == note_id)
        ).scalar()
        if number is None or not in_scope([credit_note_site(number)], staff_sites):
            return None
        doc = load_credit_note(ctx, conn, note_id)
    return doc.filename, render_credit_note(doc)


def document_pdf(ctx: Context, ref: str) -> tuple[str, bytes]:
    """A document a notice carries, by its reference in the outbox: an invoice id (``12``) or
    a credit note's (``cn12``)."""
    if ref.startswith("cn"):
        return credit_note_pdf(ctx, int(ref[2:]))
    return invoice_pdf(ctx, int(ref))


def render_credit_note(doc: CreditNoteDocument) -> bytes:
    """The PDF of one credit note (A4): it lowers the invoice it names by its total."""
    words = [doc.site.name, doc.site.address, doc.site.tax_id, doc.member_name, doc.reason]
    words.append(doc.line or "")
    pdf = _start(f"Credit note {doc.number}", words, doc.site, doc.issued_at)
    if doc.invoice_number is not None:
        pdf.write_line(
            f"Credits invoice {doc.invoice_number} of {issue_day(doc.invoice_issued_at, doc.site)}"
        )
    pdf.ln(4)
    pdf.write_line("Issued to", bold=True)
    pdf.write_line(f"{doc.member_name} (member {doc.member_id})")
    pdf.ln(6)
    money = _money(doc.currency)
    pdf.row(("Description", "", "", "Amount"), bold=True)
    what = _CREDITED.get(doc.kind, doc.kind)
    pdf.row((f"{what}: {doc.line}" if doc.line else what, "", "", money(doc.amount - doc.tax)))
    pdf.row(("Tax", "", "", money(doc.tax)))
    pdf.row(("Total credited", "", "", money(doc.amount)), bold=True)
    pdf.ln(6)
    pdf.write_line(f"Reason: {doc.reason}")
    return bytes(pdf.output())


def _start(title: str, words: list[str | None], site: SiteConfig, issued_at: int) -> _Pdf:
    """A document's first page down to its date of issue: the issuing site's name, address and
    tax id, then the title. A built-in font covers Latin-1 only, so any other character in the
    document's ``words`` picks the embedded Unicode font."""
    pdf = _Pdf(unicode=not all(_latin1(w or "") for w in words))
    pdf.set_creation_date(datetime.fromtimestamp(issued_at, UTC))
    pdf.set_title(title)
    pdf.set_author(site.name or "")
    pdf.add_page()
    pdf.write_line(site.name or "", size=16, bold=True)
    for part in (site.address or "").splitlines():
        pdf.write_line(part)
    if site.tax_id:
        pdf.write_line(f"Tax ID: {site.tax_id}")
    pdf.ln(8)
    pdf.write_line(title, size=14, bold=True)
    pdf.write_line(f"Date of issue: {issue_day(issued_at, site)}")
    return pdf


def render(doc: InvoiceDocument) -> bytes:
    """The PDF of one invoice (A4)."""
    words = [doc.site.name, doc.site.address, doc.site.tax_id, doc.member_name]
    words += [line[1] for line in doc.lines]
    pdf = _start(f"Invoice {doc.number}", words, doc.site, doc.issued_at)
    if doc.period is not None:
        pdf.write_line(f"Period: {format_day(doc.period[0])} to {format_day(doc.period[1])}")
    pdf.write_line(f"Due: {format_day(doc.due_at)}")
    pdf.ln(4)
    pdf.write_line("Billed to", bold=True)
    pdf.write_line(f"{doc.member_name} (member {doc.member_id})")
    pdf.ln(6)
    money = _money(doc.currency)
    pdf.row(("Description", "Qty", "Unit", "Amount"), bold=True)
    for kind, description, quantity, unit, amount in doc.lines:
        if kind != "tax":
            pdf.row((description, str(quantity), money(unit), money(amount)))
    pdf.ln(2)
    pdf.row(("Subtotal", "", "", money(doc.subtotal)))
    for kind, description, _, _, amount in doc.lines:
        if kind == "tax":
            pdf.row((description, "", "", money(amount)))
    pdf.row(("Total", "", "", money(doc.total)), bold=True)
    pdf.row(("Paid", "", "", money(doc.paid)))
    if doc.status == "open" and doc.total > doc.paid:
        pdf.row(("Amount due", "", "", money(doc.total - doc.paid)), bold=True)
    pdf.ln(6)
    if doc.status == "paid" and doc.paid_at is not None:
        pdf.write_line(f"Paid on {format_day(doc.paid_at)}. Thank you.")
    elif doc.status not in ("open", "paid"):
        pdf.write_line(f"Status: {doc.status}.")
    return bytes(pdf.output())


def issue_day(ts: int | None, site: SiteConfig) -> str:
    """A document's date of issue: the day in its site's time zone, the year its number has
    (``numbering.year_of``)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, site.tz).strftime("%Y-%m-%d")


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _money(currency: str) -> Any:
    return lambda amount: format_amount(amount, currency)


class _Pdf(FPDF):
    """A4 with the one font the document uses and the two ways it writes text."""

    WIDTHS = (100, 15, 30, 35)

    def __init__(self, unicode: bool) -> None:
        super().__init__(format="A4")
        self.set_margins(20, 20)
        self.set_auto_page_break(auto=True, margin=20)
        self.set_producer("gated")
        self.face = "Helvetica"
        if unicode and all((FONT_DIR / f).is_file() for f in _FONT_FILES.values()):
            for style, file in _FONT_FILES.items():
                self.add_font("DejaVu", style, str(FONT_DIR / file))
            self.face = "DejaVu"

    def _text(self, text: str) -> str:
        if self.face == "DejaVu":
            return text
        return text.encode("latin-1", "replace").decode("latin-1")

    def write_line(self, text: str, size: int = 10, bold: bool = False) -> None:
        """One line of text (long lines wrap) at the left margin."""
        self.set_font(self.face, "B" if bold else "", size)
        self.multi_cell(0, size * 0.5, self._text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def row(self, cells: tuple[str, str, str, str], bold: bool = False) -> None:
        """One row of the lines table: description, quantity, unit amount, amount."""
        self.set_font(self.face, "B" if bold else "", 10)
        for i, (text, width) in enumerate(zip(cells, self.WIDTHS, strict=True)):
            last = i == len(cells) - 1
            text = self._text(text)
            while self.get_string_width(text) > width - 2 and len(text) > 1:
                text = text[:-2] + "…" if self.face == "DejaVu" else text[:-4] + "..."
            self.cell(
                width,
                6,
                text,
                align="L" if i == 0 else "R",
                new_x=XPos.LMARGIN if last else XPos.RIGHT,
                new_y=YPos.NEXT if last else YPos.TOP,
            )
