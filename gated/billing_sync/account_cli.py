"""``gated-billing freeze|unfreeze|cancel|charge-extra|pay|pass|invoices|invoice-pdf|
credit-note-pdf``: a member's membership and money at a shell, and their documents. ``cli.py`` adds them (``register``), handing
in how it opens the service and its audit wrapper."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gated.billing_sync import reports
from gated.billing_sync.cli_common import (
    DEFAULT_CONFIG,
    TABLE_LIMIT,
    Audit,
    ConfigOpt,
    CsvOpt,
    OpenService,
    parse_date,
    report_line,
    table,
    when,
)
from gated.billing_sync.membership import freeze_fee_rule
from gated.billing_sync.notices import format_amount
from gated.contract import mint_qr_code
from gated.edge import fail

out = Console()
err = Console(stderr=True)


def freeze_terms(member_id: str, quote: dict[str, Any]) -> str:
    """A freeze's quote in lines for the shell: dates, fee, and the plan's rule on the fee."""
    fee = int(quote["fee"])
    lines = [
        f"{member_id}: freeze for {quote['months']} month(s) from {quote['start'][:10]}"
        f" to {quote['end'][:10]}",
        f"paid through moves to {(quote['paid_through'] or '-')[:10]}",
        f"fee {format_amount(fee, quote['currency'])}, billed now",
    ]
    rule = freeze_fee_rule(fee, bool(quote["fee_kept"])).strip()
    if rule:
        lines.append(rule)
    return "\n".join(lines)


def confirm_or_stop(question: str) -> None:
    """Ask ``question`` at a terminal; no answer there (not a terminal: a script without
    ``--yes``) or a no ends the command with nothing done."""
    if not sys.stdin.isatty():
        fail("not a terminal to confirm at: pass --yes to book without asking; nothing was booked")
    if not typer.confirm(question, default=False):
        fail("not confirmed: nothing was booked", code=1)


def register(root: typer.Typer, service: OpenService, audit: Audit) -> None:
    """Add the commands to the ``root`` app."""

    @root.command()
    def freeze(
        member_id: str,
        months: Annotated[int, typer.Option(help="1 to 3.")] = 1,
        start: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default now.")] = None,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Book without asking (for scripts).")
        ] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Freeze a current member for 1-3 months (contract extended, fee billed). Shows the
        dates, the fee and what an early end gives back of it, and asks before booking."""
        start_at = parse_date(start)
        with service(config) as billing:
            quote = billing.freeze_quote(member_id, months, start_at)
            # A freeze the rules refuse goes straight on, to be refused in freeze's own words.
            if quote["allowed"]:
                out.print(
                    freeze_terms(member_id, quote), markup=False, highlight=False, soft_wrap=True
                )
                if not yes:
                    confirm_or_stop("Book this freeze?")
            with audit(billing, "freeze", member_id):
                billing.freeze(member_id, months, start_at)
            info = billing.member(member_id)
            out.print(f"{member_id}: {info['status']}, freeze {info['freeze']}")

    @root.command()
    def unfreeze(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """End a freeze now; the unused part of its fee is given back (whole days left, rounded
        down): a credit note on what is still owed of it, a refund of what was paid."""
        with service(config) as billing:
            with audit(billing, "unfreeze", member_id) as entry:
                back = billing.unfreeze(member_id)
                if back is not None:
                    entry.detail.update(invoice=back.invoice_id, credit_notes=back.credit_notes)
            given = f"; {back.line()}" if back is not None else ""
            out.print(f"{member_id}: {billing.member(member_id)['status']}{given}", markup=False)

    @root.command()
    def cancel(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Cancel at the end of the paid period or the minimum term."""
        with service(config) as billing:
            with audit(billing, "cancel", member_id):
                ends = billing.cancel(member_id)
            out.print(f"{member_id}: pending_cancel until {when(ends)}")

    @root.command("charge-extra")
    def charge_extra(
        member_id: str,
        amount: Annotated[int, typer.Option(help="Net, minor units.")],
        kind: Annotated[str, typer.Option(help="personal_training, class_pack, …")] = "extra",
        description: Annotated[str | None, typer.Option()] = None,
        tax_rate_bp: Annotated[int | None, typer.Option(help="Default: the plan's rate.")] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Bill an extra on its own invoice and charge it now."""
        with service(config) as billing:
            with audit(billing, "charge_extra", member_id) as entry:
                report = billing.charge_extra(
                    member_id, kind, description or kind.replace("_", " "), amount, tax_rate_bp
                )
                entry.detail.update(kind=kind, amount=amount)
            out.print(f"{member_id}: {report_line(report)}")

    @root.command()
    def pay(
        member_id: str,
        amount: Annotated[
            int | None,
            typer.Argument(
                help="Minor units; default: all owed, but for invoices a charge in flight"
                " (a SEPA debit) is still paying."
            ),
        ] = None,
        method: Annotated[str, typer.Option(help="front_desk, transfer, …")] = "front_desk",
        reference: Annotated[
            str | None, typer.Option(help="Receipt or transfer reference.")
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Record a payment taken at the front desk; the member is let in again at once."""
        with service(config) as billing:
            with audit(billing, "take_payment", member_id) as entry:
                paid = billing.record_payment(member_id, amount, method, reference)
                entry.detail.update(amount=paid, method=method)
            out.print(f"{member_id}: paid {paid}, now {billing.member(member_id)['status']}")

    @root.command("pass")
    def pass_(
        member_id: str,
        png: Annotated[
            Path | None, typer.Option(help="Write a PNG instead of a terminal QR.")
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """A fresh rotating QR code for the member (plays the member's app)."""
        import segno

        with service(config) as billing:
            seed = billing.app_private_key(member_id)
            code = mint_qr_code(seed, member_id, billing.clock(), secrets.token_hex(8))
        qr = segno.make(code, error="m")
        if png is not None:
            qr.save(str(png), scale=6)
            err.print(f"wrote {png}", markup=False)
        else:
            qr.terminal(compact=True)
        sys.stdout.write(code + "\n")

    @root.command()
    def invoices(
        member_id: Annotated[str | None, typer.Argument()] = None,
        lines: Annotated[bool, typer.Option("--lines", help="Show line items.")] = False,
        limit: Annotated[
            int | None,
            typer.Option(
                help="Only the newest N invoices (0: all). Default: all with --csv, the newest"
                f" {TABLE_LIMIT} in a table."
            ),
        ] = None,
        as_csv: CsvOpt = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Invoices (newest first), optionally with their itemized lines. CSV streams every invoice;
        when fewer are shown than exist, a line on stderr says so."""
        if limit is None:
            limit = 0 if as_csv else TABLE_LIMIT
        cols = [
            "invoice",
            "number",
            "member",
            "kind",
            "status",
            "currency",
            "subtotal",
            "tax",
            "total",
            "paid",
            "due",
        ]
        if lines:
            cols += ["line", "description", "qty", "unit", "amount"]
        with service(config) as billing:
            rows = reports.invoices(billing.engine, member_id, lines, limit or None)
            table("invoices", cols, rows if as_csv else list(rows), as_csv)
            total = reports.count_invoices(billing.engine, member_id) if limit else 0
        if limit and total > limit:
            err.print(
                f"showing the newest {limit} of {total} invoices (--limit 0 or --csv for all)",
                markup=False,
                highlight=False,
            )

    @root.command("invoice-pdf")
    def invoice_pdf(
        invoice_id: int,
        out_path: Annotated[
            Path | None,
            typer.Option("--out", help="Where to write it (default: invoice-NUMBER.pdf here)."),
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Write an issued invoice as a PDF, with the issuing site's name, address and tax id."""
        with service(config) as billing:
            name, pdf = billing.invoice_pdf(invoice_id)
        write_pdf(out_path or Path(name), pdf)

    @root.command("credit-note-pdf")
    def credit_note_pdf(
        note: Annotated[
            str, typer.Argument(help="The credit note's number (downtown-CN-2026-000001) or id.")
        ],
        out_path: Annotated[
            Path | None,
            typer.Option("--out", help="Where to write it (default: credit-note-NUMBER.pdf here)."),
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Write a credit note as a PDF: the invoice it credits, its amount and tax, and why."""
        with service(config) as billing:
            name, pdf = billing.credit_note_pdf(note)
        write_pdf(out_path or Path(name), pdf)

    def write_pdf(target: Path, pdf: bytes) -> None:
        try:
            target.write_bytes(pdf)
        except OSError as exc:
            fail(f"{target}: {exc.strerror or exc}")
        out.print(f"wrote {target}", markup=False, highlight=False, soft_wrap=True)
