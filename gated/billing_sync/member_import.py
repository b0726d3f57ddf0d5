"""``members import``: every row of a CSV or JSON file checked before the first is enrolled, so
a file with a bad line imports nothing and the error names the line.

What is checked: the required fields, the member id's form, ids repeated in the file or already
enrolled, the role, the sites, the plan, the payer (enrolled, or on an earlier line), and the card
UIDs (their form, repeated in the file, or already assigned). What only the payment provider can
say (a card refused when it is saved) is known once the cards are saved, which comes before
anyone is enrolled: such a line stops the import, the customers already made at the provider
are deleted, nobody is enrolled, and the error names the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import select

from gated.billing_sync import members
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.cycle import run_cycle
from gated.billing_sync.errors import BillingError
from gated.billing_sync.publishing import refresh
from gated.contract import MEMBER_ID_RE, normalize_uid
from gated.errors import GatedError


class ImportRow(NamedTuple):
    """One member of an import file, with the line (CSV) or record (JSON) it came from."""

    where: str
    member_id: str
    name: str
    plan: str
    email: str | None
    sites: list[str] | None
    payer: str | None
    card: str | None
    role: str
    cards: list[str]


def parse(name: str, text: str) -> list[ImportRow]:
    """The rows of a CSV file (with a header) or, for a ``.json`` name, a JSON list of objects
    (fields: member_id, name, plan, email, sites, payer, card, role, cards: UIDs separated by
    spaces)."""
    records: list[tuple[str, dict[str, Any]]] = []
    if name.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BillingError(f"{name}: not JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BillingError(f"{name}: a JSON list of objects, one per member")
        records = [(f"record {n}", r) for n, r in enumerate(data, 1)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        for rec in reader:
            records.append((f"line {reader.line_num}", rec))
    return [_row(name, where, rec) for where, rec in records]


def _row(name: str, where: str, rec: dict[str, Any]) -> ImportRow:
    missing = [k for k in ("member_id", "plan") if not rec.get(k)]
    if missing:
        raise BillingError(f"{name}: {where}: missing {', '.join(missing)}; nothing was imported")
    sites = rec.get("sites")
    if isinstance(sites, str):
        sites = sites.replace(";", " ").split() or None
    uids = rec.get("cards") or []
    return ImportRow(
        where,
        str(rec["member_id"]),
        str(rec.get("name") or rec["member_id"]),
        str(rec["plan"]),
        rec.get("email") or None,
        list(sites) if sites else None,
        rec.get("payer") or None,
        rec.get("card") or None,
        rec.get("role") or "member",
        [str(u) for u in (uids.split() if isinstance(uids, str) else uids)],
    )


def check(ctx: Context, name: str, rows: Sequence[ImportRow]) -> None:
    """Every row valid against the store and the rows before it; else one BillingError naming
    the first bad line, before anything is written."""
    with ctx.reader.connect() as conn:
        plans = set(conn.execute(select(s.plans.c.id)).scalars())
        ids = [r.member_id for r in rows]
        enrolled = set(
            conn.execute(select(s.members.c.id).where(s.members.c.id.in_(ids))).scalars()
        )
        payers = {r.payer for r in rows if r.payer}
        known_payers = set(
            conn.execute(select(s.members.c.id).where(s.members.c.id.in_(payers))).scalars()
        )
        assigned = set(
            conn.execute(
                select(s.cards.c.uid_lookup).where(s.cards.c.revoked_at.is_(None))
            ).scalars()
        )
    seen: set[str] = set()
    uids: set[str] = set()
    for r in rows:
        why = _problem(ctx, r, plans, enrolled, known_payers | seen, seen, assigned, uids)
        if why:
            raise BillingError(f"{name}: {r.where}: {why}; nothing was imported")
        seen.add(r.member_id)


def _problem(
    ctx: Context,
    r: ImportRow,
    plans: set[str],
    enrolled: set[str],
    payers: set[str],
    seen: set[str],
    assigned: set[str],
    uids: set[str],
) -> str | None:
    if not MEMBER_ID_RE.match(r.member_id):
        return f"member id {r.member_id!r} is not 1-64 of A-Z a-z 0-9 _ -"
    if r.member_id in seen:
        return f"member {r.member_id} is on an earlier line too"
    if r.member_id in enrolled:
        return f"member {r.member_id} already exists"
    if r.role not in ("member", "staff"):
        return f"role {r.role!r} is member or staff"
    unknown = set(r.sites or ()) - set(ctx.config.sites)
    if unknown:
        return f"unknown site(s) {sorted(unknown)}; billing.toml lists {ctx.config.sites}"
    if r.plan not in plans:
        return f"no plan {r.plan!r}"
    if r.payer and r.payer not in payers:
        return f"no payer {r.payer!r} (enrolled, or on an earlier line)"
    for uid in r.cards:
        try:
            lookup = ctx.keys.uid_lookup(normalize_uid(uid))
        except GatedError as exc:
            return f"card {uid!r}: {exc}"
        if lookup in assigned:
            return f"card {uid} is already assigned"
        if lookup in uids:
            return f"card {uid} is on an earlier line too"
        uids.add(lookup)
    return None


def import_rows(ctx: Context, name: str, rows: Sequence[ImportRow]) -> int:
    """Check every row, save every card with the provider, then enrol every member in one
    transaction (their cards assigned), and bill each member's first period as ``members add``
    does. All or nothing: a card the provider refuses (or any failure before the members are
    committed) deletes the customers already made at the provider and enrols nobody, and the
    error names the row. Returns how many were imported."""
    check(ctx, name, rows)
    with ctx.reader.connect() as conn:
        plans = {p.id: p for p in conn.execute(select(s.plans))}
    made: list[str] = []
    try:
        cards: dict[str, members.SavedCard] = {}
        for r in rows:
            if r.payer:  # a dependant is charged to the payer's card
                cards[r.member_id] = (None, r.card, None)
                continue
            try:
                cards[r.member_id] = members.save_card(ctx, r.member_id, r.email, r.name, r.card)
            except GatedError as exc:
                raise BillingError(f"{name}: {r.where}: {exc}; nothing was imported") from exc
            customer = cards[r.member_id][0]
            if customer is not None:
                made.append(customer)
        now = ctx.clock()
        with ctx.engine.begin() as conn:
            for r in rows:
                sites = list(r.sites or ctx.config.sites)
                new = members.NewMember(
                    r.member_id, r.name, r.email, sites, r.role, r.payer, plans[r.plan], now
                )
                members.insert_member(ctx, conn, new, cards[r.member_id], None, now)
                for raw in r.cards:
                    uid = normalize_uid(raw)
                    holder = members.card_holder(ctx, conn, uid)
                    if holder is not None:  # assigned since the rows were checked
                        raise BillingError(
                            f"{name}: {r.where}: card {raw} is already assigned to {holder};"
                            " nothing was imported"
                        )
                    members.insert_card(ctx, conn, r.member_id, uid, now)
            refresh(ctx, conn, [r.member_id for r in rows], now)
    except BaseException:
        # Nobody was enrolled: the provider keeps no customer of ours either.
        members.forget_customers(ctx, made)
        raise
    # Payers first: a dependant is billed only once their payer is in good standing.
    for group in (
        [r.member_id for r in rows if not r.payer],
        [r.member_id for r in rows if r.payer],
    ):
        if group:
            run_cycle(ctx, member_ids=group)
    return len(rows)
