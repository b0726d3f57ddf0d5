"""Request body limits per route, enforced while the body streams in (an ASGI middleware).

A declared ``Content-Length`` above the route's limit is answered 413 before a byte of the body
is read; a body without one (chunked) is counted as it arrives and refused the moment it passes
the limit, so an unsigned 300 MiB POST costs the server a limit's worth of memory, not 300 MiB.
The limits are DESIGN's (web section): Stripe webhooks 1 MiB, forms 64 KiB, photos 5 MiB, and
64 KiB for every route not named. Used by ``gated-billing serve`` for every route, and meant for
the member app and the staff console on the same server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

log = logging.getLogger("gated.http")

WEBHOOK_BYTES = 1 << 20
FORM_BYTES = 64 << 10
PHOTO_BYTES = 5 << 20
DEFAULT_BYTES = FORM_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised into the application from ``receive`` when a streamed body passes its limit; the
    middleware turns it into a 413."""


class BodyLimit:
    """ASGI middleware: each request's body is limited by the first route pattern (a regular
    expression over the whole path) that matches, else by ``default``.

    Place it inside anything that turns exceptions into 500 pages (in starlette, pass it as
    ``middleware=[Middleware(BodyLimit, ...)]``), so a body refused mid-stream is a 413."""

    def __init__(
        self, app: ASGIApp, routes: Iterable[tuple[str, int]] = (), default: int = DEFAULT_BYTES
    ) -> None:
        self.app = app
        self.routes = [(re.compile(pattern), limit) for pattern, limit in routes]
        self.default = default
        self.refused = 0

    def limit_for(self, path: str) -> int:
        """The body limit, in bytes, of a request for ``path``."""
        for pattern, limit in self.routes:
            if pattern.fullmatch(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.limit_for(path)
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                await _respond(send, 400, b"bad Content-Length\n")
                return
            if length > limit:
                self._refuse(path, limit, "declared")
                await _respond(send, 413, b"request body too large\n")
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(path)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            self._refuse(path, limit, "streamed")
            if not started:
                await _respond(send, 413, b"request body too large\n")

    def _refuse(self, path: str, limit: int, how: str) -> None:
        self.refused += 1
        log.warning("event=body_too_large path=%r limit=%d how=%s", path, limit, how)


async def _respond(send: Send, status: int, body: bytes) -> None:
    """A short plain-text answer that also closes the connection: the rest of the body is not
    read."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
