"""Post/Redirect/Get for the console: a POST answers 303 to a page, and what it did (or why it
was refused) travels there as a flash message, shown once; a reload shows the page again and
sends nothing. Sale and payment forms also carry a submit key, so a double click or a form sent
twice does the thing once.

Both live in ``serve``'s memory (one process answers every console request): a restart forgets
them, which at worst drops a message not shown yet, or lets a form opened before the restart
and sent twice across it act twice."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

# How long a message waits for the page it was meant for, and a submit key for its form.
FLASH_S = 300
SUBMIT_KEY_S = 24 * 3600
# Bounds, so a client posting forms in a loop cannot grow serve's memory without end.
_MAX_FLASHES = 10_000
_MAX_KEYS = 100_000


@dataclass(frozen=True)
class Flash:
    """One message for the next page: what was done, or (``error``) why it was not."""

    text: str
    error: bool = False


@dataclass
class Flashes:
    """Messages waiting for the next page of a browser (by its staff cookie)."""

    _waiting: OrderedDict[str, tuple[float, list[Flash]]] = field(default_factory=OrderedDict)

    def add(self, cookie: str, text: str, error: bool = False) -> None:
        """Keep ``text`` for the browser's next console page."""
        now = time.monotonic()
        _, kept = self._waiting.pop(cookie, (now, []))
        self._waiting[cookie] = (now, [*kept[-4:], Flash(text[:500], error)])
        while len(self._waiting) > _MAX_FLASHES:
            self._waiting.popitem(last=False)

    def take(self, cookie: str) -> list[Flash]:
        """The browser's waiting messages (each is shown once)."""
        at, kept = self._waiting.pop(cookie, (0.0, []))
        return kept if time.monotonic() - at <= FLASH_S else []


@dataclass
class SubmitKeys:
    """Submit keys of forms that act once: a key is made when the form is shown and is used up
    by its first POST, which records where its result is; a second POST with that key is sent
    there instead of acting again. The check and the claim happen in one step on the event loop,
    so two POSTs of one form racing each other act once."""

    _keys: OrderedDict[str, tuple[float, str | None]] = field(default_factory=OrderedDict)
    _claimed: set[str] = field(default_factory=set)

    def new(self) -> str:
        """A fresh key for a form about to be shown."""
        key = secrets.token_urlsafe(18)
        self._keys[key] = (time.monotonic(), None)
        while len(self._keys) > _MAX_KEYS:
            old, _ = self._keys.popitem(last=False)
            self._claimed.discard(old)
        return key

    def claim(self, key: str) -> str:
        """Use ``key`` up: ``"new"`` for the first POST of a key this process made,
        ``"running"`` while that POST is still at work, ``"unknown"`` for a key never made (or
        expired), else where the first POST's result is."""
        found = self._keys.get(key)
        if found is None or time.monotonic() - found[0] > SUBMIT_KEY_S:
            return "unknown"
        if found[1] is not None:
            return found[1]
        if key in self._claimed:
            return "running"
        self._claimed.add(key)
        return "new"

    def done(self, key: str, result: str) -> None:
        """The claimed key's action succeeded: a resend of its form goes to ``result``."""
        self._claimed.discard(key)
        self._keys[key] = (time.monotonic(), result)

    def failed(self, key: str) -> None:
        """The claimed key's action was refused: the form may be corrected and sent again."""
        self._claimed.discard(key)
