"""``gated-billing reconcile``: import the payment provider's books and compare them with ours
(``reconcile.py``). ``cli.py`` adds the group (``commands``), handing in how it opens the
service, reads a date and prints a table."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gated.billing_sync import reconcile, reports
from gated.billing_sync.gateway import GatewayError
from gated.billing_sync.service import Billing
from gated.edge import fail

OpenService = Callable[[Path], AbstractContextManager[Billing]]
ParseDate = Callable[[str | None], int | None]
Table = Callable[[str, Sequence[str], Iterable[Sequence[Any]], bool], None]
ConfigOpt = Annotated[
    Path,
    typer.Option("-c", "--config", envvar="GATED_BILLING_CONFIG", help="billing.toml"),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
out = Console(highlight=False)

SinceOpt = Annotated[
    str | None, typer.Option(help="From this day (YYYY-MM-DD, UTC); default: everything.")
]
UntilOpt = Annotated[str | None, typer.Option(help="Before this day (YYYY-MM-DD); default: now.")]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Show(StrEnum):
    all = "all"
    payouts = "payouts"
    mismatches = "mismatches"


def commands(service: OpenService, parse_date: ParseDate, table: Table) -> typer.Typer:
    """The ``reconcile`` group, on the command line's own service, dates and tables."""
    reconcile_app = typer.Typer(
        no_args_is_help=True, help="Reconciliation with the payment provider: fetch, report."
    )

    @reconcile_app.command("fetch")
    def fetch(
        since: SinceOpt = None, until: UntilOpt = None, config: ConfigOpt = DEFAULT_CONFIG
    ) -> None:
        """Import the provider's balance movements and payouts; an interrupted import is finished
        first, from where it stopped."""
        with service(config) as billing:
            try:
                done = billing.reconcile_fetch(parse_date(since), parse_date(until))
            except GatewayError as exc:
                fail(f"{exc}; every page stored so far is kept: run again to continue")
        period = f"{_day(done.since) or 'the start'} to {_day(done.until)}"
        if done.resumed:
            out.print(f"finished the interrupted import of {period}; run again for another period")
        out.print(
            f"fetched {done.movements} movements and {done.payouts} payouts"
            f" in {done.requests} requests ({period})"
        )

    @reconcile_app.command("report")
    def report(
        since: SinceOpt = None,
        until: UntilOpt = None,
        show: Annotated[
            Show, typer.Option(help="Which part: payouts, mismatches or all.")
        ] = Show.all,
        fmt: Annotated[Format, typer.Option("--format", help="table, csv or json.")] = Format.table,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Each payout with what it carried, and every difference between our books and the
        provider's (from what the last imports fetched)."""
        if fmt is Format.csv and show is Show.all:
            fail("CSV holds one table: add --show payouts or --show mismatches")
        lo, hi = parse_date(since), parse_date(until)
        with service(config) as billing:
            parts = {
                name: part(billing.engine, lo, hi)
                for name, part in (
                    ("payouts", reconcile.payouts),
                    ("mismatches", reconcile.mismatches),
                )
                if show in (Show.all, Show(name))
            }
        if fmt is Format.json:
            json.dump({k: reports.records(*v) for k, v in parts.items()}, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return
        for name, (columns, rows) in parts.items():
            table(name, columns, rows, fmt is Format.csv)

    return reconcile_app


def _day(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
