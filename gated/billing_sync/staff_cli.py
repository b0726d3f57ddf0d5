"""``gated-billing staff add|list|disable|reset``: the console's staff accounts at a shell
(``staff.py``). ``cli.py`` adds them (``register``), handing in its group, how it opens the
service and its audit wrapper."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from gated.billing_sync.cli_common import (
    DEFAULT_CONFIG,
    Audit,
    ConfigOpt,
    CsvOpt,
    OpenService,
    table,
)

out = Console()


RoleOpt = Annotated[str, typer.Option(help="front_desk, manager or owner (see docs/console.md).")]


AskPasswordOpt = Annotated[
    bool, typer.Option("--ask-password", help="Type the password instead of a one-time one.")
]


def _ask_password() -> str:
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _print_password(staff_id: str, one_time: str | None, done: str) -> None:
    """Show a one-time password made for the account, or that it was ``done``."""
    if one_time is not None:
        out.print(f"{staff_id}: one-time password {one_time} (changed at the first sign-in)")
    else:
        out.print(f"{staff_id}: {done}")


def register(staff: typer.Typer, service: OpenService, audit: Audit) -> None:
    """Add the commands to the ``staff`` group."""

    @staff.command("add")
    def staff_add(
        staff_id: str,
        role: RoleOpt,
        name: Annotated[
            str | None, typer.Option(help="Shown in the console and the audit log.")
        ] = None,
        site: Annotated[
            list[str] | None,
            typer.Option(help="A site this account acts on (repeat); default all."),
        ] = None,
        ask_password: AskPasswordOpt = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Add a staff account (the first owner, for one); prints a one-time password."""
        password = _ask_password() if ask_password else None
        with service(config) as billing, audit(billing, "staff_add", None) as entry:
            made = billing.staff_access().add(
                staff_id, name or staff_id, role, site or [], password
            )
            entry.detail.update(staff=staff_id, role=role)
        _print_password(staff_id, made if password is None else None, "added")

    @staff.command("list")
    def staff_list(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Every staff account with its role, sites and second factor."""
        with service(config) as billing:
            accounts = billing.staff_access().accounts()
        rows = [
            (
                a.id,
                a.name,
                a.role,
                " ".join(a.sites),
                "yes" if a.totp_enrolled else "no",
                "disabled" if a.disabled else ("setup" if a.needs_setup else "active"),
            )
            for a in accounts
        ]
        table("Staff", ["id", "name", "role", "sites", "totp", "state"], rows, as_csv)

    @staff.command("disable")
    def staff_disable(staff_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Disable an account; its sessions end at once."""
        with service(config) as billing, audit(billing, "staff_disable", None) as entry:
            billing.staff_access().disable(staff_id)
            entry.detail.update(staff=staff_id)
        out.print(f"{staff_id}: disabled")

    @staff.command("reset")
    def staff_reset(
        staff_id: str,
        ask_password: AskPasswordOpt = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Recovery: a new password, TOTP enrolled again at the next sign-in, sessions ended."""
        password = _ask_password() if ask_password else None
        with service(config) as billing, audit(billing, "staff_reset", None) as entry:
            made = billing.staff_access().reset(staff_id, password)
            entry.detail.update(staff=staff_id)
        _print_password(staff_id, made if password is None else None, "reset")
