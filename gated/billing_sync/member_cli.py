"""``gated-billing members add|show|list|import|erase|erasure-requests|allow-key|edit|set-card`` and
``gated-billing cards assign|revoke``: a member's record and cards at a shell. ``cli.py`` adds them
(``register``), handing in its groups, how it opens the service and its audit wrapper; a member's
plan changes are ``plan_cli.py``'s."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gated.billing_sync.audit import Actor
from gated.billing_sync.cli_common import (
    DEFAULT_CONFIG,
    Audit,
    ConfigOpt,
    CsvOpt,
    OpenService,
    parse_date,
    report_line,
    table,
    when,
)
from gated.billing_sync.members import NO_PAYER
from gated.billing_sync.plan_cli import change_plan_command
from gated.edge import fail

out = Console()


def register(members: typer.Typer, cards: typer.Typer, service: OpenService, audit: Audit) -> None:
    """Add the commands to the ``members`` and ``cards`` groups."""

    @members.command("add")
    def members_add(
        member_id: str,
        name: Annotated[str, typer.Option(help="Full name.")],
        plan: Annotated[str, typer.Option(help="Plan id.")],
        email: Annotated[str | None, typer.Option(help="For notices.")] = None,
        site: Annotated[list[str] | None, typer.Option(help="Site (repeat); default: all.")] = None,
        payer: Annotated[str | None, typer.Option(help="Household payer's member id.")] = None,
        card: Annotated[
            str | None, typer.Option(help="Payment method id (Stripe pm_…, or pm_sim_… simulated).")
        ] = None,
        staff: Annotated[bool, typer.Option(help="Staff role (no schedule or limits).")] = False,
        qr: Annotated[
            bool, typer.Option(help="Give the member an app key for rotating QR codes.")
        ] = False,
        start: Annotated[
            str | None, typer.Option(help="Contract start (YYYY-MM-DD); default now.")
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Enrol a member and bill the first period now."""
        with service(config) as billing:
            with audit(billing, "enrol", member_id):
                report = billing.add_member(
                    member_id,
                    name,
                    plan_id=plan,
                    email=email,
                    sites=site,
                    payer_id=payer,
                    payment_method=card,
                    role="staff" if staff else "member",
                    with_qr=qr,
                    start_at=parse_date(start),
                )
            status = billing.member(member_id)["status"]
            out.print(f"{member_id}: {status} ({report_line(report)})")

    @members.command("show")
    def members_show(
        member_id: str,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """A member's billing state and what the gates were last told."""
        with service(config) as billing:
            info = billing.member(member_id)
        if as_json:
            sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
            return
        shown = Table(show_header=False)
        for key, value in info.items():
            shown.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        out.print(shown)

    @members.command("list")
    def members_list(
        status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
        as_csv: CsvOpt = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Members with plan, status, paid-through and published version."""
        with service(config) as billing:
            rows = billing.list_members(status)
        table(
            "members",
            ["member", "name", "plan", "status", "paid_through", "version"],
            [(r.id, r.name, r.plan_id, r.status, when(r.paid_through), r.version) for r in rows],
            as_csv,
        )

    @members.command("import")
    def members_import(file: Path, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Import members from CSV or a JSON list (member_id, name, plan, email, sites, payer,
        card, role, cards: UIDs separated by spaces). Every line is checked before the first is
        enrolled: a bad line imports nothing, and the error names it."""
        try:
            text = file.read_text()
        except OSError as exc:
            fail(f"{file}: {exc.strerror}")
        with service(config) as billing, audit(billing, "import_members", None) as entry:
            count = billing.import_members(str(file), text)
            entry.detail.update(members=count)
        out.print(f"imported {count} members")

    @members.command("erase")
    def members_erase(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Erase personal data and cards; the gates receive a signed tombstone."""
        with service(config) as billing:
            with audit(billing, "erase", member_id):
                billing.erase(member_id)
            out.print(f"{member_id}: erased")

    @members.command("erasure-requests")
    def members_erasure_requests(
        as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG
    ) -> None:
        """Members who asked for erasure in the member app and are not erased yet, oldest first."""
        with service(config) as billing:
            rows = billing.member_data().erasure_requests()
        table(
            "erasure requests",
            ["member", "requested_at", "address"],
            [(r["member_id"], r["requested_at"], r["address"]) for r in rows],
            as_csv,
        )

    @members.command("allow-key")
    def members_allow_key(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Let the member make one more device their pass now, inside the 24-hour limit."""
        with service(config) as billing:
            billing.pass_keys().allow(member_id, Actor.unix_user())
            out.print(f"{member_id}: may register a new pass device now")

    @members.command("edit")
    def members_edit(
        member_id: str,
        name: Annotated[str | None, typer.Option(help="Full name.")] = None,
        email: Annotated[
            str | None,
            typer.Option(help="A corrected address: clears a bounce; unsent notices go to it."),
        ] = None,
        phone: Annotated[str | None, typer.Option(help='Phone number ("" to remove).')] = None,
        payer: Annotated[str | None, typer.Option(help="A household payer's member id.")] = None,
        no_payer: Annotated[
            bool, typer.Option("--no-payer", help="Pays for themselves from now on.")
        ] = False,
        site: Annotated[
            list[str] | None,
            typer.Option(
                help="Site (repeat): the member's sites from now on; a site left forgets them."
            ),
        ] = None,
        plan: Annotated[
            str | None, typer.Option(help="Another plan (as members change-plan).")
        ] = None,
        at_renewal: Annotated[bool, typer.Option(help="--plan from the next renewal.")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Make the --plan change.")] = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Correct a member's details, move them between sites or households, change their plan."""
        if payer is not None and no_payer:
            fail("give --payer or --no-payer, not both")
        with service(config) as billing:
            details = name, email, phone, payer, site
            if any(v is not None for v in details) or no_payer:
                with audit(billing, "edit_member", member_id):
                    billing.edit_member(
                        member_id,
                        name=name,
                        email=email,
                        phone=phone,
                        payer=NO_PAYER if no_payer else payer,
                        sites=site,
                    )
                info = billing.member(member_id)
                out.print(f"{member_id}: {info['name']} <{info['email']}>", markup=False)
            elif plan is None:
                fail("nothing to change (give --name, --email, --phone, --payer, --site or --plan)")
            if plan is not None:
                change_plan_command(billing, audit, member_id, plan, at_renewal, yes, False)

    @members.command("set-card")
    def members_set_card(
        member_id: str,
        card: Annotated[str, typer.Argument(help="Payment method id.")],
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Save a new payment method and retry what is owed right away."""
        with service(config) as billing:
            with audit(billing, "set_payment_method", member_id):
                report = billing.set_payment_method(member_id, card)
            out.print(f"{member_id}: {billing.member(member_id)['status']} ({report_line(report)})")

    @cards.command("assign")
    def cards_assign(member_id: str, uid: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Enrol a card UID (as `gatectl enroll` prints it) for a member."""
        with service(config) as billing:
            with audit(billing, "assign_card", member_id):
                billing.assign_card(member_id, uid)
            out.print(f"{member_id}: card assigned")

    @cards.command("revoke")
    def cards_revoke(member_id: str, uid: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Revoke a member's card; gates drop it with the next state."""
        with service(config) as billing:
            with audit(billing, "revoke_card", member_id):
                billing.revoke_card(member_id, uid)
            out.print(f"{member_id}: card revoked")
