"""What billing sends out: after any change, each member's status is settled and, when what the
gates must know changed, a new MemberState is written with the next head-office version into
``member_states`` and the status outbox (the MQTT publisher signs and sends it), and each site's
manifest (count, max version, digest) moves with it. Member notices go to their own outbox here
too. Republishing everyone (after a key rotation) is the same path with ``force``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, case, insert, select, update

from gated.billing_sync import engine as eng
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.enrolment import welcome_due
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.facts import Facts, dependants, hold_dependants, load_facts
from gated.billing_sync.notices import PAYER_NOTICES, Notice, format_amount, format_day, render
from gated.billing_sync.store import bulk, fetch, in_list, insert_ids, next_versions
from gated.contract import card_key, digest_hex, digest_term, erased_state, format_time

# The statements run for every batch, built once (see facts.py).
_SUB, _MS = s.subscriptions, s.member_states
_STATES = select(_MS).where(_MS.c.member_id.in_(in_list()))
_SUB_STATUS = select(_SUB.c.member_id, _SUB.c.status).where(_SUB.c.member_id.in_(in_list()))
_CREDENTIALS = (
    select(s.cards.c.member_id, s.cards.c.credential)
    .where(s.cards.c.member_id.in_(in_list()), s.cards.c.revoked_at.is_(None))
    .order_by(s.cards.c.credential)
)
_SUB_TERMS: dict[str, Any] = {
    "paid_through": bindparam("pt"),
    "review_at": bindparam("rev"),
    "first_failure_at": bindparam("ffa"),
    "next_retry_at": bindparam("nra"),
    "retries_done": bindparam("rd"),
    "needs_new_card": bindparam("nnc"),
}
_SET_SUB_STATUS = (
    update(_SUB)
    .where(_SUB.c.member_id == bindparam("mid"))
    .values(status=bindparam("st"), **_SUB_TERMS)
)
# The same for a member whose status stays, where the store holds it: SQLite compiles the
# statuses rollup's trigger into an UPDATE that sets ``status`` (UPDATE OF) and fires it for
# every row, which cost a renewal about 1 µs of CPU time when nothing moves (BENCHMARKS.md,
# "Billing").
_SET_SUB_TERMS = (
    update(_SUB)
    .where(_SUB.c.member_id == bindparam("mid"), _SUB.c.status == bindparam("st"))
    .values(**_SUB_TERMS)
)
# A member's published state: a first one is inserted, later ones replace it.
_STATE_VALUES: dict[str, Any] = {
    "version": bindparam("v"),
    "status": bindparam("st"),
    "sites": bindparam("si"),
    "payload": bindparam("p"),
}
_NEW_STATES = insert(_MS).values(member_id=bindparam("mid"), **_STATE_VALUES)
_SET_STATES = update(_MS).where(_MS.c.member_id == bindparam("mid")).values(**_STATE_VALUES)
_NUMBERS = select(s.invoices.c.id, s.invoices.c.number).where(s.invoices.c.id.in_(in_list()))


def refresh(
    ctx: Context,
    conn: Connection,
    ids: Sequence[str],
    now: int,
    *,
    force: bool = False,
    facts: dict[str, Facts] | None = None,
) -> None:
    """Recompute statuses and review times, settle dunning state, and publish every member
    (and dependant) whose MemberState changed. ``facts`` may be passed when the caller has
    just loaded them and kept them current."""
    if facts is None:
        facts = load_facts(conn, ids, now)
        # A dependant whose payer is out is not charged (the cycle holds them so): their next
        # review is not a retry or renewal they cannot have, which would bring them back in
        # every cycle; the payer's return refreshes them.
        hold_dependants(conn, facts, now, ctx.rules)
    changed_payers: list[str] = []
    sub_updates: list[dict[str, Any]] = []
    # On SQLite the members whose status stays are written without it (_SET_SUB_TERMS).
    status_kept: list[dict[str, Any]] | None = [] if conn.dialect.name == "sqlite" else None
    own: dict[str, str] = {}
    for member_id, f in facts.items():
        if f.sub is None:
            continue
        acct = f.account
        if acct.owed == 0 and (acct.first_failure_at or acct.next_retry_at):
            acct = eng.after_settled(acct)
            f.account = acct
        elif acct.needs_new_card and not eng.in_dunning(acct):
            acct = eng.dunning_without_a_card(acct, now)
            f.account = acct
        elif (
            eng.in_dunning(acct)
            and not acct.needs_new_card
            and not any(i.attempted for i in f.open_invoices)
        ):
            acct = eng.dunning_restarts(acct)
            f.account = acct
        status: str = eng.status_at(acct, now, ctx.rules)
        if f.member.erased:
            status = "cancelled"
        own[member_id] = status
        if status != f.sub.status:
            changed_payers.append(member_id)
            if status == "suspended" and f.plan is not None and not acct.disputed:
                # A dispute has its own notice (webhooks.dispute_opened): nothing is owed yet.
                queue_notice(
                    ctx,
                    conn,
                    f,
                    "suspension",
                    amount=format_amount(acct.owed, f.plan.currency),
                    invoices=owed_invoices(f),
                )
            elif status == "collections" and f.plan is not None:
                queue_notice(
                    ctx,
                    conn,
                    f,
                    "collections",
                    amount=format_amount(acct.owed, f.plan.currency),
                    invoices=owed_invoices(f),
                    since=format_day(acct.first_failure_at),
                )
            elif status == "expired" and f.plan is not None:
                queue_notice(
                    ctx, conn, f, "expired", plan=f.plan.name, end=format_day(acct.paid_through)
                )
            elif (
                f.sub.status == "pending"
                and status == "active"
                and f.plan is not None
                and welcome_due(conn, member_id)
            ):
                # An online sign-up's first payment just started the membership.
                base = ctx.config.http.public_url.rstrip("/")
                queue_notice(ctx, conn, f, "welcome", plan=f.plan.name, link=f"{base}/app/pass")
        terms = {
            "mid": member_id,
            "st": status,
            "rev": eng.next_review(acct, now, ctx.rules),
            "ffa": acct.first_failure_at,
            "nra": acct.next_retry_at,
            "rd": acct.retries_done,
            "nnc": acct.needs_new_card,
            "pt": acct.paid_through,
        }
        (status_kept if status_kept is not None and status == f.sub.status else sub_updates).append(
            terms
        )
    if status_kept and bulk(conn, _SET_SUB_TERMS, status_kept) != len(status_kept):
        # The store held another status for some (the facts were read before a write of this
        # transaction): every one of them is written with its status, as the others are.
        sub_updates += status_kept
    bulk(conn, _SET_SUB_STATUS, sub_updates)
    publish(ctx, conn, facts, own, now, force)
    if changed_payers:
        deps = [d for d in dependants(conn, changed_payers) if d not in facts]
        if deps:
            refresh(ctx, conn, deps, now)


def publish(
    ctx: Context,
    conn: Connection,
    facts: dict[str, Facts],
    own: dict[str, str],
    now: int,
    force: bool,
) -> None:
    """Write a new MemberState (with the next version) for every member in ``facts`` whose
    state the gates must be told about, with ``own`` their settled statuses; the status outbox
    and the sites' manifests move with them. ``force`` writes even unchanged states."""
    if not facts:
        return
    batch = {"ids": list(facts)}
    current = {r.member_id: r for r in fetch(conn, _STATES, batch)}
    payers = {f.member.payer_id for f in facts.values() if f.member.payer_id}
    payer_status: dict[str, str] = {}
    if payers:
        payer_status = dict(fetch(conn, _SUB_STATUS, {"ids": list(payers)}))
    payer_status.update({k: v for k, v in own.items() if k in payers})
    creds: dict[str, list[str]] = {}
    for r in fetch(conn, _CREDENTIALS, batch):
        creds.setdefault(r.member_id, []).append(r.credential)
    issued_at = format_time(now)
    plan_json: dict[str, tuple[list[Any], list[str]]] = {}
    changed: list[tuple[str, list[str], str, dict[str, Any], Any]] = []
    outbox = []
    manifest_delta: dict[str, list[tuple[str, int | None, bool, int, bool]]] = {}
    for member_id, f in facts.items():
        if f.sub is None and not f.member.erased:
            continue
        sites, sites_json = _sites(f.member.sites)
        if f.member.erased:
            body = erased_state(member_id, sites, 0, issued_at)
        else:
            status = own.get(member_id, f.sub.status if f.sub else "pending")
            payer = payer_status.get(f.member.payer_id) if f.member.payer_id else None
            published = eng.published_status(status, payer)  # type: ignore[arg-type]
            until = eng.valid_until(f.account, status, ctx.rules)  # type: ignore[arg-type]
            plan = f.plan
            if plan is not None and plan.id not in plan_json:
                plan_json[plan.id] = (json.loads(plan.schedule), json.loads(plan.zones))
            schedule, zones = plan_json[plan.id] if plan is not None else ([], [])
            body = {
                "type": "member_state",
                "member_id": member_id,
                "sites": sites,
                "version": 0,
                "status": published,
                "role": f.member.role,
                "valid_from": _iso(f.sub.started_at) if f.sub else None,
                "valid_until": _iso(until) if until is not None else None,
                "plan": plan.id if plan else None,
                "schedule": schedule if f.member.role != "staff" else [],
                "zones": zones,
                "credentials": creds.get(member_id, []),
                "qr_key": f.member.qr_key,
                "daily_limit": plan.daily_limit if plan else None,
                "issued_at": issued_at,
            }
        old = current.get(member_id)
        if old is not None and not force and _same_state(old.payload, body):
            continue
        changed.append((member_id, sites, sites_json, body, old))
    if not changed:
        return
    first = next_versions(conn, len(changed))
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for offset, (member_id, sites, sites_json, body, old) in enumerate(changed):
        version = first + offset
        body["version"] = version
        # Stored unsigned and in any key order: the publisher and the snapshot serialize
        # canonically when they sign.
        payload = orjson.dumps(body).decode()
        row = {
            "mid": member_id,
            "v": version,
            "st": body["status"],
            "si": sites_json,
            "p": payload,
        }
        (inserts if old is None else updates).append(row)
        same_sites = old is not None and old.sites == sites_json
        old_sites = sites if same_sites else json.loads(old.sites) if old is not None else []
        for site in set(old_sites) | set(sites):
            manifest_delta.setdefault(site, []).append(
                (
                    member_id,
                    int(old.version) if old is not None and site in old_sites else None,
                    old is not None and old.status != "erased",
                    version,
                    site in sites and body["status"] != "erased",
                )
            )
        outbox.append(
            {
                "version": version,
                "member_id": member_id,
                "sites": sites_json if same_sites else json.dumps(sorted({*old_sites, *sites})),
                "payload": payload,
                "created_at": now,
            }
        )
    bulk(conn, _NEW_STATES, inserts)
    bulk(conn, _SET_STATES, updates)
    bulk(conn, insert(s.status_outbox), outbox)
    update_manifests(conn, manifest_delta)


