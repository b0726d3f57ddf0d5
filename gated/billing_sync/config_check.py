"""``gated-billing config check``: billing.toml validated without starting anything, and set
beside the gates' own files where they are given, for what only the two together can show: a
gate whose ``[policy] qr_window_s`` is below twice the member app's ``[app] qr_refresh_s``
refuses, as too old, a code the pass showed near the end of its refresh (a phone's clock off by
a few seconds more, and codes fail at the turnstile). A gate does not know billing's setting and
billing does not know the gates', so neither ``doctor`` can warn on its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from gated.billing_sync.config import BillingConfig, load_billing_config
from gated.config import GateConfig, load_gate_config
from gated.edge import RefusalsAsOneLine

config_app = typer.Typer(
    cls=RefusalsAsOneLine, no_args_is_help=True, help="Validate billing.toml (and the gates')."
)
out = Console(highlight=False, soft_wrap=True)  # one line per warning, for grep


def qr_window_warnings(
    billing: BillingConfig, gates: Sequence[tuple[str, GateConfig]]
) -> list[str]:
    """One line per gate (named by its file) whose QR window is below twice the pass's
    refresh, saying what to change; [] when every gate leaves room."""
    refresh = billing.app.qr_refresh_s
    lines = []
    for name, gate in gates:
        window = gate.policy.qr_window_s
        if window < 2 * refresh:
            lines.append(
                f"{name}: gate {gate.site}/{gate.gate} accepts QR codes for {window:g} s, less "
                f"than twice the pass's qr_refresh_s ({refresh} s): set [policy] qr_window_s to "
                f"at least {2 * refresh} or [app] qr_refresh_s to at most {int(window // 2)}"
            )
    return lines


@config_app.command("check")
def config_check(
    gates: Annotated[
        list[Path] | None,
        typer.Argument(help="Gates' gated.toml files to set beside billing.toml."),
    ] = None,
    config: Annotated[
        Path,
        typer.Option("-c", "--config", envvar="GATED_BILLING_CONFIG", help="billing.toml"),
    ] = Path("/etc/gated/billing.toml"),
) -> None:
    """Validate billing.toml (one line naming a bad field, exit 2) and warn, one line each
    (exit 1), about each given gate whose qr_window_s is below twice [app] qr_refresh_s."""
    billing = load_billing_config(config)
    files = list(gates or [])
    warnings = qr_window_warnings(billing, [(str(f), load_gate_config(f)) for f in files])
    for line in warnings:
        out.print(f"[yellow]warning[/yellow] {escape(line)}")
    sites = ", ".join(billing.sites)
    out.print(
        f"[green]ok[/green] {escape(str(config))}: sites {escape(sites)}, gateway "
        f"{billing.gateway}, qr_refresh_s {billing.app.qr_refresh_s}, gates checked {len(files)}"
    )
    if warnings:
        raise typer.Exit(1)
