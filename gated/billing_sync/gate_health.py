"""Each gate's health for the console's gates page: the status it last reported (``GateBoard``)
beside the site's manifest and the gate's latest stored event.

"Last seen" is when a status arrived live, or else the gate's latest stored event: a retained
status read at connect says what the gate last reported, not when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from gated.billing_sync import gate_commands
from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.front_desk import ALL_SITES


def _in(site: str, staff_sites: Sequence[str]) -> bool:
    return ALL_SITES in staff_sites or site in staff_sites


def gates_at(ctx: Context, staff_sites: Sequence[str]) -> list[tuple[str, str]]:
    """Every gate at ``staff_sites`` head office knows: by token, by events, by status."""
    found = set(gate_commands.known_gates(ctx, staff_sites))
    found |= {key for key in ctx.gate_board.heard() if _in(key[0], staff_sites)}
    return sorted(found)


def overview(ctx: Context, staff_sites: Sequence[str]) -> list[dict[str, Any]]:
    """One row per gate at ``staff_sites``: online or offline, last seen, software version,
    members and digest against the site's manifest, outbox depth, lockdown, readers."""
    heard = ctx.gate_board.heard()
    keys = gates_at(ctx, staff_sites)
    ev, sm = s.gate_events, s.site_manifests
    sites = sorted({site for site, _ in keys})
    with ctx.reader.connect() as conn:
        manifests = {r.site: r for r in conn.execute(select(sm).where(sm.c.site.in_(sites))).all()}
        last_event = {
            (r.site, r.gate): int(r.at)
            for r in conn.execute(
                select(ev.c.site, ev.c.gate, func.max(ev.c.at).label("at"))
                .where(ev.c.site.in_(sites))
                .group_by(ev.c.site, ev.c.gate)
            )
        }
    rows = []
    for site, gate in keys:
        h = heard.get((site, gate))
        st: dict[str, Any] = h.status if h else {}
        m = manifests.get(site)
        seen = [t for t in (h.received_at if h else None, last_event.get((site, gate))) if t]
        readers = st.get("readers") or []
        rows.append(
            {
                "site": site,
                "gate": gate,
                "state": st.get("state", "unknown"),
                "last_seen": max(seen) if seen else None,
                "software_version": st.get("software_version"),
                "started_at": st.get("started_at"),
                "members": st.get("members"),
                "max_version": st.get("max_version"),
                "digest": st.get("digest"),
                "manifest_members": None if m is None else int(m._mapping["count"]),
                "manifest_max_version": None if m is None else int(m.max_version),
                "in_step": None if m is None or not st.get("digest") else st["digest"] == m.digest,
                "outbox_depth": st.get("outbox_depth"),
                "lockdown": st.get("lockdown"),
                "readers": readers,
                "reader_faults": sum(1 for r in readers if r.get("state") != "ok"),
            }
        )
    return rows
