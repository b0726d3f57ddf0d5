"""``gated-billing invoice``: one invoice's money taken back (refund, credit note, void, write
off) and what is booked on it (``show``); ``gated-billing disputes evidence``: what speaks to a
disputed payment, reviewed, then submitted. Built on the command line's own service, audit and
tables (``cli.py`` registers them)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gated.billing_sync.audit import Entry
from gated.billing_sync.service import Billing
from gated.contract import format_time

OpenService = Callable[[Path], AbstractContextManager[Billing]]
Audit = Callable[[Billing, str, str | None], AbstractContextManager[Entry]]
Table = Callable[[str, Sequence[str], Iterable[Sequence[Any]], bool], None]
ConfigOpt = Annotated[
    Path,
    typer.Option("-c", "--config", envvar="GATED_BILLING_CONFIG", help="billing.toml"),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
out = Console(highlight=False)

AmountOpt = Annotated[
    int | None, typer.Option(help="Minor units, tax included (default: all of it).")
]
LineOpt = Annotated[
    int | None,
    typer.Option("--line", help="One invoice line with its tax (ids: `invoice show`)."),
]
ReasonOpt = Annotated[str, typer.Option(help="Why, printed on the credit note.")]


def member_of(billing: Billing, invoice_id: int) -> str:
    """Whose invoice it is (the audit log records the member); NotFound for no such invoice."""
    return str(billing.invoice(invoice_id)["member_id"])


def commands(service: OpenService, audit: Audit, table: Table) -> typer.Typer:
    """The ``invoice`` group, on the command line's own service, audit log and tables."""
    invoice_app = typer.Typer(
        no_args_is_help=True,
        help=(
            "One invoice: refund what was paid, give a credit note on what is open, void it, write"
            " it off, show what is booked on it. Every refund and credit comes with its credit note;"
            " a card payment goes back through the payment provider, a desk payment at the desk."
            " Refusals (more than was paid, a void invoice, a charge still in flight) are one line,"
            " exit code 2."
        ),
    )

    @invoice_app.command("refund")
    def invoice_refund(
        invoice_id: int,
        amount: AmountOpt = None,
        line: LineOpt = None,
        reason: ReasonOpt = "refund",
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Give back money paid on an invoice, with a credit note.

        An amount, one line with its tax, or everything not yet given back; never more than
        was paid less what was refunded before."""
        with service(config) as billing:
            with audit(billing, "refund", member_of(billing, invoice_id)) as entry:
                done = billing.refund(invoice_id, amount, line, reason)
                entry.detail.update(
                    invoice=invoice_id, refunded=done.refunded, credit_notes=done.credit_notes
                )
            out.print(done.line(), markup=False)

    @invoice_app.command("credit")
    def invoice_credit(
        invoice_id: int,
        amount: AmountOpt = None,
        line: LineOpt = None,
        reason: ReasonOpt = "credit",
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """A credit note on what is still open on an invoice (no money moves).

        The member owes that much less; a renewal credited in full counts as paid for its
        period."""
        with service(config) as billing:
            with audit(billing, "credit", member_of(billing, invoice_id)) as entry:
                done = billing.credit(invoice_id, amount, line, reason)
                entry.detail.update(
                    invoice=invoice_id, credited=done.credited, credit_notes=done.credit_notes
                )
            out.print(done.line(), markup=False)

    @invoice_app.command("void")
    def invoice_void(
        invoice_id: int, reason: ReasonOpt = "void", config: ConfigOpt = DEFAULT_CONFIG
    ) -> None:
        """Void an open invoice nothing was paid on (issued in error).

        A credit note for all of it; one with money on it is refused: refund it instead."""
        with service(config) as billing:
            with audit(billing, "void", member_of(billing, invoice_id)) as entry:
                done = billing.void(invoice_id, reason)
                entry.detail.update(invoice=invoice_id, credit_notes=done.credit_notes)
            out.print(f"invoice {invoice_id}: void, credit note {', '.join(done.credit_notes)}")

    @invoice_app.command("write-off")
    def invoice_write_off(
        invoice_id: int, reason: ReasonOpt = "bad debt", config: ConfigOpt = DEFAULT_CONFIG
    ) -> None:
        """Write off what is still open on an invoice as bad debt.

        It leaves `report outstanding` and dunning, booked as written off (not as money, not
        as a credit note)."""
        with service(config) as billing:
            with audit(billing, "write_off", member_of(billing, invoice_id)) as entry:
                amount = billing.write_off(invoice_id, reason)
                entry.detail.update(invoice=invoice_id, written_off=amount, reason=reason)
            out.print(f"invoice {invoice_id}: {amount} written off")

    @invoice_app.command("show")
    def invoice_show(
        invoice_id: int,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """An invoice's lines, what is booked on it and its credit notes.

        Lines with the ids `--line` takes; booked: payments, refunds, credit notes,
        write-offs."""
        with service(config) as billing:
            shown = billing.invoice_money(invoice_id)
        if as_json:
            print(json.dumps(shown, sort_keys=True))
            return
        head = (
            f"invoice {shown['id']} ({shown['kind']}) of {shown['member_id']}: {shown['status']},"
            f" total {shown['total']}, settled {shown['settled']}, open {shown['open']}"
            f" {shown['currency']}"
        )
        out.print(head, markup=False)
        table(
            "lines",
            ["line", "kind", "description", "amount"],
            [(r["id"], r["kind"], r["description"], r["amount"]) for r in shown["lines"]],
            False,
        )
        table(
            "booked",
            ["at", "method", "amount", "reference"],
            [
                (format_time(r["at"]), r["method"], r["amount"], r["reference"])
                for r in shown["booked"]
            ],
            False,
        )
        table(
            "credit notes",
            ["number", "kind", "amount", "tax", "line", "reason"],
            [
                (r["number"], r["kind"], r["amount"], r["tax"], r["line_id"], r["reason"])
                for r in shown["credit_notes"]
            ],
            False,
        )

    return invoice_app


def dispute_commands(service: OpenService, audit: Audit) -> typer.Typer:
    """The ``disputes`` group, on the command line's own service and audit log."""
    disputes_app = typer.Typer(no_args_is_help=True, help="Disputed payments (chargebacks).")

    @disputes_app.command("evidence")
    def disputes_evidence(
        dispute_id: str,
        submit: Annotated[
            bool, typer.Option("--submit", help="Send it to the payment provider.")
        ] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """The evidence for a disputed payment, as one JSON document to review.

        The member's accepted contract, the disputed invoice and their others, the receipts
        sent and their visits during the period paid for; `--submit` sends it to the payment
        provider in its evidence fields (audited)."""
        with service(config) as billing:
            doc = billing.dispute_evidence(dispute_id)
            if submit:
                with audit(billing, "dispute_evidence", doc["member"]["id"]) as entry:
                    sent = billing.submit_dispute_evidence(dispute_id)
                    entry.detail.update(dispute=dispute_id, fields=sorted(sent))
        print(json.dumps(doc, indent=2, sort_keys=True))
        if submit:
            typer.echo(f"dispute {dispute_id}: evidence submitted", err=True)

    return disputes_app
