"""``gated-billing``: the billing companion's command line (typer + rich).

Every command takes ``-c/--config`` (default ``$GATED_BILLING_CONFIG`` or
``/etc/gated/billing.toml``). A refused operation (any GatedError: a bad config file, a missing
key, an unknown member, a rule that says no) is one line on stderr and exit code 2, as in ``gated``
and ``gatectl`` (:mod:`gated.edge`).
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gated.billing_sync import invoice_cli, plan_cli, products_cli, reconcile_cli, reports
from gated.billing_sync.audit import Actor, Entry
from gated.billing_sync.config_check import config_app
from gated.billing_sync.context import db_clock
from gated.billing_sync.gateway import PaymentGateway
from gated.billing_sync.keys import (
    Keys,
    head_office_public_pem,
    init_keys,
    new_credential_key,
    new_signing_key,
)
from gated.billing_sync.members import NO_PAYER
from gated.billing_sync.plan_cli import change_plan_command
from gated.billing_sync.service import Billing, CycleReport, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store
from gated.config import BillingConfig, load_billing_config, parse_duration
from gated.contract import mint_qr_code
from gated.edge import RefusalsAsOneLine, fail, setup_logging

app = typer.Typer(
    cls=RefusalsAsOneLine,
    no_args_is_help=True,
    help="Billing, dunning and member status for gated.",
    pretty_exceptions_enable=False,
)
members_app = typer.Typer(no_args_is_help=True, help="Members: add, show, list, import, erase.")
cards_app = typer.Typer(no_args_is_help=True, help="Card enrolment (UIDs are kept encrypted).")
gates_app = typer.Typer(no_args_is_help=True, help="Gate bearer tokens for snapshot fetches.")
keys_app = typer.Typer(no_args_is_help=True, help="Head-office, credential and card keys.")
plans_app = typer.Typer(no_args_is_help=True, help="Membership plans.")
report_app = typer.Typer(no_args_is_help=True, help="Reports as tables or CSV.")
clock_app = typer.Typer(no_args_is_help=True, help="The injected billing clock (demos, tests).")
staff_app = typer.Typer(no_args_is_help=True, help="Staff accounts for the console.")
notices_app = typer.Typer(no_args_is_help=True, help="Member notices: list and send again.")
periods_app = typer.Typer(
    no_args_is_help=True,
    help="Closed accounting months: their invoices are final, corrected only by credit notes.",
)
for sub, name in (
    (members_app, "members"),
    (cards_app, "cards"),
    (gates_app, "gates"),
    (keys_app, "keys"),
    (plans_app, "plans"),
    (report_app, "report"),
    (clock_app, "clock"),
    (staff_app, "staff"),
    (notices_app, "notices"),
    (periods_app, "periods"),
    (config_app, "config"),
):
    app.add_typer(sub, name=name)

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "-c",
        "--config",
        envvar="GATED_BILLING_CONFIG",
        help="billing.toml",
        show_default=True,
    ),
]
DEFAULT_CONFIG = Path("/etc/gated/billing.toml")
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")]
# Rows a table shows by default: a terminal table of every invoice of a large gym helps nobody.
TABLE_LIMIT = 1000


@app.callback()
def main() -> None:
    """Billing, dunning and member status for gated."""
    setup_logging()


def make_gateway(config: BillingConfig, clock: Callable[[], int]) -> PaymentGateway:
    """The configured payment gateway: Stripe, or the simulated one with its intents on disk."""
    if config.gateway == "stripe":
        from gated.billing_sync.stripe_gateway import StripeGateway

        assert config.stripe is not None
        return StripeGateway(
            config.stripe.api_key_file.read_text().strip(),
            api_base=config.stripe.api_base,
            max_requests_per_s=config.stripe.max_requests_per_s,
            concurrency=config.stripe.concurrency,
            max_retries=config.stripe.max_retries,
            off_session=config.stripe.off_session,
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return SimulatedGateway(config.state_dir / "simulated-gateway.db", clock=clock)


def build(config: BillingConfig) -> Billing:
    """Open the store, load keys and wire the service the way ``serve`` does."""
    engine = open_store(config.database_url, durability=config.durability)
    clock = db_clock(engine)
    billing = Billing(engine, config, make_gateway(config, clock), Keys.load(config.keys), clock)
    settle_collector()
    return billing


# A batch of the cycle holds a few thousand young container objects at once (rows, dicts of
# parameters, MemberState bodies): at Python's default of 700 the collector ran ~750 times per
# 20,000 renewals, re-walking them, 5-6% of the cycle. Little here makes reference cycles.
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_collector() -> None:
    """Tune the garbage collector for the billing process, once the service is wired.

    What is loaded by now (modules, SQLAlchemy's tables and dialects) lives as long as the
    process: it is frozen out of the collector's full passes, which a cycle's hundreds of
    thousands of row objects trigger several times (11% of a cycle's time without this); and the
    young generation is collected less often (``YOUNG_COLLECTION_THRESHOLD``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


@contextmanager
def service(config_path: Path) -> Iterator[Billing]:
    """The service for one command. Its refusals (GatedError) become one line and exit code 2 in
    RefusalsAsOneLine; a key or state file the system will not let us read, here."""
    config = load_billing_config(config_path)
    try:
        billing = build(config)
    except OSError as exc:
        fail(str(exc))
    try:
        yield billing
    finally:
        billing.engine.dispose()


def _audit(billing: Billing, action: str, member_id: str | None) -> AbstractContextManager[Entry]:
    """Every command that changes money, status, cards or access runs inside this: the audit
    log records it as the Unix user, with the member's fields before and after."""
    return billing.audited(Actor.unix_user(), action, member_id)


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], as_csv: bool) -> None:
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


def _when(ts: int | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _report_line(report: CycleReport) -> str:
    return (
        f"reviewed {report.reviewed}, renewals {report.renewals}, retries {report.retries}, "
        f"succeeded {report.succeeded}, failed {report.failed}, processing {report.processing}, "
        f"resumed {report.resumed}, errors {report.errors}"
    )


def _parse_date(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"not a date: {text!r} (use YYYY-MM-DD)")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


plan_cli.register(app, members_app, plans_app, service, _audit, _parse_date)


# --- serve and run ----------------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: $GATED_LOG_LEVEL, else INFO)."),
    ] = None,
) -> None:
    """Run everything: billing cycles, webhooks, snapshots, MQTT publisher, event intake, notices.

    Exit code 1 when one of those parts stopped with an error (the others are stopped with it).
    """
    setup_logging(log_level, default="INFO")
    with service(config) as billing:
        from gated.billing_sync.daemon import serve_forever
        from gated.web.app import web_routes  # the one place the billing process wires the web

        code = asyncio.run(serve_forever(billing, web_routes))
    if code:
        raise typer.Exit(code)


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Run one billing cycle now (renewals, retries, status changes) and deliver notices."""
    with service(config) as billing:
        report = billing.run_cycle()
        out.print(_report_line(report))
        if billing.config.smtp is not None:
            from gated.billing_sync.notices import deliver

            sent = deliver(
                billing.engine, billing.config.smtp, billing.clock(), documents=billing.invoice_pdf
            )
            out.print(f"notices sent: {sent}")


# --- members ------------------------------------------------------------------------------------


@members_app.command("add")
def members_add(
    member_id: str,
    name: Annotated[str, typer.Option(help="Full name.")],
    plan: Annotated[str, typer.Option(help="Plan id.")],
    email: Annotated[str | None, typer.Option(help="For notices.")] = None,
    site: Annotated[list[str] | None, typer.Option(help="Site (repeat); default: all.")] = None,
    payer: Annotated[str | None, typer.Option(help="Household payer's member id.")] = None,
    card: Annotated[
        str | None, typer.Option(help="Payment method id (Stripe pm_…, or pm_sim_… simulated).")
    ] = None,
    staff: Annotated[bool, typer.Option(help="Staff role (no schedule or limits).")] = False,
    qr: Annotated[
        bool, typer.Option(help="Give the member an app key for rotating QR codes.")
    ] = False,
    start: Annotated[
        str | None, typer.Option(help="Contract start (YYYY-MM-DD); default now.")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Enrol a member and bill the first period now."""
    with service(config) as billing:
        with _audit(billing, "enrol", member_id):
            report = billing.add_member(
                member_id,
                name,
                plan_id=plan,
                email=email,
                sites=site,
                payer_id=payer,
                payment_method=card,
                role="staff" if staff else "member",
                with_qr=qr,
                start_at=_parse_date(start),
            )
        status = billing.member(member_id)["status"]
        out.print(f"{member_id}: {status} ({_report_line(report)})")


