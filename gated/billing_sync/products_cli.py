"""``gated-billing products add|list|edit|retire`` and ``gated-billing sell``: the front desk's
catalogue and its sales at a shell (``products.py``). ``cli.py`` adds them (``register``),
handing in how it opens the service and prints a table."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gated.billing_sync.audit import Actor
from gated.billing_sync.notices import format_day
from gated.billing_sync.products import ProductSpec
from gated.billing_sync.service import Billing

OpenService = Callable[[Path], AbstractContextManager[Billing]]
Table = Callable[[str, Sequence[str], Iterable[Sequence[Any]], bool], None]
ConfigOpt = Annotated[
    Path,
    typer.Option("-c", "--config", envvar="GATED_BILLING_CONFIG", help="billing.toml"),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")]
out = Console(highlight=False)


class Kind(StrEnum):
    item = "item"
    pass_ = "pass"
    pt_session = "pt_session"


class Method(StrEnum):
    cash = "cash"
    card = "card"
    next_invoice = "next-invoice"


def register(app: typer.Typer, service: OpenService, table: Table) -> None:
    """Add the ``products`` group and the ``sell`` command to ``app``."""
    products_app = typer.Typer(
        no_args_is_help=True,
        help="The front desk's products: items, personal-training sessions, day/week/guest passes.",
    )
    app.add_typer(products_app, name="products")

    @products_app.command("add")
    def add(
        product_id: str,
        name: Annotated[str, typer.Option()],
        price: Annotated[int, typer.Option(help="Net, in minor units (350 = 3.50).")],
        kind: Annotated[Kind, typer.Option()] = Kind.item,
        tax_rate_bp: Annotated[int, typer.Option(help="Basis points: 1900 = 19 %.")] = 0,
        days: Annotated[
            int | None, typer.Option(help="A pass's period in days (1 day pass, 7 week).")
        ] = None,
        stock: Annotated[
            int | None, typer.Option(help="How many there are; default: uncounted.")
        ] = None,
        site: Annotated[
            str | None, typer.Option(help="Where a pass lets in; default: every site.")
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Add a product to the catalogue."""
        with (
            service(config) as billing,
            billing.audited(Actor.unix_user(), "manage_products", None) as entry,
        ):
            entry.detail.update(product=product_id, price=price)
            billing.point_of_sale().add(
                ProductSpec(product_id, name, price, kind.value, tax_rate_bp, days, stock, site)
            )
        out.print(f"product {product_id} added")

    @products_app.command("list")
    def list_(
        retired: Annotated[bool, typer.Option(help="Retired products too.")] = False,
        as_csv: CsvOpt = False,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """The catalogue with price, tax, stock and site."""
        with service(config) as billing:
            rows = billing.point_of_sale().catalogue(retired=retired)
        table(
            "products",
            [
                "product",
                "name",
                "kind",
                "price",
                "currency",
                "tax_bp",
                "days",
                "stock",
                "site",
                "retired",
            ],
            [
                (
                    r.id,
                    r.name,
                    r.kind,
                    r.price,
                    r.currency,
                    r.tax_rate_bp,
                    r.period_days if r.period_days is not None else "",
                    r.stock if r.stock is not None else "",
                    r.site or "",
                    _day(r.retired_at),
                )
                for r in rows
            ],
            as_csv,
        )

    @products_app.command("edit")
    def edit(
        product_id: str,
        name: Annotated[str | None, typer.Option()] = None,
        price: Annotated[int | None, typer.Option(help="Net, minor units.")] = None,
        tax_rate_bp: Annotated[int | None, typer.Option()] = None,
        stock: Annotated[int | None, typer.Option(help="Set what is left.")] = None,
        add_stock: Annotated[
            int | None, typer.Option(help="Add a delivery (negative: write off).")
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Change a product's name, price, tax rate or stock."""
        with (
            service(config) as billing,
            billing.audited(Actor.unix_user(), "manage_products", None) as entry,
        ):
            entry.detail.update(product=product_id)
            billing.point_of_sale().edit(
                product_id,
                name=name,
                price=price,
                tax_rate_bp=tax_rate_bp,
                stock=stock,
                add_stock=add_stock,
            )
        out.print(f"product {product_id} saved")

    @products_app.command("retire")
    def retire(product_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
        """Stop selling a product (its sales and invoices keep it)."""
        with (
            service(config) as billing,
            billing.audited(Actor.unix_user(), "manage_products", None) as entry,
        ):
            entry.detail.update(product=product_id, retired=True)
            billing.point_of_sale().retire(product_id)
        out.print(f"product {product_id} retired")

    @app.command("sell")
    def sell(
        product_id: str,
        member: Annotated[str | None, typer.Option(help="Sell to this member.")] = None,
        walk_in: Annotated[
            str | None, typer.Option(help="Sell to a walk-in by name (paid at once).")
        ] = None,
        method: Annotated[
            Method | None,
            typer.Option(
                help="Paid now at the desk, or on the member's next renewal invoice; default"
                " for a member: on the card on file."
            ),
        ] = None,
        quantity: Annotated[int, typer.Option()] = 1,
        loaner_card: Annotated[
            str | None,
            typer.Option(help="With a pass: lend the holder this card (UID) for its period."),
        ] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        """Sell a product or a pass at the front desk; a pass lets its holder in at once."""
        with service(config) as billing:
            sale = billing.point_of_sale().sell(
                Actor.unix_user(),
                product_id,
                member_id=member,
                walk_in=walk_in,
                method=method.value.replace("-", "_") if method else None,
                quantity=quantity,
                loaner_uid=loaner_card,
            )
            owed = billing.member(sale.member_id)["owed"]
        if sale.pending_line is not None:
            out.print(
                f"{sale.member_id}: on the next invoice (line {sale.pending_line}),"
                f" {sale.total} with tax, billed alone on {format_day(sale.bill_by)} if no renewal"
                " has taken it",
                markup=False,
            )
            return
        how = "paid" if sale.paid else "on account" + (f", {owed} owed" if owed else ", charged")
        until = f", valid until {_day(sale.pass_until)}" if sale.pass_until else ""
        until += ", loaner card lent" if sale.loaner else ""
        out.print(
            f"{sale.member_id}: invoice {sale.invoice_id}, {sale.total} {how}{until}",
            markup=False,
        )


def _day(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else ""
