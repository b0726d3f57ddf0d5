"""The front desk's point of sale: the catalogue, stock that never goes below zero (the last
towel sold twice at once sells once), sales paid at the desk or on the card on file, walk-ins,
and passes that become MemberStates for their period at their site."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from gated.billing_sync import schema
from gated.billing_sync.audit import Actor
from gated.billing_sync.cli import app
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.products import ProductSpec, Sale
from gated.billing_sync.service import Billing
from gated.contract import format_time
from tests.billing.helpers import DAY, T0, cli_ok, make_billing, published, step, write_cli_config

DESK = Actor("staff", "desk-anna", "front_desk", "127.0.0.1")


def catalogue(b: Billing) -> None:
    pos = b.point_of_sale()
    pos.add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=1))
    pos.add(ProductSpec("water", "Water", 150, tax_rate_bp=700))
    pos.add(ProductSpec("pt", "PT session", 4000, kind="pt_session", tax_rate_bp=1900))
    pos.add(
        ProductSpec(
            "day", "Day pass", 1200, kind="pass", tax_rate_bp=1900, period_days=1, site="downtown"
        )
    )


def rows(b: Billing, table: schema.Table, **where: object) -> list[object]:
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with b.engine.connect() as conn:
        return list(conn.execute(q).all())


def test_the_catalogue_refuses_what_it_cannot_sell(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    catalogue(b)
    pos = b.point_of_sale()
    for bad, message in [
        (ProductSpec("x", "X", -1), "price"),
        (ProductSpec("x", "X", 1, kind="gift"), "kind"),
        (ProductSpec("x", "X", 1, kind="pass"), "--days"),
        (ProductSpec("x", "X", 1, period_days=3), "only a pass"),
        (ProductSpec("x", "X", 1, stock=-2), "stock"),
        (ProductSpec("x", "X", 1, site="nowhere"), "unknown site"),
        (ProductSpec("towel", "Towel", 1), "already exists"),
        (ProductSpec("bad id!", "X", 1), "product id"),
    ]:
        with pytest.raises(BillingError, match=message):
            pos.add(bad)
    assert [r.id for r in pos.catalogue()] == ["towel", "water", "day", "pt"]
    pos.edit("towel", add_stock=5, price=350)
    pos.retire("water")
    assert {r.id: r.stock for r in pos.catalogue()} == {"towel": 6, "day": None, "pt": None}
    assert len(pos.catalogue(retired=True)) == 4
    with pytest.raises(BillingError, match="retired"):
        pos.sell(DESK, "water", walk_in="Ben", method="cash")
    with pytest.raises(NotFound):
        pos.sell(DESK, "nothing", walk_in="Ben", method="cash")
    # A pass is no plan to join online or enrol on: it is sold at the desk.
    assert "pass-day" not in [p["id"] for p in b.signup_offer()["plans"]]
    with pytest.raises(BillingError, match="is a pass"):
        b.add_member("m9", "Max", plan_id="pass-day")


def test_a_member_pays_at_the_desk_and_the_books_hold_it(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    catalogue(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    sale = b.point_of_sale().sell(DESK, "water", member_id="m1", method="cash", quantity=2)
    assert sale == Sale("m1", sale.invoice_id, 2 * 150 + 21, True, None)
    [inv] = rows(b, schema.invoices, id=sale.invoice_id)
    assert (inv.kind, inv.subtotal, inv.tax, inv.total, inv.status) == (
        "sale",
        300,
        21,
        321,
        "paid",
    )
    assert inv.number is not None  # issued and numbered like every invoice
    [pay] = rows(b, schema.payments, invoice_id=sale.invoice_id)
    assert (pay.amount, pay.method) == (321, "cash")
    assert b.member("m1")["owed"] == 0
    [row] = rows(b, schema.sales)
    assert (row.product_id, row.quantity, row.operator, row.walk_in) == (
        "water",
        2,
        "staff:desk-anna",
        False,
    )
    [entry] = b.audit_entries(member_id="m1", limit=1)
    assert entry["action"] == "sell" and entry["actor"] == "desk-anna"
    assert entry["detail"]["invoice"] == sale.invoice_id and entry["detail"]["method"] == "cash"


def test_a_sale_on_account_is_charged_to_the_card_on_file(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    catalogue(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    sale = b.point_of_sale().sell(DESK, "pt", member_id="m1")
    assert not sale.paid
    [inv] = rows(b, schema.invoices, id=sale.invoice_id)
    assert (inv.total, inv.status) == (4760, "paid")
    [pay] = rows(b, schema.payments, invoice_id=sale.invoice_id)
    assert (pay.amount, pay.method) == (4760, "card")
    assert b.member("m1")["status"] == "active"

    # A declined card leaves the sale owed, and the member's status says so as for any debt.
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    owing = b.point_of_sale().sell(DESK, "pt", member_id="m1")
    assert rows(b, schema.invoices, id=owing.invoice_id)[0].status == "open"
    assert b.member("m1")["owed"] == 4760


def test_a_walk_in_pays_at_once_and_gets_no_membership(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    catalogue(b)
    pos = b.point_of_sale()
    with pytest.raises(BillingError, match="pays at once"):
        pos.sell(DESK, "water", walk_in="Ben")
    with pytest.raises(BillingError, match="--member ID"):
        pos.sell(DESK, "water")
    sale = pos.sell(DESK, "water", walk_in="  Ben \n Walker ", method="card")
    assert sale.member_id.startswith("walkin-") and sale.paid
    [m] = rows(b, schema.members, id=sale.member_id)
    assert (m.name, json.loads(m.sites), m.email) == ("Ben Walker", ["downtown", "uptown"], None)
    assert rows(b, schema.payments, invoice_id=sale.invoice_id)[0].method == "card_terminal"
    assert rows(b, schema.member_states, member_id=sale.member_id) == []
    # A member with nothing to charge on account pays at the desk.
    with pytest.raises(BillingError, match="no card on file to charge"):
        pos.sell(DESK, "water", member_id=sale.member_id)
    b.add_member("m2", "Mo", plan_id="monthly")  # no card given
    with pytest.raises(BillingError, match="no card on file to charge"):
        pos.sell(DESK, "water", member_id="m2")


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_last_towel_sold_twice_at_once_is_sold_once(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    overrides = {}
    if database == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_store_url")
    b, _ = make_billing(tmp_path, **overrides)
    catalogue(b)  # one towel
    pos = b.point_of_sale()
    start = threading.Barrier(4)
    outcomes: list[object] = []

    def buy(i: int) -> None:
        start.wait()
        try:
            outcomes.append(pos.sell(DESK, "towel", walk_in=f"Guest {i}", method="cash"))
        except BillingError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sold = [o for o in outcomes if isinstance(o, Sale)]
    assert len(sold) == 1, outcomes
    assert sorted(o for o in outcomes if isinstance(o, str)) == ["Towel: only 0 left, not 1"] * 3
    [towel] = [r for r in pos.catalogue() if r.id == "towel"]
    assert towel.stock == 0
    assert len(rows(b, schema.sales)) == 1
    # A refused sale leaves nothing behind: no walk-in, no invoice.
    assert len(rows(b, schema.invoices)) == 1
    assert len(rows(b, schema.members)) == 1


def test_a_day_pass_is_a_member_state_for_its_day_at_its_site(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    catalogue(b)
    pos = b.point_of_sale()
    with pytest.raises(BillingError, match="pays at once"):
        pos.sell(DESK, "day", walk_in="Gia")
    sale = pos.sell(DESK, "day", walk_in="Gia", method="cash")
    assert sale.pass_until == T0 + DAY
    state = published(b, sale.member_id)
    assert state["status"] == "active" and state["sites"] == ["downtown"]
    assert state["valid_from"] == format_time(T0)
    assert state["valid_until"] == format_time(T0 + DAY)  # no grace after a pass
    assert state["plan"] == "pass-day"
    step(b, clock, 1)
    assert published(b, sale.member_id)["status"] == "expired"
    assert b.member(sale.member_id)["owed"] == 0

    # The same guest comes back: a former member gets a new pass on the same record, paid.
    with pytest.raises(BillingError, match="a pass is paid at once"):
        pos.sell(DESK, "day", member_id=sale.member_id)
    again = pos.sell(DESK, "day", member_id=sale.member_id, method="card")
    state = published(b, sale.member_id)
    assert state["status"] == "active" and state["valid_until"] == format_time(T0 + 2 * DAY)
    assert again.pass_until == T0 + 2 * DAY


def test_a_pass_is_not_sold_beside_a_membership_or_for_another_site(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    catalogue(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("u1", "Uli", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    pos = b.point_of_sale()
    with pytest.raises(BillingError, match="current membership"):
        pos.sell(DESK, "day", member_id="m1", method="cash")
    b.erase("u1")
    with pytest.raises(NotFound):
        pos.sell(DESK, "day", member_id="u1", method="cash")
    assert published(b, "m1")["plan"] == "monthly"
    assert rows(b, schema.sales) == []


def test_products_and_sales_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "products", "add", "towel", "--name", "Towel", "--price", "300", "--stock", "2")
    cli_ok(
        cfg,
        "products",
        "add",
        "week",
        "--name",
        "Week pass",
        "--price",
        "2500",
        "--kind",
        "pass",
        "--days",
        "7",
        "--tax-rate-bp",
        "1900",
        "--site",
        "downtown",
    )
    listed = cli_ok(cfg, "products", "list", "--csv")
    assert "towel,Towel,item,300,EUR,0,,2,," in listed
    assert "week,Week pass,pass,2500,EUR,1900,7,,downtown," in listed
    cli_ok(cfg, "products", "edit", "towel", "--add-stock", "3")
    assert "towel,Towel,item,300,EUR,0,,5,," in cli_ok(cfg, "products", "list", "--csv")
    said = cli_ok(
        cfg, "sell", "week", "--walk-in", "Gia", "--method", "cash", "--loaner-card", "04:AB:CD:EF"
    )
    said = " ".join(said.split())  # as one line, however the terminal wrapped it
    assert ": invoice 1, 2975 paid, valid until " in said and "loaner card lent" in said
    refused = CliRunner().invoke(
        app, ["sell", "towel", "--member", "x", "--loaner-card", "zz", "-c", str(cfg)]
    )
    assert refused.exit_code != 0 and "the loaner card: a card UID is" in refused.output
    refused = CliRunner().invoke(app, ["sell", "towel", "--walk-in", "Ben", "-c", str(cfg)])
    assert refused.exit_code == 2 and "--method" in refused.output
    assert "Traceback" not in refused.output
    cli_ok(cfg, "products", "retire", "towel")
    assert "towel" not in cli_ok(cfg, "products", "list", "--csv")
    engine = create_engine(f"sqlite:///{tmp_path}/billing.db")
    with engine.connect() as conn:
        logged = conn.execute(
            select(schema.audit_log.c.action, schema.audit_log.c.actor_kind).order_by(
                schema.audit_log.c.id
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in logged] == [("manage_products", "cli")] * 3 + [
        ("sell", "cli"),
        ("manage_products", "cli"),
    ]
