"""The payment seam: what the billing service needs from a payment provider, its results and
errors, and ``FaultyGateway``, which wraps any provider (``StripeGateway``, or the
``SimulatedGateway`` of ``simulator.py``) to fail or kill the process at a chosen step.

A charge is two calls so that a crash can never charge twice: ``create_intent`` (unconfirmed,
under an idempotency key) and, once the caller has committed the intent id, ``confirm_intent``.
After a restart ``retrieve_intent`` says what became of an intent whose answer was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

from gated.errors import GatedError

IntentState = Literal[
    "requires_confirmation", "processing", "succeeded", "failed", "requires_action"
]


class GatewayError(GatedError):
    """Base of every payment-gateway error."""


class GatewayUnavailable(GatewayError):
    """The provider could not be reached or kept refusing (429/5xx) after retries: nothing is
    known about the request, so try again later with the same idempotency key."""


class GatewayRejected(GatewayError):
    """The provider refused the request itself (4xx other than a card decline): a configuration
    or data problem that retrying will not fix."""


class ChargeResult(NamedTuple):
    """Where a PaymentIntent stands; decline and advice codes are set when it failed.
    ``action_url`` is where a member paying on-session must go to authenticate (3-D Secure)
    before the intent can succeed; ``client_secret`` lets Stripe.js in the member's browser
    finish such an intent (3-D Secure in the page); ``method`` is what the payment is booked
    as."""

    intent_id: str
    state: IntentState
    decline_code: str | None = None
    advice_code: str | None = None
    action_url: str | None = None
    client_secret: str | None = None
    # How the money moves (the provider's payment method type): ``card``, ``sepa_debit``, ...
    method: str = "card"


class RefundResult(NamedTuple):
    """Money given back on a PaymentIntent: the provider's refund id, how much, where it stands
    (``pending`` is on its way back and is booked as given), and the idempotency key we made it
    under (from its metadata; None for one made on the provider's side, e.g. its dashboard)."""

    refund_id: str
    intent_id: str
    amount: int
    state: Literal["succeeded", "pending", "failed"]
    key: str | None = None


class CardSetup(NamedTuple):
    """A SetupIntent: the member's browser saves a card with it through Stripe.js (3-D Secure
    included) using ``client_secret``; the card never passes through us."""

    setup_id: str
    client_secret: str


# What a movement on the provider's balance is, in our words. ``other`` is anything else
# (adjustments, transfers, ...): kept and shown, never matched against our books.
BalanceKind = Literal["charge", "refund", "dispute", "fee", "payout", "other"]


class BalanceEntry(NamedTuple):
    """One movement on the provider's balance (Stripe: a balance transaction). ``amount`` is
    signed (a refund, a dispute or a payout takes money out) and ``fee`` is what the provider
    kept of it; ``source`` is what the money belongs to: the payment intent of a charge, refund
    or dispute (the reference our books hold for the payment), or the payout of a payout."""

    id: str
    kind: BalanceKind
    amount: int
    fee: int
    currency: str
    created: int
    source: str | None = None


class Payout(NamedTuple):
    """Money the provider sent to the gym's bank account."""

    id: str
    amount: int
    currency: str
    created: int
    arrival: int
    status: str


Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class Page(Generic[Item]):
    """One page of a list the provider answers newest first; the next page starts after the
    last item's id (the cursor) while ``has_more``."""

    items: list[Item]
    has_more: bool


class BalanceSource(Protocol):
    """What reconciliation reads from a payment provider: its balance movements and payouts,
    a page per request, newest first, within ``[created_from, created_to)`` (None: open)."""

    # Pages reconciliation may ask for at once (each waits for a network round trip).
    concurrency: int

    def list_balance(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
        payout: str | None = None,
    ) -> Page[BalanceEntry]:
        """Balance movements, or with ``payout`` the movements that payout carried."""
        ...

    def list_payouts(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
    ) -> Page[Payout]:
        """Payouts to the gym's bank account."""
        ...


class PaymentGateway(BalanceSource, Protocol):
    """What the billing service asks of a payment provider."""

    name: str
    # How many calls a billing cycle may have in flight at once. A remote provider answers each
    # after a network round trip, so one at a time is a few charges a second; the gateway paces
    # its own calls to the provider's rate limit whatever this is.
    concurrency: int

    def create_customer(self, member_id: str, email: str | None, name: str) -> str:
        """Create the provider's customer record; returns its id."""
        ...

    def attach_payment_method(self, customer_ref: str, payment_method: str) -> str:
        """Save a payment method on the customer for off-session charges; returns its id. A card
        the issuer refuses raises ``GatewayRejected``."""
        ...

    def delete_customer(self, customer_ref: str) -> None:
        """Delete a customer record made for an enrolment that did not go through."""
        ...

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
        """Create an unconfirmed PaymentIntent; returns its id. Charges nothing."""
        ...

    def confirm_intent(
        self, intent_id: str, idempotency_key: str, *, return_url: str | None = None
    ) -> ChargeResult:
        """Confirm (charge) an intent created by ``create_intent``. Off-session (a renewal)
        unless ``return_url`` is given: then the member is paying on a page now, and a bank that
        wants authentication answers ``requires_action`` with an ``action_url`` that comes back
        to ``return_url``."""
        ...

    def retrieve_intent(self, intent_id: str) -> ChargeResult:
        """Where an intent stands now."""
        ...

    def create_setup(self, customer_ref: str, kind: str = "card") -> CardSetup:
        """A SetupIntent for the customer, for a card (or, ``kind`` "sepa_debit", a bank
        account under a SEPA mandate) entered in the browser."""
        ...

    def refund(self, intent_id: str, amount: int, idempotency_key: str) -> RefundResult:
        """Give back ``amount`` of a succeeded intent, tagged with ``idempotency_key`` so that
        ``refunds_of`` finds it after a crash. More than is left to refund raises
        ``GatewayRejected``."""
        ...

    def refunds_of(self, intent_id: str) -> list[RefundResult]:
        """Every refund of an intent, ours and those made on the provider's side."""
        ...

    def submit_dispute_evidence(self, dispute_id: str, fields: Mapping[str, str]) -> None:
        """Send evidence (the provider's text fields) for a dispute and submit it."""
        ...

    def setup_payment_method(self, setup_id: str, customer_ref: str) -> str | None:
        """The payment method a SetupIntent of this customer saved, or None while it has not
        succeeded (or when it belongs to another customer)."""
        ...

    def card_expiry(self, payment_method: str) -> int | None:
        """When a card payment method stops working: the first instant (Unix seconds, UTC)
        after its expiry month; None for another kind of method or when unknown."""
        ...


# --- fault injection ----------------------------------------------------------------------------

T = TypeVar("T")


class FaultyGateway:
    """A payment gateway that hands every call to ``inner`` and lets ``fault`` act around it:
    the seam for crash and failure tests, as httpx's ``MockTransport`` is for HTTP. Production
    code never builds one.

    ``fault(step)`` is called with ``"before_<method>"`` and ``"after_<method>"`` around each
    call (``after_create_intent``, ``before_confirm_intent``, ``after_confirm_intent``, ...). It
    returns to let the call go on, raises (a ``GatewayError`` is the provider failing or out of
    reach; the caller gets it in the call's place), or kills the process, as a power cut or an
    OOM kill would at that step. Against the charging protocol: ``after_create_intent`` is an
    intent the provider holds but whose id is not committed, ``before_confirm_intent`` is an id
    committed but nothing charged, ``after_confirm_intent`` is money taken but not booked.

    A new gateway call (a refund, a plan change's proration) is added to ``PaymentGateway`` and
    here, through ``_call``: mypy then checks this still is a ``PaymentGateway``, and a crash
    test gets ``before_refund``/``after_refund`` without touching the code under test.
    """

    def __init__(self, inner: PaymentGateway, fault: Callable[[str], None]) -> None:
        self.inner = inner
        self.fault = fault
        self.name = inner.name
        self.concurrency = inner.concurrency

    def _call(self, method: str, call: Callable[[], T]) -> T:
        self.fault(f"before_{method}")
        result = call()
        self.fault(f"after_{method}")
        return result

    def create_customer(self, member_id: str, email: str | None, name: str) -> str:
        """``inner.create_customer`` between its two steps."""
        return self._call(
            "create_customer", lambda: self.inner.create_customer(member_id, email, name)
        )

    def attach_payment_method(self, customer_ref: str, payment_method: str) -> str:
        """``inner.attach_payment_method`` between its two steps."""
        return self._call(
            "attach_payment_method",
            lambda: self.inner.attach_payment_method(customer_ref, payment_method),
        )

    def delete_customer(self, customer_ref: str) -> None:
        """``inner.delete_customer`` between its two steps."""
        self._call("delete_customer", lambda: self.inner.delete_customer(customer_ref))

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
        """``inner.create_intent`` between its two steps."""
        return self._call(
            "create_intent",
            lambda: self.inner.create_intent(
                customer_ref=customer_ref,
                payment_method=payment_method,
                amount=amount,
                currency=currency,
                idempotency_key=idempotency_key,
                metadata=metadata,
            ),
        )

    def confirm_intent(
        self, intent_id: str, idempotency_key: str, *, return_url: str | None = None
    ) -> ChargeResult:
        """``inner.confirm_intent`` between its two steps."""
        return self._call(
            "confirm_intent",
            lambda: self.inner.confirm_intent(intent_id, idempotency_key, return_url=return_url),
        )

    def retrieve_intent(self, intent_id: str) -> ChargeResult:
        """``inner.retrieve_intent`` between its two steps."""
        return self._call("retrieve_intent", lambda: self.inner.retrieve_intent(intent_id))

    def create_setup(self, customer_ref: str, kind: str = "card") -> CardSetup:
        """``inner.create_setup`` between its two steps."""
        return self._call("create_setup", lambda: self.inner.create_setup(customer_ref, kind))

    def setup_payment_method(self, setup_id: str, customer_ref: str) -> str | None:
        """``inner.setup_payment_method`` between its two steps."""
        return self._call(
            "setup_payment_method",
            lambda: self.inner.setup_payment_method(setup_id, customer_ref),
        )

    def list_balance(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
        payout: str | None = None,
    ) -> Page[BalanceEntry]:
        """``inner.list_balance`` between its two steps."""
        return self._call(
            "list_balance",
            lambda: self.inner.list_balance(
                after=after,
                limit=limit,
                created_from=created_from,
                created_to=created_to,
                payout=payout,
            ),
        )

    def list_payouts(
        self,
        *,
        after: str | None,
        limit: int,
        created_from: int | None = None,
        created_to: int | None = None,
    ) -> Page[Payout]:
        """``inner.list_payouts`` between its two steps."""
        return self._call(
            "list_payouts",
            lambda: self.inner.list_payouts(
                after=after, limit=limit, created_from=created_from, created_to=created_to
            ),
        )

    def card_expiry(self, payment_method: str) -> int | None:
        """``inner.card_expiry`` between its two steps."""
        return self._call("card_expiry", lambda: self.inner.card_expiry(payment_method))

    def refund(self, intent_id: str, amount: int, idempotency_key: str) -> RefundResult:
        """``inner.refund`` between its two steps (``after_refund``: money given back, not
        booked)."""
        return self._call("refund", lambda: self.inner.refund(intent_id, amount, idempotency_key))

    def refunds_of(self, intent_id: str) -> list[RefundResult]:
        """``inner.refunds_of`` between its two steps."""
        return self._call("refunds_of", lambda: self.inner.refunds_of(intent_id))

    def submit_dispute_evidence(self, dispute_id: str, fields: Mapping[str, str]) -> None:
        """``inner.submit_dispute_evidence`` between its two steps."""
        self._call(
            "submit_dispute_evidence",
            lambda: self.inner.submit_dispute_evidence(dispute_id, fields),
        )


# Both providers answer ``card_expiry`` with this instant, so it lives at the seam.
def month_after(year: int, month: int) -> int:
    """The first instant (Unix seconds, UTC) after a card's expiry month."""
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())
