"""The rollups' delta triggers (migration 0023) keep every rollup table equal to 0018's grouped
SELECTs over all rows (the backfill), after any sequence of raw writes: payments, refunds and
chargebacks added, changed and deleted, invoices created, paid, voided, re-priced, moved to
another currency, period or member and deleted, payment attempts failing and recovering,
subscriptions started, changed, cancelled and deleted, members moved between sites and erased,
gate events. Rows are written directly (not through the billing engine), so every column a
trigger reads is changed, including those the engine never changes today. Each example runs in a
transaction that is rolled back, on one migrated store; the rollup tables are compared after
every write. On SQLite, and a shorter run on PostgreSQL."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, insert, select, text, update

from gated.billing_sync import schema as s
from gated.billing_sync.store import open_store
from tests.billing.helpers import DAY, T0

VERSIONS = Path(s.__file__).parent / "migrations" / "versions"
SITES = ('["downtown"]', '["uptown"]', '["downtown", "uptown"]')
METHODS = ("card", "card", "front_desk", "sepa_debit", "chargeback", "credit_note", "write_off")
ATTEMPT_STATES = ("failed", "failed", "succeeded", "new", "requires_action")
# A few days and instants in them, so that rows share keys (a day, a 15-minute slot).
TIMES = st.builds(lambda d, q: T0 + d * DAY + q * 600, st.integers(0, 40), st.integers(0, 143))


def _migration(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"test_{name}", VERSIONS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R18 = _migration("0018_report_rollups")
ROLLUP_TABLES: tuple[str, ...] = R18._ROLLUP_TABLES


def recount(conn: Connection) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    """Every rollup table as 0018's backfill would fill it now: its grouped SELECTs over all
    rows (two of them share a table: summed, or OR-ed for the month bits)."""
    out: dict[str, dict[tuple[Any, ...], tuple[int, ...]]] = {t: {} for t in ROLLUP_TABLES}
    for r in R18._rollups(conn.dialect.name).values():
        keys = [e for _, e in r.keys]
        rows = conn.execute(
            text(
                f"SELECT {', '.join(keys + [e for _, e, _ in r.values])} FROM {r.source}"
                f" WHERE {r.where} GROUP BY {', '.join(keys)}"
            )
        )
        table = out[r.table]
        n = len(keys)
        for row in rows:
            key, values = tuple(row[:n]), tuple(int(v) for v in row[n:])
            old = table.get(key, (0,) * len(values))
            ors = [op == "|" for _, _, op in r.values]
            table[key] = tuple(
                a | b if is_or else a + b for a, b, is_or in zip(old, values, ors, strict=True)
            )
    return {t: {k: v for k, v in rows.items() if any(v)} for t, rows in out.items()}


def rollups(conn: Connection) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    """The rollup tables as the triggers left them, keyed as ``recount`` keys them (rows of
    zeros are no numbers)."""
    out: dict[str, dict[tuple[Any, ...], tuple[int, ...]]] = {}
    for r in R18._rollups(conn.dialect.name).values():
        if r.table in out:
            continue
        keys, values = [k for k, _ in r.keys], [v for v, _, _ in r.values]
        rows = conn.execute(text(f"SELECT {', '.join(keys + values)} FROM {r.table}"))
        out[r.table] = {
            tuple(row[: len(keys)]): tuple(int(v) for v in row[len(keys) :])
            for row in rows
            if any(row[len(keys) :])
        }
    return out


class Story:
    """The rows an example has written so far, and the writes it can make next."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.members: list[str] = []
        self.subscribed: list[str] = []
        self.invoices: list[int] = []
        self.payments: list[int] = []
        self.attempts: list[int] = []
        self.n = 0

    def begin(self) -> None:
        """Three members, each with a subscription (one cancelled), an invoice and a payment on
        it, the second invoice with two failed attempts, the first before its payment: every
        rollup has rows for the writes to move."""
        for n, sites in enumerate(SITES):
            self.member(sites)
            self.invoice(n, ("renewal", "extra")[n % 2], ("EUR", "USD")[n % 2],
                         ("paid", "open")[n % 2], T0 + n * DAY, 1, 4990)  # fmt: skip
            self.pay(n, n, True, 4990 - n * 1000, "card", T0 + (n + 1) * DAY)
            self.subscribe(0, ("monthly", "yearly")[n % 2], T0 - n * DAY, "active",
                           None if n else T0 + 9 * DAY)  # fmt: skip
        self.attempt(1, "failed", "soft", T0 + DAY)
        self.attempt(1, "failed", "hard", T0 + 2 * DAY)

    def _pick(self, rows: list[Any], i: int) -> Any:
        return rows[i % len(rows)] if rows else None

    def member(self, sites: str) -> None:
        self.n += 1
        mid = f"m{self.n}"
        self.conn.execute(
            insert(s.members).values(
                id=mid, name=mid, sites=sites, role="member", erased=False, created_at=T0
            )
        )
        self.members.append(mid)

    def move(self, i: int, sites: str) -> None:
        if mid := self._pick(self.members, i):
            self.conn.execute(update(s.members).where(s.members.c.id == mid).values(sites=sites))

    def erase(self, i: int) -> None:
        if mid := self._pick(self.members, i):
            self.conn.execute(update(s.members).where(s.members.c.id == mid).values(erased=True))

    def subscribe(self, i: int, plan: str, at: int, status: str, cancel: int | None) -> None:
        free = [m for m in self.members if m not in self.subscribed]
        if mid := self._pick(free, i):
            self.conn.execute(
                insert(s.subscriptions).values(
                    member_id=mid, plan_id=plan, started_at=at, status=status, cancel_at=cancel
                )
            )
            self.subscribed.append(mid)

    def change_subscription(self, i: int, column: str, value: Any) -> None:
        if mid := self._pick(self.subscribed, i):
            sub = s.subscriptions
            self.conn.execute(update(sub).where(sub.c.member_id == mid).values({column: value}))

    def unsubscribe(self, i: int) -> None:
        if mid := self._pick(self.subscribed, i):
            sub = s.subscriptions
            self.conn.execute(delete(sub).where(sub.c.member_id == mid))
            self.subscribed.remove(mid)

    def invoice(self, i: int, kind: str, currency: str, status: str, at: int, months: int,
                subtotal: int) -> None:  # fmt: skip
        if mid := self._pick(self.members, i):
            tax = subtotal // 5
            done = self.conn.execute(
                insert(s.invoices).values(
                    member_id=mid,
                    kind=kind,
                    currency=currency,
                    status=status,
                    period_start=at if kind == "renewal" else None,
                    period_end=at + months * 30 * DAY if kind == "renewal" else None,
                    subtotal=subtotal,
                    tax=tax,
                    total=subtotal + tax,
                    due_at=at,
                    created_at=at,
                )
            )
            self.invoices.append(int(done.inserted_primary_key[0]))

    def change_invoice(self, i: int, values: dict[str, Any]) -> None:
        if (iid := self._pick(self.invoices, i)) is not None:
            if values.get("member_id") is not None:
                values["member_id"] = self._pick(self.members, values["member_id"])
            inv = s.invoices
            self.conn.execute(update(inv).where(inv.c.id == iid).values(values))

    def delete_invoice(self, i: int) -> None:
        if (iid := self._pick(self.invoices, i)) is not None:
            for table, ids in ((s.payments, self.payments), (s.payment_attempts, self.attempts)):
                gone = self.conn.execute(
                    delete(table).where(table.c.invoice_id == iid).returning(table.c.id)
                )
                for (rid,) in gone:
                    ids.remove(rid)
            self.conn.execute(delete(s.invoices).where(s.invoices.c.id == iid))
            self.invoices.remove(iid)

    def pay(self, i: int, j: int, own: bool, amount: int, method: str, at: int) -> None:
        if (iid := self._pick(self.invoices, i)) is not None:
            mid = self._invoice_member(iid) if own else self._pick(self.members, j)
            done = self.conn.execute(
                insert(s.payments).values(
                    invoice_id=iid, member_id=mid, amount=amount, method=method, at=at
                )
            )
            self.payments.append(int(done.inserted_primary_key[0]))

    def _invoice_member(self, iid: int) -> str:
        inv = s.invoices
        return str(self.conn.execute(select(inv.c.member_id).where(inv.c.id == iid)).scalar())

    def change_payment(self, i: int, column: str, value: Any) -> None:
        if (pid := self._pick(self.payments, i)) is not None:
            if column == "invoice_id":
                value = self._pick(self.invoices, value)
            p = s.payments
            self.conn.execute(update(p).where(p.c.id == pid).values({column: value}))

    def delete_payment(self, i: int) -> None:
        if (pid := self._pick(self.payments, i)) is not None:
            self.conn.execute(delete(s.payments).where(s.payments.c.id == pid))
            self.payments.remove(pid)

    def attempt(self, i: int, state: str, decline: str | None, at: int) -> None:
        if (iid := self._pick(self.invoices, i)) is not None:
            self.n += 1
            done = self.conn.execute(
                insert(s.payment_attempts).values(
                    invoice_id=iid,
                    member_id=self._invoice_member(iid),
                    idempotency_key=f"k{self.n}",
                    amount=1000,
                    currency="EUR",
                    state=state,
                    decline_class=decline,
                    created_at=at,
                    updated_at=at,
                )
            )
            self.attempts.append(int(done.inserted_primary_key[0]))

    def change_attempt(self, i: int, column: str, value: Any) -> None:
        if (aid := self._pick(self.attempts, i)) is not None:
            if column == "invoice_id":
                value = self._pick(self.invoices, value)
            a = s.payment_attempts
            self.conn.execute(update(a).where(a.c.id == aid).values({column: value}))

    def delete_attempt(self, i: int) -> None:
        if (aid := self._pick(self.attempts, i)) is not None:
            a = s.payment_attempts
            self.conn.execute(delete(a).where(a.c.id == aid))
            self.attempts.remove(aid)

    def event(self, site: str, i: int | None, kind: str, reason: str | None, at: int) -> None:
        self.n += 1
        mid = None if i is None else self._pick(self.members, i)
        self.conn.execute(
            insert(s.gate_events).values(
                event_id=f"e{self.n}",
                site=site,
                gate="t1",
                at=at,
                kind=kind,
                member_id=mid,
                reason=reason,
                payload="{}",
                received_at=at,
            )
        )


