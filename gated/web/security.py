"""What every web response and request goes through: security headers, the client's address
behind trusted proxies, the session cookie and CSRF tokens bound to it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script or style anywhere: every script and stylesheet is a file gated serves.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
# A page that loads Stripe.js (card entry, 3-D Secure) marks its response with this header; the
# middleware then sends ``stripe_csp`` instead of CSP, and drops the marker.
STRIPE_PAGE = "x-gated-stripe-page"
# What Stripe.js needs from Stripe itself (its script, its frames for card fields and 3-D
# Secure, its API), and nothing more.
_STRIPE_JS = "https://js.stripe.com"
_STRIPE_SOURCES = {
    "script-src": "https://js.stripe.com https://*.js.stripe.com",
    "frame-src": "https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com",
    "connect-src": "https://api.stripe.com",
}


def stripe_csp(js_url: str) -> str:
    """The CSP of a page that loads Stripe.js from ``js_url``: Stripe's own hosts, or, for a
    local fake that serves the script and the API from one origin (tests), that origin."""
    scheme, _, rest = js_url.partition("://")
    origin = f"{scheme}://{rest.split('/', 1)[0]}"
    sources = (
        _STRIPE_SOURCES
        if origin == _STRIPE_JS
        else dict.fromkeys(("script-src", "frame-src", "connect-src"), origin)
    )
    return (
        f"default-src 'none'; script-src 'self' {sources['script-src']}; style-src 'self'; "
        f"img-src 'self' data:; connect-src 'self' {sources['connect-src']}; "
        f"frame-src {sources['frame-src']}; manifest-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Sign-in links carry a token in their path: no page passes its address on.
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]

_CAMERA = (b"permissions-policy", b"camera=(self), microphone=(), geolocation=(), payment=()")

_REPLACED = {h for h, _ in _HEADERS} | {b"cache-control"}


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, and ``no-store`` on everything
    but the static assets (pages and JSON carry personal data)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        https: bool,
        static_prefix: str,
        stripe_csp: str | None = None,
        camera: bool = False,
    ) -> None:
        self.app = app
        self.extra = [(b"strict-transport-security", b"max-age=31536000")] if https else []
        # The console takes member photos with the desk's camera; nothing else may use one.
        self.headers = [_CAMERA if camera and h == _HEADERS[-1] else h for h in _HEADERS]
        self.static_prefix = static_prefix
        self.stripe_csp = stripe_csp.encode() if stripe_csp else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = message.get("headers", [])
                stripe = any(k.lower() == STRIPE_PAGE.encode() for k, _ in given)
                headers = [
                    (k, v)
                    for k, v in given
                    if k.lower() not in _REPLACED and k.lower() != STRIPE_PAGE.encode()
                ]
                headers += self.headers + self.extra
                if stripe and self.stripe_csp is not None:
                    headers[headers.index(_HEADERS[0])] = (_HEADERS[0][0], self.stripe_csp)
                headers.append(
                    (b"cache-control", b"public, max-age=3600" if static else b"no-store")
                )
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def parse_proxies(items: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``[http] trusted_proxies`` as networks (the config already checked each)."""
    return [ipaddress.ip_network(item, strict=False) for item in items]


def client_address(
    request: Request, proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The address rate limits count: the peer, or, when the peer is a trusted proxy, the
    right-most address in X-Forwarded-For that is not itself a trusted proxy (the left-most
    entries are whatever the client claimed)."""
    peer = request.client.host if request.client else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a mangled header: count the proxy, never a made-up name
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, proxies: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def cookie_name(https: bool) -> str:
    """``__Host-`` cookies must be Secure, and browsers drop Secure cookies on plain http
    (except on localhost): a deployment on http (a LAN or the demo) uses a plain name."""
    return "__Host-gated-member" if https else "gated-member"


def csrf_token(key: bytes, cookie: str) -> str:
    """The synchronizer token for a browser: a keyed MAC of its cookie (an anonymous visitor's
    random value, or the session token after sign-in), so it changes with the session and
    needs no storage of its own."""
    mac = hmac.new(key, b"csrf:" + cookie.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode()


def csrf_ok(key: bytes, cookie: str | None, token: str | None) -> bool:
    """Whether a state-changing request carries the token of the cookie it came with."""
    if not cookie or not token:
        return False
    return hmac.compare_digest(csrf_token(key, cookie).encode(), token.encode())