def update_manifests(
    conn: Connection, deltas: dict[str, list[tuple[str, int | None, bool, int, bool]]]
) -> None:
    """Move each site's manifest by its changes: (member, old version, old counted, new
    version, new counted); the digest is an XOR, so each change is O(1)."""
    sm = s.site_manifests
    for site, changes in deltas.items():
        row = conn.execute(select(sm).where(sm.c.site == site)).first()
        count = int(row._mapping["count"]) if row else 0
        acc = int(row.digest, 16) if row else 0
        max_version = int(row.max_version) if row else 0
        for member_id, old_version, old_live, new_version, new_live in changes:
            if old_version is not None and old_live:
                acc ^= digest_term(member_id, old_version)
                count -= 1
            if new_live:
                acc ^= digest_term(member_id, new_version)
                count += 1
            max_version = max(max_version, new_version)
        values = {"count": count, "digest": digest_hex(acc), "max_version": max_version}
        if row is None:
            conn.execute(insert(sm).values(site=site, published_max_version=0, **values))
        else:
            conn.execute(update(sm).where(sm.c.site == site).values(**values))


def queue_mail(conn: Connection, notice: Notice, now: int) -> None:
    """A mail to the address it was rendered for (a sign-in code, an address to confirm) into
    the outbox ahead of every other notice: the person is waiting for it."""
    conn.execute(
        insert(s.notifications).values(
            member_id=notice.member_id,
            kind=notice.kind,
            to_addr=notice.to_addr,
            subject=notice.subject,
            body=notice.body,
            created_at=now,
            attempts=0,
            priority=0,
        )
    )


