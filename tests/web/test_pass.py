"""The pass in a real browser (headless Chromium) against a real ``gated-billing serve``, a real
mosquitto and a real gate (``gated run``): the page registers its own key and shows a QR code
that a real decoder (zxing-cpp) reads back as the code the page minted, which the gate lets in
once (``qr_replayed`` the second time); offline the pass keeps minting codes the gate accepts
and makes no request; a second device replaces the first at the gate; with the browser's clock
10 minutes off every code shown is accepted. axe-core and 375 px as everywhere."""

from __future__ import annotations

import json
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sync.helpers import wait_until
from tests.web.conftest import BIN, Stack
from tests.web.test_browser import Tab, tab_opener

pytestmark = pytest.mark.slow

CODE = "#pass-code[data-code^='GQ1.']"
# Date ten minutes ahead of the real clock, in every page of a context.
CLOCK_AHEAD = """(() => {
  const skew = 10 * 60 * 1000;
  const Real = Date;
  class Skewed extends Real {
    constructor(...args) { if (args.length === 0) super(Real.now() + skew); else super(...args); }
    static now() { return Real.now() + skew; }
  }
  globalThis.Date = Skewed;
})();"""


def png_gray(data: bytes) -> tuple[memoryview, int, int]:
    """A PNG (8-bit RGB or RGBA, not interlaced: what Chromium's screenshots are) as one
    grey byte per pixel, shaped (height, width) for zxing-cpp."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    gray = bytearray(width * height)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            corner = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        gray[y * width : (y + 1) * width] = line[1::channels]  # the green channel
        prev = line
    return memoryview(bytes(gray)).cast("B", (height, width)), width, height


def decode_qr(png: bytes) -> str:
    """The text of the one QR code in a screenshot, read by zxing-cpp."""
    import zxingcpp

    image, _, _ = png_gray(png)
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(found) == 1, f"{len(found)} QR codes in the screenshot"
    return str(found[0].text)


def shown_and_decoded(page: Any) -> tuple[str, str]:
    """(the code in ``data-code``, what a scanner reads from a screenshot of the QR), taken
    again if the code changed while the screenshot was made."""
    for _ in range(5):
        before = page.get_attribute("#pass-code", "data-code")
        shot = page.locator("#pass-qr").screenshot()
        if page.get_attribute("#pass-code", "data-code") == before:
            return str(before), decode_qr(shot)
    raise AssertionError("the code changed during every screenshot")


def next_code(page: Any, after: str) -> str:
    """Wait for the pass to show a code other than ``after``."""
    page.wait_for_function(
        "old => { const c = document.querySelector('#pass-code').dataset.code;"
        " return c && c.startsWith('GQ1.') && c !== old; }",
        arg=after,
        timeout=15_000,
    )
    return str(page.get_attribute("#pass-code", "data-code"))


def gatectl_badge(stack: Stack, code: str) -> dict[str, Any]:
    """``gatectl badge --qr CODE --json`` on the gate, as a technician runs it."""
    out = stack.gate.gatectl("badge", "--qr", code, "--json")
    assert out.returncode in (0, 1), out.stderr
    return dict(json.loads(out.stdout))


def badge(stack: Stack, code: str) -> dict[str, Any]:
    """The same over the control socket (fast enough to check a code every 100 ms)."""
    return dict(stack.gate.request("badge", {"qr": code}))


def make_pass(tab: Tab, email: str) -> str:
    """Sign in, open the pass, make this browser the member's pass; returns the first code."""
    tab.sign_in(email)
    tab.page.goto("/app/pass")
    tab.page.get_by_role("button", name="Use this device as my pass").click()
    tab.page.wait_for_selector(CODE, timeout=15_000)
    return str(tab.page.get_attribute("#pass-code", "data-code"))


def let_in_once_published(stack: Stack, code: str) -> None:
    """Badge ``code`` until the gate has the key that signs it (a refusal spends nothing),
    then check it was let in."""
    wait_until(lambda: badge(stack, code)["allow"], timeout=10, what="the gate has the new key")


@pytest.fixture
def tabs(browser: Any, stack: Stack, axe_source: str) -> Iterator[Any]:
    yield from tab_opener(browser, stack, axe_source)


def test_the_pass_shows_a_qr_the_gate_lets_in_once_and_works_offline(
    tabs: Any, stack: Stack
) -> None:
    tab = tabs()
    page = tab.page
    loaded: list[Any] = []
    page.on("response", lambda r: loaded.append(r))
    first = make_pass(tab, "pia@example.com")
    assert first.startswith("GQ1.pia.")
    # What a scanner reads off the screen is the code the page minted.
    code, decoded = shown_and_decoded(page)
    assert decoded == code
    let_in_once_published(stack, first)
    code, decoded = shown_and_decoded(page)
    if code == first:
        code, decoded = shown_and_decoded(page) if next_code(page, first) else ("", "")
    assert decoded == code
    assert gatectl_badge(stack, decoded) | {"latency_us": 0} == {
        "allow": True,
        "reason": "ok",
        "member_id": "pia",
        "latency_us": 0,
    }
    assert gatectl_badge(stack, decoded)["reason"] == "qr_replayed"
    assert "Your membership is active." in page.inner_text("#pass-status")
    tab.check("pass")

    # Head office no longer holds a key that could mint this member's codes.
    played = subprocess.run(
        [str(BIN), "pass", "pia", "-c", str(stack.config)], capture_output=True, text=True
    )
    assert played.returncode == 2 and "own device" in played.stderr
    assert len(played.stderr.strip().splitlines()) == 1

    # The page never loads Stripe.js, and weighs under 100 KB (HTML, scripts, stylesheets).
    assert not [r.url for r in loaded if "stripe" in r.url.lower()]
    page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10_000)
    weighed: list[Any] = []
    page.on("response", lambda r: weighed.append(r))
    page.reload()
    page.wait_for_selector(CODE)
    kinds = ("document", "script", "stylesheet")
    weight = sum(len(r.body()) for r in weighed if r.request.resource_type in kinds)
    assert 0 < weight < 100_000, weight

    # Offline: codes keep coming, the gate lets them in, and the page asks nothing of anyone.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    tab.context.set_offline(True)
    try:
        code = next_code(page, str(page.get_attribute("#pass-code", "data-code")))
        code = next_code(page, code)
        assert badge(stack, code)["reason"] == "ok"
        assert requests == []
        # Reopened offline, the pass comes from the service worker and still lets in.
        answered: list[Any] = []
        page.on("response", lambda r: answered.append(r))
        page.reload()
        code = next_code(page, code)
        decision = badge(stack, code)
        assert (decision["allow"], decision["reason"], decision["member_id"]) == (True, "ok", "pia")
        assert answered and all(r.from_service_worker for r in answered), [
            r.url for r in answered if not r.from_service_worker
        ]
        assert not [u for u in requests if "/api/" in u]
    finally:
        tab.context.set_offline(False)


