"""Registering the pass key in process (starlette's TestClient over the real app and a real
SQLite store): the happy path publishes the key and mails the member, and each rule refuses
with a clear JSON error: no CSRF token, no session, a sign-in older than 15 minutes, no proof of
possession (a wrong signature, a used or foreign challenge), a second device within 24 hours
(unless staff allow it); "sign out everywhere" revokes the key."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import NotFound
from gated.billing_sync.pass_keys import proof_message
from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, make_billing, published
from tests.web.test_member_app import sign_in


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    for member_id in ("ann", "bob"):
        b.add_member(
            member_id,
            member_id.title(),
            plan_id="monthly",
            email=f"{member_id}@example.com",
            payment_method="pm_sim_ok",
            with_qr=True,
        )
    return b, clock


def csrf_of(client: TestClient) -> str:
    return str(client.get("/api/v1/session").json()["csrf_token"])


def register(
    client: TestClient,
    member_id: str,
    key: nacl.signing.SigningKey | None = None,
    *,
    csrf: str | None = None,
    sign: Any = None,
) -> Any:
    """Ask a challenge, sign it with ``key`` (``sign`` may replace the message) and register."""
    key = key or nacl.signing.SigningKey.generate()
    token = csrf if csrf is not None else csrf_of(client)
    r = client.post("/api/v1/pass/challenge", headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    message = sign(nonce) if sign else proof_message(member_id, nonce)
    signature = key.sign(message).signature
    return client.post(
        "/api/v1/pass/key",
        headers={"X-CSRF-Token": token},
        json={
            "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
            "nonce": nonce,
            "signature": base64.urlsafe_b64encode(signature).decode().rstrip("="),
        },
    )


def log_actions(b: Billing, member_id: str) -> list[str]:
    """The member's pass-key rows in the audit log, oldest first, without the prefix."""
    return [
        e["action"].removeprefix("pass_key_")
        for e in reversed(b.audit_entries(member_id=member_id))
        if e["action"].startswith("pass_key_")
    ]


