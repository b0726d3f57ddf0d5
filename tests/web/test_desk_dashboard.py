"""The dashboards and the occupancy page against a store seeded through the real billing engine
over 13 months (members joining every month, renewals, soft and hard declines, a card replaced
and the debt recovered, cancellations, attendance at two sites in their own time zones): every
chart's table and CSV equal ``gated-billing report … --csv`` for the same period, and a site
manager sees only their site's numbers."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.contract import format_time, new_ulid
from gated.web.app import web_routes
from gated.web.desk_dashboard import DASHBOARD
from tests.billing.helpers import DAY, T0, Clock, cli_ok, make_billing

ZONES = {"downtown": {"name": "Downtown", "timezone": "Europe/Berlin"}, "uptown": {}}
FIRST, LAST = "2025-11", "2026-11"
MIDNIGHT = T0 - T0 % DAY  # 2026-12-01T00:00:00Z


def event(site: str, at: int, kind: str = "entry", member: str | None = None) -> dict[str, Any]:
    return {
        "event_id": new_ulid(),
        "site": site,
        "gate": "t1",
        "at": format_time(at),
        "kind": kind,
        "member_id": member,
        "reason": "ok",
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Billing, Clock, Path]]:
    tmp = tmp_path_factory.mktemp("dash")
    clock = Clock(MIDNIGHT - 395 * DAY)  # 2025-11-01
    b, _ = make_billing(tmp, clock=clock, sites=ZONES)
    n = 0
    for month in range(13):
        for _ in range(2 + month % 3):
            n += 1
            site = ["downtown"] if n % 3 else ["uptown"]
            pm = "pm_sim_ok"
            if n % 7 == 0:
                pm = "pm_sim_decline_insufficient_funds"
            elif n % 11 == 0:
                pm = "pm_sim_decline_lost_card"
            b.add_member(f"m{n}", f"Member {n}", plan_id="monthly", sites=site, payment_method=pm)
            if n % 5 == 0:
                b.cancel(f"m{n}")
            # Attendance: a few entries a day at varied hours, exits at downtown.
            for d in range(0, 28, 3):
                at = clock.now + d * DAY + (6 + (n * 5 + d) % 15) * 3600
                b.record_gate_events([event(site[0], at, member=f"m{n}")])
                if site == ["downtown"]:
                    b.record_gate_events([event("downtown", at + 3600, "exit", f"m{n}")])
        for _ in range(15):
            clock.advance(2)
            b.run_cycle()
        if month == 4:
            # A soft decline recovered by a new card, another at the desk.
            b.set_payment_method("m7", "pm_sim_ok")
            b.record_payment("m14")
    clock.now = MIDNIGHT + 10 * 3600  # 2026-12-01 10:00 UTC
    config = tmp / "billing.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp}/billing.db"\nstate_dir = "{tmp}"\n'
        f'[sites.downtown]\nname = "Downtown"\ntimezone = "Europe/Berlin"\n[sites.uptown]\n'
        f'[keys]\nhead_office_private_key_file = "{tmp}/keys/head-office.pem"\n'
        f'credential_key_file = "{tmp}/keys/credential.key"\n'
        f'card_encryption_key_file = "{tmp}/keys/cards.key"\n'
    )
    yield b, clock, config
    b.engine.dispose()


def _client(b: Billing, role: str, sites: list[str]) -> TestClient:
    access = b.staff_access()
    staff_id = f"{role}-{'-'.join(sites) or 'all'}"
    if staff_id not in {a.id for a in access.accounts()}:
        access.add(staff_id, staff_id, role, sites, "a long staff password")
    c = TestClient(create_app(b, None, web_routes(b)))
    c.cookies.set("gated-staff", access.open_session(staff_id, "test", "127.0.0.1"))
    return c


def _cells(html: str, table: str) -> list[list[str]]:
    body = html.split(f'<table id="t-{table}">', 1)[1].split("</table>", 1)[0]
    return [
        re.findall(r"<td>(.*?)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
        if "<td>" in row
    ]


def test_every_chart_has_the_cli_reports_numbers(seeded: tuple[Billing, Clock, Path]) -> None:
    b, _, config = seeded
    with _client(b, "manager", []) as c:
        page = c.get(f"/desk/dashboard?from={FIRST}&to={LAST}")
        assert page.status_code == 200
        for name in DASHBOARD:
            cli = cli_ok(config, "report", name, "--csv", "--from", FIRST, "--to", LAST)
            web = c.get(f"/desk/dashboard/{name}.csv?from={FIRST}&to={LAST}")
            assert web.status_code == 200 and web.headers["content-type"].startswith("text/csv")
            assert web.text.replace("\r\n", "\n") == cli.replace("\r\n", "\n"), name
            rows = list(csv.reader(io.StringIO(cli)))[1:]
            assert rows, f"the seeded store gives {name} no rows"
            # The page's table is the same rows (as text).
            assert _cells(page.text, name) == rows, name
        # Every chart is an inline SVG with a name for screen readers.
        assert page.text.count('<svg class="chart"') >= len(DASHBOARD)
        api = c.get(f"/api/v1/staff/dashboard?from={FIRST}&to={LAST}").json()
        assert set(api["reports"]) == set(DASHBOARD)
    months = [
        r[0]
        for r in list(
            csv.reader(
                io.StringIO(
                    cli_ok(config, "report", "members", "--csv", "--from", FIRST, "--to", LAST)
                )
            )
        )[1:]
    ]
    assert months[0] == FIRST and months[-1] == LAST and len(months) == 13


def test_the_seeded_numbers_mean_what_they_say(seeded: tuple[Billing, Clock, Path]) -> None:
    b, _, config = seeded
    recovery = list(
        csv.DictReader(io.StringIO(cli_ok(config, "report", "recovery", "--csv", "--from", FIRST)))
    )
    classes = {r["decline_class"] for r in recovery}
    assert {"soft", "hard"} <= classes, classes
    assert sum(int(r["recovered_amount"]) for r in recovery) > 0
    assert all(int(r["recovered_amount"]) == 0 for r in recovery if r["decline_class"] == "hard")
    members = list(
        csv.DictReader(io.StringIO(cli_ok(config, "report", "members", "--csv", "--from", FIRST)))
    )
    assert sum(int(r["new"]) for r in members) == len(b.list_members()) + 0
    assert sum(int(r["cancelled"]) for r in members) > 0
    heat = list(csv.DictReader(io.StringIO(cli_ok(config, "report", "heatmap", "--csv"))))
    assert len(heat) == 2 * 7 * 24  # every cell of both sites
    # Entries fall between 06:00 and 20:00 UTC: uptown (UTC) shows them so, downtown in
    # Berlin time, an hour or two later.
    hours = {
        site: {int(r["hour"]) for r in heat if r["site"] == site and int(r["entries"])}
        for site in ("uptown", "downtown")
    }
    assert min(hours["uptown"]) >= 6 and max(hours["uptown"]) <= 20
    assert min(hours["downtown"]) >= 7 and max(hours["downtown"]) == 22


def test_a_site_manager_sees_only_their_sites_numbers(seeded: tuple[Billing, Clock, Path]) -> None:
    b, _, config = seeded
    with _client(b, "manager", ["uptown"]) as c:
        for name in ("revenue", "sites", "heatmap", "members"):
            web = c.get(f"/desk/dashboard/{name}.csv?from={FIRST}&to={LAST}").text
            cli = cli_ok(
                config, "report", name, "--csv", "--from", FIRST, "--to", LAST, "--site", "uptown"
            )
            assert web.replace("\r\n", "\n") == cli.replace("\r\n", "\n"), name
        assert "downtown" not in c.get(f"/desk/dashboard/sites.csv?from={FIRST}").text
    with _client(b, "front_desk", []) as c:
        assert c.get("/desk/dashboard").status_code == 403
        assert c.get("/desk/dashboard/revenue.csv").status_code == 403
        assert c.get("/api/v1/staff/dashboard").status_code == 403


def test_occupancy_counts_people_inside_from_local_midnight(
    seeded: tuple[Billing, Clock, Path],
) -> None:
    b, clock, _ = seeded
    now = clock.now  # 10:00 UTC = 11:00 in Berlin
    # Yesterday evening's visitors do not count today (Berlin's midnight is 23:00 UTC).
    berlin_midnight = int(datetime(2026, 11, 30, 23, 0, tzinfo=UTC).timestamp())
    b.record_gate_events(
        [
            event("downtown", berlin_midnight - 600),
            *(event("downtown", berlin_midnight + 3600 * h) for h in (7, 8, 8, 9)),
            event("downtown", berlin_midnight + 3600 * 10, "exit"),
            *(event("uptown", now - 3600 * h) for h in (1, 2, 3)),
        ]
    )
    with _client(b, "front_desk", []) as c:
        page = c.get("/desk/occupancy")
        assert page.status_code == 200
        assert '<span class="count" id="inside-downtown">3</span>' in page.text
        # Uptown records no exits: entries since its (UTC) midnight instead.
        assert '<span class="count" id="entries-uptown">3</span>' in page.text
        api = c.get("/api/v1/staff/occupancy").json()
        sites = {s["site"]: s for s in api["sites"]}
        assert (sites["downtown"]["inside"], sites["downtown"]["entries_today"]) == (3, 4)
        assert sites["uptown"]["inside"] is None
        assert sites["downtown"]["slots"][0][1] == "00:00"
    with _client(b, "front_desk", ["uptown"]) as c:
        assert [s["site"] for s in c.get("/api/v1/staff/occupancy").json()["sites"]] == ["uptown"]


def test_a_malformed_month_is_one_line(seeded: tuple[Billing, Clock, Path]) -> None:
    from typer.testing import CliRunner

    from gated.billing_sync.cli import app

    _, _, config = seeded
    result = CliRunner().invoke(app, ["report", "mrr", "--from", "2025-13", "-c", str(config)])
    assert result.exit_code == 2
    assert "not a month: '2025-13' (use YYYY-MM)" in result.output
    assert "Traceback" not in result.output
