"""The head office's dashboards (``view_revenue``) and the occupancy page (``view_members``).

Every number comes from ``gated.billing_sync.reports``, the module behind ``gated-billing report
…``: a chart, its table and its CSV are one report's rows for the same period and sites, so they
equal the CLI's output. Charts are inline SVG drawn on the server (``charts``)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync import reports
from gated.billing_sync.errors import BillingError
from gated.billing_sync.front_desk import ALL_SITES
from gated.web import charts

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

# The dashboard's reports, in the order the page shows them.
DASHBOARD = ("revenue", "mrr", "members", "recovery", "statuses", "heatmap", "sites")
MONTHS = 13


def _sum_by_month(
    months: list[str], rows: list[tuple[Any, ...]], value: int, where: Callable[[Any], bool]
) -> list[float]:
    totals = dict.fromkeys(months, 0.0)
    for r in rows:
        if r[0] in totals and where(r):
            totals[r[0]] += float(r[value])
    return list(totals.values())


def _charts(
    tables: dict[str, reports.Report], months: list[str], currency: str
) -> dict[str, list[Markup]]:
    """The charts of each report (a report with no chart has an empty list)."""
    money = currency.upper()
    in_cur: Callable[[Any], bool] = lambda r: r[1] == money  # noqa: E731
    everything: Callable[[Any], bool] = lambda r: True  # noqa: E731
    rev = tables["revenue"][1]
    out: dict[str, list[Markup]] = {name: [] for name in tables}
    out["revenue"] = [
        charts.bars(
            f"Revenue per month in {money}",
            months,
            [(money, [v / 100 for v in _sum_by_month(months, rev, 3, in_cur)])],  # gross
        )
    ]
    out["mrr"] = [
        charts.bars(
            f"Monthly recurring revenue in {money}",
            months,
            [("MRR", [v / 100 for v in _sum_by_month(months, tables["mrr"][1], 2, in_cur)])],
        )
    ]
    mem = tables["members"][1]
    out["members"] = [
        charts.bars(
            "New members and cancellations per month",
            months,
            [
                ("new", _sum_by_month(months, mem, 1, everything)),
                ("cancelled", _sum_by_month(months, mem, 2, everything)),
            ],
        )
    ]
    rec = tables["recovery"][1]
    out["recovery"] = [
        charts.bars(
            f"Failed and recovered payments per month in {money}",
            months,
            [
                ("failed", [v / 100 for v in _sum_by_month(months, rec, 4, in_cur)]),
                ("recovered", [v / 100 for v in _sum_by_month(months, rec, 5, in_cur)]),
            ],
        )
    ]
    st = tables["statuses"][1]
    out["statuses"] = [
        charts.bars("Members by status", [str(r[0]) for r in st], [("members", [r[1] for r in st])])
    ]
    heat = tables["heatmap"][1]
    for site in sorted({str(r[0]) for r in heat}):
        cells = [[0] * 24 for _ in reports.WEEKDAYS]
        for r in heat:
            if r[0] == site:
                cells[reports.WEEKDAYS.index(r[1])][int(r[2])] = int(r[3])
        out["heatmap"].append(
            charts.heat(f"Entries by weekday and hour at {site}", reports.WEEKDAYS, 24, cells)
        )
    sites = tables["sites"][1]
    labels = [str(r[0]) for r in sites]
    out["sites"] = [
        charts.bars(
            "Sites compared: entries and visitors",
            labels,
            [("entries", [r[3] for r in sites]), ("visitors", [r[4] for r in sites])],
        )
    ]
    return out


def _csv(name: str, report: reports.Report) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(report[0])
    writer.writerows(report[1])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}.csv"'},
    )


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The dashboard, its CSVs and JSON, and the occupancy page, for ``desk.RULES``."""
    billing = desk.web.billing

    def scope(request: Request, visitor: StaffVisitor) -> tuple[reports.Scope, str, str]:
        """The period asked for (default: the last 13 months) at the account's sites."""
        assert visitor.session is not None
        staff_sites = visitor.session.staff.sites
        default_first, default_last = reports.last_months(billing.clock(), MONTHS)
        first = request.query_params.get("from") or default_first
        last = request.query_params.get("to") or default_last
        sites = None if ALL_SITES in staff_sites else list(staff_sites)
        try:
            return reports.scope_for(billing.config, first, last, sites), first, last
        except BillingError:
            return (
                reports.scope_for(billing.config, default_first, default_last, sites),
                default_first,
                default_last,
            )

    def run(names: tuple[str, ...], where: reports.Scope) -> dict[str, reports.Report]:
        now = billing.clock()
        # One connection and one read transaction for the page: no checkout per report, and on
        # SQLite every chart reads the same snapshot.
        with billing.reader.connect() as conn, conn.begin():
            return {name: reports.REPORTS[name](conn, now, where) for name in names}

    async def dashboard(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        where, first, last = scope(request, visitor)
        tables = await asyncio.to_thread(run, DASHBOARD, where)
        months = [m for m, _, _ in reports.months_in(where, billing.clock(), where.start)]
        return desk.page(
            visitor,
            "desk_dashboard.html",
            title="Dashboard",
            tables=tables,
            charts=_charts(tables, months, billing.config.currency),
            first=first,
            last=last,
            query=f"from={first}&to={last}",
        )

    async def dashboard_csv(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        name = request.path_params["report"]
        if name not in DASHBOARD:
            return desk.message(visitor, 404, "Not found", "There is no such report.")
        where, _, _ = scope(request, visitor)
        tables = await asyncio.to_thread(run, (name,), where)
        return _csv(name, tables[name])

    async def api_dashboard(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        where, first, last = scope(request, visitor)
        tables = await asyncio.to_thread(run, DASHBOARD, where)
        return JSONResponse(
            {
                "from": first,
                "to": last,
                "reports": {k: {"columns": c, "rows": r} for k, (c, r) in tables.items()},
            }
        )

    def occupancy_now(visitor: StaffVisitor) -> tuple[reports.Report, list[dict[str, Any]]]:
        assert visitor.session is not None
        staff_sites = visitor.session.staff.sites
        sites = [s for s in billing.config.sites if ALL_SITES in staff_sites or s in staff_sites]
        where = reports.scope_for(billing.config, sites=sites)
        report = reports.occupancy(billing.reader, billing.clock(), where)
        summary = []
        for site in sites:
            slots = [r for r in report[1] if r[0] == site]
            inside = slots[-1][4] if slots else ""
            summary.append(
                {
                    "site": site,
                    "name": billing.config.site(site).name,
                    "timezone": billing.config.site(site).timezone,
                    "inside": None if inside == "" else inside,
                    "entries_today": sum(int(r[2]) for r in slots),
                    "exits_today": sum(int(r[3]) for r in slots),
                    "slots": slots,
                }
            )
        return report, summary

    async def occupancy(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        report, summary = await asyncio.to_thread(occupancy_now, visitor)
        for site in summary:
            slots = site["slots"]
            if site["inside"] is not None:
                what, curve = "People inside", [int(r[4]) for r in slots]
            else:  # no exit readers: entries so far today
                what, curve = "Entries so far today", list(accumulate(int(r[2]) for r in slots))
            site["chart"] = charts.line(
                f"{what} at {site['name']}, today", [r[1] for r in slots], curve
            )
        return desk.page(
            visitor, "desk_occupancy.html", title="Occupancy", sites=summary, columns=report[0]
        )

    async def api_occupancy(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        report, summary = await asyncio.to_thread(occupancy_now, visitor)
        return JSONResponse({"columns": report[0], "sites": summary})

    return {
        "dashboard": dashboard,
        "dashboard_csv": dashboard_csv,
        "api_dashboard": api_dashboard,
        "occupancy": occupancy,
        "api_occupancy": api_occupancy,
    }
