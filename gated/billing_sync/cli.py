"""``gated-billing``: the billing companion's command line (typer + rich).

Every command takes ``-c/--config`` (default ``$GATED_BILLING_CONFIG`` or
``/etc/gated/billing.toml``). A refused operation (any GatedError: a bad config file, a missing
key, an unknown member, a rule that says no) is one line on stderr and exit code 2, as in ``gated``
and ``gatectl`` (:mod:`gated.edge`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gated.billing_sync import (
    account_cli,
    invoice_cli,
    member_cli,
    payment_plan_cli,
    plan_cli,
    products_cli,
    reconcile_cli,
    reports,
    staff_cli,
)
from gated.billing_sync.audit import Actor, Entry
from gated.billing_sync.cli_common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    CsvOpt,
    parse_date,
    report_line,
    table,
    when,
)
from gated.billing_sync.config import BillingConfig, load_billing_config
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
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.store import open_store
from gated.config import parse_duration
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


plan_cli.register(app, members_app, plans_app, service, _audit, parse_date)


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

        code = asyncio.run(serve_forever(billing, web_routes, config))
    if code:
        raise typer.Exit(code)


@app.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    every: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Run a cycle every SECONDS until SIGTERM or SIGINT, instead of once (beside "
            'a serve with [serve] cycles = "off").',
            metavar="SECONDS",
        ),
    ] = None,
    share: Annotated[
        float,
        typer.Option(
            min=0.05,
            max=1.0,
            help="The fraction of its wall time a cycle may be busy: after each batch it rests "
            "in proportion (0.5: as long again), leaving the host to the member app. serve's "
            "cycle process runs with [serve] cycle_share.",
            metavar="FRACTION",
        ),
    ] = 1.0,
    notices: Annotated[
        bool, typer.Option(help="Deliver queued notices after each cycle ([smtp] set).")
    ] = True,
    parent: Annotated[
        int | None, typer.Option(hidden=True, help="serve's pid: stop when it is gone.")
    ] = None,
) -> None:
    """Run one billing cycle now (renewals, retries, status changes) and deliver notices."""
    with service(config) as billing:
        billing.cycle_share = share
        smtp = billing.config.smtp if notices else None

        def deliver_notices() -> int:
            from gated.billing_sync.notices import deliver

            assert smtp is not None
            return deliver(billing.engine, smtp, billing.clock(), documents=billing.document_pdf)

        if every is not None:
            after = deliver_notices if smtp is not None else None
            run_every_until_signalled(billing, every, after, parent)
            return
        out.print(report_line(billing.run_cycle()))
        if smtp is not None:
            out.print(f"notices sent: {deliver_notices()}")


@app.command(hidden=True)
def publish(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Drain the status outbox to MQTT until SIGTERM or stdin's end: ``serve``'s publisher
    process (``[serve] publisher = "own-process"``); stdin's bytes wake it."""
    setup_logging(default="INFO")
    with service(config) as billing:
        from gated.billing_sync.publisher_process import publish_until_stopped

        if billing.config.mqtt is None:
            fail("publish needs an [mqtt] section in billing.toml")

        asyncio.run(publish_until_stopped(billing))


def run_every_until_signalled(
    billing: Billing, every: float, after: Callable[[], int] | None, parent: int | None
) -> None:
    """``run --every``: cycles until SIGTERM or SIGINT (or ``parent`` gone); the running one
    ends after its batch."""
    import signal
    import threading

    from gated.billing_sync.cycle_process import run_every, watch_parent

    setup_logging(default="INFO")  # a daemon now: its cycles are logged like serve's
    stop = threading.Event()

    def stopping(_signum: int, _frame: object) -> None:
        billing.stopping.set()
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    if parent is not None:
        watch_parent(parent, stop, billing)
    # The cycles run in a thread of their own: the handlers above run in this one, and setting
    # ``stop`` from a handler that interrupted ``stop.wait`` in the same thread could deadlock.
    cycles = threading.Thread(target=run_every, args=(billing, every, stop, after), name="cycles")
    cycles.start()
    while cycles.is_alive():
        cycles.join(1.0)


member_cli.register(members_app, cards_app, service, _audit)


# --- gates, keys ---------------------------------------------------------------------------------


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
    freeze_fee_kept: Annotated[
        bool,
        typer.Option(
            help="The freeze fee is not refunded when a freeze ends early (members are told "
            "before they freeze); by default its unused part is given back."
        ),
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
                    freeze_fee_kept,
                )
            )
        out.print(f"plan {plan_id} saved")


@plans_app.command("list")
def plans_list(as_csv: CsvOpt = False, config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Plans with price, period, tax and terms."""
    with service(config) as billing:
        rows = billing.plans()
    table(
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
            "fee_refunded",
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
                "no" if r.freeze_fee_kept else "unused part",
                r.zones,
                "yes" if r.auto_renew else "no",
            )
            for r in rows
        ],
        as_csv,
    )


account_cli.register(app, service, _audit)


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
    table(
        "notices",
        ["notice", "member", "kind", "to", "state", "created", "sent", "error"],
        [
            (r.id, r.member_id, r.kind, r.to_addr, r.state, when(r.created_at), when(r.sent_at),
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
    table(
        "closed periods",
        ["period", "closed", "by"],
        [(r["period"], when(r["closed_at"]), r["closed_by"]) for r in rows],
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
        table(name, columns, rows, as_csv)

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
        out.print(f"billing clock now {when(billing.clock())} UTC")


@clock_app.command("show")
def clock_show(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Print the billing clock."""
    with service(config) as billing:
        out.print(f"billing clock {when(billing.clock())} UTC")


staff_cli.register(staff_app, service, _audit)


app.add_typer(reconcile_cli.commands(service, parse_date, table), name="reconcile")
app.add_typer(invoice_cli.commands(service, _audit, table), name="invoice")
app.add_typer(invoice_cli.dispute_commands(service, _audit), name="disputes")
app.add_typer(payment_plan_cli.commands(service, _audit, parse_date), name="payment-plan")
products_cli.register(app, service, table)
