"""Closed accounting periods: once a month is closed (``gated-billing periods close 2026-11``),
no document is issued into it and its invoices are not changed any more; a mistake in one is
corrected by a credit note issued in an open period. Closing a month closes every month before
it too; a closed month is never opened again. Months are UTC months, as invoice dates are.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import PeriodClosed

PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def month_of(ts: int) -> str:
    """The period (``YYYY-MM``, UTC) an instant falls in."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def _month_end(period: str) -> int:
    year, month = int(period[:4]), int(period[5:])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


# Built once: every batch of invoices the cycle issues asks it.
_CLOSED_THROUGH = select(func.max(s.closed_periods.c.period))


def closed_through(conn: Connection) -> str | None:
    """The last closed month (every month up to it is closed), or None."""
    value = conn.execute(_CLOSED_THROUGH).scalar()
    return None if value is None else str(value)


def is_closed(conn: Connection, ts: int) -> bool:
    """Whether the month of ``ts`` is closed."""
    last = closed_through(conn)
    return last is not None and month_of(ts) <= last


def ensure_issuable(conn: Connection, now: int) -> None:
    """Refuse to issue a document dated ``now`` in a closed month."""
    if is_closed(conn, now):
        raise PeriodClosed(
            f"the period {month_of(now)} is closed: no invoice or credit note can be dated in it"
        )


def ensure_invoice_open(conn: Connection, invoice_id: int) -> None:
    """Refuse to change an invoice issued in a closed month (void it, edit its lines or
    amounts): the books of that month are final, and a credit note corrects it instead."""
    inv = s.invoices
    row = conn.execute(select(inv.c.number, inv.c.issued_at).where(inv.c.id == invoice_id)).first()
    if row is None or row.issued_at is None:
        return
    if is_closed(conn, int(row.issued_at)):
        raise PeriodClosed(
            f"invoice {row.number} is in the closed period {month_of(int(row.issued_at))} and"
            " cannot be changed: correct it with a credit note"
        )


def close(ctx: Context, period: str, operator: str) -> str:
    """Close ``period`` (``YYYY-MM``) and every month before it; returns the period closed.
    Refused for a malformed month, a month that has not ended, or one already closed."""
    if not PERIOD.fullmatch(period):
        raise PeriodClosed(f"a period is a month written YYYY-MM, not {period!r}")
    now = ctx.clock()
    if now < _month_end(period):
        raise PeriodClosed(f"{period} has not ended yet: a month is closed after its last day")
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
