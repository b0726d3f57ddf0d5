"""What every console route module shares: the staff visitor (its own cookie and CSRF key, apart
from a member's), the ``Desk`` handlers render pages with, and how times read on its pages.
``gated.web.desk`` composes the console's routes on it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gated.billing_sync.staff import SESSION_S, StaffAccess, StaffSession
from gated.web.desk_flow import Flashes, SubmitKeys
from gated.web.foundation import Web, csrf_sent, read_cookie, set_session_cookie
from gated.web.slowdown import (
    ACCOUNT_CAP_S,
    ACCOUNT_FREE,
    CLIENT_CAP_S,
    CLIENT_FREE,
    Slowdown,
)


def when(ts: int | None) -> str:
    """Unix seconds as ``2026-12-01 18:04`` (UTC), "-" when unset."""
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


@dataclass
class StaffVisitor:
    """The browser behind a console request: its staff cookie (made now if it had none), the
    staff session it opens (if any) and the CSRF token bound to it."""

    cookie: str
    new_cookie: bool
    session: StaffSession | None
    csrf: str


@dataclass
class Desk:
    """What every console handler shares."""

    web: Web
    access: StaffAccess = field(init=False)
    cookie: str = field(init=False)
    csrf_key: bytes = field(init=False)
    per_account: Slowdown = field(default_factory=lambda: Slowdown(ACCOUNT_FREE, ACCOUNT_CAP_S))
    per_client: Slowdown = field(default_factory=lambda: Slowdown(CLIENT_FREE, CLIENT_CAP_S))
    flashes: Flashes = field(default_factory=Flashes)
    submit_keys: SubmitKeys = field(default_factory=SubmitKeys)

    def __post_init__(self) -> None:
        self.access = self.web.billing.staff_access()
        self.cookie = "__Host-gated-staff" if self.web.https else "gated-staff"
        # Its own key: a member cookie's token never passes as a staff one's.
        self.csrf_key = hmac.new(
            self.web.billing.keys.card_key, b"desk-csrf", hashlib.sha256
        ).digest()
        self.web.templates.filters["when"] = when

    async def visitor(self, request: Request) -> StaffVisitor:
        return StaffVisitor(
            *await read_cookie(request, self.cookie, self.csrf_key, self.access.session)
        )

    def csrf_valid(self, request: Request, visitor: StaffVisitor, form: dict[str, str]) -> bool:
        return csrf_sent(request, form, self.csrf_key, visitor.cookie, visitor.new_cookie)

    def set_cookie(self, response: Response, value: str) -> None:
        set_session_cookie(response, self.cookie, value, SESSION_S, self.web.https)

    def page(
        self, visitor: StaffVisitor, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render a console page; a new visitor's cookie goes out with it."""
        staff = (
            visitor.session.staff if visitor.session and not visitor.session.setup_only else None
        )
        html = self.web.templates.get_template(template).render(
            csrf=visitor.csrf, staff=staff, flashes=self.flashes.take(visitor.cookie), **context
        )
        response = HTMLResponse(html, status_code=status)
        if visitor.new_cookie:
            self.set_cookie(response, visitor.cookie)
        return response

    def redirect(
        self, visitor: StaffVisitor, url: str, text: str, error: bool = False
    ) -> RedirectResponse:
        """Post/Redirect/Get: 303 to ``url``, whose page then shows ``text`` once."""
        self.flashes.add(visitor.cookie, text, error)
        response = RedirectResponse(url, status_code=303)
        if visitor.new_cookie:
            self.set_cookie(response, visitor.cookie)
        return response

    def resent(self, visitor: StaffVisitor, key: str, form_page: str) -> RedirectResponse | None:
        """None for the first POST of a form's submit key (the key is claimed now); for any
        other, the redirect that answers it without acting: to the first POST's result, or back
        to ``form_page`` for a key still at work or never made."""
        state = self.submit_keys.claim(key)
        if state == "new":
            return None
        if state == "unknown":
            text = "That form had expired: nothing was done. Check it and send it again."
            return self.redirect(visitor, form_page, text, error=True)
        if state == "running":
            text = "That form was sent twice: the first is being handled, the second did nothing."
            return self.redirect(visitor, form_page, text)
        return self.redirect(visitor, state, "That form was already sent: done once, not again.")

    def message(self, visitor: StaffVisitor, status: int, title: str, text: str) -> HTMLResponse:
        return self.page(visitor, "desk_message.html", status, title=title, text=text)