def owed_invoices(f: Facts) -> list[int]:
    """The member's invoices with money still open, oldest due first."""
    return [int(i.id) for i in f.open_invoices if i.total > i.amount_paid]


def invoice_labels(conn: Connection, invoice_ids: Iterable[int | str]) -> dict[int, str]:
    """How notices name invoices: by legal number, by id while a draft has none."""
    ids = sorted({int(i) for i in invoice_ids})
    if not ids:
        return {}
    labels = {i: str(i) for i in ids}
    labels.update({int(r.id): r.number for r in fetch(conn, _NUMBERS, {"ids": ids}) if r.number})
    return labels


def queue_notice(ctx: Context, conn: Connection, f: Facts, kind: str, **values: Any) -> None:
    """Render one notice into the outbox."""
    queue_notices(ctx, conn, [(f, kind, values)])


def queue_notices(
    ctx: Context, conn: Connection, items: list[tuple[Facts, str, dict[str, Any]]]
) -> None:
    """Render notices into the outbox. A dependant's notices about the card and the money
    (``PAYER_NOTICES``) go to the payer who owns the card, saying whose membership they are
    about; the others to the dependant (or the payer, without an address of their own).
    Nobody without an e-mail address gets one. ``values["attach"]``, a list of invoice ids
    (or ``cn`` and a credit note's id), sends those documents' PDFs with the mail. ``values["invoices"]``, a list of invoice ids,
    fills ``$invoice`` with their legal numbers (``downtown-2026-000123``), the one a member
    finds on the document: looked up here, once for all the items, as a number is given in
    the transaction that issues the invoice (a sign-up's when it is paid). A caller that holds
    the number already gives it as ``values["invoice"]`` instead (the cycle's renewals)."""
    rows = []
    now = ctx.clock()  # once: a deployment's clock is a database query
    labels = invoice_labels(conn, [i for _, _, v in items for i in v.get("invoices", ())])
    for f, kind, values in items:
        if "invoices" in values:
            values = {**values, "invoice": ", ".join(labels[int(i)] for i in values["invoices"])}
        attach = values.get("attach")
        for_payer = kind in PAYER_NOTICES and f.member.payer_id is not None
        to = f.bill_to if for_payer else f.email_to
        if not to:
            continue
        name = f.bill_name if for_payer else f.member.name
        n: Notice = render(kind, to, f.member.id, name=name, **values)
        if for_payer:
            about = f"This is about the membership of {f.member.name} ({f.member.id})."
            n = n._replace(body=f"{n.body}\n{about}\n")
        rows.append(
            {
                "member_id": n.member_id,
                "kind": n.kind,
                "to_addr": n.to_addr,
                "subject": n.subject,
                "body": n.body,
                "created_at": now,
                "attempts": 0,
                "invoice_ids": ",".join(map(str, attach)) if attach else None,
            }
        )
    if rows:
        bulk(conn, insert(s.notifications), rows)


