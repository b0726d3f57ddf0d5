"""The front desk's point of sale: a catalogue of products (drinks, towels, personal-training
sessions, day, week and guest passes) with their stock, and selling one to a member or to a
walk-in.

A sale is an invoice of its own, issued and numbered like every invoice, so the money books
stay one: paid at once at the desk (cash or the card terminal), or, for a member, left open and
charged to the card on file like an extra. A walk-in becomes a member record without a
membership (invoices and MemberStates belong to members); a pass gives its holder one
non-renewing period of ``period_days`` at its site, which publishing sends to the gates like
any membership (``valid_from`` the sale, ``valid_until`` the end, then ``expired``).

Stock is taken by one conditional update (``stock >= quantity``) in the sale's transaction: two
desks selling the last towel at once sell it once, and the other is told it is sold out.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from gated.billing_sync import audit, members, next_invoice
from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.audit import Actor
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import load_facts
from gated.billing_sync.invoices import InvoiceSpec, apply_payment, create_invoices
from gated.billing_sync.publishing import refresh
from gated.billing_sync.submit_keys import AlreadySent, Once, claim, record
from gated.contract import MEMBER_ID_RE, ContractError, normalize_uid

KINDS = ("item", "pass", "pt_session")
# How the desk takes the money, and the payment method the books record for it (``card``
# is the payment provider's; the desk's card terminal is booked apart from it).
METHODS = {"cash": "cash", "card": "card_terminal"}
# A product's own id leaves room for the prefix of its pass plan's id.
_MAX_ID = 58
# The statuses a member may be sold a pass in: none current, or one that has ended.
_ENDED = ("expired", "cancelled")


@dataclass(frozen=True)
class ProductSpec:
    """A product to add: net price and tax rate; a pass has ``period_days``; ``stock`` None is
    not counted; ``site`` None is every site."""

    id: str
    name: str
    price: int
    kind: str = "item"
    tax_rate_bp: int = 0
    period_days: int | None = None
    stock: int | None = None
    site: str | None = None


@dataclass(frozen=True)
class Sale:
    """What a sale made: the holder (a new member id for a walk-in), its invoice and total, and
    for a pass its end. A sale on the next invoice has no invoice yet (``invoice_id`` None):
    ``pending_line`` is its line waiting for the member's renewal."""

    member_id: str
    invoice_id: int | None
    total: int
    paid: bool
    pass_until: int | None
    loaner: bool = False
    pending_line: int | None = None
    # For a line on the next invoice: the day it is billed on its own if no renewal took it.
    bill_by: int | None = None
    # For the desk's words about a sale (not part of what it is).
    currency: str = field(default="", compare=False)


def pass_plan_id(product_id: str) -> str:
    """The id of the non-renewing plan a pass product gives its holder."""
    return f"pass-{product_id}"


def add_product(ctx: Context, spec: ProductSpec) -> None:
    """Add a product to the catalogue; a pass also gets its plan (one period, never renewed)."""
    if not MEMBER_ID_RE.match(spec.id) or len(spec.id) > _MAX_ID:
        raise BillingError(f"a product id is 1-{_MAX_ID} of A-Z a-z 0-9 _ -")
    if spec.kind not in KINDS:
        raise BillingError(f"kind is one of {', '.join(KINDS)}")
    _check_numbers(spec.price, spec.tax_rate_bp, spec.stock)
    if spec.kind == "pass":
        if spec.period_days is None or not 1 <= spec.period_days <= 366:
            raise BillingError("a pass needs --days, 1 to 366")
    elif spec.period_days is not None:
        raise BillingError("only a pass has a period (--days)")
    _check_site(ctx, spec.site)
    now = ctx.clock()
    plan_id = pass_plan_id(spec.id) if spec.kind == "pass" else None
    with ctx.engine.begin() as conn:
        if conn.execute(select(s.products.c.id).where(s.products.c.id == spec.id)).first():
            raise BillingError(f"product {spec.id} already exists")
        if plan_id is not None:
            if conn.execute(select(s.plans.c.id).where(s.plans.c.id == plan_id)).first():
                raise BillingError(f"a plan {plan_id} already exists; choose another id")
            # period_months 0 keeps a pass out of the sign-up page's plans; its holder's
            # paid-through is set from the product's days when it is sold.
            conn.execute(
                insert(s.plans).values(
                    id=plan_id,
                    name=spec.name,
                    price=spec.price,
                    currency=ctx.config.currency,
                    period_months=0,
                    tax_rate_bp=spec.tax_rate_bp,
                    schedule="[]",
                    zones="[]",
                    daily_limit=None,
                    min_term_months=0,
                    freeze_fee=0,
                    auto_renew=False,
                )
            )
        conn.execute(
            insert(s.products).values(
                id=spec.id,
                name=spec.name,
                kind=spec.kind,
                price=spec.price,
                currency=ctx.config.currency,
                tax_rate_bp=spec.tax_rate_bp,
                period_days=spec.period_days,
                stock=spec.stock,
                site=spec.site,
                plan_id=plan_id,
                created_at=now,
                retired_at=None,
            )
        )