idx = st.integers(0, 50)
money = st.integers(-3000, 9000)
CHANGES: st.SearchStrategy[Callable[[Story], None]] = st.one_of(
    st.builds(lambda v: lambda w: w.member(v), st.sampled_from(SITES)),
    st.builds(lambda i, v: lambda w: w.move(i, v), idx, st.sampled_from(SITES)),
    st.builds(
        lambda i, p, at, status, cancel: lambda w: w.subscribe(i, p, at, status, cancel),
        idx,
        st.sampled_from(("monthly", "yearly")),
        TIMES,
        st.sampled_from(("active", "grace", "suspended", "cancelled")),
        st.none() | TIMES,
    ),
    st.builds(
        lambda i, cv: lambda w: w.change_subscription(i, *cv),
        idx,
        st.one_of(
            st.tuples(st.just("status"), st.sampled_from(("active", "grace", "cancelled"))),
            st.tuples(st.just("plan_id"), st.sampled_from(("monthly", "yearly"))),
            st.tuples(st.just("cancel_at"), st.none() | TIMES),
            st.tuples(st.just("started_at"), TIMES),
            st.tuples(st.just("paid_through"), TIMES),
        ),
    ),
    st.builds(
        lambda i, k, c, status, at, months, sub: (
            lambda w: w.invoice(i, k, c, status, at, months, sub)
        ),
        idx,
        st.sampled_from(("renewal", "renewal", "extra")),
        st.sampled_from(("EUR", "USD")),
        st.sampled_from(("open", "paid", "void")),
        TIMES,
        st.integers(1, 13),
        st.integers(0, 20000),
    ),
    st.builds(
        lambda i, values: lambda w: w.change_invoice(i, values),
        idx,
        st.one_of(
            st.fixed_dictionaries(
                {"status": st.sampled_from(("open", "paid", "void", "written_off"))}
            ),
            st.builds(
                lambda sub, tax: {"subtotal": sub, "tax": tax, "total": sub + tax},
                st.integers(0, 20000),
                st.integers(-5, 4000),
            ),
            st.fixed_dictionaries({"currency": st.sampled_from(("EUR", "USD"))}),
            st.fixed_dictionaries({"period_start": TIMES, "period_end": TIMES}),
            st.fixed_dictionaries({"kind": st.sampled_from(("renewal", "extra"))}),
            st.fixed_dictionaries({"member_id": idx}),
            st.fixed_dictionaries({"amount_paid": money, "paid_at": TIMES}),
        ),
    ),
    st.builds(
        lambda i, j, own, amount, method, at: lambda w: w.pay(i, j, own, amount, method, at),
        idx,
        idx,
        st.booleans(),
        money,
        st.sampled_from(METHODS),
        TIMES,
    ),
    st.builds(
        lambda i, cv: lambda w: w.change_payment(i, *cv),
        idx,
        st.one_of(
            st.tuples(st.just("amount"), money),
            st.tuples(st.just("method"), st.sampled_from(METHODS)),
            st.tuples(st.just("at"), TIMES),
            st.tuples(st.just("invoice_id"), idx),
        ),
    ),
    st.builds(
        lambda i, state, decline, at: lambda w: w.attempt(i, state, decline, at),
        idx,
        st.sampled_from(ATTEMPT_STATES),
        st.sampled_from((None, "soft", "hard")),
        TIMES,
    ),
    st.builds(
        lambda i, cv: lambda w: w.change_attempt(i, *cv),
        idx,
        st.one_of(
            st.tuples(st.just("state"), st.sampled_from(ATTEMPT_STATES)),
            st.tuples(st.just("created_at"), TIMES),
            st.tuples(st.just("decline_class"), st.sampled_from((None, "soft", "hard"))),
            st.tuples(st.just("invoice_id"), idx),
            st.tuples(st.just("updated_at"), TIMES),
        ),
    ),
    st.builds(
        lambda site, i, kr, at: lambda w: w.event(site, i, *kr, at),
        st.sampled_from(("downtown", "uptown")),
        st.none() | idx,
        st.sampled_from(
            [
                ("entry", "ok"),
                ("entry", None),
                ("entry", "not_passed"),
                ("deny", "expired"),
                ("exit", None),
            ]
        ),
        TIMES,
    ),
)
REMOVALS: st.SearchStrategy[Callable[[Story], None]] = st.one_of(
    st.builds(lambda i: lambda w: w.erase(i), idx),
    st.builds(lambda i: lambda w: w.unsubscribe(i), idx),
    st.builds(lambda i: lambda w: w.delete_invoice(i), idx),
    st.builds(lambda i: lambda w: w.delete_payment(i), idx),
    st.builds(lambda i: lambda w: w.delete_attempt(i), idx),
)
# One write in six removes a row or erases a member: rows live long enough to be changed.
WRITES = st.integers(0, 5).flatmap(lambda n: REMOVALS if n == 0 else CHANGES)