NOTICE_STATES = ("queued", "sent", "failed")


def readdress_notices(conn: Connection, member_id: str, old: str | None, new: str) -> None:
    """A member's address changed from ``old`` to ``new``: the notices that never reached the
    old one (queued, or failed because it bounced), the member's and their dependants', go to
    the new one."""
    if not old or old == new:
        return
    n = s.notifications
    ids = [member_id, *dependants(conn, [member_id])]
    conn.execute(
        update(n)
        .where(n.c.member_id.in_(ids), n.c.to_addr == old, n.c.sent_at.is_(None))
        .values(to_addr=new, failed_at=None, error=None, attempts=0)
    )


def list_notices(
    ctx: Context, member_id: str | None = None, state: str | None = None, limit: int = 1000
) -> list[Row[Any]]:
    """Notices newest first (of one member, in one state: ``queued``, ``sent`` or ``failed``),
    each with its ``state``; at most ``limit``."""
    n = s.notifications
    if state is not None and state not in NOTICE_STATES:
        raise BillingError(f"a notice's state is one of {', '.join(NOTICE_STATES)}")
    state_col = case(
        (n.c.sent_at.is_not(None), "sent"), (n.c.failed_at.is_not(None), "failed"), else_="queued"
    ).label("state")
    q = select(n, state_col).order_by(n.c.id.desc()).limit(limit)
    if member_id is not None:
        q = q.where(n.c.member_id == member_id)
    if state == "sent":
        q = q.where(n.c.sent_at.is_not(None))
    elif state == "failed":
        q = q.where(n.c.sent_at.is_(None), n.c.failed_at.is_not(None))
    elif state == "queued":
        q = q.where(n.c.sent_at.is_(None), n.c.failed_at.is_(None))
    with ctx.reader.connect() as conn:
        return list(conn.execute(q))


