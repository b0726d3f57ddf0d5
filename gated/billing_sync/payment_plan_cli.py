"""``gated-billing payment-plan start|change``: arrears split into instalments, and a plan's
rest split again. ``payment-plan ID …`` is ``payment-plan start ID …``. ``cli.py`` adds the
group (``commands``), handing in how it opens the service, audits an action and reads a date.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.payment_plans import PaymentPlan
from gated.billing_sync.plan_cli import DEFAULT_CONFIG, Audit, ConfigOpt, OpenService, ParseDate
from gated.edge import RefusalsAsOneLine

out = Console(highlight=False, soft_wrap=True)

Instalments = Annotated[int, typer.Option(help="How many, a month apart (2-12).")]
First = Annotated[str | None, typer.Option(help="The first one's day (YYYY-MM-DD); default today.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document.")]


class StartByDefault(RefusalsAsOneLine):
    """A group whose first argument, when it names no command, is a member for ``start``:
    ``payment-plan m1 --instalments 3`` as it was before the plan could be changed."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().resolve_command(ctx, args)


def show(member_id: str, plan: PaymentPlan, change: bool, done: bool, status: str | None) -> None:
    """The instalments as lines, then whether anything changed."""
    invoices = ", ".join(map(str, plan.invoices))
    what = "still owed" if change else "owed"
    out.print(
        f"{member_id}: {format_amount(plan.total, plan.currency)} {what} on invoice(s)"
        f" {invoices}, in {len(plan.instalments)} instalments:",
        markup=False,
    )
    for k, part in enumerate(plan.instalments, 1):
        out.print(
            f"  {k}  {format_day(part.due_at)}  {format_amount(part.total, plan.currency)}",
            markup=False,
        )
    verb = "change" if change else "start"
    if not done:
        out.print(f"nothing changed: run again with --yes to {verb} it", markup=False)
    else:
        out.print(f"{member_id}: payment plan {verb}d; status {status}", markup=False)


def as_document(
    member_id: str, plan: PaymentPlan, done: bool, status: str | None
) -> dict[str, Any]:
    """The plan as the ``--json`` document."""
    return {
        "member_id": member_id,
        "currency": plan.currency,
        "total": plan.total,
        "invoices": plan.invoices,
        "instalments": [i.as_dict() for i in plan.instalments],
        "done": done,
        "status": status,
    }


def commands(service: OpenService, audit: Audit, parse_date: ParseDate) -> typer.Typer:
    """The ``payment-plan`` group."""
    group = typer.Typer(
        cls=StartByDefault,
        no_args_is_help=True,
        help="Payment plans for arrears: start one, or split a plan's rest again.",
    )

    def run(
        member_id: str,
        instalments: int,
        first: str | None,
        yes: bool,
        as_json: bool,
        config: Any,
        *,
        change: bool,
    ) -> None:
        first_at = parse_date(first)
        with service(config) as billing:
            quote = billing.payment_plan_change_quote if change else billing.payment_plan_quote
            plan = quote(member_id, instalments, first_at)
            if yes:
                with audit(billing, "payment_plan", member_id) as entry:
                    entry.detail.update(instalments=instalments, total=plan.total, change=change)
                    book = billing.change_payment_plan if change else billing.start_payment_plan
                    plan, _ = book(member_id, instalments, first_at)
            status = billing.member(member_id)["status"] if yes else None
        if as_json:
            sys.stdout.write(
                json.dumps(as_document(member_id, plan, yes, status), sort_keys=True) + "\n"
            )
            return
        show(member_id, plan, change, yes, status)

    @group.command("start")
    def start(
        member_id: str,
        instalments: Instalments,
        first: First = None,
        yes: Annotated[bool, typer.Option("--yes", help="Start it (else: show it).")] = False,
        as_json: AsJson = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Split what a member owes into instalments a month apart; they stay in good standing
        while each is paid on its day, and a missed one is dunned. Shows them; --yes starts it."""
        run(member_id, instalments, first, yes, as_json, config, change=False)

    @group.command("change")
    def change(
        member_id: str,
        instalments: Instalments,
        first: First = None,
        yes: Annotated[bool, typer.Option("--yes", help="Change it (else: show it).")] = False,
        as_json: AsJson = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Split what is still owed on a member's payment plan into new instalments a month
        apart (the instalments paid stay as they are; the total owed does not change). Shows
        them; --yes changes it."""
        run(member_id, instalments, first, yes, as_json, config, change=True)

    return group
