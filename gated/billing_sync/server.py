"""The HTTP side of ``gated-billing serve`` (starlette): Stripe webhooks, the per-site signed
snapshot for gates holding a bearer token, and the pay page a pay link opens."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import secrets
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs

import stripe
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gated.billing_sync import schema
from gated.billing_sync.context import one_offset_per_request
from gated.billing_sync.errors import BillingError, InvoiceClosed, NotFound
from gated.billing_sync.gateway import ChargeResult, GatewayError
from gated.billing_sync.metrics import WEBHOOK_FAILURES, registry_for
from gated.billing_sync.notices import format_amount
from gated.billing_sync.service import Billing
from gated.billing_sync.stripe_gateway import method_of
from gated.billing_sync.webhooks import DisputeMoney
from gated.billing_sync.worker_lanes import ReadLane
from gated.contract import build_snapshot, format_time
from gated.http_limits import FORM_BYTES, PHOTO_BYTES, WEBHOOK_BYTES, BodyLimit

log = logging.getLogger("gated.billing.http")

# Route patterns (over the whole path) with their body limits; any other route gets FORM_BYTES.
BODY_LIMITS = [
    (r"/v1/stripe/webhook", WEBHOOK_BYTES),
    (r"/desk/members/[^/]+/photo", PHOTO_BYTES),
]


def snapshot_bytes(billing: Billing, site: str) -> bytes:
    """The site's snapshot: every member state naming the site (erased ones included), signed
    once by the trailer."""
    ms = schema.member_states
    with billing.reader.connect() as conn:
        rows = conn.execute(select(ms.c.sites, ms.c.payload).order_by(ms.c.version)).all()
    states = (json.loads(r.payload) for r in rows if site in json.loads(r.sites))
    return build_snapshot(site, states, billing.keys.current_signer(), format_time(billing.clock()))


def apply_stripe_event(billing: Billing, event: dict[str, Any]) -> bool:
    """Apply one verified Stripe event once (by event id); returns False for a repeat or an
    event type we do not act on. Each handler is itself order-independent."""
    if billing.webhook_known(str(event["id"])):
        return False
    applied = _apply(billing, event)
    # Recorded after applying: a crash in between replays the event, and every handler is
    # idempotent, so it is applied once in effect and never lost.
    billing.webhook_done(str(event["id"]), str(event["type"]))
    return applied


def dispute_money(obj: dict[str, Any]) -> DisputeMoney:
    """A Stripe Dispute's amount, currency and fee: the fees of its balance transactions (the
    withdrawal's, less any given back when it is won), None when it lists none."""
    moves = obj.get("balance_transactions") or []
    fee = sum(int(bt.get("fee") or 0) for bt in moves) if moves else None
    amount = obj.get("amount")
    currency = obj.get("currency")
    return DisputeMoney(
        int(amount) if amount is not None else None,
        str(currency).upper() if currency else None,
        fee,
    )


def _apply(billing: Billing, event: dict[str, Any]) -> bool:
    obj: dict[str, Any] = event["data"]["object"]
    kind = event["type"]
    if kind == "payment_intent.succeeded":
        result = ChargeResult(obj["id"], "succeeded", method=method_of(obj))
        return billing.intent_update(obj["id"], result)
    if kind == "payment_intent.payment_failed":
        err = obj.get("last_payment_error") or {}
        result = ChargeResult(
            obj["id"], "failed", err.get("decline_code") or err.get("code"), err.get("advice_code")
        )
        return billing.intent_update(obj["id"], result)
    if kind == "charge.refunded" and obj.get("payment_intent"):
        # A refund made on Stripe's side (its dashboard), or ours reported back: booked once.
        return billing.refunds_reported(str(obj["payment_intent"]))
    if kind == "charge.dispute.created":
        billing.dispute_opened(obj["id"], obj.get("payment_intent"), dispute_money(obj))
        return True
    if kind == "charge.dispute.closed":
        billing.dispute_closed(
            obj["id"],
            obj.get("payment_intent"),
            str(obj.get("status", "closed")),
            dispute_money(obj),
        )
        return True
    if kind == "payment_method.attached" and obj.get("customer"):
        billing.payment_method_attached(obj["customer"], obj["id"])
        return True
    if kind == "payment_method.detached":
        billing.payment_method_detached(obj["id"])
        return True
    return False