def test_a_new_device_replaces_the_old_one_at_the_gate(tabs: Any, stack: Stack) -> None:
    old = tabs()
    let_in_once_published(stack, make_pass(old, "bob@example.com"))

    new = tabs()
    new.sign_in("bob@example.com")
    new.page.goto("/app/pass")
    button = new.page.get_by_role("button", name="Use this device as my pass")
    button.click()
    new.page.wait_for_function("() => document.querySelector('#pass-error').textContent !== ''")
    assert "less than 24 hours ago" in new.page.inner_text("#pass-error")
    assert new.page.get_attribute("#pass-code", "data-code") in ("", None)

    allowed = subprocess.run(
        [str(BIN), "members", "allow-key", "bob", "-c", str(stack.config)],
        capture_output=True,
        text=True,
    )
    assert allowed.returncode == 0, allowed.stderr
    button.click()
    new.page.wait_for_selector(CODE, timeout=15_000)
    let_in_once_published(stack, str(new.page.get_attribute("#pass-code", "data-code")))
    # The new version reached the gate: whatever the old phone shows now is refused.
    stale = next_code(old.page, str(old.page.get_attribute("#pass-code", "data-code")))
    assert badge(stack, stale)["reason"] == "qr_bad_signature"
    # And the old phone, once it hears from head office, says so.
    old.page.reload()
    old.page.wait_for_function(
        "() => document.querySelector('#pass-message').textContent.includes('Another device')"
    )
    assert old.page.get_attribute("#pass-code", "data-code") == ""


def test_key_registration_refused_without_csrf_or_proof(tabs: Any, stack: Stack) -> None:
    tab = tabs()
    tab.sign_in("cat@example.com")
    request = tab.context.request
    # Not even a challenge without the CSRF token.
    r = request.post("/api/v1/pass/challenge")
    assert r.status == 403 and r.json()["reason"] == "csrf"
    csrf = request.get("/api/v1/session").json()["csrf_token"]
    nonce = request.post("/api/v1/pass/challenge", headers={"X-CSRF-Token": csrf}).json()["nonce"]
    r = request.post(
        "/api/v1/pass/key",
        headers={"X-CSRF-Token": csrf},
        data={"public_key": "A" * 43 + "=", "nonce": nonce, "signature": "B" * 86},
    )
    assert r.status == 400 and r.json()["reason"] == "bad_proof"
    # A stranger holding only the member's id gets nothing.
    stranger = tabs()
    stranger.page.goto("/app/signin")
    r = stranger.context.request.post(
        "/api/v1/pass/key",
        headers={"X-CSRF-Token": "x"},
        data={"member_id": "cat", "public_key": "A" * 44, "nonce": "n" * 32, "signature": "s"},
    )
    assert r.status == 403
    assert stranger.context.request.get("/api/v1/pass").status == 401


def test_a_frozen_member_sees_not_valid(tabs: Any, stack: Stack) -> None:
    tab = tabs()
    tab.sign_in("fay@example.com")
    tab.page.goto("/app/pass")
    tab.page.wait_for_selector("#pass-register:not([hidden])")
    status = tab.page.inner_text("#pass-status")
    assert status.startswith("Not valid") and "frozen" in status
    assert tab.page.get_attribute("#pass", "data-valid") == "false"
    tab.check("pass-frozen")


def test_every_code_shown_with_the_clock_ten_minutes_off_is_let_in(tabs: Any, stack: Stack) -> None:
    tab = tabs(init_script=CLOCK_AHEAD)
    page = tab.page
    first = make_pass(tab, "quinn@example.com")
    let_in_once_published(stack, first)
    assert page.evaluate("Date.now()") - time.time() * 1000 > 590_000
    seen: dict[str, dict[str, Any]] = {first: {"allow": True}}
    started = time.monotonic()
    # A minute of codes, sampled every 100 ms as a scanner could (bench/bench_app.py pass
    # runs the same for five minutes).
    while time.monotonic() - started < 60:
        code = str(page.get_attribute("#pass-code", "data-code"))
        if code not in seen:
            seen[code] = badge(stack, code)
            ts = int(code.split(".")[2])
            assert abs(ts - time.time()) < 5, "the code carries head office's time"
        page.wait_for_timeout(100)
    refused = {c: d["reason"] for c, d in seen.items() if not d["allow"]}
    # A code every 2 s (the stack's qr_refresh_s): about 30 in the minute.
    assert not refused and len(seen) >= 25, (len(seen), refused)