def list_products(ctx: Context, *, retired: bool = False) -> list[Row[Any]]:
    """The catalogue by kind and name; retired products only when asked."""
    p = s.products
    q = select(p).order_by(p.c.kind, p.c.name, p.c.id)
    if not retired:
        q = q.where(p.c.retired_at.is_(None))
    with ctx.reader.connect() as conn:
        return list(conn.execute(q).all())


def edit_product(
    ctx: Context,
    product_id: str,
    *,
    name: str | None = None,
    price: int | None = None,
    tax_rate_bp: int | None = None,
    stock: int | None = None,
    add_stock: int | None = None,
) -> None:
    """Change a product's name, price, tax rate or stock (``stock`` sets it, ``add_stock``
    adds a delivery to what is left, atomically). Invoices already issued keep their amounts."""
    _check_numbers(price or 0, tax_rate_bp or 0, stock)
    p = s.products
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = name
    if price is not None:
        values["price"] = price
    if tax_rate_bp is not None:
        values["tax_rate_bp"] = tax_rate_bp
    if stock is not None:
        values["stock"] = stock
    if add_stock is not None:
        if stock is not None:
            raise BillingError("give --stock or --add-stock, not both")
        values["stock"] = p.c.stock + add_stock
    if not values:
        raise BillingError("nothing to change")
    with ctx.engine.begin() as conn:
        row = _product(conn, product_id)
        if add_stock is not None and row.stock is None:
            raise BillingError(f"product {product_id} has no stock count; set one with --stock")
        if add_stock is not None and row.stock + add_stock < 0:
            raise BillingError(f"product {product_id} has only {row.stock} left")
        conn.execute(update(p).where(p.c.id == product_id).values(**values))
        if row.plan_id is not None:
            plan_values = {k: v for k, v in values.items() if k in ("name", "price", "tax_rate_bp")}
            if plan_values:
                conn.execute(
                    update(s.plans).where(s.plans.c.id == row.plan_id).values(**plan_values)
                )


def retire_product(ctx: Context, product_id: str) -> None:
    """Stop selling a product; it stays for the invoices and sales that name it."""
    with ctx.engine.begin() as conn:
        row = _product(conn, product_id)
        if row.retired_at is not None:
            raise BillingError(f"product {product_id} is already retired")
        conn.execute(
            update(s.products).where(s.products.c.id == product_id).values(retired_at=ctx.clock())
        )


def walk_in_id() -> str:
    """A fresh member id for a walk-in (made before the sale, so its audit row can name it)."""
    return f"walkin-{secrets.token_hex(6)}"