# The token in a pay link is a credential: no referrer carries it away, nothing caches the page,
# no other site frames it.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
_SUBMIT_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _page(status: int, title: str, body: str) -> HTMLResponse:
    """A small self-contained HTML page; ``body`` is already escaped."""
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:36em;"
        "margin:2em auto;padding:0 1em}table{border-collapse:collapse;width:100%}"
        "td,th{padding:.3em;border-bottom:1px solid #ddd;text-align:left}"
        ".n{text-align:right}button{font-size:1.1em;padding:.5em 1.5em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=_PAGE_HEADERS)


def _invoice_page(invoice: dict[str, Any]) -> HTMLResponse:
    """The open invoice, itemized, with a form that pays it (one fresh submit key per render)."""
    cur = invoice["currency"]
    rows = "".join(
        f"<tr><td>{html.escape(line['description'])}</td><td class=n>{line['quantity']}</td>"
        f"<td class=n>{format_amount(line['unit_amount'], cur)}</td>"
        f"<td class=n>{format_amount(line['amount'], cur)}</td></tr>"
        for line in invoice["lines"]
    )
    owed = format_amount(invoice["owed"], cur)
    body = (
        f"<p>Hello {html.escape(invoice['name'])}, this is invoice {invoice['id']}.</p>"
        "<table><tr><th>Item</th><th class=n>Qty</th><th class=n>Unit</th>"
        f"<th class=n>Amount</th></tr>{rows}"
        f"<tr><th colspan=3>Total</th><th class=n>{format_amount(invoice['total'], cur)}</th></tr>"
        f"<tr><td colspan=3>Paid</td><td class=n>{format_amount(invoice['paid'], cur)}</td></tr>"
        f"<tr><th colspan=3>Amount owed</th><th class=n id=owed>{owed}</th></tr></table>"
        f'<form method="post"><input type="hidden" name="key" value="{secrets.token_urlsafe(16)}">'
        f"<p><button>Pay {owed} with your card on file</button></p></form>"
        "<p>Your bank may ask you to confirm the payment.</p>"
    )
    return _page(200, f"Invoice {invoice['id']}: {owed} due", body)


def _closed_page(invoice: dict[str, Any]) -> HTMLResponse:
    if invoice["status"] == "paid" or invoice["owed"] == 0:
        return _page(410, "Already paid", f"<p>Invoice {invoice['id']} is paid. Thank you.</p>")
    return _page(410, "Nothing to pay", f"<p>Invoice {invoice['id']} is {invoice['status']}.</p>")


def _result_page(billing: Billing, invoice_id: int, result: ChargeResult) -> Response:
    """What the member sees after submitting the pay form."""
    back = f'<p><a href="{html.escape(billing.pay_link(invoice_id))}">Back to the invoice</a></p>'
    if result.action_url is not None:
        return RedirectResponse(result.action_url, status_code=303, headers=_PAGE_HEADERS)
    if result.state == "succeeded":
        body = f"<p>Invoice {invoice_id} is paid. The gates let you in again at once.</p>"
        return _page(200, "Thank you", body)
    if result.state == "failed":
        reason = html.escape((result.decline_code or "declined").replace("_", " "))
        body = f"<p>Your bank declined the payment ({reason}). Nothing was charged.</p>"
        return _page(402, "Payment declined", body + back)
    body = "<p>Your payment is being processed; this page shows the invoice paid once it is.</p>"
    return _page(202, "Payment in progress", body + back)


