"""Legal invoice numbers: one series per site and year without gaps, taken in the transaction
that issues the invoice (a rollback gives its numbers back), a sign-up's draft numbered only
once paid (so a purged one leaves no hole), and many issuers at once on PostgreSQL and SQLite
neither skipping nor repeating a number."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, select

from gated.billing_sync import charging, schema
from gated.billing_sync.numbering import format_number, next_number, take_numbers
from gated.billing_sync.service import Billing
from gated.billing_sync.store import open_store
from tests.billing.helpers import make_billing, step
from tests.billing.test_signup import TERMS, applicant


def numbers(b: Billing) -> list[tuple[str, str | None]]:
    """(site, number) of every invoice, in the order they were made."""
    inv = schema.invoices
    with b.engine.connect() as conn:
        return [
            (r.site, r.number)
            for r in conn.execute(select(inv.c.site, inv.c.number).order_by(inv.c.id))
        ]


def test_each_site_numbers_its_invoices_from_one_each_year(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("a", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("b", "Bo", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    b.add_member(
        "c", "Cy", plan_id="monthly", sites=["uptown", "downtown"], payment_method="pm_sim_ok"
    )
    b.charge_extra("a", "pt", "Personal training", 3000)
    assert numbers(b) == [
        ("downtown", "downtown-2026-000001"),
        ("uptown", "uptown-2026-000001"),
        ("uptown", "uptown-2026-000002"),
        ("downtown", "downtown-2026-000002"),
    ]
    step(b, clock, 31)  # 1 January 2027: the renewals open the new year's series
    assert numbers(b)[4:] == [
        ("downtown", "downtown-2027-000001"),
        ("uptown", "uptown-2027-000001"),
        ("uptown", "uptown-2027-000002"),
    ]
    with b.engine.connect() as conn:
        issued = conn.execute(select(schema.invoices.c.issued_at).order_by(schema.invoices.c.id))
        assert all(at is not None for (at,) in issued)


def test_a_rolled_back_issue_gives_its_numbers_back(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)

    class Abort(Exception):
        pass

    with b.engine.begin() as conn:
        assert next_number(conn, "downtown", 2026) == "downtown-2026-000001"
    with pytest.raises(Abort), b.engine.begin() as conn:
        assert take_numbers(conn, "downtown", 2026, "invoice", 3)[0] == "downtown-2026-000002"
        raise Abort
    with b.engine.begin() as conn:
        assert next_number(conn, "downtown", 2026) == "downtown-2026-000002"
        # Credit notes have a series of their own.
        assert next_number(conn, "downtown", 2026, "credit_note") == "downtown-CN-2026-000001"
        with pytest.raises(ValueError, match="unknown document series"):
            next_number(conn, "downtown", 2026, "receipt")


def test_a_signup_invoice_is_numbered_when_paid_so_a_purged_one_leaves_no_gap(
    tmp_path: Path,
) -> None:
    b, clock = make_billing(tmp_path)
    unpaid = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    paid = b.start_signup(applicant(email="amy@example.com"), TERMS, "127.0.0.1", "")
    assert numbers(b) == [("downtown", None), ("downtown", None)]
    b.pay_signup(unpaid, "pm_sim_decline_generic_decline", "k" * 20, "http://x/")
    b.pay_signup(paid, "pm_sim_ok", "j" * 20, "http://x/")
    assert numbers(b) == [("downtown", None), ("downtown", "downtown-2026-000001")]
    clock.advance(1.1)
    assert b.purge_unpaid_signups() == 1
    b.add_member("a", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    assert [n for _, n in numbers(b)] == ["downtown-2026-000001", "downtown-2026-000002"]


def receipts(b: Billing) -> list[tuple[str, str]]:
    """(subject, the paid invoice's legal number) of every receipt, oldest first."""
    n, inv = schema.notifications, schema.invoices
    with b.engine.connect() as conn:
        return [
            (r.subject, r.number)
            for r in conn.execute(
                select(n.c.subject, inv.c.number)
                .join(inv, inv.c.id == n.c.invoice_ids.cast(Integer))
                .where(n.c.kind == "receipt")
                .order_by(n.c.id)
            )
        ]


@pytest.mark.parametrize("kept", [True, False], ids=["batch_kept", "batch_read_again"])
def test_receipts_name_the_invoices_by_the_numbers_they_were_issued_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """A renewal's receipt names the number its batch gave the invoice, whether the batch kept
    its rows or read them again; a sign-up's, the number its draft was given as it was paid."""
    if not kept:  # as if another connection had written while the charges were in flight
        monkeypatch.setattr(charging, "data_version", lambda conn: None)
    b, clock = make_billing(tmp_path, batch_size=2)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    b.pay_signup(m, "pm_sim_ok", "k" * 20, "http://x/")
    for i in range(3):
        b.add_member(
            f"m{i}", "M", plan_id="monthly", email=f"m{i}@example.com", payment_method="pm_sim_ok"
        )
    clock.advance(31)
    b.run_cycle()
    got = receipts(b)
    # The sign-up, three members enrolled and charged at once, and the four renewals.
    assert len(got) == 8 and len({number for _, number in got}) == 8
    assert all(subject == f"Receipt for invoice {number}" for subject, number in got), got


def issue_concurrently(engine: Engine, issuers: int, per_issuer: int) -> list[str]:
    """``issuers`` threads, each with its own connection, take numbers at the same moment in
    transactions of their own; every third transaction rolls back after taking its numbers.
    Returns the numbers of the transactions that committed."""
    start = threading.Barrier(issuers)
    committed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    class Abort(Exception):
        pass

    def issuer(i: int) -> None:
        try:
            start.wait(timeout=30)
            for k in range(per_issuer):
                try:
                    with engine.begin() as conn:
                        got = take_numbers(conn, "downtown", 2026, "invoice", 1 + k % 2)
                        if (i + k) % 3 == 0:
                            raise Abort
                except Abort:
                    continue
                with lock:
                    committed.extend(got)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=issuer, args=(i,)) for i in range(issuers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return committed


def assert_gapless(committed: list[str]) -> None:
    expected = [format_number("downtown", 2026, "invoice", n) for n in range(1, len(committed) + 1)]
    assert sorted(committed) == expected  # no duplicate, no gap


def test_parallel_issuers_on_postgres_leave_no_gap_and_no_duplicate(
    postgres_store_url: str,
) -> None:
    engine = open_store(postgres_store_url)
    try:
        committed = issue_concurrently(engine, issuers=8, per_issuer=12)
        assert len(committed) > 50
        assert_gapless(committed)
    finally:
        engine.dispose()


def test_parallel_issuers_on_sqlite_leave_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    try:
        assert_gapless(issue_concurrently(engine, issuers=4, per_issuer=10))
    finally:
        engine.dispose()


def test_renewals_on_postgres_are_numbered_in_one_series(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, clock = make_billing(tmp_path, database_url=postgres_store_url)
    for i in range(5):
        b.add_member(f"m{i}", "M", plan_id="monthly", payment_method="pm_sim_ok")
    step(b, clock, 31)
    assert [n for _, n in numbers(b)] == [
        format_number("downtown", y, "invoice", n)
        for y, n in [(2026, k) for k in range(1, 6)] + [(2027, k) for k in range(1, 6)]
    ]
    b.engine.dispose()


def test_the_migration_numbers_the_invoices_already_in_the_store(tmp_path: Path) -> None:
    from alembic import command

    from gated.billing_sync.store import alembic_config, upgrade

    engine = open_store(f"sqlite:///{tmp_path}/billing.db", migrate=False)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008_notice_delivery")
    t0, day = 1_796_112_000, 86_400
    stored = [("a", t0), ("b", t0), ("a", t0 + day), ("a", t0 + 40 * day), ("b", t0 + 41 * day)]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO plans VALUES ('p', 'P', 100, 'EUR', 1, 0, '[]', '[]', NULL, 0, 0, 1)"
        )
        for mid, sites in [("a", '["uptown"]'), ("b", '["downtown", "uptown"]')]:
            conn.exec_driver_sql(
                "INSERT INTO members (id, name, sites, role, erased, created_at)"
                f" VALUES ('{mid}', 'X', '{sites}', 'member', 0, 0)"
            )
        # a: two invoices in 2026, one in 2027; b: a paid invoice, then an unpaid sign-up's.
        for i, (mid, at) in enumerate(stored, start=1):
            conn.exec_driver_sql(
                "INSERT INTO invoices (id, member_id, kind, currency, subtotal, tax, total,"
                f" amount_paid, status, due_at, created_at) VALUES ({i}, '{mid}', 'renewal',"
                f" 'EUR', 100, 0, 100, 0, 'open', {at}, {at})"
            )
        conn.exec_driver_sql("INSERT INTO signups VALUES ('b', 'p', 5, 1, NULL)")
    upgrade(engine)
    inv = schema.invoices
    with engine.begin() as conn:
        got = conn.execute(select(inv.c.site, inv.c.number).order_by(inv.c.id)).all()
        assert [tuple(r) for r in got] == [
            ("uptown", "uptown-2026-000001"),
            ("downtown", "downtown-2026-000001"),
            ("uptown", "uptown-2026-000002"),
            ("uptown", "uptown-2027-000001"),
            ("downtown", None),  # an unpaid sign-up stays a draft
        ]
        assert next_number(conn, "uptown", 2026) == "uptown-2026-000003"
    engine.dispose()