def _store(url: str) -> Engine:
    """A migrated store with two plans, shared by every example."""
    engine = open_store(url)
    with engine.begin() as conn:
        for plan, months in (("monthly", 1), ("yearly", 12)):
            conn.execute(
                insert(s.plans).values(
                    id=plan,
                    name=plan,
                    price=4990 * months,
                    currency="EUR",
                    period_months=months,
                    tax_rate_bp=1900,
                    schedule="[]",
                    zones="[]",
                    min_term_months=0,
                    freeze_fee=0,
                )
            )
    return engine


def _check(engine: Engine, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(WRITES, min_size=10, max_size=40))
    # The invoice with failures and money paid since moves to another currency, then the first
    # of its two attempts goes: rarely drawn together, checked every run.
    @example([lambda w: w.change_invoice(1, {"currency": "EUR"}), lambda w: w.delete_attempt(0)])
    def story(writes: list[Callable[[Story], None]]) -> None:
        with engine.connect() as conn:
            tx = conn.begin()
            try:
                w = Story(conn)
                w.begin()
                for step, write in enumerate(writes):
                    write(w)
                    assert rollups(conn) == recount(conn), f"after write {step}"
            finally:
                tx.rollback()

    story()


def test_every_rollup_equals_the_backfill_after_random_writes_on_sqlite(tmp_path: Path) -> None:
    _check(_store(f"sqlite:///{tmp_path}/billing.db"), 60)


def test_every_rollup_equals_the_backfill_after_random_writes_on_postgres(
    postgres_store_url: str,
) -> None:
    engine = _store(postgres_store_url)
    _check(engine, 8)
    engine.dispose()
