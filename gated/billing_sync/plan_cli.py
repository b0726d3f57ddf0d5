"""``gated-billing`` commands for plan and price changes, un-cancelling and payment plans: ``members
change-plan``, ``members keep-plan``, ``uncancel`` (beside ``cancel``),
``plans price-change`` and ``plans price-changes``. ``cli.py`` registers them on its groups (``register``), handing in how it
opens the service, audits an action and reads a date.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gated.billing_sync.audit import Entry
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.plan_changes import PlanChange
from gated.billing_sync.service import Billing

OpenService = Callable[[Path], AbstractContextManager[Billing]]
Audit = Callable[[Billing, str, str | None], AbstractContextManager[Entry]]
ParseDate = Callable[[str | None], int | None]
ConfigOpt = Annotated[
    Path,
    typer.Option("-c", "--config", envvar="GATED_BILLING_CONFIG", help="billing.toml"),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
out = Console(highlight=False, soft_wrap=True)


def describe(change: PlanChange) -> Iterator[str]:
    """The lines a person reads before confirming a plan change."""
    c = change.currency
    yield (
        f"{change.member_id}: {change.old_plan} ({format_amount(change.old_price, c)}) to"
        f" {change.new_plan} ({format_amount(change.new_price, c)}) per period"
    )
    if change.when == "renewal":
        yield (
            f"from the renewal on {format_day(change.effective_at)}: nothing is charged now,"
            f" the renewal bills {format_amount(change.new_price, c)} plus tax"
        )
        return
    days = f"{change.days_left} of {change.period_days} days left"
    yield f"now, prorated over the {days} of the paid period:"
    yield f"  credit for {change.old_plan}  -{format_amount(change.credit, c)}"
    yield f"  {change.new_plan}  {format_amount(change.charge, c)}"
    yield f"  tax  {format_amount(change.tax, c)}"
    yield f"  charged now  {format_amount(change.total, c)}"


def change_plan_command(
    billing: Billing,
    audit: Audit,
    member_id: str,
    plan: str,
    at_renewal: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Show what the change costs; with ``yes``, make it (``members change-plan`` and
    ``members edit --plan``)."""
    change = billing.plan_change_quote(member_id, plan, at_renewal)
    if yes:
        with audit(billing, "change_plan", member_id) as entry:
            entry.detail.update(plan=plan, when=change.when)
            change, report = billing.change_plan(member_id, plan, at_renewal)
    if as_json:
        doc = {**change.as_dict(), "done": yes}
        if yes:
            doc["status"] = billing.member(member_id)["status"]
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        return
    for line in describe(change):
        out.print(line, markup=False)
    if not yes:
        out.print("nothing changed: run again with --yes to make this change", markup=False)
        return
    status = billing.member(member_id)["status"]
    booked = "booked for the renewal" if change.when == "renewal" else "changed"
    out.print(f"{member_id}: plan {booked}; status {status}", markup=False)
    if change.when == "now" and report.failed:
        out.print("the charge was declined: the member is dunned for it", markup=False)


def register(
    root: typer.Typer,
    members: typer.Typer,
    plans: typer.Typer,
    service: OpenService,
    audit: Audit,
    parse_date: ParseDate,
) -> None:
    """Add the commands to the ``root`` app and its ``members`` and ``plans`` groups."""

    @members.command("change-plan")
    def members_change_plan(
        member_id: str,
        plan: str,
        at_renewal: Annotated[
            bool, typer.Option("--at-renewal", help="From the next renewal, not now.")
        ] = False,
        yes: Annotated[
            bool, typer.Option("--yes", help="Make the change (else: show it).")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Move a member to another plan: an upgrade now, prorated and charged at once; a
        cheaper plan (or another period) from the renewal. Shows the amounts; --yes does it."""
        with service(config) as billing:
            change_plan_command(billing, audit, member_id, plan, at_renewal, yes, as_json)

    @members.command("keep-plan")
    def members_keep_plan(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Drop a plan change booked for the renewal."""
        with service(config) as billing:
            with audit(billing, "change_plan", member_id) as entry:
                entry.detail.update(plan=None, when="renewal")
                billing.cancel_plan_change(member_id)
            out.print(f"{member_id}: no plan change booked", markup=False)

    @root.command("uncancel")
    def uncancel(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Withdraw a cancellation before the contract ends."""
        with service(config) as billing:
            with audit(billing, "uncancel", member_id):
                billing.uncancel(member_id)
            out.print(f"{member_id}: {billing.member(member_id)['status']}", markup=False)

    @plans.command("price-change")
    def plans_price_change(
        plan_id: str,
        price: Annotated[int, typer.Option(help="The new price per period, minor units.")],
        on: Annotated[str, typer.Option(help="The day it applies from (YYYY-MM-DD).")],
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Announce a plan's new price: each member pays it from their first renewal on or after
        that day (a grandfathering plan keeps its members on their price)."""
        effective_at = parse_date(on)
        assert effective_at is not None
        with service(config) as billing:
            with audit(billing, "manage_plans", None) as entry:
                entry.detail.update(plan=plan_id, price=price, on=on)
                change_id = billing.schedule_price_change(plan_id, price, effective_at)
            out.print(f"price change {change_id}: {plan_id} costs {price} from {on}", markup=False)

    @plans.command("price-changes")
    def plans_price_changes(
        plan_id: Annotated[str | None, typer.Argument(help="Only this plan.")] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Price changes announced, soonest first (applied ones too)."""
        with service(config) as billing:
            rows = billing.price_changes(plan_id)
        for r in rows:
            state = f"applied {format_day(r.applied_at)}" if r.applied_at else "announced"
            keeps = ", existing members keep their price" if r.grandfather else ""
            out.print(
                f"{r.id}  {r.plan_id}  {format_amount(r.price, r.currency)}  from"
                f" {format_day(r.effective_at)}  ({state} {format_day(r.announced_at)}{keeps})",
                markup=False,
            )
