"""Shared by the member app's tests: reading a sign-in mail, and the hidden fields of a page."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SigninMail:
    to: str
    code: str
    link: str


def parse_signin_mail(to: str, body: str) -> SigninMail:
    """The code and the link in a sign-in mail's body."""
    code = re.search(r"your code to sign in is ([0-9]{6})", body)
    link = re.search(r"(https?://\S+/app/signin/link/[A-Za-z0-9_-]+)", body)
    assert code and link, body
    return SigninMail(to, code[1], link[1])


def hidden(html: str, name: str) -> str:
    """The value of the hidden input ``name`` in a page."""
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, f"no hidden field {name!r} in the page"
    return found[1]