def sell(
    ctx: Context,
    operator: str,
    product_id: str,
    *,
    member_id: str | None = None,
    walk_in: str | None = None,
    walk_in_member: str | None = None,
    method: str | None = None,
    quantity: int = 1,
    loaner_uid: str | None = None,
    once: Once | None = None,
) -> Sale:
    """Sell ``quantity`` of a product to a member or to a walk-in (``walk_in`` their name,
    ``walk_in_member`` the id their record gets, default a fresh one), on an invoice of its
    own: paid now with ``method`` (cash or card, at the desk), or, for a member only, left open
    for the cycle to charge to the card on file, or (``next_invoice``) put on the member's
    next renewal invoice (``next_invoice.py``: no invoice now). A pass is paid now, for one holder, from now;
    with ``loaner_uid`` the desk lends its holder a card for the pass (``lend_card``). The
    stock, invoice, payment, sale row, card and MemberState commit together or not at all,
    with the form's submit key (``once``) where the desk gave one: a form sent twice sells
    once, and the second raises ``AlreadySent`` with what the first did."""
    if (member_id is None) == (walk_in is None):
        raise BillingError("sell to a member (--member ID) or to a walk-in (--walk-in NAME)")
    later = method == next_invoice.METHOD
    if method is not None and method not in METHODS and not later:
        raise BillingError(f"method is one of {', '.join(METHODS)}, next-invoice")
    if walk_in is not None:
        walk_in = " ".join(walk_in.split())
        if not walk_in or len(walk_in) > 200:
            raise BillingError("a walk-in's name is 1-200 characters")
        if method is None or later:
            raise BillingError("a walk-in pays at once: give --method cash or card")
    if not 1 <= quantity <= 100:
        raise BillingError("quantity is 1 to 100")
    try:
        uid = normalize_uid(loaner_uid) if loaner_uid is not None else None
    except ContractError as exc:
        raise BillingError(f"the loaner card: {exc}") from None
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        if once is not None and not (claimed := claim(conn, once.key, now)).new:
            raise AlreadySent(claimed)
        product = _product(conn, product_id)
        if product.retired_at is not None:
            raise BillingError(f"product {product_id} is retired")
        is_pass = product.kind == "pass"
        if is_pass and (method is None or later):
            raise BillingError("a pass is paid at once: give --method cash or card")
        if is_pass and quantity != 1:
            raise BillingError("a pass is for one holder: sell one at a time")
        if uid is not None and not is_pass:
            raise BillingError("a loaner card goes with a pass, for its period")
        if member_id is not None and later:
            next_invoice.check(conn, member_id, product, now)
            _take_stock(conn, product, quantity)
            line = next_invoice.add(conn, member_id, product, quantity, operator, now)
            net = quantity * int(product.price)
            gross = net + eng.tax_of(net, int(product.tax_rate_bp))
            sale = Sale(
                member_id,
                None,
                gross,
                False,
                None,
                pending_line=line,
                bill_by=next_invoice.bill_by(now, ctx.config.next_invoice_max_days),
                currency=product.currency,
            )
            if once is not None:
                record(conn, once.key, *once.outcome(sale))
            return sale
        if member_id is not None:
            _check_member(conn, member_id, product, is_pass, method, now)
            holder = member_id
        else:
            assert walk_in is not None
            holder = walk_in_member or walk_in_id()
            _add_walk_in(ctx, conn, holder, walk_in, product.site, now)
        _take_stock(conn, product, quantity)
        [invoice_id] = create_invoices(
            conn,
            [
                InvoiceSpec(
                    holder,
                    "sale",
                    product.currency,
                    [(product.kind, product.name, quantity, int(product.price))],
                    int(product.tax_rate_bp),
                    now,
                    None,
                )
            ],
            now,
        )
        inv = conn.execute(select(s.invoices).where(s.invoices.c.id == invoice_id)).one()
        if method is not None:
            apply_payment(conn, inv, int(inv.total), METHODS[method], None, now)
        until = _start_pass(conn, holder, product, now) if is_pass else None
        returned = lend_card(ctx, conn, holder, uid, now) if uid is not None else None
        conn.execute(
            insert(s.sales).values(
                product_id=product_id,
                member_id=holder,
                invoice_id=invoice_id,
                quantity=quantity,
                total=int(inv.total),
                method=METHODS[method] if method else None,
                walk_in=walk_in is not None,
                operator=operator[:64],
                at=now,
            )
        )
        if method is None:
            # Left open: the member's next review charges it, as it does an extra.
            conn.execute(
                update(s.subscriptions)
                .where(s.subscriptions.c.member_id == holder)
                .values(review_at=now)
            )
        refresh(ctx, conn, [holder, *([returned] if returned else [])], now)
        sale = Sale(
            holder,
            invoice_id,
            int(inv.total),
            method is not None,
            until,
            uid is not None,
            currency=product.currency,
        )
        if once is not None:
            record(conn, once.key, *once.outcome(sale))
    ctx.notify_published()
    return sale


def sales(ctx: Context, member_id: str | None = None) -> list[Row[Any]]:
    """Sales, newest first, with the product's name (one member's when given)."""
    sa, p = s.sales, s.products
    q = select(sa, p.c.name, p.c.kind).join(p, p.c.id == sa.c.product_id).order_by(sa.c.id.desc())
    if member_id is not None:
        q = q.where(sa.c.member_id == member_id)
    with ctx.reader.connect() as conn:
        return list(conn.execute(q).all())


def sales_of_invoice(ctx: Context, invoice_id: int) -> list[Row[Any]]:
    """Every sale on an invoice, oldest first, with the product's name and kind: one for a
    sale's own invoice, each line sold on the next invoice for a renewal that took them."""
    sa, p = s.sales, s.products
    q = select(sa, p.c.name, p.c.kind).join(p, p.c.id == sa.c.product_id)
    with ctx.reader.connect() as conn:
        return list(conn.execute(q.where(sa.c.invoice_id == invoice_id).order_by(sa.c.id)))


