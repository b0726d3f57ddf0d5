"""The pass: a page under ``/app/pass`` that keeps working with the network off (an installable
PWA with a service worker scoped to ``/app/``), and its API under ``/api/v1/pass``.

The browser makes its own Ed25519 key (WebCrypto, non-extractable, in IndexedDB), proves it
holds it by signing a fresh challenge, and registers the public half; billing publishes it as
the member's ``qr_key``. From then on the page mints GQ1 codes itself (``static/pass.js``),
with timestamps corrected by the clock offset it measured against ``/api/v1/pass`` or
``/api/v1/time`` at its last contact. The rules (a recent sign-in, one device per 24 hours
unless staff allow another) live in ``gated.billing_sync.pass_keys``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.errors import NotFound
from gated.billing_sync.member_access import MemberSession
from gated.billing_sync.pass_keys import KEY_INTERVAL_S, KeyRefused
from gated.web.foundation import STATIC, Visitor, Web, read_json
from gated.web.openapi import ApiRoute
from gated.web.words import status_words

log = logging.getLogger("gated.web.pass")

# A registration is a key, a nonce and a signature: a few hundred bytes.
KEY_BODY_BYTES = 4096
# What the service worker keeps for offline use: the page and everything it loads.
PASS_ASSETS = (
    "app.css",
    "pass.js",
    "qrcode-generator-2.0.4.js",
    "manifest.webmanifest",
    "icon.svg",
    "icon-192.png",
    "icon-512.png",
)
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_REFUSED_STATUS = {"signin_too_old": 403, "bad_key": 400, "bad_proof": 400, "too_soon": 429}


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status)


def _now_ms() -> int:
    # Head office's own wall clock, which the gates' clocks follow: not the injected billing
    # clock (demos move that by days, gates do not).
    return int(time.time() * 1000)


def _service_worker() -> bytes:
    """``static/sw.js`` with its cache named after the assets it caches: a change to any of
    them changes the worker, so browsers install it and drop the old cache."""
    digest = hashlib.sha256()
    for name in PASS_ASSETS:
        digest.update((STATIC / name).read_bytes())
    source = (STATIC / "sw.js").read_text()
    return source.replace("__ASSETS_VERSION__", digest.hexdigest()[:16]).encode()


def page_routes(web: Web) -> list[BaseRoute]:
    """The pass page and its service worker (mounted under ``/app``)."""
    worker = _service_worker()

    async def pass_page(request: Request) -> Response:
        visitor = await web.visitor(request)
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        info = await asyncio.to_thread(_pass_state, web, visitor.session)
        return web.page(visitor, "pass.html", title="Your pass", p=info, now_ms=_now_ms())

    async def service_worker(request: Request) -> Response:
        # Served from /app/ (not /app/static/), so its scope can be all of /app/.
        return Response(worker, media_type="text/javascript")

    return [
        Route("/pass", pass_page, methods=["GET"]),
        Route("/sw.js", service_worker, methods=["GET"]),
    ]


def api_routes(web: Web) -> list[BaseRoute]:
    """The pass's JSON routes (mounted under ``/api/v1``, before the API's own)."""

    def signed_in(
        handler: Callable[[Request, Visitor, MemberSession], Awaitable[Response]],
        *,
        changing: bool,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            visitor = await web.visitor(request)
            if changing and not web.csrf_valid(request, visitor, {}):
                log.warning("event=csrf_refused path=%s", request.url.path)
                return _error(403, "csrf", "missing or wrong X-CSRF-Token")
            if visitor.session is None:
                return _error(401, "signed_out", "sign in first")
            return await handler(request, visitor, visitor.session)

        return endpoint

    async def clock(request: Request) -> Response:
        return JSONResponse({"now_ms": _now_ms()})

    async def state(request: Request, visitor: Visitor, s: MemberSession) -> Response:
        body = await asyncio.to_thread(_pass_state, web, s)
        body["now_ms"] = _now_ms()
        return JSONResponse(body)

    async def challenge(request: Request, visitor: Visitor, s: MemberSession) -> Response:
        nonce = await asyncio.to_thread(web.billing.pass_keys().challenge, s.member_id)
        return JSONResponse({"nonce": nonce})

    async def register(request: Request, visitor: Visitor, s: MemberSession) -> Response:
        body = await read_json(request, KEY_BODY_BYTES)
        if body is None:
            return _error(400, "bad_request", "send JSON: public_key, nonce and signature")
        public_key, nonce, signature = (body.get(k) for k in ("public_key", "nonce", "signature"))
        if not all(
            isinstance(v, str) and 0 < len(v) <= 200 for v in (public_key, nonce, signature)
        ):
            return _error(400, "bad_request", "send JSON: public_key, nonce and signature")
        assert isinstance(nonce, str) and isinstance(public_key, str) and isinstance(signature, str)
        if not _NONCE.fullmatch(nonce):
            return _error(400, "bad_proof", "the challenge is unknown, used or expired")
        try:
            version = await asyncio.to_thread(
                web.billing.pass_keys().register,
                s.member_id,
                signed_in_at=s.signed_in_at,
                public_key=public_key,
                nonce=nonce,
                signature=signature,
                address=web.client(request),
                user_agent=request.headers.get("user-agent", ""),
            )
        except KeyRefused as exc:
            log.info("event=pass_key_refused member=%s reason=%s", s.member_id, exc.reason)
            response = _error(_REFUSED_STATUS.get(exc.reason, 400), exc.reason, str(exc))
            if exc.reason == "too_soon":
                response.headers["Retry-After"] = str(KEY_INTERVAL_S)
            return response
        except NotFound:
            return _error(401, "signed_out", "sign in first")
        info = await asyncio.to_thread(web.billing.pass_keys().info, s.member_id)
        return JSONResponse({"qr_key": info["qr_key"], "version": version})

    return [
        ApiRoute(
            "/time",
            clock,
            methods=["GET"],
            summary="Head office's clock in milliseconds, for the pass's clock offset.",
            auth="none",
        ),
        ApiRoute(
            "/pass",
            signed_in(state, changing=False),
            methods=["GET"],
            summary="What the pass shows: name, status, whether valid, the published qr_key, "
            "qr_refresh_s and head office's now_ms.",
        ),
        ApiRoute(
            "/pass/challenge",
            signed_in(challenge, changing=True),
            methods=["POST"],
            summary="A fresh single-use nonce for the device to sign (5 minutes).",
        ),
        ApiRoute(
            "/pass/key",
            signed_in(register, changing=True),
            methods=["POST"],
            summary="Register this device's Ed25519 key as the member's pass (proof of "
            "possession, a recent sign-in, one device per 24 hours).",
            body={
                "public_key": ("string", "the raw 32-byte public key, standard base64"),
                "nonce": ("string", "from POST /api/v1/pass/challenge"),
                "signature": ("string", "of gated-pass-key-v1.<member_id>.<nonce>, base64"),
            },
        ),
    ]


def _pass_state(web: Web, s: MemberSession) -> dict[str, Any]:
    """What the pass shows: who, whether the gates should let them in and why not, the key
    head office publishes for them and how often to show a fresh code."""
    m = web.access.membership(s.member_id)
    words = status_words(m)
    info = web.billing.pass_keys().info(s.member_id)
    return {
        "member_id": s.member_id,
        "name": m["name"],
        "status": m["published_status"] or m["status"],
        "valid": words.allowed,
        "headline": words.headline,
        "qr_key": info["qr_key"],
        "registered_at": info["registered_at"],
        "qr_refresh_s": web.billing.config.app.qr_refresh_s,
    }
