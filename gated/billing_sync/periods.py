"""Closed accounting periods: once a month is closed (``gated-billing periods close 2026-11``),
no document is issued into it and its invoices are not changed any more; a mistake in one is
corrected by a credit note issued in an open period. Closing a month closes every month before
it too; a closed month is never opened again. A month is the issuing site's local month
(``[sites.<id>] timezone``), as its documents' numbers and printed dates are: a Berlin site's
November ends at 23:00 UTC on 30 November, a New York site's at 05:00 UTC on 1 December, and a
month is closed once it has ended at every site.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, insert, select

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import PeriodClosed
from gated.billing_sync.store import site_zone

PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def month_of(ts: int, zone: str = "UTC") -> str:
    """The period (``YYYY-MM``) an instant falls in, in the time zone ``zone``."""
    return datetime.fromtimestamp(ts, ZoneInfo(zone)).strftime("%Y-%m")


def _month_end(period: str, zone: str) -> int:
    year, month = int(period[:4]), int(period[5:])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(datetime(year, month, 1, tzinfo=ZoneInfo(zone)).timestamp())


# Built once: every batch of invoices the cycle issues asks it.
_CLOSED_THROUGH = select(func.max(s.closed_periods.c.period))


def closed_through(conn: Connection) -> str | None:
    """The last closed month (every month up to it is closed), or None."""
    value = conn.execute(_CLOSED_THROUGH).scalar()
    return None if value is None else str(value)


def ensure_issuable(conn: Connection, now: int, sites: Iterable[str]) -> None:
    """Refuse to issue a document dated ``now`` by any of ``sites`` in a month closed there."""
    last = closed_through(conn)
    if last is None:
        return
    for site in sites:
        month = month_of(now, site_zone(conn, site))
        if month <= last:
            raise PeriodClosed(
                f"the period {month} is closed: no invoice or credit note can be dated in it"
            )


def ensure_invoice_open(conn: Connection, invoice_id: int) -> None:
    """Refuse to change an invoice issued in a month now closed (void it, edit its lines or
    amounts): the books of that month are final, and a credit note corrects it instead."""
    inv = s.invoices
    row = conn.execute(
        select(inv.c.number, inv.c.issued_at, inv.c.site).where(inv.c.id == invoice_id)
    ).first()
    if row is None or row.issued_at is None:
        return
    last = closed_through(conn)
    month = month_of(int(row.issued_at), site_zone(conn, row.site or ""))
    if last is not None and month <= last:
        raise PeriodClosed(
            f"invoice {row.number} is in the closed period {month} and"
            " cannot be changed: correct it with a credit note"
        )


def close(ctx: Context, period: str, operator: str) -> str:
    """Close ``period`` (``YYYY-MM``) and every month before it; returns the period closed.
    Refused for a malformed month, a month that has not ended, or one already closed."""
    if not PERIOD.fullmatch(period):
        raise PeriodClosed(f"a period is a month written YYYY-MM, not {period!r}")
    now = ctx.clock()
    zones = {ctx.config.site(site).timezone for site in ctx.config.sites} or {"UTC"}
    if now < max(_month_end(period, zone) for zone in zones):
        raise PeriodClosed(
            f"{period} has not ended yet at every site: a month is closed after its last day"
        )
    with ctx.engine.begin() as conn:
        last = closed_through(conn)
        if last is not None and period <= last:
            raise PeriodClosed(
                f"{period} is already closed (closed through {last}); a closed period is never"
                " opened again: correct its invoices with credit notes"
            )
        conn.execute(
            insert(s.closed_periods).values(period=period, closed_at=now, closed_by=operator[:64])
        )
    return period


def listing(ctx: Context) -> list[dict[str, Any]]:
    """Every close, newest first: the month, when and by whom."""
    cp = s.closed_periods
    with ctx.reader.connect() as conn:
        rows = conn.execute(select(cp).order_by(cp.c.period.desc())).all()
    return [
        {"period": r.period, "closed_at": int(r.closed_at), "closed_by": r.closed_by} for r in rows
    ]