def test_a_registered_key_is_published_mailed_logged_and_replaces_head_offices(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    before = published(b, "ann")
    assert before["qr_key"] is not None  # head office held a key (``pass`` played the app)
    sign_in(client, b, "ann@example.com")
    key = nacl.signing.SigningKey.generate()
    r = register(client, "ann", key)
    assert r.status_code == 200, r.text
    state = published(b, "ann")
    assert state["qr_key"] == base64.b64encode(bytes(key.verify_key)).decode()
    assert r.json() == {"qr_key": state["qr_key"], "version": state["version"]}
    assert state["version"] > before["version"]
    with pytest.raises(NotFound, match="own device"):
        b.app_private_key("ann")
    n = schema.notifications
    with b.engine.connect() as conn:
        kinds = conn.execute(select(n.c.kind).where(n.c.member_id == "ann")).scalars().all()
    assert "pass_key" in kinds
    assert log_actions(b, "ann") == ["registered"]
    row = b.audit_entries(member_id="ann")[0]
    assert (row["actor_kind"], row["actor"], row["role"]) == ("member", "ann", "member")
    old_fp, new_fp = row["changes"]["qr_key"]
    assert old_fp and new_fp and old_fp != new_fp and len(new_fp) == 16
    body = client.get("/api/v1/pass").json()
    assert body["qr_key"] == state["qr_key"] and body["valid"] is True
    assert body["qr_refresh_s"] == 10 and isinstance(body["now_ms"], int)


def test_registration_is_refused_without_csrf_session_recent_signin_or_proof(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, clock = billing
    # No session at all (an attacker holding only a member id): a valid anonymous CSRF token
    # still gets nowhere, and a member id in the body is never read.
    client.get("/app/signin")
    anon = client.cookies.get("gated-member")
    assert anon
    r = client.post("/api/v1/pass/challenge", headers={"X-CSRF-Token": "x"})
    assert r.status_code == 403 and r.json()["reason"] == "csrf"
    sign_in(client, b, "ann@example.com")
    token = csrf_of(client)
    assert client.post("/api/v1/pass/challenge").json()["reason"] == "csrf"
    r = client.post("/api/v1/pass/key", json={"public_key": "x", "nonce": "y", "signature": "z"})
    assert r.status_code == 403 and r.json()["reason"] == "csrf"
    with TestClient(app) as stranger:
        stranger.get("/app/signin")
        r = stranger.post(
            "/api/v1/pass/challenge", headers={"X-CSRF-Token": csrf_of_anonymous(stranger)}
        )
        assert r.status_code == 401 and r.json()["reason"] == "signed_out"

    # No proof of possession: signed by another key, over another message, or a used nonce.
    key = nacl.signing.SigningKey.generate()
    r = client.post("/api/v1/pass/challenge", headers={"X-CSRF-Token": token})
    nonce = r.json()["nonce"]
    wrong = nacl.signing.SigningKey.generate().sign(proof_message("ann", nonce)).signature
    body = {
        "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
        "nonce": nonce,
        "signature": base64.urlsafe_b64encode(wrong).decode().rstrip("="),
    }
    r = client.post("/api/v1/pass/key", headers={"X-CSRF-Token": token}, json=body)
    assert r.status_code == 400 and r.json()["reason"] == "bad_proof"
    body["signature"] = base64.urlsafe_b64encode(
        key.sign(proof_message("ann", nonce)).signature
    ).decode()
    r = client.post("/api/v1/pass/key", headers={"X-CSRF-Token": token}, json=body)
    assert r.json()["reason"] == "bad_proof", "a challenge works once, even after a bad try"
    r = register(client, "ann", key, sign=lambda n: f"GQ1.ann.{clock()}.0123456789abcdef".encode())
    assert r.json()["reason"] == "bad_proof"
    r = client.post(
        "/api/v1/pass/key", headers={"X-CSRF-Token": token}, json={"public_key": "only"}
    )
    assert r.status_code == 400 and r.json()["reason"] == "bad_request"

    # A sign-in older than 15 minutes.
    clock.now += 16 * 60
    r = register(client, "ann", key)
    assert r.status_code == 403 and r.json()["reason"] == "signin_too_old"
    assert published(b, "ann")["qr_key"] != base64.b64encode(bytes(key.verify_key)).decode()
    assert log_actions(b, "ann") == []


def csrf_of_anonymous(client: TestClient) -> str:
    from tests.web.helpers import hidden

    return hidden(client.get("/app/signin").text, "csrf")


def test_one_device_per_day_unless_staff_allow_another(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, clock = billing
    sign_in(client, b, "ann@example.com")
    assert register(client, "ann").status_code == 200
    second = nacl.signing.SigningKey.generate()
    r = register(client, "ann", second)
    assert r.status_code == 429 and r.json()["reason"] == "too_soon"
    assert "24 hours" in r.json()["error"] and r.headers["retry-after"] == "86400"
    b.pass_keys().allow("ann", Actor("cli", "frontdesk", "shell", "local"))
    assert register(client, "ann", second).status_code == 200
    assert register(client, "ann").json()["reason"] == "too_soon", "an allowance counts once"
    # A day later (signed in again: the sign-in must be recent), a new device is fine.
    clock.now += 24 * 3600
    sign_in(client, b, "ann@example.com")
    assert register(client, "ann").status_code == 200
    assert log_actions(b, "ann") == ["registered", "allowed", "registered", "registered"]
    allowance = [e for e in b.audit_entries(member_id="ann") if e["action"] == "pass_key_allowed"]
    assert allowance[0]["actor"] == "frontdesk"


def test_another_members_session_registers_only_its_own_member(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    ann_key = published(b, "ann")["qr_key"]
    sign_in(client, b, "bob@example.com")
    key = nacl.signing.SigningKey.generate()
    # Bob signs a challenge as if for Ann: the proof is checked for the session's member.
    r = register(client, "bob", key, sign=lambda n: proof_message("ann", n))
    assert r.json()["reason"] == "bad_proof"
    assert register(client, "bob", key).status_code == 200
    assert published(b, "ann")["qr_key"] == ann_key
    assert published(b, "bob")["qr_key"] == base64.b64encode(bytes(key.verify_key)).decode()


def test_sign_out_everywhere_revokes_the_key(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    assert register(client, "ann").status_code == 200
    version = published(b, "ann")["version"]
    r = client.post("/api/v1/session/signout-everywhere", headers={"X-CSRF-Token": csrf_of(client)})
    assert r.status_code == 200
    state = published(b, "ann")
    assert state["qr_key"] is None and state["version"] > version
    assert log_actions(b, "ann") == ["registered", "revoked"]
    with pytest.raises(NotFound, match="no QR key"):
        b.app_private_key("ann")


def test_the_pass_page_needs_a_session_and_the_worker_is_scoped_to_the_app(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    r = client.get("/app/pass", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/app/signin"
    sw = client.get("/app/sw.js")
    assert sw.headers["content-type"].startswith("text/javascript")
    assert "/api/" in sw.text and "__ASSETS_VERSION__" not in sw.text
    sign_in(client, b, "ann@example.com")
    page = client.get("/app/pass")
    assert page.status_code == 200 and 'data-member-id="ann"' in page.text
    assert "stripe" not in page.text.lower()
    assert client.get("/api/v1/time").json()["now_ms"] > 0
