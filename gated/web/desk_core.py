"""What every console route module shares: the staff visitor (its own cookie and CSRF key, apart
from a member's), the ``Desk`` handlers render pages with, and how times read on its pages.
``gated.web.desk`` composes the console's routes on it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gated.billing_sync.staff import SESSION_S, StaffAccess, StaffSession
from gated.billing_sync.submit_keys import Claimed, FormKeys
from gated.web.desk_flow import Flash, Flashes, SubmitKeys
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
    # The messages waiting for this browser's next page (its message cookie), and whether it
    # sent that cookie at all (a page clears it, shown or expired).
    flashes: list[Flash] = field(default_factory=list)
    flash_cookie: bool = False


@dataclass
class Desk:
    """What every console handler shares."""

    web: Web
    access: StaffAccess = field(init=False)
    cookie: str = field(init=False)
    csrf_key: bytes = field(init=False)
    per_account: Slowdown = field(default_factory=lambda: Slowdown(ACCOUNT_FREE, ACCOUNT_CAP_S))
    per_client: Slowdown = field(default_factory=lambda: Slowdown(CLIENT_FREE, CLIENT_CAP_S))
    form_keys: FormKeys = field(init=False)
    flashes: Flashes = field(init=False)
    submit_keys: SubmitKeys = field(init=False)

    def __post_init__(self) -> None:
        billing = self.web.billing
        self.access = billing.staff_access()
        self.cookie = "__Host-gated-staff" if self.web.https else "gated-staff"
        # Its own key: a member cookie's token never passes as a staff one's.
        self.csrf_key = hmac.new(billing.keys.card_key, b"desk-csrf", hashlib.sha256).digest()
        self.form_keys = billing.form_keys()
        flash_key = hmac.new(billing.keys.card_key, b"desk-flashes", hashlib.sha256).digest()
        flash_cookie = "__Host-gated-flash" if self.web.https else "gated-flash"
        self.flashes = Flashes(flash_key, flash_cookie, self.web.https, billing.clock)
        secret = hmac.new(billing.keys.card_key, b"desk-submit-keys", hashlib.sha256).digest()
        self.submit_keys = SubmitKeys(secret, billing.clock)
        self.web.templates.filters["when"] = when

    async def visitor(self, request: Request) -> StaffVisitor:
        found = await read_cookie(request, self.cookie, self.csrf_key, self.access.session)
        if not self.flashes.sent(request):
            return StaffVisitor(*found)
        return StaffVisitor(*found, self.flashes.read(request, found[0]), True)

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
            csrf=visitor.csrf, staff=staff, flashes=visitor.flashes, **context
        )
        response = HTMLResponse(html, status_code=status)
        if visitor.new_cookie:
            self.set_cookie(response, visitor.cookie)
        if visitor.flash_cookie:
            self.flashes.clear(response)
        return response

    def redirect(
        self, visitor: StaffVisitor, url: str, text: str, error: bool = False
    ) -> RedirectResponse:
        """Post/Redirect/Get: 303 to ``url``, whose page then shows ``text`` once (after any
        message still waiting), whichever process answers it."""
        response = RedirectResponse(url, status_code=303)
        if visitor.new_cookie:
            self.set_cookie(response, visitor.cookie)
        self.flashes.keep(response, visitor.cookie, [*visitor.flashes, Flash(text, error)])
        return response

    async def resent(
        self, visitor: StaffVisitor, key: str, form_page: str
    ) -> RedirectResponse | None:
        """None for the first POST of a form's submit key (the key is claimed now, in the
        store); for any other, the redirect that answers it without acting: to the first POST's
        result with what the desk was told then, or back to ``form_page`` for a key still at
        work, cut short, or never made."""
        if not self.submit_keys.valid(key):
            return self.expired(visitor, form_page)
        claimed = await asyncio.to_thread(self.form_keys.claim, key)
        return None if claimed.new else self.answer_resent(visitor, claimed, form_page)

    def expired(self, visitor: StaffVisitor, form_page: str) -> RedirectResponse:
        """The answer to a submit key this server never made, or made over a day ago."""
        text = "That form had expired: nothing was done. Check it and send it again."
        return self.redirect(visitor, form_page, text, error=True)

    def answer_resent(
        self, visitor: StaffVisitor, claimed: Claimed, form_page: str
    ) -> RedirectResponse:
        """The answer to a form sent again (``claimed`` is what its key's first POST left)."""
        if claimed.result is not None:
            text = "That form was already sent: done once, not again."
            if claimed.told:
                text += f" {claimed.told}"
            return self.redirect(visitor, claimed.result, text)
        if claimed.running:
            text = "That form was sent twice: the first is being handled, the second did nothing."
            return self.redirect(visitor, form_page, text)
        # Claimed and never finished: serve stopped while it was at work. Whether it acted is
        # on the page, not here; acting again could do it twice.
        text = (
            "That form was sent before and was interrupted: nothing more was done."
            " Check this page before sending it again."
        )
        return self.redirect(visitor, form_page, text, error=True)

    async def form_done(self, key: str, result: str, told: str) -> None:
        """The claimed key's action succeeded: a resend goes to ``result`` and is told ``told``."""
        await asyncio.to_thread(self.form_keys.done, key, result, told)

    async def form_failed(self, key: str) -> None:
        """The claimed key's action was refused: the form may be corrected and sent again."""
        await asyncio.to_thread(self.form_keys.free, key)

    def message(self, visitor: StaffVisitor, status: int, title: str, text: str) -> HTMLResponse:
        return self.page(visitor, "desk_message.html", status, title=title, text=text)