@members_app.command("show")
def members_show(
    member_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """A member's billing state and what the gates were last told."""
    with service(config) as billing:
        info = billing.member(member_id)
    if as_json:
        sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
        return
    table = Table(show_header=False)
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)


@members_app.command("list")
def members_list(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    as_csv: CsvOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Members with plan, status, paid-through and published version."""
    with service(config) as billing:
        rows = billing.list_members(status)
    _table(
        "members",
        ["member", "name", "plan", "status", "paid_through", "version"],
        [(r.id, r.name, r.plan_id, r.status, _when(r.paid_through), r.version) for r in rows],
        as_csv,
    )


@members_app.command("import")
def members_import(file: Path, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Import members from CSV or a JSON list (member_id, name, plan, email, sites, payer,
    card, role, cards: UIDs separated by spaces). Every line is checked before the first is
    enrolled: a bad line imports nothing, and the error names it."""
    try:
        text = file.read_text()
    except OSError as exc:
        fail(f"{file}: {exc.strerror}")
    with service(config) as billing, _audit(billing, "import_members", None) as entry:
        count = billing.import_members(str(file), text)
        entry.detail.update(members=count)
    out.print(f"imported {count} members")


@members_app.command("erase")
def members_erase(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Erase personal data and cards; the gates receive a signed tombstone."""
    with service(config) as billing:
        with _audit(billing, "erase", member_id):
            billing.erase(member_id)
        out.print(f"{member_id}: erased")


@members_app.command("erasure-requests")
def members_erasure_requests(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Members who asked for erasure in the member app and are not erased yet, oldest first."""
    with service(config) as billing:
        rows = billing.member_data().erasure_requests()
    _table(
        "erasure requests",
        ["member", "requested_at", "address"],
        [(r["member_id"], r["requested_at"], r["address"]) for r in rows],
        as_csv,
    )


@members_app.command("allow-key")
def members_allow_key(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Let the member make one more device their pass now, inside the 24-hour limit."""
    with service(config) as billing:
        billing.pass_keys().allow(member_id, Actor.unix_user())
        out.print(f"{member_id}: may register a new pass device now")


@members_app.command("edit")
def members_edit(
    member_id: str,
    name: Annotated[str | None, typer.Option(help="Full name.")] = None,
    email: Annotated[
        str | None,
        typer.Option(help="A corrected address: clears a bounce; unsent notices go to it."),
    ] = None,
    phone: Annotated[str | None, typer.Option(help='Phone number ("" to remove).')] = None,
    payer: Annotated[str | None, typer.Option(help="A household payer's member id.")] = None,
    no_payer: Annotated[
        bool, typer.Option("--no-payer", help="Pays for themselves from now on.")
    ] = False,
    site: Annotated[
        list[str] | None,
        typer.Option(
            help="Site (repeat): the member's sites from now on; a site left forgets them."
        ),
    ] = None,
    plan: Annotated[str | None, typer.Option(help="Another plan (as members change-plan).")] = None,
    at_renewal: Annotated[bool, typer.Option(help="--plan from the next renewal.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Make the --plan change.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Correct a member's details, move them between sites or households, change their plan."""
    if payer is not None and no_payer:
        fail("give --payer or --no-payer, not both")
    with service(config) as billing:
        details = name, email, phone, payer, site
        if any(v is not None for v in details) or no_payer:
            with _audit(billing, "edit_member", member_id):
                billing.edit_member(
                    member_id,
                    name=name,
                    email=email,
                    phone=phone,
                    payer=NO_PAYER if no_payer else payer,
                    sites=site,
                )
            info = billing.member(member_id)
            out.print(f"{member_id}: {info['name']} <{info['email']}>", markup=False)
        elif plan is None:
            fail("nothing to change (give --name, --email, --phone, --payer, --site or --plan)")
        if plan is not None:
            change_plan_command(billing, _audit, member_id, plan, at_renewal, yes, False)


@members_app.command("set-card")
def members_set_card(
    member_id: str,
    card: Annotated[str, typer.Argument(help="Payment method id.")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Save a new payment method and retry what is owed right away."""
    with service(config) as billing:
        with _audit(billing, "set_payment_method", member_id):
            report = billing.set_payment_method(member_id, card)
        out.print(f"{member_id}: {billing.member(member_id)['status']} ({_report_line(report)})")


# --- cards, gates, keys ---------------------------------------------------------------------------


@cards_app.command("assign")
def cards_assign(member_id: str, uid: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Enrol a card UID (as `gatectl enroll` prints it) for a member."""
    with service(config) as billing:
        with _audit(billing, "assign_card", member_id):
            billing.assign_card(member_id, uid)
        out.print(f"{member_id}: card assigned")


@cards_app.command("revoke")
def cards_revoke(member_id: str, uid: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Revoke a member's card; gates drop it with the next state."""
    with service(config) as billing:
        with _audit(billing, "revoke_card", member_id):
            billing.revoke_card(member_id, uid)
        out.print(f"{member_id}: card revoked")


@gates_app.command("add")
def gates_add(site: str, gate: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Issue a bearer token for a gate's snapshot fetches (printed once, stored hashed)."""
    with service(config) as billing:
        token = billing.add_gate(site, gate)
    sys.stdout.write(token + "\n")
    err.print(
        "put this token in the gate's [head_office] token_file; it is not shown again",
        markup=False,
    )


@gates_app.command("revoke")
def gates_revoke(site: str, gate: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Revoke a gate's token: its snapshot fetches get 401 from now on."""
    with service(config) as billing:
        billing.revoke_gate(site, gate)
        out.print(f"{site}/{gate}: revoked")


@keys_app.command("init")
def keys_init(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Create whichever key file is missing (head-office, credential, card encryption)."""
    cfg = load_billing_config(config)
    for path in init_keys(cfg.keys):
        out.print(f"wrote {path}")


@keys_app.command("export-public")
def keys_export_public(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write it to this file instead of stdout.")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Print the head-office public key the gates trust (head_office_public_key_files)."""
    cfg = load_billing_config(config)
    pem = head_office_public_pem(cfg.keys.head_office_private_key_file)
    if out_file is None:
        sys.stdout.write(pem.decode())
        return
    out_file.write_bytes(pem)
    err.print(f"wrote {out_file}", markup=False, highlight=False)


@keys_app.command("rotate")
def keys_rotate(
    credential: Annotated[
        bool, typer.Option("--credential", help="Rotate the credential HMAC key instead.")
    ] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Rotate the head-office signing key (or the credential key) and republish every member.

    Gates must trust the new public key (or hold the new credential key) first."""
    with service(config) as billing:
        keys = billing.config.keys
        if credential:
            count = billing.rotate_credential_key(new_credential_key(keys.credential_key_file))
            out.print(f"credential key rotated; republished {count} members")
            return
        billing.keys.signer = new_signing_key(keys.head_office_private_key_file)
        count = billing.republish_all()
        out.print(f"head-office key rotated to kid {billing.keys.signer.kid}; republished {count}")


# --- plans ------------------------------------------------------------------------------------------


@plans_app.command("add")
def plans_add(
    plan_id: str,
    name: Annotated[str, typer.Option()],
    price: Annotated[int, typer.Option(help="Per period, in minor units (4990 = 49.90).")],
    currency: Annotated[str | None, typer.Option(help="Default: billing.toml currency.")] = None,
    period_months: Annotated[int, typer.Option()] = 1,
    tax_rate_bp: Annotated[int, typer.Option(help="Basis points: 1900 = 19 %.")] = 0,
    schedule: Annotated[
        str | None,
        typer.Option(help='JSON windows: [{"days":["mon"],"start":"09:00","end":"16:00"}]'),
    ] = None,
    zone: Annotated[
        list[str] | None, typer.Option(help="Zone (repeat); default: every zone.")
    ] = None,
    daily_limit: Annotated[int | None, typer.Option()] = None,
    min_term_months: Annotated[int, typer.Option()] = 0,
    freeze_fee: Annotated[int, typer.Option(help="Per frozen month, minor units.")] = 0,
    auto_renew: Annotated[
        bool,
        typer.Option(
            help="Renew every period; --no-auto-renew makes a fixed-term pass that bills one "
            "period and then ends expired."
        ),
    ] = True,
    grandfather: Annotated[
        bool, typer.Option(help="A price change (plans price-change) spares existing members.")
    ] = False,
    sepa: Annotated[
        bool, typer.Option(help="An online sign-up may pay by SEPA Direct Debit too.")
    ] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Create or update a plan."""
    with service(config) as billing:
        try:
            windows = json.loads(schedule) if schedule else []
        except ValueError as exc:
            fail(f"--schedule is not JSON: {exc}")
        with _audit(billing, "manage_plans", None) as entry:
            entry.detail.update(plan=plan_id, price=price)
            billing.add_plan(
                PlanSpec(
                    plan_id,
                    name,
                    price,
                    currency or billing.config.currency,
                    period_months,
                    tax_rate_bp,
                    windows,
                    list(zone or []),
                    daily_limit,
                    min_term_months,
                    freeze_fee,
                    auto_renew,
                    grandfather,
                    sepa,
                )
            )
        out.print(f"plan {plan_id} saved")


@plans_app.command("list")
def plans_list(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Plans with price, period, tax and terms."""
    with service(config) as billing:
        rows = billing.plans()
    _table(
        "plans",
        [
            "plan",
            "name",
            "price",
            "currency",
            "months",
            "tax_bp",
            "min_term",
            "freeze_fee",
            "zones",
            "auto_renew",
        ],
        [
            (
                r.id,
                r.name,
                r.price,
                r.currency,
                r.period_months,
                r.tax_rate_bp,
                r.min_term_months,
                r.freeze_fee,
                r.zones,
                "yes" if r.auto_renew else "no",
            )
            for r in rows
        ],
        as_csv,
    )


# --- freeze, cancel, extras, payments, pass ---------------------------------------------------------


@app.command()
def freeze(
    member_id: str,
    months: Annotated[int, typer.Option(help="1 to 3.")] = 1,
    start: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default now.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Freeze a current member for 1-3 months (contract extended, fee billed)."""
    with service(config) as billing:
        with _audit(billing, "freeze", member_id):
            billing.freeze(member_id, months, _parse_date(start))
        info = billing.member(member_id)
        out.print(f"{member_id}: {info['status']}, freeze {info['freeze']}")


@app.command()
def unfreeze(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """End a freeze now; the unused part of its fee is given back (whole days left, rounded
    down): a credit note on what is still owed of it, a refund of what was paid."""
    with service(config) as billing:
        with _audit(billing, "unfreeze", member_id) as entry:
            back = billing.unfreeze(member_id)
            if back is not None:
                entry.detail.update(invoice=back.invoice_id, credit_notes=back.credit_notes)
        given = f"; {back.line()}" if back is not None else ""
        out.print(f"{member_id}: {billing.member(member_id)['status']}{given}", markup=False)


@app.command()
def cancel(member_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Cancel at the end of the paid period or the minimum term."""
    with service(config) as billing:
        with _audit(billing, "cancel", member_id):
            when = billing.cancel(member_id)
        out.print(f"{member_id}: pending_cancel until {_when(when)}")


@app.command("charge-extra")
def charge_extra(
    member_id: str,
    amount: Annotated[int, typer.Option(help="Net, minor units.")],
    kind: Annotated[str, typer.Option(help="personal_training, class_pack, …")] = "extra",
    description: Annotated[str | None, typer.Option()] = None,
    tax_rate_bp: Annotated[int | None, typer.Option(help="Default: the plan's rate.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Bill an extra on its own invoice and charge it now."""
    with service(config) as billing:
        with _audit(billing, "charge_extra", member_id) as entry:
            report = billing.charge_extra(
                member_id, kind, description or kind.replace("_", " "), amount, tax_rate_bp
            )
            entry.detail.update(kind=kind, amount=amount)
        out.print(f"{member_id}: {_report_line(report)}")


@app.command()
def pay(
    member_id: str,
    amount: Annotated[
        int | None,
        typer.Argument(
            help="Minor units; default: all owed, but for invoices a charge in flight"
            " (a SEPA debit) is still paying."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="front_desk, transfer, …")] = "front_desk",
    reference: Annotated[str | None, typer.Option(help="Receipt or transfer reference.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Record a payment taken at the front desk; the member is let in again at once."""
    with service(config) as billing:
        with _audit(billing, "take_payment", member_id) as entry:
            paid = billing.record_payment(member_id, amount, method, reference)
            entry.detail.update(amount=paid, method=method)
        out.print(f"{member_id}: paid {paid}, now {billing.member(member_id)['status']}")


@app.command("pass")
def pass_(
    member_id: str,
    png: Annotated[Path | None, typer.Option(help="Write a PNG instead of a terminal QR.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """A fresh rotating QR code for the member (plays the member's app)."""
    import segno

    with service(config) as billing:
        seed = billing.app_private_key(member_id)
        code = mint_qr_code(seed, member_id, billing.clock(), secrets.token_hex(8))
    qr = segno.make(code, error="m")
    if png is not None:
        qr.save(str(png), scale=6)
        err.print(f"wrote {png}", markup=False)
    else:
        qr.terminal(compact=True)
    sys.stdout.write(code + "\n")


@app.command()
def invoices(
    member_id: Annotated[str | None, typer.Argument()] = None,
    lines: Annotated[bool, typer.Option("--lines", help="Show line items.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Only the newest N invoices (0: all). Default: all with --csv, the newest"
            f" {TABLE_LIMIT} in a table."
        ),
    ] = None,
    as_csv: CsvOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Invoices (newest first), optionally with their itemized lines. CSV streams every invoice;
    when fewer are shown than exist, a line on stderr says so."""
    if limit is None:
        limit = 0 if as_csv else TABLE_LIMIT
    cols = [
        "invoice",
        "number",
        "member",
        "kind",
        "status",
        "currency",
        "subtotal",
        "tax",
        "total",
        "paid",
        "due",
    ]
    if lines:
        cols += ["line", "description", "qty", "unit", "amount"]
    with service(config) as billing:
        rows = reports.invoices(billing.engine, member_id, lines, limit or None)
        _table("invoices", cols, rows if as_csv else list(rows), as_csv)
        total = reports.count_invoices(billing.engine, member_id) if limit else 0
    if limit and total > limit:
        err.print(
            f"showing the newest {limit} of {total} invoices (--limit 0 or --csv for all)",
            markup=False,
            highlight=False,
        )


@app.command("invoice-pdf")
def invoice_pdf(
    invoice_id: int,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write it (default: invoice-NUMBER.pdf here)."),
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Write an issued invoice as a PDF, with the issuing site's name, address and tax id."""
    with service(config) as billing:
        name, pdf = billing.invoice_pdf(invoice_id)
    target = out_path or Path(name)
    try:
        target.write_bytes(pdf)
    except OSError as exc:
        fail(f"{target}: {exc.strerror or exc}")
    out.print(f"wrote {target}", markup=False, highlight=False)


# --- notices -----------------------------------------------------------------------------------------


@notices_app.command("list")
def notices_list(
    member_id: Annotated[str | None, typer.Argument(help="Only this member's.")] = None,
    state: Annotated[str | None, typer.Option(help="queued, sent or failed.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 1000,
    as_csv: CsvOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Notices newest first: to whom, sent or not, and the mail server's answer if refused."""
    with service(config) as billing:
        rows = billing.notices(member_id, state, limit)
    _table(
        "notices",
        ["notice", "member", "kind", "to", "state", "created", "sent", "error"],
        [
            (r.id, r.member_id, r.kind, r.to_addr, r.state, _when(r.created_at), _when(r.sent_at),
             r.error or "")
            for r in rows
        ],
        as_csv,
    )  # fmt: skip


@notices_app.command("resend")
def notices_resend(notice_id: int, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Queue a notice again, to the member's address now (sent by serve or the next run)."""
    with service(config) as billing:
        new_id = billing.resend_notice(notice_id)
        out.print(f"notice {notice_id} queued again as notice {new_id}")


# --- periods -----------------------------------------------------------------------------------------


@periods_app.command("close")
def periods_close(
    period: Annotated[str, typer.Argument(help="The month, YYYY-MM (UTC), and all before it.")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Close a month that has ended: no invoice is issued into it or changed in it any more
    (a credit note corrects one). Never opened again."""
    with service(config) as billing, _audit(billing, "period_close", None) as entry:
        entry.detail["period"] = billing.close_period(period, Actor.unix_user().id)
    out.print(f"{period} closed, with every month before it")


@periods_app.command("list")
def periods_list(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """The months closed, newest first, with when and by whom."""
    with service(config) as billing:
        rows = billing.closed_periods()
    _table(
        "closed periods",
        ["period", "closed", "by"],
        [(r["period"], _when(r["closed_at"]), r["closed_by"]) for r in rows],
        as_csv,
    )


# --- reports and clock -------------------------------------------------------------------------------


def _report_command(name: str, help_text: str) -> None:
    def command(
        as_csv: CsvOpt = False,
        as_json: Annotated[
            bool, typer.Option("--json", help="JSON on stdout: a list of objects, one per row.")
        ] = False,
        first: Annotated[
            str | None, typer.Option("--from", help="First month, YYYY-MM (UTC).")
        ] = None,
        last: Annotated[str | None, typer.Option("--to", help="Last month, YYYY-MM.")] = None,
        site: Annotated[list[str] | None, typer.Option(help="Only this site (repeatable).")] = None,
        config: ConfigOpt = DEFAULT_CONFIG,
    ) -> None:
        with service(config) as billing:
            # A malformed month is a BillingError: one line, exit code 2.
            scope = reports.scope_for(billing.config, first, last, site)
            columns, rows = reports.REPORTS[name](billing.engine, billing.clock(), scope)
        if as_json:
            sys.stdout.write(json.dumps(reports.records(columns, rows), indent=1) + "\n")
            return
        _table(name, columns, rows, as_csv)

    command.__doc__ = help_text
    report_app.command(name)(command)


for _name, _help in (
    ("revenue", "Money received per month and method."),
    ("outstanding", "Open invoices per member."),
    ("dunning", "Members in dunning: status, owed, first failure, retries, next retry."),
    ("attendance", "Entries per day and site from the gates' events."),
    ("passes", "Fixed-term passes: when each ends, and which have expired."),
    ("mrr", "Monthly recurring revenue per month: paid renewals spread over their months."),
    ("deferred", "Deferred revenue at each month's end: paid for, not yet served (net)."),
    ("members", "New members, cancellations and churn per month."),
    ("recovery", "Failed payments and what dunning recovered, by month and decline class."),
    ("statuses", "Members by status now."),
    ("heatmap", "Entries per site, weekday and hour (local time)."),
    ("sites", "Sites side by side: members, current members, entries, visitors."),
    ("occupancy", "Today per site in 15-minute slots: entries, exits, people inside."),
):
    _report_command(_name, _help)


@clock_app.command("advance")
def clock_advance(
    duration: Annotated[str, typer.Argument(help="e.g. 8d, 12h, 30m")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Move the billing clock forward (a running `serve` follows on its next cycle)."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        fail(str(exc))
    with service(config) as billing:
        billing.advance_clock(seconds)
        out.print(f"billing clock now {_when(billing.clock())} UTC")


@clock_app.command("show")
def clock_show(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the billing clock."""
    with service(config) as billing:
        out.print(f"billing clock {_when(billing.clock())} UTC")


# --- staff accounts -------------------------------------------------------------------------------

RoleOpt = Annotated[str, typer.Option(help="front_desk, manager or owner (see docs/console.md).")]
AskPasswordOpt = Annotated[
    bool, typer.Option("--ask-password", help="Type the password instead of a one-time one.")
]


def _ask_password() -> str:
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@staff_app.command("add")
def staff_add(
    staff_id: str,
    role: RoleOpt,
    name: Annotated[
        str | None, typer.Option(help="Shown in the console and the audit log.")
    ] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="A site this account acts on (repeat); default all.")
    ] = None,
    ask_password: AskPasswordOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Add a staff account (the first owner, for one); prints a one-time password."""
    password = _ask_password() if ask_password else None
    with service(config) as billing, _audit(billing, "staff_add", None) as entry:
        made = billing.staff_access().add(staff_id, name or staff_id, role, site or [], password)
        entry.detail.update(staff=staff_id, role=role)
    _print_password(staff_id, made if password is None else None, "added")


def _print_password(staff_id: str, one_time: str | None, done: str) -> None:
    """Show a one-time password made for the account, or that it was ``done``."""
    if one_time is not None:
        out.print(f"{staff_id}: one-time password {one_time} (changed at the first sign-in)")
    else:
        out.print(f"{staff_id}: {done}")


@staff_app.command("list")
def staff_list(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Every staff account with its role, sites and second factor."""
    with service(config) as billing:
        accounts = billing.staff_access().accounts()
    rows = [
        (
            a.id,
            a.name,
            a.role,
            " ".join(a.sites),
            "yes" if a.totp_enrolled else "no",
            "disabled" if a.disabled else ("setup" if a.needs_setup else "active"),
        )
        for a in accounts
    ]
    _table("Staff", ["id", "name", "role", "sites", "totp", "state"], rows, as_csv)


@staff_app.command("disable")
def staff_disable(staff_id: str, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Disable an account; its sessions end at once."""
    with service(config) as billing, _audit(billing, "staff_disable", None) as entry:
        billing.staff_access().disable(staff_id)
        entry.detail.update(staff=staff_id)
    out.print(f"{staff_id}: disabled")


@staff_app.command("reset")
def staff_reset(
    staff_id: str,
    ask_password: AskPasswordOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Recovery: a new password, TOTP enrolled again at the next sign-in, sessions ended."""
    password = _ask_password() if ask_password else None
    with service(config) as billing, _audit(billing, "staff_reset", None) as entry:
        made = billing.staff_access().reset(staff_id, password)
        entry.detail.update(staff=staff_id)
    _print_password(staff_id, made if password is None else None, "reset")


app.add_typer(reconcile_cli.commands(service, _parse_date, _table), name="reconcile")
app.add_typer(invoice_cli.commands(service, _audit, _table), name="invoice")
app.add_typer(invoice_cli.dispute_commands(service, _audit), name="disputes")
products_cli.register(app, service, _table)