def create_app(
    billing: Billing, webhook_secret: str | None, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The starlette application; blocking store work runs in threads off the event loop.
    ``extra_routes``: the member app and its API (gated.web), which ``serve`` wires in (billing
    never imports the web)."""

    async def webhook(request: Request) -> Response:
        if webhook_secret is None:
            return PlainTextResponse("webhooks are not configured", status_code=404)
        payload = await request.body()
        signature = request.headers.get("stripe-signature", "")
        try:
            event = stripe.Webhook.construct_event(payload, signature, webhook_secret)
        except (ValueError, stripe.SignatureVerificationError):
            log.warning("event=webhook_rejected reason=bad_signature")
            WEBHOOK_FAILURES["bad_signature"] += 1
            return PlainTextResponse("bad signature", status_code=400)
        applied = await asyncio.to_thread(apply_stripe_event, billing, event.to_dict())
        log.info("event=webhook id=%s type=%s applied=%s", event.id, event.type, applied)
        return JSONResponse({"received": True, "applied": applied})

    async def snapshot(request: Request) -> Response:
        site = request.path_params["site"]
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        gate = await asyncio.to_thread(billing.gate_for_token, token) if token else None
        if gate is None or gate[0] != site:
            return PlainTextResponse(
                "unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await asyncio.to_thread(snapshot_bytes, billing, site)
        log.info("event=snapshot site=%s gate=%s bytes=%d", site, gate[1], len(body))
        return Response(body, media_type="application/gzip")

    async def pay(request: Request) -> Response:
        invoice_id = billing.invoice_for_pay_token(request.path_params["token"])
        if invoice_id is None:
            return _page(404, "Payment link not found", "<p>This payment link is not valid.</p>")
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            key = (form.get("key") or [""])[0]
            if not _SUBMIT_KEY.fullmatch(key):
                return _page(400, "Bad request", "<p>Open the payment link again.</p>")
            try:
                result = await asyncio.to_thread(
                    billing.pay_invoice, invoice_id, key, billing.pay_link(invoice_id)
                )
            except NotFound:
                return _page(404, "Payment link not found", "<p>No such invoice.</p>")
            except InvoiceClosed:
                return _closed_page(await asyncio.to_thread(billing.invoice, invoice_id))
            except (BillingError, GatewayError) as exc:
                log.warning("event=pay_link_error invoice=%s error=%s", invoice_id, exc)
                body = "<p>The payment could not be made just now. Please try again shortly.</p>"
                return _page(503, "Try again", body)
            return _result_page(billing, invoice_id, result)
        try:
            # Back from the bank's authentication page (or just reloaded): record the outcome.
            await asyncio.to_thread(billing.pay_returned, invoice_id)
            invoice = await asyncio.to_thread(billing.invoice, invoice_id)
        except NotFound:
            return _page(404, "Payment link not found", "<p>No such invoice.</p>")
        if invoice["status"] != "open" or invoice["owed"] <= 0:
            return _closed_page(invoice)
        return _invoice_page(invoice)

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    registry = registry_for(billing.engine)

    async def metrics(_request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/v1/stripe/webhook", webhook, methods=["POST"]),
            Route("/v1/sites/{site}/snapshot", snapshot, methods=["GET"]),
            Route("/pay/{token}", pay, methods=["GET", "POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *extra_routes,
        ],
        # Every body is limited while it streams in, before a signature or a form is looked at:
        # the webhook at 1 MiB (Stripe's events are a few KiB), the pay form and everything else
        # at 64 KiB.
        middleware=[
            Middleware(BodyLimit, routes=BODY_LIMITS, default=FORM_BYTES),
            Middleware(OneClockOffset),
            Middleware(ReadLane),
        ],
    )


class OneClockOffset:
    """Each request reads the billing clock's offset from the store once
    (``context.one_offset_per_request``), not at every ``clock()`` of the service calls it makes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with one_offset_per_request():
            await self.app(scope, receive, send)


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGINT/SIGTERM and stops every
    task together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
