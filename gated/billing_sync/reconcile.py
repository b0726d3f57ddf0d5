"""Reconciliation with the payment provider: its balance movements and payouts imported page by
page (``fetch``), each payout with what it carried (``payouts``), and every difference between
our books and the provider's, both ways (``mismatches``).

The provider is read through ``gateway.BalanceSource`` only, so the same code runs against
Stripe, the simulated gateway and the benchmark's fake. An import splits its period into as
many slices as the provider takes requests at once and pages through each newest first; every
page is stored with its list's cursor in one transaction, so an import that is killed or fails
resumes at the page it had reached, and a page is never stored twice.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from gated.billing_sync import schema as s
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import BalanceSource
from gated.billing_sync.store import reading
from gated.contract import format_time

Report = tuple[list[str], list[tuple[Any, ...]]]
# Stripe's largest page.
PAGE = 100


@dataclass(frozen=True, slots=True)
class FetchReport:
    """What one ``fetch`` did: requests made to the provider (this run; a resumed run counts
    only its own), movements and payouts stored, and whether it finished an interrupted
    import instead of starting the period asked for."""

    requests: int
    movements: int
    payouts: int
    resumed: bool
    since: int | None
    until: int


class _Tally:
    """Requests and rows of one run, counted from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.movements = self.payouts = 0

    def asked(self) -> None:
        """A request is about to be made (counted whether or not its answer arrives)."""
        with self._lock:
            self.requests += 1

    def stored(self, movements: int = 0, payouts: int = 0) -> None:
        with self._lock:
            self.movements += movements
            self.payouts += payouts


# The PostgreSQL advisory lock a fetch holds ("gated" and 1): any number every process agrees on.
FETCH_LOCK_KEY = 0x67_61_74_65_64_01


class FetchRunning(BillingError):
    """Another ``fetch`` is importing from the provider right now."""


