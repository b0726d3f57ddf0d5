"""The HTTP side of ``gated-billing serve`` (starlette): Stripe webhooks and the per-site signed
snapshot for gates holding a bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import stripe
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gated.billing_sync import schema
from gated.billing_sync.gateway import ChargeResult
from gated.billing_sync.metrics import WEBHOOK_FAILURES, registry_for
from gated.billing_sync.service import Billing
from gated.contract import build_snapshot, format_time

log = logging.getLogger("gated.billing.http")


def snapshot_bytes(billing: Billing, site: str) -> bytes:
    """The site's snapshot: every member state naming the site (erased ones included), signed
    once by the trailer."""
    ms = schema.member_states
    with billing.engine.connect() as conn:
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


def _apply(billing: Billing, event: dict[str, Any]) -> bool:
    obj: dict[str, Any] = event["data"]["object"]
    kind = event["type"]
    if kind == "payment_intent.succeeded":
        return billing.intent_update(obj["id"], ChargeResult(obj["id"], "succeeded"))
    if kind == "payment_intent.payment_failed":
        err = obj.get("last_payment_error") or {}
        result = ChargeResult(
            obj["id"], "failed", err.get("decline_code") or err.get("code"), err.get("advice_code")
        )
        return billing.intent_update(obj["id"], result)
    if kind == "charge.dispute.created":
        billing.dispute_opened(obj["id"], obj.get("payment_intent"))
        return True
    if kind == "charge.dispute.closed":
        billing.dispute_closed(
            obj["id"], obj.get("payment_intent"), str(obj.get("status", "closed"))
        )
        return True
    if kind == "payment_method.attached" and obj.get("customer"):
        billing.payment_method_attached(obj["customer"], obj["id"])
        return True
    if kind == "payment_method.detached":
        billing.payment_method_detached(obj["id"])
        return True
    return False


def create_app(billing: Billing, webhook_secret: str | None) -> Starlette:
    """The starlette application; blocking store work runs in threads off the event loop."""

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
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGINT/SIGTERM and stops every
    task together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
