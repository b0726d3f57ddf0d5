"""Post/Redirect/Get for the console: a POST answers 303 to a page, and what it did (or why it
was refused) travels there as a flash message, shown once; a reload shows the page again and
sends nothing. Sale and payment forms also carry a submit key, so a double click or a form sent
twice does the thing once.

Both are kept in the billing store (``gated.billing_sync.submit_keys``), so they hold across a
restart of ``serve``: a form shown before a restart and sent twice across it acts once, and a
message not shown yet is shown after it. A submit key is signed here (HMAC under a key derived
from the card-encryption key, with the time it was made), so making one writes nothing and a
key this server never made, or made over a day ago, is known at once. Messages are also kept in
memory, so the page after a redirect reads them without waiting for the store; the store's copy
is written and dropped by one background thread, in order."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gated.billing_sync.submit_keys import FLASH_S, KEY_S, FormKeys

log = logging.getLogger("gated.web")

# How long a message waits for the page it was meant for, and a submit key for its form.
SUBMIT_KEY_S = KEY_S
# Bounds, so a client posting forms in a loop cannot grow serve's memory without end.
_MAX_FLASHES = 10_000


@dataclass(frozen=True)
class Flash:
    """One message for the next page: what was done, or (``error``) why it was not."""

    text: str
    error: bool = False


def browser_of(cookie: str) -> str:
    """How the store names a browser's messages: its staff cookie's SHA-256 (a copy of the
    store opens no session)."""
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass
class Flashes:
    """Messages waiting for the next page of a browser (by its staff cookie), in memory and,
    through ``store``, in the billing store."""

    store: FormKeys | None = None
    clock: Callable[[], int] = lambda: int(time.time())
    _waiting: OrderedDict[str, tuple[float, list[Flash]]] = field(default_factory=OrderedDict)
    _writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="desk-flashes")
    )

    def load(self) -> None:
        """Take the messages a previous ``serve`` left unshown (called as serve starts)."""
        if self.store is None:
            return
        now = time.monotonic()
        for browser, kept in self.store.waiting_flashes().items():
            self._waiting[browser] = (now, [Flash(text, error) for _, text, error in kept])

    def add(self, cookie: str, text: str, error: bool = False) -> None:
        """Keep ``text`` for the browser's next console page."""
        browser = browser_of(cookie)
        now = time.monotonic()
        _, kept = self._waiting.pop(browser, (now, []))
        self._waiting[browser] = (now, [*kept[-4:], Flash(text[:500], error)])
        while len(self._waiting) > _MAX_FLASHES:
            self._waiting.popitem(last=False)
        if self.store is not None:
            self._background(self.store.add_flash, browser, text[:500], error)

    def take(self, cookie: str) -> list[Flash]:
        """The browser's waiting messages (each is shown once)."""
        browser = browser_of(cookie)
        at, kept = self._waiting.pop(browser, (0.0, []))
        if kept and self.store is not None:
            self._background(self.store.drop_flashes, browser, self.clock())
        return kept if time.monotonic() - at <= FLASH_S else []

    def _background(self, call: Callable[..., None], *args: Any) -> None:
        """Write to the store off the event loop, in order (one thread): a page is never held
        up by a write waiting for the billing cycle's transaction."""

        def run() -> None:
            try:
                call(*args)
            except Exception:
                # The message was shown from memory; only its copy for a restart is lost.
                log.exception("event=desk_flash_store_failed")

        self._writer.submit(run)

    def close(self) -> None:
        """Finish the store's pending writes (as serve stops)."""
        self._writer.shutdown(wait=True)


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
