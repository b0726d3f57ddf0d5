"""A member's own data in process (starlette's TestClient over the real app and a real SQLite
store): visits per month on ``/app/`` and in the API (granted entries only, in the site's time
zone), the download with every part and nothing of another member, and the erasure request
recorded once for staff, refused without CSRF. The pages in a real browser: test_browser_data.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.service import Billing
from gated.contract import format_time
from tests.billing.helpers import DAY, T0, Clock, make_billing
from tests.web.helpers import hidden
from tests.web.test_member_app import sign_in


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(
        tmp_path, sites={"downtown": {"timezone": "Europe/Berlin"}, "uptown": {}}
    )
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.com", payment_method="pm_sim_ok"
    )
    b.add_member(
        "bob", "Bob Secret", plan_id="monthly", email="bob@example.com", payment_method="pm_sim_ok"
    )
    return b, clock


def event(n: int, member: str, at: str, kind: str = "entry", reason: str = "ok") -> dict[str, Any]:
    return {
        "event_id": f"01J{n:023d}",
        "site": "downtown",
        "gate": "turnstile-1",
        "at": at,
        "kind": kind,
        "member_id": member,
        "reason": reason,
    }


@pytest.fixture
def visited(billing: tuple[Billing, Clock]) -> Billing:
    """Ann came three times in December (Berlin time) and twice in January; a deny and an
    entry the passage sensor never saw are not visits; Bob's visit is his."""
    b, clock = billing
    b.record_gate_events(
        [
            event(1, "ann", "2026-12-03T07:00:00Z"),
            event(2, "ann", "2026-12-04T07:00:00Z", kind="deny", reason="schedule"),
            event(3, "ann", "2026-12-05T07:00:00Z", reason="not_passed"),
            event(4, "ann", "2026-12-20T18:00:00Z"),
            event(5, "ann", "2026-12-31T22:30:00Z"),  # 23:30 in Berlin: still December
            event(6, "ann", "2026-12-31T23:30:00Z"),  # 00:30 on New Year's Day in Berlin
            event(7, "ann", "2027-01-05T09:00:00Z"),
            event(8, "bob", "2026-12-06T09:00:00Z"),
        ]
    )
    clock.now = T0 + 40 * DAY  # 2027-01-10
    return b


def test_visits_per_month_on_the_membership_page_and_in_the_api(
    client: TestClient, visited: Billing
) -> None:
    sign_in(client, visited, "ann@example.com")
    rows = client.get("/api/v1/me/visits").json()["visits_by_month"]
    # Newest first, none before the month Ann joined.
    assert rows == [{"month": "2027-01", "visits": 2}, {"month": "2026-12", "visits": 3}]
    page = client.get("/app/").text
    assert '<td>2027-01</td><td class="n">2</td>' in page
    assert '<td>2026-12</td><td class="n">3</td>' in page


def test_the_download_holds_every_part_and_only_the_members_own(
    client: TestClient, visited: Billing
) -> None:
    sign_in(client, visited, "ann@example.com")
    r = client.get("/app/data/download")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "attachment" in r.headers["content-disposition"]
    data = json.loads(r.content)
    assert set(data) >= {"profile", "membership", "contract", "invoices", "gate_events", "audit"}
    assert data["profile"]["email"] == "ann@example.com" and data["profile"]["name"] == "Ann"
    assert [i["id"] for i in data["invoices"]] and all(i["lines"] for i in data["invoices"])
    assert len(data["gate_events"]) == 7 and {e["kind"] for e in data["gate_events"]} == {
        "entry",
        "deny",
    }
    assert "Bob" not in r.text and "bob@" not in r.text
    assert client.get("/api/v1/me/data").json()["profile"]["member_id"] == "ann"


def test_an_erasure_request_is_recorded_once_for_staff_and_needs_csrf(
    client: TestClient, visited: Billing
) -> None:
    b = visited
    sign_in(client, b, "ann@example.com")
    page = client.get("/app/data")
    assert "bookkeeping law" in page.text
    csrf = hidden(page.text, "csrf")
    assert client.post("/app/data/erasure", data={"confirm": "yes"}).status_code == 403
    unticked = client.post("/app/data/erasure", data={"csrf": csrf})
    assert unticked.status_code == 400 and "Tick the box" in unticked.text
    assert b.member_data().erasure_requests() == []
    r = client.post("/app/data/erasure", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 200 and "We have your request" in r.text
    assert "You asked for erasure on 2027-01-10" in client.get("/app/data").text
    # A second request (the API twin) records nothing new.
    token = client.get("/api/v1/session").json()["csrf_token"]
    assert client.post("/api/v1/me/erasure", json={}).status_code == 403
    again = client.post("/api/v1/me/erasure", json={}, headers={"X-CSRF-Token": token})
    asked = format_time(T0 + 40 * DAY)
    assert again.status_code == 200 and again.json()["requested_at"] == asked
    requests = b.member_data().erasure_requests()
    assert [(q["member_id"], q["requested_at"]) for q in requests] == [("ann", asked)]
    rows = [e for e in b.audit_entries(member_id="ann") if e["action"] == "erasure_requested"]
    assert len(rows) == 1 and rows[0]["actor_kind"] == "member"
    # The member's own download shows the request as theirs.
    audit = client.get("/api/v1/me/data").json()["audit"]
    assert [a["by"] for a in audit if a["action"] == "erasure_requested"] == ["you"]
    # Once staff erase, the request is no longer waiting.
    b.erase("ann")
    assert b.member_data().erasure_requests() == []
