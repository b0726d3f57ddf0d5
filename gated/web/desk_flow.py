"""Post/Redirect/Get for the console: a POST answers 303 to a page, and what it did (or why it
was refused) travels there as a flash message, shown once; a reload shows the page again and
sends nothing. Sale and payment forms also carry a submit key, so a double click or a form sent
twice does the thing once.

A message travels with the browser, in a cookie of its own signed by the server (HMAC under a
key derived from the card-encryption key, bound to the browser's staff cookie, with the time it
was made): whichever ``serve`` answers the next page (another process behind the same address,
or the same one after a restart) shows it, and the page that shows it clears the cookie, so it
is shown once. Nothing is written for it, so a redirect never waits for the store. A submit key
is kept in the billing store (``gated.billing_sync.submit_keys``), so a form sent twice across
a restart or to two processes acts once; it is signed here too, with the time it was made, so
making one writes nothing and a key this server never made, or made over a day ago, is known
at once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gated.billing_sync.submit_keys import KEY_S

# How long a message waits for the page it was meant for, and a submit key for its form.
FLASH_S = 300
SUBMIT_KEY_S = KEY_S
# At most this many messages wait for one browser (the newest), in a cookie that stays under
# the 4 KiB a browser keeps for one (a message is at most 500 characters: 2.7 KB encoded).
_PER_BROWSER = 5
_MAX_COOKIE = 3800


@dataclass(frozen=True)
class Flash:
    """One message for the next page: what was done, or (``error``) why it was not."""

    text: str
    error: bool = False


def browser_of(cookie: str) -> str:
    """A browser's staff cookie as its messages are bound to it: the cookie's SHA-256."""
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass(frozen=True)
class Flashes:
    """Messages waiting for a browser's next console page, in a signed cookie (``name``) the
    browser sends back to whichever process answers it."""

    secret: bytes
    name: str
    https: bool
    clock: Callable[[], int] = lambda: int(time.time())

    def _mac(self, cookie: str, body: str) -> str:
        signed = f"{browser_of(cookie)}.{body}".encode()
        digest = hmac.new(self.secret, signed, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sent(self, request: Request) -> bool:
        """Whether the request carries a message cookie (shown or not, the page clears it)."""
        return self.name in request.cookies

    def read(self, request: Request, cookie: str) -> list[Flash]:
        """The messages waiting for the browser whose staff cookie is ``cookie``: none when the
        cookie is missing, forged, another browser's, or older than ``FLASH_S``."""
        body, _, mac = request.cookies.get(self.name, "").rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac(cookie, body)):
            return []
        try:
            made, kept = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            if not 0 <= self.clock() - int(made) <= FLASH_S:
                return []
            return [Flash(str(text), bool(error)) for text, error in kept]
        except (ValueError, TypeError, binascii.Error):
            # Signed by this server, so only a server of another version makes one like this.
            return []

    def keep(self, response: Response, cookie: str, waiting: Sequence[Flash]) -> None:
        """Send ``waiting`` (the newest last) with ``response`` for the browser's next page; the
        oldest are dropped where they would not fit."""
        kept = [[f.text[:500], f.error] for f in waiting[-_PER_BROWSER:]]
        while True:
            # UTF-8, not escapes: one message of 500 characters always fits.
            raw = json.dumps([self.clock(), kept], ensure_ascii=False, separators=(",", ":"))
            body = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            if len(body) <= _MAX_COOKIE or len(kept) == 1:
                break
            kept = kept[1:]
        response.set_cookie(
            self.name,
            f"{body}.{self._mac(cookie, body)}",
            max_age=FLASH_S,
            path="/",
            secure=self.https,
            httponly=True,
            samesite="lax",
        )

    def clear(self, response: Response) -> None:
        """The messages were shown: the browser drops them."""
        response.delete_cookie(
            self.name, path="/", secure=self.https, httponly=True, samesite="lax"
        )


@dataclass
class SubmitKeys:
    """Submit keys of forms that act once: a key is made when the form is shown (signed, with
    its time; nothing is stored) and is claimed in the store by its first POST, which records
    where its result is; a second POST with that key, from this process or another, before or
    after a restart, is sent there instead of acting again."""

    secret: bytes
    clock: Callable[[], int] = lambda: int(time.time())

    def _mac(self, body: str) -> str:
        digest = hmac.new(self.secret, body.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def new(self) -> str:
        """A fresh key for a form about to be shown."""
        body = f"{self.clock()}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, key: str) -> bool:
        """Whether this server made ``key`` less than a day ago."""
        body, _, mac = key.rpartition(".")
        made, _, _ = body.partition(".")
        if not made.isdigit() or not hmac.compare_digest(mac, self._mac(body)):
            return False
        return 0 <= self.clock() - int(made) <= SUBMIT_KEY_S
