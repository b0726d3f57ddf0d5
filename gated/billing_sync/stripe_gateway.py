"""``StripeGateway``: off-session PaymentIntents on a customer's saved PaymentMethod through the
official ``stripe`` library (``StripeClient`` over httpx), paced and retried with backoff."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import stripe

from gated.billing_sync.gateway import (
    BalanceEntry,
    BalanceKind,
    CardSetup,
    ChargeResult,
    GatewayRejected,
    GatewayUnavailable,
    IntentState,
    Page,
    Payout,
    RefundResult,
    month_after,
)

log = logging.getLogger("gated.billing.stripe")
T = TypeVar("T")

_STATES: dict[str, IntentState] = {
    "requires_confirmation": "requires_confirmation",
    "processing": "processing",
    "succeeded": "succeeded",
    "requires_action": "requires_action",
    "requires_payment_method": "failed",
    "canceled": "failed",
}


# Stripe's balance transaction types in our words (gateway.BalanceKind); the rest is "other".
_KINDS: dict[str, BalanceKind] = {
    "charge": "charge",
    "payment": "charge",
    "refund": "refund",
    "payment_refund": "refund",
    "payment_failure_refund": "refund",
    "payout": "payout",
    "stripe_fee": "fee",
    "application_fee": "fee",
    "tax_fee": "fee",
}
# Reporting categories of the adjustments a dispute makes (funds withdrawn, reinstated).
_DISPUTE_CATEGORIES = ("dispute", "dispute_reversal")


def balance_entry(txn: Mapping[str, Any]) -> BalanceEntry:
    """A Stripe balance transaction (its ``source`` expanded) in the gateway's words: the
    payment intent of a charge, refund or dispute, or the payout's id, as its ``source``."""
    kind = _KINDS.get(str(txn.get("type")), "other")
    if kind == "other" and txn.get("reporting_category") in _DISPUTE_CATEGORIES:
        kind = "dispute"
    source = txn.get("source")
    ref: str | None = None
    if isinstance(source, Mapping):
        intent = source.get("payment_intent")
        if intent is None and isinstance(source.get("charge"), Mapping):
            intent = source["charge"].get("payment_intent")
        ref = str(intent["id"] if isinstance(intent, Mapping) else intent or source.get("id"))
    elif source is not None:
        ref = str(source)
    return BalanceEntry(
        str(txn["id"]),
        kind,
        int(txn["amount"]),
        int(txn.get("fee") or 0),
        str(txn["currency"]).upper(),
        int(txn["created"]),
        ref,
    )


def _created(lo: int | None, hi: int | None) -> dict[str, Any]:
    bounds: dict[str, int] = {}
    if lo is not None:
        bounds["gte"] = lo
    if hi is not None:
        bounds["lt"] = hi
    return {"created": bounds} if bounds else {}


# The PaymentIntent metadata key naming the payment method's type, for Stripe-compatible fakes
# that do not echo ``payment_method_types`` (localstripe).
METHOD_KEY = "payment_method_type"


def method_of(intent: Mapping[str, Any]) -> str:
    """What a PaymentIntent (as the API or a webhook gives it) is paid with: its one payment
    method type (``card``, ``sepa_debit``, ...), else the type ``create_intent`` put in its
    metadata, else ``card``."""
    types = intent.get("payment_method_types") or []
    if len(types) == 1:
        return str(types[0])
    return str((intent.get("metadata") or {}).get(METHOD_KEY) or "card")


