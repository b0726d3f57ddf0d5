"""``gated-billing invoice``: one invoice's money taken back (refund, credit note, void, write
off) and what is booked on it (``show``). Registered on the main app by ``cli.py``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gated.billing_sync.cli import DEFAULT_CONFIG, ConfigOpt, _audit, _table, _when, out, service
from gated.billing_sync.service import Billing

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

AmountOpt = Annotated[
    int | None, typer.Option(help="Minor units, tax included (default: all of it).")
]
LineOpt = Annotated[
    int | None,
    typer.Option("--line", help="One invoice line with its tax (ids: `invoice show`)."),
]
ReasonOpt = Annotated[str, typer.Option(help="Why, printed on the credit note.")]


def _member_of(billing: Billing, invoice_id: int) -> str:
    return str(billing.invoice(invoice_id)["member_id"])


@invoice_app.command("refund")
def invoice_refund(
    invoice_id: int,
    amount: AmountOpt = None,
    line: LineOpt = None,
    reason: ReasonOpt = "refund",
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Give back money paid on an invoice (an amount, one line, or everything not yet given
    back), with a credit note. Never more than was paid less what was refunded before."""
    with service(config) as billing:
        with _audit(billing, "refund", _member_of(billing, invoice_id)) as entry:
            done = billing.refund(invoice_id, amount, line, reason)
            entry.detail.update(
                invoice=invoice_id, refunded=done.refunded, credit_notes=done.credit_notes
            )
        out.print(done.line(), markup=False, highlight=False)


@invoice_app.command("credit")
def invoice_credit(
    invoice_id: int,
    amount: AmountOpt = None,
    line: LineOpt = None,
    reason: ReasonOpt = "credit",
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """A credit note on what is still open on an invoice: the member owes that much less; no
    money moves. A renewal credited in full counts as paid for its period."""
    with service(config) as billing:
        with _audit(billing, "credit", _member_of(billing, invoice_id)) as entry:
            done = billing.credit(invoice_id, amount, line, reason)
            entry.detail.update(
                invoice=invoice_id, credited=done.credited, credit_notes=done.credit_notes
            )
        out.print(done.line(), markup=False, highlight=False)


@invoice_app.command("void")
def invoice_void(
    invoice_id: int, reason: ReasonOpt = "void", config: ConfigOpt = DEFAULT_CONFIG
) -> None:
    """Void an open invoice nothing was paid on (issued in error), with a credit note for all
    of it. One with money on it is refused: refund it instead."""
    with service(config) as billing:
        with _audit(billing, "void", _member_of(billing, invoice_id)) as entry:
            done = billing.void(invoice_id, reason)
            entry.detail.update(invoice=invoice_id, credit_notes=done.credit_notes)
        out.print(f"invoice {invoice_id}: void, credit note {', '.join(done.credit_notes)}")


@invoice_app.command("write-off")
def invoice_write_off(
    invoice_id: int, reason: ReasonOpt = "bad debt", config: ConfigOpt = DEFAULT_CONFIG
) -> None:
    """Write off what is still open on an invoice as bad debt: it leaves `report outstanding`
    and dunning, and is booked as written off (not as money, not as a credit note)."""
    with service(config) as billing:
        with _audit(billing, "write_off", _member_of(billing, invoice_id)) as entry:
            amount = billing.write_off(invoice_id, reason)
            entry.detail.update(invoice=invoice_id, written_off=amount, reason=reason)
        out.print(f"invoice {invoice_id}: {amount} written off")


@invoice_app.command("show")
def invoice_show(
    invoice_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """An invoice's lines (with the ids `--line` takes), everything booked on it (payments,
    refunds, credit notes, write-offs) and its credit notes."""
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
    out.print(head, markup=False, highlight=False)
    _table(
        "lines",
        ["line", "kind", "description", "amount"],
        [(r["id"], r["kind"], r["description"], r["amount"]) for r in shown["lines"]],
        False,
    )
    _table(
        "booked",
        ["at", "method", "amount", "reference"],
        [(_when(r["at"]), r["method"], r["amount"], r["reference"]) for r in shown["booked"]],
        False,
    )
    _table(
        "credit notes",
        ["number", "kind", "amount", "tax", "line", "reason"],
        [
            (r["number"], r["kind"], r["amount"], r["tax"], r["line_id"], r["reason"])
            for r in shown["credit_notes"]
        ],
        False,
    )