def resend_notice(ctx: Context, notice_id: int) -> int:
    """Queue a notice again, as it was written, to the address it would go to now (the payer's
    for a dependant's notice about the card and the money); returns the new notice's id."""
    n = s.notifications
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        old = conn.execute(select(n).where(n.c.id == notice_id)).first()
        if old is None:
            raise NotFound(f"no notice {notice_id}")
        to_addr = old.to_addr
        if old.member_id is not None:
            f = load_facts(conn, [old.member_id], now).get(old.member_id)
            for_payer = f is not None and old.kind in PAYER_NOTICES and f.member.payer_id
            to = None if f is None else f.bill_to if for_payer else f.email_to
            if not to:
                raise BillingError(f"member {old.member_id} has no e-mail address now")
            to_addr = to
        bounced = conn.execute(
            select(s.members.c.id).where(
                s.members.c.email == to_addr, s.members.c.email_bounced_at.is_not(None)
            )
        ).first()
        if bounced is not None:
            raise BillingError(
                f"{to_addr} bounced; correct it first with "
                f"`gated-billing members edit {bounced.id} --email ...`"
            )
        return insert_ids(
            conn,
            n,
            [
                {
                    "member_id": old.member_id,
                    "kind": old.kind,
                    "to_addr": to_addr,
                    "subject": old.subject,
                    "body": old.body,
                    "created_at": now,
                    "attempts": 0,
                    "invoice_ids": old.invoice_ids,
                }
            ],
        )[0]


def republish_all(ctx: Context) -> int:
    """Give every member a new version (after a key rotation); returns how many."""
    now = ctx.clock()
    with ctx.reader.connect() as conn:
        ids = list(conn.execute(select(s.members.c.id).order_by(s.members.c.id)).scalars())
    for i in range(0, len(ids), ctx.config.batch_size):
        with ctx.engine.begin() as conn:
            refresh(ctx, conn, ids[i : i + ctx.config.batch_size], now, force=True)
    ctx.notify_published()
    return len(ids)


def rotate_credential_key(ctx: Context, new_key: bytes) -> int:
    """Re-derive every card's credential under ``new_key`` and republish everyone."""
    ctx.keys.credential_key = new_key
    with ctx.engine.begin() as conn:
        rows = conn.execute(select(s.cards.c.id, s.cards.c.uid_encrypted)).all()
        if rows:
            conn.execute(
                update(s.cards)
                .where(s.cards.c.id == bindparam("cid"))
                .values(credential=bindparam("cred")),
                [
                    {
                        "cid": r.id,
                        "cred": card_key(new_key, ctx.keys.decrypt_uid(r.uid_encrypted)),
                    }
                    for r in rows
                ],
            )
    return republish_all(ctx)


# Members' periods start and end on shared days: a batch formats a handful of distinct times.
_iso = lru_cache(maxsize=4096)(format_time)


@lru_cache(maxsize=1024)  # members share a few site lists
def _sites(stored: str) -> tuple[list[str], str]:
    """A member's sites as a list and as the JSON the states and the outbox store (never mutated:
    the list is shared by every member with the same sites)."""
    sites = json.loads(stored)
    return sites, json.dumps(sites)


def _same_state(old_payload: str, new: dict[str, Any]) -> bool:
    """Equal apart from the version and issue time (``new`` has version 0 until one is taken)."""
    old = orjson.loads(old_payload)
    old["version"] = new["version"]
    old["issued_at"] = new["issued_at"]
    return bool(old == new)