def _check_numbers(price: int, tax_rate_bp: int, stock: int | None) -> None:
    if price < 0:
        raise BillingError("a price is net, in minor units, 0 or more")
    if not 0 <= tax_rate_bp <= 10_000:
        raise BillingError("a tax rate is 0 to 10000 basis points (100 %)")
    if stock is not None and stock < 0:
        raise BillingError("stock is 0 or more")


def _check_site(ctx: Context, site: str | None) -> None:
    if site is not None and site not in ctx.config.sites:
        raise BillingError(f"unknown site {site!r}; billing.toml lists {ctx.config.sites}")


def _product(conn: Connection, product_id: str) -> Row[Any]:
    row = conn.execute(select(s.products).where(s.products.c.id == product_id)).first()
    if row is None:
        raise NotFound(f"no product {product_id!r} (see `gated-billing products list`)")
    return row


def _check_member(
    conn: Connection,
    member_id: str,
    product: Row[Any],
    is_pass: bool,
    method: str | None,
    now: int,
) -> None:
    """Refuse a sale the member cannot have: an erased member, a sale on account without a
    membership and a card (theirs or their payer's) to charge it to, a pass beside a current membership or for another site."""
    facts = load_facts(conn, [member_id], now).get(member_id)
    if facts is None or facts.member.erased:
        raise NotFound(f"no member {member_id!r}")
    if method is None and (facts.sub is None or facts.method[1] is None):
        # Left open with no card to charge, a sale would only start dunning.
        raise BillingError(
            f"member {member_id} has no card on file to charge; take payment now with --method"
        )
    if not is_pass:
        return
    if facts.sub is not None and facts.sub.status not in _ENDED:
        raise BillingError(
            f"member {member_id} has a current membership ({facts.sub.status}); a pass is for"
            " walk-ins, guests and former members"
        )
    sites = json.loads(facts.member.sites)
    if product.site is not None and product.site not in sites:
        raise BillingError(
            f"pass {product.id} is for site {product.site}; member {member_id} is at"
            f" {', '.join(sites)}"
        )


def _add_walk_in(
    ctx: Context, conn: Connection, member_id: str, name: str, site: str | None, now: int
) -> None:
    """A walk-in's member record: no membership, no e-mail, at the product's site (or the
    first site, whose legal entity issues the invoice)."""
    if not MEMBER_ID_RE.match(member_id):
        raise BillingError("a member id is 1-64 of A-Z a-z 0-9 _ -")
    if conn.execute(select(s.members.c.id).where(s.members.c.id == member_id)).first():
        raise BillingError(f"member {member_id} already exists")
    conn.execute(
        insert(s.members).values(
            id=member_id,
            name=name,
            email=None,
            sites=json.dumps([site] if site is not None else list(ctx.config.sites)),
            role="member",
            erased=False,
            created_at=now,
        )
    )


def _take_stock(conn: Connection, product: Row[Any], quantity: int) -> None:
    """Take ``quantity`` from a counted stock, or refuse: one conditional update, so of two
    sales of the last one at once, one finds nothing left."""
    if product.stock is None:
        return
    p = s.products
    taken = conn.execute(
        update(p)
        .where(p.c.id == product.id, p.c.stock.is_not(None), p.c.stock >= quantity)
        .values(stock=p.c.stock - quantity)
    ).rowcount
    if taken != 1:
        left = conn.execute(select(p.c.stock).where(p.c.id == product.id)).scalar()
        raise BillingError(f"{product.name}: only {left} left, not {quantity}")


