"""The web foundation every route module shares: who the visitor is (the session cookie), CSRF,
rate limits, templates and reading a form. ``gated.web.app`` composes the route modules on it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gated.billing_sync.member_access import MemberAccess, MemberSession
from gated.billing_sync.notices import format_amount
from gated.billing_sync.service import Billing
from gated.contract import PayloadError, loads_bounded
from gated.http_limits import FORM_BYTES
from gated.web.ratelimit import RateLimit
from gated.web.security import (
    client_address,
    cookie_name,
    csrf_ok,
    csrf_token,
    parse_proxies,
)
from gated.web.words import day

log = logging.getLogger("gated.web")

STATIC = Path(__file__).with_name("static")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")


S = TypeVar("S")


async def read_cookie(
    request: Request, name: str, csrf_key: bytes, session: Callable[[str], S | None]
) -> tuple[str, bool, S | None, str]:
    """The session cookie ``name`` of a request: (its value, whether it is new, the session it
    opens, the CSRF token bound to it). A browser without a well-formed one gets a new value
    (an anonymous visitor until it signs in); ``session`` looks a value up in the store."""
    raw = request.cookies.get(name, "")
    if not _COOKIE_VALUE.fullmatch(raw):
        raw = secrets.token_urlsafe(32)
        return raw, True, None, csrf_token(csrf_key, raw)
    return raw, False, await asyncio.to_thread(session, raw), csrf_token(csrf_key, raw)


def csrf_sent(
    request: Request, form: dict[str, str], csrf_key: bytes, cookie: str, new_cookie: bool
) -> bool:
    """A state-changing request's token: the form's ``csrf`` field or the X-CSRF-Token header
    (JSON), checked against the cookie the request came with (a new cookie has none yet)."""
    if new_cookie:
        return False
    token = form.get("csrf") or request.headers.get("x-csrf-token")
    return csrf_ok(csrf_key, cookie, token)


def set_session_cookie(
    response: Response, name: str, value: str, max_age: int, secure: bool
) -> None:
    """Send a session cookie: host-wide, script-proof, not sent on cross-site posts."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax"
    )


class BodyTooLarge(Exception):
    """A request body beyond what the route accepts."""


@dataclass
class Visitor:
    """The browser behind a request: its cookie (made now if it had none), the member session
    that cookie opens (if any) and the CSRF token bound to the cookie."""

    cookie: str
    new_cookie: bool
    session: MemberSession | None
    csrf: str