class StripeGateway:
    """Charges through Stripe (or a Stripe-compatible fake at ``api_base``).

    Requests are paced to ``max_requests_per_s`` (Stripe allows ~100/s live), with up to
    ``concurrency`` of a billing cycle's in flight at once, and a 429, a 5xx or a network error
    is retried up to ``max_retries`` times with exponential backoff under the same idempotency
    key. ``off_session`` marks confirmations as merchant-initiated, which live Stripe
    needs for renewals, and sends the ``return_url`` of on-session ones (3-D Secure redirects);
    some local fakes reject both parameters.
    """

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        max_requests_per_s: float = 25.0,
        concurrency: int = 8,
        max_retries: int = 4,
        off_session: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._api_key = api_key
        self._api_base = api_base
        # Idle clients, each with its own HTTP connections, for the calls a cycle makes from
        # several threads at once: one is taken per call and given back after it.
        self._clients: queue.SimpleQueue[stripe.StripeClient] = queue.SimpleQueue()
        self.concurrency = concurrency
        self._interval = 1.0 / max_requests_per_s
        self._max_retries = max_retries
        self._off_session = off_session
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        # Each payment method's type, asked of Stripe once per method and process (a method's
        # type never changes): a few dozen bytes a member.
        self._types: dict[str, str] = {}

    def _pace(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self._interval
        if wait > 0:
            self._sleep(wait)

    def _new_client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            self._api_key,
            base_addresses={"api": self._api_base} if self._api_base else None,
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
            max_network_retries=0,
        )

    def _call(self, what: str, fn: Callable[[stripe.StripeClient], T]) -> T:
        try:
            client = self._clients.get_nowait()
        except queue.Empty:
            client = self._new_client()
        try:
            return self._call_with(client, what, fn)
        finally:
            self._clients.put(client)

    def _call_with(
        self, client: stripe.StripeClient, what: str, fn: Callable[[stripe.StripeClient], T]
    ) -> T:
        delay = 0.5
        for attempt in range(self._max_retries + 1):
            self._pace()
            try:
                return fn(client)
            except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
                error: Exception = exc
            except stripe.APIError as exc:  # 5xx
                error = exc
            except stripe.CardError:
                raise
            except stripe.StripeError as exc:
                raise GatewayRejected(f"stripe refused {what}: {exc.user_message or exc}") from exc
            log.warning(
                "event=stripe_retry call=%s attempt=%d error=%s",
                what,
                attempt + 1,
                type(error).__name__,
            )
            if attempt < self._max_retries:
                self._sleep(delay)
                delay = min(delay * 2, 8.0)
        raise GatewayUnavailable(f"stripe {what} failed after {self._max_retries + 1} tries")

    def create_customer(self, member_id: str, email: str | None, name: str) -> str:
        """A Stripe customer tagged with the member id (idempotent per member)."""
        params: dict[str, Any] = {"name": name, "metadata": {"member_id": member_id}}
        if email:
            params["email"] = email
        customer = self._call(
            "customers.create",
            lambda c: c.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"customer-{member_id}"},
            ),
        )
        return str(customer.id)

    def attach_payment_method(self, customer_ref: str, payment_method: str) -> str:
        """Attach a PaymentMethod (e.g. from Stripe Elements) to the customer; a card the
        issuer declines on attaching is ``GatewayRejected`` with the decline."""
        try:
            pm = self._call(
                "payment_methods.attach",
                lambda c: c.v1.payment_methods.attach(
                    payment_method, params={"customer": customer_ref}
                ),
            )
        except stripe.CardError as exc:
            err = exc.error
            code = (err.decline_code if err else None) or exc.code or "card_declined"
            raise GatewayRejected(
                f"the card was declined ({code.replace('_', ' ')}); nothing was charged"
            ) from exc
        return str(pm.id)

    def delete_customer(self, customer_ref: str) -> None:
        """Delete a customer (an enrolment whose card was refused)."""
        self._call("customers.delete", lambda c: c.v1.customers.delete(customer_ref))

    def create_intent(
        self,
        *,
        customer_ref: str | None,
        payment_method: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> str:
        """An unconfirmed PaymentIntent on the saved method (charges nothing yet). It names the
        method's type in ``payment_method_types``, as Stripe requires of a method other than a
        card (a SEPA debit: ``sepa_debit``; its mandate is the one the member accepted when the
        method was saved, which Stripe uses for every later debit on it)."""
        kind = self.method_type(payment_method)
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "payment_method_types": [kind],
            "confirm": False,
            "metadata": {**metadata, METHOD_KEY: kind},
        }
        if customer_ref:
            params["customer"] = customer_ref
        intent = self._call(
            "payment_intents.create",
            lambda c: c.v1.payment_intents.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(intent.id)

    def confirm_intent(
        self, intent_id: str, idempotency_key: str, *, return_url: str | None = None
    ) -> ChargeResult:
        """Confirm off-session, or on-session with ``return_url`` (the member is on the pay
        page; 3-D Secure redirects there and back); a card decline (HTTP 402) becomes a failed
        result."""
        params: dict[str, Any] = {}
        if return_url is None and self._off_session:
            params["off_session"] = True
        elif return_url is not None and self._off_session:
            # A fake that rejects off_session rejects return_url too (localstripe).
            params["return_url"] = return_url
        try:
            intent = self._call(
                "payment_intents.confirm",
                lambda c: c.v1.payment_intents.confirm(
                    intent_id,
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": f"{idempotency_key}-confirm"},
                ),
            )
        except stripe.CardError as exc:
            err = exc.error
            decline = (err.decline_code if err else None) or exc.code
            advice = getattr(err, "advice_code", None) if err else None
            if exc.code == "authentication_required":
                decline = "authentication_required"
            return ChargeResult(intent_id, "failed", decline, advice)
        return self._result(intent)

    def retrieve_intent(self, intent_id: str) -> ChargeResult:
        """Where the intent stands (used after a restart and to settle slow methods)."""
        intent = self._call(
            "payment_intents.retrieve", lambda c: c.v1.payment_intents.retrieve(intent_id)
        )
        return self._result(intent)

    def create_setup(self, customer_ref: str, kind: str = "card") -> CardSetup:
        """A SetupIntent for a card (or a SEPA Direct Debit bank account, ``kind``
        "sepa_debit") the member enters in Stripe.js, kept for off-session renewals."""
        params = {"customer": customer_ref, "usage": "off_session", "payment_method_types": [kind]}
        setup = self._call(
            "setup_intents.create",
            lambda c: c.v1.setup_intents.create(params=params),  # type: ignore[arg-type]
        )
        return CardSetup(str(setup.id), str(setup.client_secret))

    def setup_payment_method(self, setup_id: str, customer_ref: str) -> str | None:
        """The card a succeeded SetupIntent of this customer saved."""
        setup = self._call(
            "setup_intents.retrieve", lambda c: c.v1.setup_intents.retrieve(setup_id)
        ).to_dict()
        if setup.get("status") != "succeeded" or setup.get("customer") != customer_ref:
            return None
        pm = setup.get("payment_method")
        if isinstance(pm, dict):
            pm = pm.get("id")
        return str(pm) if pm else None

    def list_balance(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
        payout: str | None = None,
    ) -> Page[BalanceEntry]:
        """A page of balance transactions, newest first, each with its source expanded so a
        charge, refund or dispute names its payment intent (one request, not one per item).
        ``payout`` lists what an automatic payout carried (Stripe's ``payout`` filter)."""
        params: dict[str, Any] = {"limit": limit, "expand": ["data.source"]}
        params.update(_created(created_from, created_to))
        if after is not None:
            params["starting_after"] = after
        if payout is not None:
            params["payout"] = payout
        listed = self._call(
            "balance_transactions.list",
            lambda c: c.v1.balance_transactions.list(params=params),  # type: ignore[arg-type]
        ).to_dict()
        return Page([balance_entry(t) for t in listed["data"]], bool(listed.get("has_more")))

    def list_payouts(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
    ) -> Page[Payout]:
        """A page of payouts, newest first."""
        params: dict[str, Any] = {"limit": limit}
        params.update(_created(created_from, created_to))
        if after is not None:
            params["starting_after"] = after
        listed = self._call(
            "payouts.list",
            lambda c: c.v1.payouts.list(params=params),  # type: ignore[arg-type]
        ).to_dict()
        return Page(
            [
                Payout(
                    str(p["id"]),
                    int(p["amount"]),
                    str(p["currency"]).upper(),
                    int(p["created"]),
                    int(p.get("arrival_date") or p["created"]),
                    str(p.get("status") or ""),
                )
                for p in listed["data"]
            ],
            bool(listed.get("has_more")),
        )

    def method_type(self, payment_method: str) -> str:
        """The payment method's type (``card``, ``sepa_debit``, ...)."""
        kind = self._types.get(payment_method)
        if kind is None:
            pm = self._call(
                "payment_methods.retrieve",
                lambda c: c.v1.payment_methods.retrieve(payment_method),
            ).to_dict()
            kind = self._types[payment_method] = str(pm.get("type") or "card")
        return kind

    def card_expiry(self, payment_method: str) -> int | None:
        """The card's expiry from the PaymentMethod (None for SEPA and other methods)."""
        pm = self._call(
            "payment_methods.retrieve", lambda c: c.v1.payment_methods.retrieve(payment_method)
        ).to_dict()
        card = pm.get("card") or {}
        year, month = card.get("exp_year"), card.get("exp_month")
        if not isinstance(year, int) or not isinstance(month, int) or not 1 <= month <= 12:
            return None
        return month_after(year, month)

    def refund(self, intent_id: str, amount: int, idempotency_key: str) -> RefundResult:
        """A refund of ``amount`` on the intent's charge, its key in the metadata so that
        ``refunds_of`` finds it where idempotency keys are not honoured (localstripe)."""
        refund = self._call(
            "refunds.create",
            lambda c: c.v1.refunds.create(
                params={
                    "payment_intent": intent_id,
                    "amount": amount,
                    "metadata": {"refund": idempotency_key},
                },
                options={"idempotency_key": idempotency_key},
            ),
        )
        return _refund(refund.to_dict(), intent_id)

    def refunds_of(self, intent_id: str) -> list[RefundResult]:
        """The intent's refunds (up to 100: more refunds of one payment than that is not a
        gym's)."""
        page = self._call(
            "refunds.list",
            lambda c: c.v1.refunds.list(params={"payment_intent": intent_id, "limit": 100}),
        )
        return [_refund(r.to_dict(), intent_id) for r in page.data]

    def submit_dispute_evidence(self, dispute_id: str, fields: Mapping[str, str]) -> None:
        """Update the dispute's evidence and submit it to the bank."""
        self._call(
            "disputes.update",
            lambda c: c.v1.disputes.update(
                dispute_id,
                params={"evidence": dict(fields), "submit": True},  # type: ignore[arg-type]
            ),
        )

    @staticmethod
    def _result(intent: stripe.PaymentIntent) -> ChargeResult:
        data = intent.to_dict()
        state = _STATES.get(str(data.get("status")), "failed")
        if data.get("status") == "requires_payment_method" and not data.get("last_payment_error"):
            # Created but never confirmed with a method: nothing was charged.
            state = "requires_confirmation"
        error = data.get("last_payment_error") or {}
        decline = error.get("decline_code") or error.get("code") if state == "failed" else None
        advice = error.get("advice_code") if state == "failed" else None
        redirect = (data.get("next_action") or {}).get("redirect_to_url") or {}
        action_url = redirect.get("url") if state == "requires_action" else None
        secret = data.get("client_secret") if state == "requires_action" else None
        return ChargeResult(
            str(data["id"]), state, decline, advice, action_url, secret, method_of(data)
        )


def _refund(data: Mapping[str, Any], intent_id: str) -> RefundResult:
    """A Stripe Refund as the gateway reports it; ``requires_action`` and ``pending`` are on
    their way back, ``failed`` and ``canceled`` gave nothing back."""
    status = str(data.get("status"))
    state: Literal["succeeded", "pending", "failed"] = (
        "succeeded"
        if status == "succeeded"
        else "failed"
        if status in ("failed", "canceled")
        else "pending"
    )
    key = (data.get("metadata") or {}).get("refund")
    return RefundResult(str(data["id"]), intent_id, int(data["amount"]), state, key)