@contextmanager
def one_fetch_at_a_time(engine: Engine) -> Iterator[None]:
    """Hold the store's fetch lock for the block, or raise ``FetchRunning`` at once: two imports
    at the same time would page through the same cursors and store their pages twice. The
    lock dies with the process that holds it (a fetch killed mid-way is resumed by the next):
    on PostgreSQL a session advisory lock on a connection kept for the block, on SQLite an
    exclusive ``flock`` on a file beside the database (SQLite's writers share one host)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": FETCH_LOCK_KEY}
            ).scalar_one()
            conn.commit()  # the lock is the session's: no transaction left open meanwhile
            if not got:
                raise FetchRunning(_running_since(engine))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FETCH_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield  # one process owns such a store
        return
    with open(f"{database}.reconcile-lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchRunning(_running_since(engine)) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _running_since(engine: Engine) -> str:
    f = s.processor_fetches
    with engine.connect() as conn:
        started = conn.execute(select(func.max(f.c.started_at)).where(f.c.finished_at.is_(None)))
        since = started.scalar()
    when = "" if since is None else f" since {format_time(int(since))}"
    return f"a reconcile fetch is already running{when}: wait for it to finish, then run again"


def fetch(
    engine: Engine,
    source: BalanceSource,
    now: int,
    since: int | None,
    until: int | None = None,
    page: int = PAGE,
) -> FetchReport:
    """Import the provider's balance movements and payouts created in ``[since, until)``
    (``until`` None: up to now; ``since`` None: everything), then what each payout carried.
    An import left unfinished (killed, or the provider out of reach) is finished first, from
    its cursors, instead: run again for the period asked for. One at a time: while another
    runs, ``FetchRunning`` is raised and nothing is fetched."""
    with one_fetch_at_a_time(engine):
        return _fetch(engine, source, now, since, until, page)


def _fetch(
    engine: Engine,
    source: BalanceSource,
    now: int,
    since: int | None,
    until: int | None,
    page: int,
) -> FetchReport:
    f = s.processor_fetches
    with engine.begin() as conn:
        run = conn.execute(
            select(f.c.id, f.c.lo, f.c.hi).where(f.c.finished_at.is_(None)).order_by(f.c.id)
        ).first()
        resumed = run is not None
        if run is None:
            # Up to and including the current second.
            hi = now + 1 if until is None else until
            run_id = conn.execute(
                insert(f).values(lo=since, hi=hi, started_at=now, requests=0).returning(f.c.id)
            ).scalar_one()
            # Everything up to now asks for no bounds at all (some fakes take none).
            bounds = (since, hi if since is not None or until is not None else None)
            conn.execute(insert(s.processor_cursors), _plan(*bounds, source.concurrency))
            lo = since
        else:
            run_id, lo, hi = run.id, run.lo, run.hi
    tally = _Tally()
    try:
        # The period's movements and its payouts first; listing the payouts opens a cursor for
        # each one's contents, read next.
        _drain_all(engine, source, ("balance", "payouts"), page, tally)
        _drain_all(engine, source, ("payout",), page, tally)
    finally:
        with engine.begin() as conn:
            conn.execute(
                update(f).where(f.c.id == run_id).values(requests=f.c.requests + tally.requests)
            )
    with engine.begin() as conn:
        conn.execute(delete(s.processor_cursors))
        conn.execute(update(f).where(f.c.id == run_id).values(finished_at=now))
    return FetchReport(tally.requests, tally.movements, tally.payouts, resumed, lo, hi)


def _plan(lo: int | None, hi: int | None, slices: int) -> list[dict[str, Any]]:
    """The cursors of a new import: its period in ``slices`` equal parts (one when it is
    open), paged through at once, and the list of its payouts."""
    if lo is None or hi is None or slices <= 1 or hi - lo < slices:
        bounds = [(lo, hi)]
    else:
        step = (hi - lo) / slices
        edges = [lo + round(step * i) for i in range(slices)] + [hi]
        bounds = [(a, b) for a, b in pairwise(edges) if a < b]
    rows = [{"stream": f"balance:{a}:{b}", "what": "balance", "lo": a, "hi": b} for a, b in bounds]
    rows.append({"stream": "payouts", "what": "payouts", "lo": lo, "hi": hi})
    return [{"payout_id": None, "after": None, "done": False, **r} for r in rows]


def _drain_all(
    engine: Engine, source: BalanceSource, what: Sequence[str], page: int, tally: _Tally
) -> None:
    c = s.processor_cursors
    with engine.connect() as conn:
        cursors = conn.execute(
            select(c).where(c.c.what.in_(what), c.c.done.is_(False)).order_by(c.c.stream)
        ).all()
    workers = min(source.concurrency, len(cursors))
    if workers <= 1:
        # One call at a time (the simulator): in order, in this thread.
        for cur in cursors:
            _drain(engine, source, cur, page, tally)
        return
    with ThreadPoolExecutor(workers) as pool:
        # list() so the first error (the provider out of reach) is raised here.
        list(pool.map(lambda cur: _drain(engine, source, cur, page, tally), cursors))


def _drain(engine: Engine, source: BalanceSource, cursor: Any, page: int, tally: _Tally) -> None:
    """Page through one list from its cursor, storing each page with the cursor after it."""
    after = cursor.after
    while True:
        tally.asked()
        if cursor.what == "payouts":
            payouts = source.list_payouts(
                after=after, limit=page, created_from=cursor.lo, created_to=cursor.hi
            )
            items: list[Any] = payouts.items
            more = payouts.has_more
        else:
            moves = source.list_balance(
                after=after,
                limit=page,
                created_from=cursor.lo,
                created_to=cursor.hi,
                payout=cursor.payout_id,
            )
            items, more = moves.items, moves.has_more
        with engine.begin() as conn:
            if cursor.what == "payouts":
                _store_payouts(conn, items)
                tally.stored(payouts=len(items))
            else:
                _store_moves(conn, items, cursor.payout_id)
                tally.stored(movements=len(items))
            if items:
                after = items[-1].id
            done = not more or not items
            conn.execute(
                update(s.processor_cursors)
                .where(s.processor_cursors.c.stream == cursor.stream)
                .values(after=after, done=done)
            )
        if done:
            return


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _store_moves(conn: Connection, items: Sequence[Any], payout_id: str | None) -> None:
    if not items:
        return
    t = s.processor_balance
    ins = _insert(conn, t)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "kind": ins.excluded.kind,
                "amount": ins.excluded.amount,
                "fee": ins.excluded.fee,
                "currency": ins.excluded.currency,
                "created": ins.excluded.created,
                "source": ins.excluded.source,
                # Known from the payout's own list only: a plain page never forgets it.
                "payout_id": func.coalesce(ins.excluded.payout_id, t.c.payout_id),
            },
        ),
        [
            {
                "id": e.id,
                "kind": e.kind,
                "amount": e.amount,
                "fee": e.fee,
                "currency": e.currency,
                "created": e.created,
                "source": e.source,
                "payout_id": payout_id,
            }
            for e in items
        ],
    )


def _store_payouts(conn: Connection, items: Sequence[Any]) -> None:
    if not items:
        return
    ins = _insert(conn, s.processor_payouts)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["id"],
            set_={"status": ins.excluded.status, "arrival": ins.excluded.arrival},
        ),
        [p._asdict() for p in items],
    )
    cur = _insert(conn, s.processor_cursors)
    conn.execute(
        cur.on_conflict_do_nothing(index_elements=["stream"]),
        [
            {"stream": f"payout:{p.id}", "what": "payout", "lo": None, "hi": None,
             "payout_id": p.id, "after": None, "done": False}
            for p in items
        ],
    )  # fmt: skip


# --- reports -----------------------------------------------------------------------------------


def _day(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _within(ts: int, since: int | None, until: int | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


def payouts(engine: Engine, since: int | None = None, until: int | None = None) -> Report:
    """Each payout made in ``[since, until)`` with what it carried: charges (how many, how
    much), refunds, disputes, the provider's fees, anything else, and ``unexplained``: the part
    of its amount those movements do not account for (0 when every one of them was fetched)."""
    p, b = s.processor_payouts, s.processor_balance
    with reading(engine).connect() as conn:
        made = conn.execute(select(p).order_by(p.c.created, p.c.id)).all()
        made = [r for r in made if _within(int(r.created), since, until)]
        carried = conn.execute(
            select(
                b.c.payout_id,
                b.c.kind,
                func.count(),
                func.coalesce(func.sum(b.c.amount), 0),
                func.coalesce(func.sum(b.c.fee), 0),
            )
            .where(b.c.payout_id.in_([r.id for r in made]), b.c.kind != "payout")
            .group_by(b.c.payout_id, b.c.kind)
        ).all()
    sums: dict[str, dict[str, tuple[int, int, int]]] = {}
    for payout_id, kind, count, amount, fee in carried:
        sums.setdefault(payout_id, {})[kind] = (int(count), int(amount), int(fee))
    rows = []
    for r in made:
        kinds = sums.get(r.id, {})

        def amount(kind: str, k: dict[str, tuple[int, int, int]] = kinds) -> int:
            return k.get(kind, (0, 0, 0))[1]

        fees = sum(v[2] for v in kinds.values()) - amount("fee")
        net = sum(v[1] - v[2] for v in kinds.values())
        rows.append(
            (
                r.id,
                _day(r.created),
                _day(r.arrival),
                r.status,
                r.currency,
                int(r.amount),
                kinds.get("charge", (0, 0, 0))[0],
                amount("charge"),
                amount("refund"),
                amount("dispute"),
                fees,
                amount("other"),
                int(r.amount) - net,
            )
        )
    return (
        [
            "payout",
            "created",
            "arrival",
            "status",
            "currency",
            "amount",
            "charges",
            "charged",
            "refunded",
            "disputed",
            "fees",
            "other",
            "unexplained",
        ],
        rows,
    )


class Booked(NamedTuple):
    """Money our books hold for one payment at the provider, of one kind."""

    source: str  # the payment intent
    member_id: str
    currency: str
    amount: int
    at: int


def _gateway_charges(conn: Connection) -> Iterable[Booked]:
    """Payments the gateway took: booked under the reference of one of our attempts."""
    p, a, inv = s.payments, s.payment_attempts, s.invoices
    rows = conn.execute(
        select(p.c.reference, p.c.member_id, inv.c.currency, p.c.amount, p.c.at)
        .join(a, a.c.gateway_ref == p.c.reference)
        .join(inv, inv.c.id == p.c.invoice_id)
    )
    return (Booked(*r) for r in rows)


CHARGEBACK_SUFFIX = ":chargeback"


def _chargebacks(conn: Connection) -> Iterable[Booked]:
    """Lost disputes: the payment taken back, under its reference plus ``:chargeback``."""
    p, inv = s.payments, s.invoices
    rows = conn.execute(
        select(p.c.reference, p.c.member_id, inv.c.currency, p.c.amount, p.c.at)
        .join(inv, inv.c.id == p.c.invoice_id)
        .where(p.c.method == "chargeback")
    )
    return (
        Booked(r.reference.removesuffix(CHARGEBACK_SUFFIX), r.member_id, r.currency, r.amount, r.at)
        for r in rows
        if r.reference
    )


def _refunds(conn: Connection) -> Iterable[Booked]:
    """Money the provider gave back (``refunds.py``): negative, under the payment refunded."""
    r, p = s.refunds, s.payments
    rows = conn.execute(
        select(p.c.reference, r.c.member_id, r.c.currency, r.c.amount, r.c.updated_at)
        .join(p, p.c.id == r.c.payment_id)
        .where(r.c.state == "succeeded", r.c.gateway_ref.is_not(None))
    )
    return (Booked(ref, m, cur, -int(amount), at) for ref, m, cur, amount, at in rows if ref)


# How our books hold each kind of money the provider moves for a payment (``BalanceKind``),
# matched to the provider's movements by payment intent. Kinds not here (fees, payouts, ...)
# are the provider's alone and never a mismatch.
BOOKS: dict[str, Callable[[Connection], Iterable[Booked]]] = {
    "charge": _gateway_charges,
    "dispute": _chargebacks,
    "refund": _refunds,
}


def mismatches(engine: Engine, since: int | None = None, until: int | None = None) -> Report:
    """Every difference between our books and the provider's in ``[since, until)``: money we
    booked that the provider does not hold (``not_at_processor``, only for times a finished
    import covered), money the provider moved that we never booked (``not_booked``), and
    the same payment for different amounts (``amount_differs``)."""
    b, f = s.processor_balance, s.processor_fetches
    out: list[tuple[Any, ...]] = []
    with reading(engine).connect() as conn, conn.begin():
        covered = conn.execute(select(f.c.lo, f.c.hi).where(f.c.finished_at.is_not(None))).all()
        for kind, read in BOOKS.items():
            ours: dict[str, list[Any]] = {}
            for r in read(conn):
                acc = ours.setdefault(r.source, [r.member_id, r.currency, 0, r.at])
                acc[2] += int(r.amount)
                acc[3] = min(acc[3], int(r.at))
            theirs = {
                src: (cur, int(amount), int(at))
                for src, cur, amount, at in conn.execute(
                    select(b.c.source, b.c.currency, func.sum(b.c.amount), func.min(b.c.created))
                    .where(b.c.kind == kind, b.c.source.is_not(None))
                    .group_by(b.c.source, b.c.currency)
                )
            }
            for src, (member, cur, amount, at) in ours.items():
                if not _within(at, since, until):
                    continue
                seen = theirs.get(src)
                if seen is None:
                    if any(lo is None or lo <= at for lo, hi in covered if at < hi):
                        out.append(
                            ("not_at_processor", kind, src, member, cur, amount, "", _day(at))
                        )
                elif seen[:2] != (cur, amount):
                    out.append(
                        ("amount_differs", kind, src, member, cur, amount, seen[1], _day(at))
                    )
            for src, (cur, amount, at) in theirs.items():
                # A dispute the provider reversed (won) nets to nothing: nothing to book.
                if src not in ours and amount != 0 and _within(at, since, until):
                    out.append(("not_booked", kind, src, "", cur, "", amount, _day(at)))
    out.sort(key=lambda r: (r[7], r[0], r[2]))
    return (
        ["problem", "kind", "payment", "member", "currency", "ours", "processor", "day"],
        out,
    )


def last_fetch(engine: Engine) -> dict[str, Any] | None:
    """The newest import: its period, when it finished (None: unfinished), its requests."""
    f = s.processor_fetches
    with reading(engine).connect() as conn:
        row = conn.execute(select(f).order_by(f.c.id.desc()).limit(1)).first()
    return None if row is None else dict(row._mapping)