@dataclass
class Web:
    """What every handler of the member app and the API shares."""

    billing: Billing
    wake_mail: Callable[[], None]
    access: MemberAccess = field(init=False)
    templates: Environment = field(init=False)
    https: bool = field(init=False)
    cookie: str = field(init=False)
    csrf_key: bytes = field(init=False)
    proxies: list[Any] = field(init=False)
    # Sign-in requests: per client address and per e-mail address; redeeming codes and links
    # per client (each sign-in also dies after a few wrong codes, in the store).
    signin_per_client: RateLimit = field(default_factory=lambda: RateLimit(20, 600))
    signin_per_address: RateLimit = field(default_factory=lambda: RateLimit(5, 900))
    redeem_per_client: RateLimit = field(default_factory=lambda: RateLimit(30, 600))
    # Sign-ups a client may start (page or API): each makes a member and an invoice until purged.
    signups_per_client: RateLimit = field(default_factory=lambda: RateLimit(10, 3600))
    # Work started by a request that outlives it (kept referenced until it ends).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.access = self.billing.member_access()
        http = self.billing.config.http
        self.https = http.public_url.lower().startswith("https://")
        self.cookie = cookie_name(self.https)
        # Derived from the card key (as pay links are), so tokens survive a restart.
        self.csrf_key = hmac.new(self.billing.keys.card_key, b"web-csrf", hashlib.sha256).digest()
        self.proxies = parse_proxies(http.trusted_proxies)
        env = Environment(
            loader=PackageLoader("gated.web", "templates"),
            autoescape=True,  # whatever a member typed is text, never markup
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["money"] = format_amount
        env.filters["day"] = day
        self.templates = env

    @property
    def public_url(self) -> str:
        return self.billing.config.http.public_url.rstrip("/")

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the event loop apart from any request; a failure is logged."""
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=web_task_failed error=%r", task.exception())

    def client(self, request: Request) -> str:
        return client_address(request, self.proxies)

    async def visitor(self, request: Request) -> Visitor:
        """Who is asking; a browser without a (well-formed) cookie gets a new anonymous one."""
        return Visitor(*await read_cookie(request, self.cookie, self.csrf_key, self.access.session))

    async def visitor_reading(
        self, request: Request, read: Callable[[str], S]
    ) -> tuple[Visitor, S | None]:
        """Who is asking and, when a member is signed in, ``read(member_id)`` (None otherwise):
        the session's lookup and the page's reads in one worker-thread trip, on one connection
        of the store (``Billing.one_read``). Each trip waits for the interpreter lock again, and
        on PostgreSQL each connection is two round trips more (BEGIN, ROLLBACK)."""
        raw = request.cookies.get(self.cookie, "")
        if not _COOKIE_VALUE.fullmatch(raw):
            return await self.visitor(request), None

        def both() -> tuple[MemberSession | None, S | None]:
            with self.billing.one_read():
                found = self.access.session(raw)
                return found, None if found is None else read(found.member_id)

        found, data = await asyncio.to_thread(both)
        return Visitor(raw, False, found, csrf_token(self.csrf_key, raw)), data

    async def submission(self, request: Request) -> tuple[Visitor, dict[str, str], int]:
        """A state-changing request: the visitor, its form, and 0, or the status it is refused
        with (413 for a body over the form limit, 403 without this browser's CSRF token)."""
        visitor = await self.visitor(request)
        try:
            form = await read_form(request)
        except BodyTooLarge:
            return visitor, {}, 413
        if not self.csrf_valid(request, visitor, form):
            log.warning("event=csrf_refused path=%s", request.url.path)
            return visitor, form, 403
        return visitor, form, 0

    def csrf_valid(self, request: Request, visitor: Visitor, form: dict[str, str]) -> bool:
        """A state-changing request's token: the form's ``csrf`` field or the X-CSRF-Token
        header (JSON), checked against the cookie the request came with."""
        return csrf_sent(request, form, self.csrf_key, visitor.cookie, visitor.new_cookie)

    def set_cookie(self, response: Response, value: str) -> None:
        set_session_cookie(
            response, self.cookie, value, self.billing.config.app.session_days * 86_400, self.https
        )

    def page(
        self, visitor: Visitor, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render a page; a new visitor's cookie goes out with it."""
        html = self.templates.get_template(template).render(
            csrf=visitor.csrf, signed_in=visitor.session is not None, **context
        )
        response = HTMLResponse(html, status_code=status)
        if visitor.new_cookie:
            self.set_cookie(response, visitor.cookie)
        return response


async def read_body(request: Request, limit: int) -> bytes:
    """A request body, read while streaming so one over ``limit`` is never held whole
    (``serve`` also limits every body in ``gated.http_limits``; this keeps the app safe on its
    own); BodyTooLarge beyond ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, limit: int = FORM_BYTES) -> dict[str, str]:
    """An urlencoded form of at most ``limit`` bytes (BodyTooLarge beyond); the first value of
    each field."""
    body = await read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=50)
    return {k: v[0] for k, v in fields.items()}


async def read_json(request: Request, limit: int = FORM_BYTES) -> dict[str, Any] | None:
    """A JSON object body (``Content-Type: application/json``), read while streaming and at
    most ``limit`` bytes; None when it is anything else (the caller answers 400)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = loads_bounded(await read_body(request, limit), max_bytes=limit, max_depth=2)
    except (BodyTooLarge, PayloadError):
        return None
    return body if isinstance(body, dict) else None
