"""What the modules of ``gated-billing``'s command line share: the ``-c/--config`` and ``--csv``
options, a table or CSV on stdout, times and dates, a cycle's one-line report, and the shapes of
the service opener and audit wrapper that ``cli.py`` hands to the modules it registers."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gated.billing_sync.audit import Entry
from gated.billing_sync.service import Billing, CycleReport
from gated.edge import fail

OpenService = Callable[[Path], AbstractContextManager[Billing]]
Audit = Callable[[Billing, str, str | None], AbstractContextManager[Entry]]

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "-c",
        "--config",
        envvar="GATED_BILLING_CONFIG",
        help="billing.toml",
        show_default=True,
    ),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")]
# Rows a table shows by default: a terminal table of every invoice of a large gym helps nobody.
TABLE_LIMIT = 1000

out = Console()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], as_csv: bool) -> None:
    """Rows as a rich table titled ``title``, or as CSV with a header line."""
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    shown = Table(title=title)
    for col in columns:
        shown.add_column(col)
    for row in rows:
        shown.add_row(*("" if v is None else str(v) for v in row))
    out.print(shown)


def when(ts: int | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM`` (UTC); none as an empty string."""
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def report_line(report: CycleReport) -> str:
    """What a cycle (or the charge a command made) did, on one line."""
    return (
        f"reviewed {report.reviewed}, renewals {report.renewals}, retries {report.retries}, "
        f"succeeded {report.succeeded}, failed {report.failed}, processing {report.processing}, "
        f"resumed {report.resumed}, errors {report.errors}"
    )


def parse_date(text: str | None) -> int | None:
    """``YYYY-MM-DD`` (or an ISO time; UTC unless it says otherwise) as Unix seconds."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"not a date: {text!r} (use YYYY-MM-DD)")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())
