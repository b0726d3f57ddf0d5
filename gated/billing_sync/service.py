"""The billing service: the imperative shell around the pure engine, as one facade.

``Billing`` is the API the CLI, the HTTP server, the web and the tests call. Each method hands
the shared ``Context`` (store, configuration, gateway, keys, clock) to the module that holds its
concern:

* ``members``: plans, enrolment, a member's details, cards and QR key, erasure;
* ``membership``: freezes, cancellations, extras;
* ``cycle``: the billing cycle (renewals, retries, resuming interrupted attempts);
* ``charging``: the crash-safe charging protocol and what follows from a gateway's answer;
* ``paying``: a member paying an invoice on the pay page;
* ``invoices``: invoices, payments booked against them, pay links;
* ``webhooks``: payment-provider events (intent updates, disputes, cards);
* ``gates``: gate tokens and attendance events;
* ``member_access``: the member app's sign-in, sessions and a member's own data;
* ``member_data``: a member's visits per month, data download and erasure request;
* ``staff``: staff accounts for the console (roles from ``permissions``), TOTP, sessions;
* ``member_search``: finding a member at the desk (name, e-mail, phone, id, card), a page
  in name order at a time;
* ``front_desk``: a member's page and the live feed's words for the console;
* ``gate_commands``: the console's desk-key commands (let in once, lockdown) to gates;
* ``gate_board``, ``gate_health``: each gate's retained status beside its site's manifest;
* ``audit``: the append-only log of staff and CLI actions on money, status, cards, access;
* ``pass_keys``: the member app's pass key (registration, revocation, staff allowances);
* ``signup``: online sign-up, its contract and first payment (``enrolment`` starts the
  membership once that is paid);
* ``self_service``: what a member changes alone (quotes before a freeze or a cancellation,
  contact details, an e-mail change, a card entered in the browser);
* ``publishing``: statuses settled and MemberStates, manifests and notices written to the
  outboxes; ``facts`` reads what all of them decide from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, Row

from gated.billing_sync import (
    api_tokens,
    audit,
    cycle,
    dispute_evidence,
    documents,
    front_desk,
    gate_commands,
    gate_health,
    gates,
    invoices,
    member_import,
    member_search,
    members,
    membership,
    paying,
    payment_plans,
    periods,
    photos,
    plan_changes,
    prices,
    products,
    publishing,
    reconcile,
    refunds,
    self_service,
    signup,
    store,
    submit_keys,
    webhooks,
)
from gated.billing_sync.audit import Actor, Entry
from gated.billing_sync.charging import CycleReport
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.context import Context, advance_clock
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import CardSetup, ChargeResult, PaymentGateway
from gated.billing_sync.keys import Keys
from gated.billing_sync.member_access import MemberAccess
from gated.billing_sync.member_data import MemberData
from gated.billing_sync.members import PlanSpec
from gated.billing_sync.pass_keys import PassKeys
from gated.billing_sync.payment_plans import PaymentPlan
from gated.billing_sync.plan_changes import PlanChange
from gated.billing_sync.reconcile import FetchReport
from gated.billing_sync.refunds import Outcome
from gated.billing_sync.signup import Applicant, Terms
from gated.billing_sync.staff import StaffAccess, StaffMember
from gated.billing_sync.webhooks import NO_MONEY, DisputeMoney

__all__ = ["Applicant", "Billing", "CardSetup", "CycleReport", "PlanSpec", "Terms"]


class Billing:
    """The billing service over one store, one gateway and the head-office keys."""

    def __init__(
        self,
        engine: Engine,
        config: BillingConfig,
        gateway: PaymentGateway,
        keys: Keys,
        clock: Callable[[], int],
    ) -> None:
        self.ctx = Context(engine, config, gateway, keys, clock)

    # What callers read of the shared state (the daemon, the server, reports, tests).

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    @property
    def reader(self) -> Engine:
        """``engine`` for read-only work (see ``store.reading``)."""
        return self.ctx.reader

    def one_read(self) -> AbstractContextManager[None]:
        """The service's reads inside the block share one connection and transaction
        (``store.one_read``): for a page that asks several of them."""
        return store.one_read(self.ctx.reader)

    @property
    def config(self) -> BillingConfig:
        return self.ctx.config

    @property
    def gateway(self) -> PaymentGateway:
        return self.ctx.gateway

    @property
    def keys(self) -> Keys:
        return self.ctx.keys

    @property
    def clock(self) -> Callable[[], int]:
        return self.ctx.clock

    @property
    def stopping(self) -> threading.Event:
        """Set it to stop a running cycle after its batch (see ``Context.stopping``)."""
        return self.ctx.stopping

    @property
    def cycle_share(self) -> float:
        return self.ctx.cycle_share

    @cycle_share.setter
    def cycle_share(self, share: float) -> None:
        """The fraction of its wall time a cycle may be busy (see ``Context.cycle_share``)."""
        self.ctx.cycle_share = share

    @property
    def published_hook(self) -> Callable[[], None] | None:
        return self.ctx.published_hook

    @published_hook.setter
    def published_hook(self, hook: Callable[[], None] | None) -> None:
        """Called after each change is published (the MQTT publisher's wake-up)."""
        self.ctx.published_hook = hook

    # --- plans and members ----------------------------------------------------------------

    def add_plan(self, plan: PlanSpec) -> None:
        """Create or update a plan (existing subscriptions pick up the new price at renewal)."""
        members.add_plan(self.ctx, plan)

    def plans(self) -> list[Row[Any]]:
        """Every plan, by id."""
        return members.plans(self.ctx)

    def add_member(
        self,
        member_id: str,
        name: str,
        *,
        plan_id: str,
        email: str | None = None,
        sites: Sequence[str] | None = None,
        role: str = "member",
        payer_id: str | None = None,
        payment_method: str | None = None,
        with_qr: bool = False,
        start_at: int | None = None,
    ) -> CycleReport:
        """Enrol a member on a plan and bill the first period at once (status ``pending`` until
        it is paid). A dependant (``payer_id``) is charged to the payer's payment method."""
        return members.add_member(
            self.ctx,
            member_id,
            name,
            plan_id=plan_id,
            email=email,
            sites=sites,
            role=role,
            payer_id=payer_id,
            payment_method=payment_method,
            with_qr=with_qr,
            start_at=start_at,
        )

    def import_members(self, name: str, text: str) -> int:
        """``members import``: every row of a CSV or JSON file checked first (a bad line
        imports nothing and is named), then enrolled all or none; returns how many."""
        return member_import.import_rows(self.ctx, name, member_import.parse(name, text))

    def set_payment_method(self, member_id: str, payment_method: str) -> CycleReport:
        """Save a new card for the member and retry what is owed right away (refused for a
        dependant, who is charged to the payer's card)."""
        return members.set_payment_method(self.ctx, member_id, payment_method)

    def edit_member(self, member_id: str, **changes: Any) -> None:
        """Correct a member's name, e-mail address, phone, payer or sites
        (``members.edit_member``: a new address clears a bounce, a site left gets a tombstone)."""
        members.edit_member(self.ctx, member_id, **changes)

    def member(self, member_id: str) -> dict[str, Any]:
        """Everything about one member for ``members show`` (no card UIDs)."""
        return members.member(self.ctx, member_id)

    def list_members(self, status: str | None = None) -> list[Row[Any]]:
        """Members not erased (with one status), by id."""
        return members.list_members(self.ctx, status)

    def erase(self, member_id: str) -> None:
        """Erase a member's personal data and cards; the gates get the signed tombstone."""
        members.erase(self.ctx, member_id)

    def assign_card(self, member_id: str, uid: str) -> None:
        """Enrol a card: the UID is stored encrypted, the gates get its HMAC credential."""
        members.assign_card(self.ctx, member_id, uid)

    def revoke_card(self, member_id: str, uid: str) -> None:
        """Revoke a card at once: the member's next state no longer lists it."""
        members.revoke_card(self.ctx, member_id, uid)

    def app_private_key(self, member_id: str) -> bytes:
        """The member app's Ed25519 seed (``pass`` plays the app); NotFound without a QR key."""
        return members.app_private_key(self.ctx, member_id)

    # --- freezes, cancellations, extras, payments -----------------------------------------

    def freeze(self, member_id: str, months: int, start_at: int | None = None) -> CycleReport:
        """Freeze a current member for 1-3 months (the contract runs that much longer)."""
        return membership.freeze(self.ctx, member_id, months, start_at)

    def unfreeze(self, member_id: str) -> Outcome | None:
        """End the current freeze now (or drop a booked one); the unused part of its fee is
        given back."""
        return membership.unfreeze(self.ctx, member_id)

    def cancel(self, member_id: str) -> int:
        """Cancel at the end of the paid period or the minimum term; returns that date."""
        return membership.cancel(self.ctx, member_id)

    def charge_extra(
        self,
        member_id: str,
        kind: str,
        description: str,
        amount: int,
        tax_rate_bp: int | None = None,
    ) -> CycleReport:
        """Bill an extra (personal training, a class pack) on its own invoice and charge it now."""
        return membership.charge_extra(self.ctx, member_id, kind, description, amount, tax_rate_bp)

    def record_payment(
        self,
        member_id: str,
        amount: int | None = None,
        method: str = "front_desk",
        reference: str | None = None,
    ) -> int:
        """A payment taken outside the gateway, applied to the oldest open invoices first;
        returns the amount applied. What it makes due at once (the renewal of a period that
        began while the member was behind) is billed and charged right away, so the status
        the desk reads afterwards is the one that holds."""
        paid = invoices.record_payment(self.ctx, member_id, amount, method, reference)
        cycle.run_cycle(self.ctx, member_ids=[member_id])
        return paid

    # --- refunds, credit notes, void, write-off (refunds.py) ---------------------------------

    def refund(
        self,
        invoice_id: int,
        amount: int | None = None,
        line_id: int | None = None,
        reason: str = "refund",
    ) -> Outcome:
        """Give back money paid on an invoice (an amount, one line, or all), with its credit
        note; card payments through the provider, crash-safe as charges are."""
        return refunds.refund(self.ctx, invoice_id, amount, line_id, reason)

    def credit(
        self,
        invoice_id: int,
        amount: int | None = None,
        line_id: int | None = None,
        reason: str = "credit",
    ) -> Outcome:
        """A credit note on what is still open on an invoice (no money moves)."""
        return refunds.credit(self.ctx, invoice_id, amount, line_id, reason)

    def void(self, invoice_id: int, reason: str = "void") -> Outcome:
        """Void an open invoice nothing was paid on."""
        return refunds.void(self.ctx, invoice_id, reason)

    def write_off(self, invoice_id: int, reason: str = "bad debt") -> int:
        """Write off what is open on an invoice as bad debt; returns the amount."""
        return refunds.write_off(self.ctx, invoice_id, reason)

    def refunds_reported(self, intent_id: str) -> bool:
        """``charge.refunded``: book every refund of the payment once."""
        return refunds.refunds_reported(self.ctx, intent_id)

    def dispute_evidence(self, dispute_id: str) -> dict[str, Any]:
        """What speaks to a disputed payment (contract, invoices, receipts, visits)."""
        return dispute_evidence.evidence(self.ctx, dispute_id)

    def submit_dispute_evidence(self, dispute_id: str) -> dict[str, str]:
        """Send that evidence to the provider; returns the fields sent."""
        return dispute_evidence.submit(self.ctx, dispute_id)

    def invoice_money(self, invoice_id: int) -> dict[str, Any]:
        """An invoice's lines with their ids, what was booked on it and its credit notes."""
        return refunds.invoice_money(self.ctx, invoice_id)

    # --- invoices and the pay page ----------------------------------------------------------

    def invoice(self, invoice_id: int) -> dict[str, Any]:
        """One invoice with its lines and the member's name, for the pay page."""
        return invoices.invoice(self.ctx, invoice_id)

    def invoice_pdf(self, invoice_id: int) -> tuple[str, bytes]:
        """An issued invoice's PDF (file name, bytes) with the issuing site's details."""
        return documents.invoice_pdf(self.ctx, invoice_id)

    def credit_note_pdf(self, note: int | str) -> tuple[str, bytes]:
        """A credit note's PDF and its file name, by id or number."""
        return documents.credit_note_pdf(self.ctx, note)

    def member_credit_note_pdf(self, member_id: str, note_id: int) -> tuple[str, bytes] | None:
        """A credit note's PDF if it is the member's (or a dependant's), else None."""
        return documents.member_credit_note_pdf(self.ctx, member_id, note_id)

    def staff_credit_note_pdf(
        self, note_id: int, staff_sites: Sequence[str]
    ) -> tuple[str, bytes] | None:
        """A credit note's PDF if one of ``staff_sites`` issued it, else None."""
        return documents.staff_credit_note_pdf(self.ctx, note_id, staff_sites)

    def document_pdf(self, ref: str) -> tuple[str, bytes]:
        """A document a notice carries: an invoice id, or ``cn`` and a credit note's id."""
        return documents.document_pdf(self.ctx, ref)

    def member_invoice_pdf(self, member_id: str, invoice_id: int) -> tuple[str, bytes] | None:
        """An invoice's PDF if it is the member's or a dependant's they pay for, else None."""
        return documents.member_invoice_pdf(self.ctx, member_id, invoice_id)

    def staff_invoice_pdf(
        self, invoice_id: int, staff_sites: Sequence[str]
    ) -> tuple[str, bytes] | None:
        """An invoice's PDF if one of ``staff_sites`` issued it, else None."""
        return documents.staff_invoice_pdf(self.ctx, invoice_id, staff_sites)

    def close_period(self, period: str, operator: str) -> str:
        """Close a month (``YYYY-MM``) and every month before it: its invoices are final."""
        return periods.close(self.ctx, period, operator)

    def closed_periods(self) -> list[dict[str, Any]]:
        """Every close, newest first."""
        return periods.listing(self.ctx)

    def pay_link(self, invoice_id: int) -> str:
        """The page where a member pays an invoice on-session."""
        return invoices.pay_link(self.ctx, invoice_id)

    def invoice_for_pay_token(self, token: str) -> int | None:
        """The invoice a pay-link token names, or None for a token we did not issue."""
        return invoices.invoice_for_pay_token(self.ctx, token)

    def pay_invoice(self, invoice_id: int, submit_key: str, return_url: str) -> ChargeResult:
        """Charge what is open on an invoice now, on-session, with the card on file."""
        return paying.pay_invoice(self.ctx, invoice_id, submit_key, return_url)

    def pay_returned(self, invoice_id: int) -> None:
        """The member is back from their bank's page: record what became of the payment."""
        paying.pay_returned(self.ctx, invoice_id)

    # --- notices ----------------------------------------------------------------------------

    def notices(
        self, member_id: str | None = None, state: str | None = None, limit: int = 1000
    ) -> list[Row[Any]]:
        """Notices newest first (of one member, in one state: queued, sent, failed)."""
        return publishing.list_notices(self.ctx, member_id, state, limit)

    def resend_notice(self, notice_id: int) -> int:
        """Queue a notice again to the member's address now; returns the new notice's id."""
        return publishing.resend_notice(self.ctx, notice_id)

    # --- the cycle --------------------------------------------------------------------------

    def run_cycle(self, member_ids: Sequence[str] | None = None) -> CycleReport:
        """One billing cycle (or one for just ``member_ids``): finish interrupted attempts, then
        renew, retry, settle slow payments and move statuses."""
        return cycle.run_cycle(self.ctx, member_ids)

    # --- payment-provider events ------------------------------------------------------------

    def webhook_known(self, event_id: str) -> bool:
        """Whether a provider event was already processed."""
        return webhooks.webhook_known(self.ctx, event_id)

    def webhook_done(self, event_id: str, event_type: str) -> None:
        """Record a processed provider event by id (a concurrent duplicate is ignored)."""
        webhooks.webhook_done(self.ctx, event_id, event_type)

    def intent_update(self, intent_id: str, result: ChargeResult) -> bool:
        """A provider event about a PaymentIntent; applied only if the attempt is not final,
        but a payment the provider took is always booked once."""
        return webhooks.intent_update(self.ctx, intent_id, result)

    def dispute_opened(
        self, dispute_id: str, intent_id: str | None, money: DisputeMoney = NO_MONEY
    ) -> None:
        """A chargeback: the member is suspended until it closes (unless it already closed)."""
        webhooks.dispute_opened(self.ctx, dispute_id, intent_id, money)

    def dispute_closed(
        self,
        dispute_id: str,
        intent_id: str | None,
        outcome: str,
        money: DisputeMoney = NO_MONEY,
    ) -> None:
        """A dispute closed: the suspension lifts; a lost dispute reopens the money it took."""
        webhooks.dispute_closed(self.ctx, dispute_id, intent_id, outcome, money)

    def payment_method_attached(self, customer_ref: str, payment_method: str) -> None:
        """A member added a card on the provider's side: use it and retry what is owed."""
        webhooks.payment_method_attached(self.ctx, customer_ref, payment_method)

    def payment_method_detached(self, payment_method: str) -> None:
        """A card removed on the provider's side is no longer charged."""
        webhooks.payment_method_detached(self.ctx, payment_method)

    # --- gates ------------------------------------------------------------------------------

    def add_gate(self, site: str, gate: str) -> str:
        """Issue a new bearer token for a gate's snapshot fetches (shown once, stored hashed)."""
        return gates.add_gate(self.ctx, site, gate)

    def revoke_gate(self, site: str, gate: str) -> None:
        """Revoke a gate's token."""
        gates.revoke_gate(self.ctx, site, gate)

    def gate_for_token(self, token: str) -> tuple[str, str] | None:
        """The (site, gate) a bearer token belongs to, or None (unknown or revoked)."""
        return gates.gate_for_token(self.ctx, token)

    def record_gate_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Attendance intake: each event stored once by ``event_id``; returns how many were new."""
        return gates.record_gate_events(self.ctx, events)

    # --- republishing and keys --------------------------------------------------------------

    def republish_all(self) -> int:
        """Give every member a new version (after a key rotation); returns how many."""
        return publishing.republish_all(self.ctx)

    def rotate_credential_key(self, new_key: bytes) -> int:
        """Re-derive every card's credential under ``new_key`` and republish everyone."""
        return publishing.rotate_credential_key(self.ctx, new_key)

    # --- clock ------------------------------------------------------------------------------

    def advance_clock(self, seconds: float) -> int:
        """Move the injected clock forward (demos, tests); returns the new offset in seconds."""
        return advance_clock(self.ctx.engine, seconds)

    # --- the member app ---------------------------------------------------------------------

    def member_access(self) -> MemberAccess:
        """Sign-in, sessions and a member's own data for the member app (gated.web)."""
        return MemberAccess(self.ctx)

    def member_data(self) -> MemberData:
        """A member's visits per month, their data as one document, their erasure request."""
        return MemberData(self.ctx)

    # --- the staff console ------------------------------------------------------------------

    def staff_access(self) -> StaffAccess:
        """Staff accounts, their second factor and sessions (``gated-billing staff``, gated.web)."""
        return StaffAccess(self.ctx)

    def point_of_sale(self) -> products.PointOfSale:
        """The front desk's products, stock and sales (``gated-billing products``, ``sell``)."""
        return products.PointOfSale(self.ctx)

    def form_keys(self) -> submit_keys.FormKeys:
        """The console's submit keys and one-time messages, kept in the store."""
        return submit_keys.FormKeys(self.ctx)

    # --- the audit log ----------------------------------------------------------------------

    def audited(
        self, actor: Actor, action: str, member_id: str | None, *, account: bool = True
    ) -> AbstractContextManager[Entry]:
        """Run an action inside this and it is recorded with the member's fields before and
        after (nothing is recorded if it raises); set ids worth keeping on ``entry.detail``.
        ``account=False``: an action that cannot change those fields (see ``audit.audited``)."""
        return audit.audited(self.ctx, actor, action, member_id, members.member, account=account)

    def audit_entries(
        self, *, member_id: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Audit rows, newest first (older than ``before_id``), optionally of one member."""
        return audit.entries(self.ctx, member_id=member_id, limit=limit, before_id=before_id)

    # --- the front desk ---------------------------------------------------------------------

    def search_members(
        self, query: str, staff_sites: Sequence[str], after: str | None = None
    ) -> member_search.Found:
        """Members by card UID, id, or part of a name, e-mail or phone, within ``staff_sites``:
        a page in name order (the one after the member ``after``), and whether more match."""
        return member_search.search(self.ctx, query, staff_sites, after)

    def desk_member(self, member_id: str, staff_sites: Sequence[str]) -> dict[str, Any]:
        """One member's page for the desk; NotFound outside ``staff_sites``."""
        return front_desk.member_page(self.ctx, member_id, staff_sites)

    def revoke_card_by_id(self, member_id: str, card_id: int) -> None:
        """Revoke one of a member's cards by its row id (the desk never sees a UID)."""
        members.revoke_card_by_id(self.ctx, member_id, card_id)

    def feed_items(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Gate events in the check-in feed's words (name, standing, reason, what to do)."""
        return front_desk.feed_items(self.ctx, events)

    def create_api_token(
        self, name: str, role: str, sites: Sequence[str], created_by: str
    ) -> tuple[int, str]:
        """A new read-only API token for an integrator: (its id, the token, shown once)."""
        return api_tokens.create(self.ctx, name, role, sites, created_by)

    def revoke_api_token(self, token_id: int) -> None:
        """End an API token at once; NotFound for an unknown or revoked one."""
        api_tokens.revoke(self.ctx, token_id)

    def list_api_tokens(self) -> list[dict[str, Any]]:
        """Every API token, newest first (never the token itself)."""
        return api_tokens.tokens(self.ctx)

    def api_token_account(self, token: str) -> StaffMember | None:
        """The account a live API token reads as, or None."""
        return api_tokens.check(self.ctx, token)

    def set_member_photo(self, member_id: str, data: bytes, taken_by: str) -> tuple[int, int]:
        """Store a member's photo, re-encoded without metadata; PhotoRefused for bad input."""
        return photos.set_photo(self.ctx, member_id, data, taken_by)

    def member_photo(self, member_id: str) -> bytes | None:
        """A member's photo as a JPEG, or None."""
        return photos.photo(self.ctx, member_id)

    def recent_feed(self, staff_sites: Sequence[str], limit: int = 30) -> list[dict[str, Any]]:
        """The newest gate events at ``staff_sites`` as feed items, newest first."""
        return front_desk.recent_events(self.ctx, staff_sites, limit)

    @property
    def gate_events_hook(self) -> Callable[[list[dict[str, Any]]], None] | None:
        return self.ctx.gate_events_hook

    @gate_events_hook.setter
    def gate_events_hook(self, hook: Callable[[list[dict[str, Any]]], None] | None) -> None:
        """Called (in the intake's thread) with each batch of gate events just stored."""
        self.ctx.gate_events_hook = hook

    # --- gate commands from the console -----------------------------------------------------

    async def let_in_once(self, site: str, gate: str, operator: str) -> str:
        """Open a gate once: a ``pulse`` signed with the desk key, naming ``operator`` (the
        staff member) for the gate's event; returns the command id."""
        command = gate_commands.desk_command(self.ctx, site, gate, "pulse", operator)
        await gate_commands.send(self.ctx, command)
        return str(command["id"])

    def lockdown_commands(
        self, site: str, on: bool, operator: str, staff_sites: Sequence[str]
    ) -> list[dict[str, object]]:
        """Signed ``lockdown_on``/``lockdown_off`` commands for every gate of ``site`` (one of
        ``staff_sites``), naming ``operator``; BillingError when none is known."""
        gates = [g for site_, g in gate_health.gates_at(self.ctx, staff_sites) if site_ == site]
        if not gates:
            raise BillingError(f"no gates known at {site}")
        action = "lockdown_on" if on else "lockdown_off"
        return [gate_commands.desk_command(self.ctx, site, g, action, operator) for g in gates]

    async def send_commands(self, commands: Sequence[dict[str, object]]) -> None:
        """Publish signed gate commands (QoS 1) over the console's own connection."""
        await gate_commands.send(self.ctx, *commands)

    def record_gate_status(self, site: str, gate: str, body: object, retained: bool) -> bool:
        """Keep a gate's status (or last will) from its status topic; False when refused."""
        return self.ctx.gate_board.take(site, gate, body, self.ctx.clock(), retained)

    def gate_overview(self, staff_sites: Sequence[str]) -> list[dict[str, Any]]:
        """Every gate at ``staff_sites`` with its health (see ``gate_health.overview``)."""
        return gate_health.overview(self.ctx, staff_sites)

    def known_gates(self, staff_sites: Sequence[str]) -> list[tuple[str, str]]:
        """(site, gate) pairs at ``staff_sites`` the console can send commands to."""
        return gate_commands.known_gates(self.ctx, staff_sites)

    # --- the member app's pass --------------------------------------------------------------

    def pass_keys(self) -> PassKeys:
        """The member app's pass key: challenges, registration, revocation, staff allowances."""
        return PassKeys(self.ctx)

    # --- online sign-up ---------------------------------------------------------------------

    def signup_offer(self) -> dict[str, Any]:
        """The sites and plans one can join online, with prices, tax, terms and freeze rules."""
        return signup.offer(self.ctx)

    def start_signup(
        self, applicant: Applicant, terms: Terms, client_address: str, user_agent: str
    ) -> str:
        """Record a sign-up with its accepted contract and first invoice; returns the member id.
        Nothing reaches the gates until the invoice is paid."""
        return signup.start(self.ctx, applicant, terms, client_address, user_agent)

    def signup_status(self, member_id: str) -> dict[str, Any] | None:
        """The member's online sign-up (plan, first invoice, paid or not), or None."""
        return signup.status(self.ctx, member_id)

    def pay_signup(
        self, member_id: str, payment_method: str | None, submit_key: str, return_url: str
    ) -> ChargeResult:
        """Pay a sign-up's first invoice on-session (saving ``payment_method`` first); paid,
        the membership starts and is published."""
        return signup.pay(self.ctx, member_id, payment_method, submit_key, return_url)

    def contract(self, member_id: str) -> dict[str, Any] | None:
        """The member's accepted contract with the exact terms text, or None."""
        return signup.contract(self.ctx, member_id)

    def purge_unpaid_signups(self) -> int:
        """Delete sign-ups left unpaid for a day; returns how many."""
        return signup.purge_unpaid(self.ctx)

    # --- self-service -----------------------------------------------------------------------

    def freeze_quote(
        self, member_id: str, months: int, start_at: int | None = None
    ) -> dict[str, Any]:
        """Whether a freeze (now, or from ``start_at``) is allowed, its dates and fee, before
        the member or staff confirm."""
        return self_service.freeze_quote(self.ctx, member_id, months, start_at)

    def cancel_quote(self, member_id: str) -> dict[str, Any]:
        """The day a cancellation now would take effect, before the member confirms."""
        return self_service.cancel_quote(self.ctx, member_id)

    def contact(self, member_id: str) -> dict[str, Any]:
        """The member's name, e-mail, phone and emergency contact."""
        return self_service.contact(self.ctx, member_id)

    def update_contact(self, member_id: str, phone: str, emergency_contact: str) -> None:
        """Change the member's phone number and emergency contact."""
        self_service.update_contact(self.ctx, member_id, phone, emergency_contact)

    def request_email_change(self, member_id: str, new_email: str, link_base: str) -> None:
        """Mail a confirmation link to a new address; nothing changes until it is used."""
        self_service.request_email_change(self.ctx, member_id, new_email, link_base)

    def email_change_usable(self, token: str) -> bool:
        """Whether an e-mail change link would still work."""
        return self_service.email_change_usable(self.ctx, token)

    def confirm_email_change(self, token: str) -> str | None:
        """Use an e-mail change link; returns the member id, or None if it does not work."""
        return self_service.confirm_email_change(self.ctx, token)

    def card_setup(self, member_id: str, kind: str = "card") -> CardSetup:
        """A SetupIntent for a card (or a SEPA bank account) the member enters in Stripe.js."""
        return self_service.card_setup(self.ctx, member_id, kind)

    def card_from_setup(self, member_id: str, setup_id: str) -> str:
        """The payment method a succeeded SetupIntent of this member saved."""
        return self_service.card_from_setup(self.ctx, member_id, setup_id)

    def reconcile_fetch(self, since: int | None, until: int | None = None) -> FetchReport:
        """Import the provider's balance movements and payouts (see ``reconcile.fetch``)."""
        return reconcile.fetch(self.engine, self.ctx.gateway, self.clock(), since, until)

    # --- plan and price changes, un-cancel -----------------------------------------------------

    def plan_change_quote(
        self, member_id: str, plan_id: str, at_renewal: bool = False
    ) -> PlanChange:
        """What moving a member to another plan costs (now, prorated, or at the renewal)."""
        return plan_changes.quote(self.ctx, member_id, plan_id, at_renewal)

    def change_plan(
        self, member_id: str, plan_id: str, at_renewal: bool = False
    ) -> tuple[PlanChange, CycleReport]:
        """Move a member to another plan: an upgrade now (prorated, charged), else at renewal."""
        return plan_changes.change_plan(self.ctx, member_id, plan_id, at_renewal)

    def cancel_plan_change(self, member_id: str) -> None:
        """Drop a plan change booked for the renewal."""
        plan_changes.cancel_next_plan(self.ctx, member_id)

    def uncancel(self, member_id: str) -> None:
        """Withdraw a cancellation before the contract ends."""
        membership.uncancel(self.ctx, member_id)

    def schedule_price_change(self, plan_id: str, price: int, effective_at: int) -> int:
        """Announce a plan's new price from a day at least ``prices.NOTICE_DAYS`` ahead."""
        return prices.schedule_price_change(self.ctx, plan_id, price, effective_at)

    def price_changes(self, plan_id: str | None = None) -> list[Row[Any]]:
        """Price changes, soonest first."""
        return prices.price_changes(self.ctx, plan_id)

    def payment_plan_quote(
        self, member_id: str, instalments: int, first_at: int | None = None
    ) -> PaymentPlan:
        """What splitting a member's arrears into ``instalments`` a month apart looks like."""
        return payment_plans.quote(self.ctx, member_id, instalments, first_at)

    def start_payment_plan(
        self, member_id: str, instalments: int, first_at: int | None = None
    ) -> tuple[PaymentPlan, CycleReport]:
        """Put a member's arrears on a payment plan (an instalment due today is charged)."""
        return payment_plans.start(self.ctx, member_id, instalments, first_at)

    def payment_plan_change_quote(
        self, member_id: str, instalments: int, first_at: int | None = None
    ) -> PaymentPlan:
        """The new instalments a change of the member's payment plan would make (no change)."""
        return payment_plans.change_quote(self.ctx, member_id, instalments, first_at)

    def change_payment_plan(
        self, member_id: str, instalments: int, first_at: int | None = None
    ) -> tuple[PaymentPlan, CycleReport]:
        """Re-split what is still owed on a payment plan into new instalments (those paid stay)."""
        return payment_plans.change(self.ctx, member_id, instalments, first_at)