def lend_card(ctx: Context, conn: Connection, holder: str, uid: str, now: int) -> str | None:
    """Lend a desk's loaner card to a pass holder: it opens the gates for the pass and, as the
    pass expires, no longer. A card still held by a former pass holder whose pass has ended
    came back to the desk: it is taken from them first (returns who that was). A card anyone
    else holds is refused, and so is one another desk lends at the same instant (one of the
    two lends it: the store holds a card for one member at a time)."""
    before = members.card_holder(ctx, conn, uid)
    if before is not None:
        sub, p = s.subscriptions, s.products
        ended = conn.execute(
            select(sub.c.member_id)
            .join(p, p.c.plan_id == sub.c.plan_id)
            .where(sub.c.member_id == before)
            .where((sub.c.status.in_(_ENDED)) | (sub.c.paid_through <= now))
        ).first()
        if ended is None or before == holder:
            raise BillingError(f"this card is held by {before}; lend another or revoke it first")
        taken_back = conn.execute(
            update(s.cards)
            .where(
                s.cards.c.member_id == before,
                s.cards.c.uid_lookup == ctx.keys.uid_lookup(uid),
                s.cards.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        ).rowcount
        if taken_back != 1:
            # Another desk took it back from them first (PostgreSQL: this update waited for
            # that transaction and then found the card no longer theirs) and lent it.
            raise BillingError(members.CARD_TAKEN)
    members.insert_card(ctx, conn, holder, uid, now)
    return before


def _start_pass(conn: Connection, member_id: str, product: Row[Any], now: int) -> int:
    """Give the holder the pass's one period from now: a new membership on its plan, or the
    ended one replaced. Returns its end."""
    until = now + int(product.period_days) * eng.DAY
    sub = s.subscriptions
    values: dict[str, Any] = {
        "plan_id": product.plan_id,
        "started_at": now,
        "paid_through": until,
        "status": "pending",
        "first_failure_at": None,
        "next_retry_at": None,
        "retries_done": 0,
        "needs_new_card": False,
        "cancel_at": None,
        "review_at": now,
    }
    done = conn.execute(update(sub).where(sub.c.member_id == member_id).values(**values)).rowcount
    if not done:
        conn.execute(insert(sub).values(member_id=member_id, **values))
    return until


class PointOfSale:
    """The catalogue and selling, as the facade hands them out (``Billing.point_of_sale``): a
    sale is audited with the operator, and one left open is charged by the cycle at once."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def add(self, spec: ProductSpec) -> None:
        """Add a product (see ``add_product``)."""
        add_product(self.ctx, spec)

    def catalogue(self, *, retired: bool = False) -> list[Row[Any]]:
        """The catalogue (see ``list_products``)."""
        return list_products(self.ctx, retired=retired)

    def edit(self, product_id: str, **changes: Any) -> None:
        """Change a product (see ``edit_product``)."""
        edit_product(self.ctx, product_id, **changes)

    def retire(self, product_id: str) -> None:
        """Stop selling a product (see ``retire_product``)."""
        retire_product(self.ctx, product_id)

    def sales(self, member_id: str | None = None) -> list[Row[Any]]:
        """Sales, newest first (see ``sales``)."""
        return sales(self.ctx, member_id)

    def sales_on(self, invoice_id: int) -> list[Row[Any]]:
        """Every sale on an invoice (see ``sales_of_invoice``)."""
        return sales_of_invoice(self.ctx, invoice_id)

    def waiting(self, member_id: str) -> list[dict[str, Any]]:
        """What was sold to the member on the next invoice and waits for it, oldest first:
        each line's product, description, quantity, net unit amount, tax rate and total, and
        the day it is billed on its own if no renewal has taken it by then (``bill_by``)."""
        max_days = self.ctx.config.next_invoice_max_days
        with self.ctx.reader.connect() as conn:
            rows = next_invoice.waiting(conn, [member_id]).get(member_id, [])
        return [
            {
                "line": r.id,
                "product": r.product_id,
                "description": r.description,
                "quantity": r.quantity,
                "unit_amount": r.unit_amount,
                "tax_rate_bp": r.tax_rate_bp,
                "total": next_invoice.gross(r),
                "currency": r.currency,
                "sold_at": r.created_at,
                "bill_by": next_invoice.bill_by(int(r.created_at), max_days),
            }
            for r in rows
        ]

    def sell(
        self,
        actor: Actor,
        product_id: str,
        *,
        member_id: str | None = None,
        walk_in: str | None = None,
        method: str | None = None,
        quantity: int = 1,
        loaner_uid: str | None = None,
        once: Once | None = None,
    ) -> Sale:
        """Sell a product (see ``sell``), recorded in the audit log as ``actor`` with the
        holder's fields before and after; a sale on account is charged to the card now."""
        holder = member_id if member_id is not None else walk_in_id()
        with audit.audited(self.ctx, actor, "sell", holder, members.member) as entry:
            sale = sell(
                self.ctx,
                f"{actor.kind}:{actor.id}",
                product_id,
                member_id=member_id,
                walk_in=walk_in,
                walk_in_member=holder,
                method=method,
                quantity=quantity,
                loaner_uid=loaner_uid,
                once=once,
            )
            entry.detail.update(
                product=product_id,
                quantity=quantity,
                invoice=sale.invoice_id,
                total=sale.total,
                method=METHODS.get(method, method) if method else "account",
                **({"loaner_card": True} if sale.loaner else {}),
            )
            if sale.pending_line is not None:
                entry.detail.update(pending_line=sale.pending_line)
            elif not sale.paid:
                run_cycle(self.ctx, member_ids=[holder])
        return sale
