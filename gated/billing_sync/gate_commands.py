"""Commands the staff console sends a gate: signed with the desk key, which gates trust for
``pulse`` and lockdown only, for at most a minute (DESIGN, GateCommand), carrying the staff member
in ``args.operator`` so the gate's event names them. Published on the gate's command topic over a
short connection of its own (QoS 1, never retained)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from sqlalchemy import select

from gated.billing_sync import schema as s
from gated.billing_sync.context import Context
from gated.billing_sync.errors import BillingError
from gated.billing_sync.front_desk import ALL_SITES
from gated.billing_sync.publisher import billing_client
from gated.contract import Signer, cmd_topic, format_time, new_ulid
from gated.mqtt_session import session

# Well inside the gates' 60 s limit for desk commands: an opening is for someone standing there.
DESK_COMMAND_TTL_S = 30
DESK_ACTIONS = ("pulse", "lockdown_on", "lockdown_off")
# Gates that sent an event within this long count as known even without a snapshot token.
SEEN_WITHIN_S = 30 * 86_400

# One desk connection at a time: they share one client id.
_sending = asyncio.Lock()


def desk_command(
    ctx: Context, site: str, gate: str, action: str, operator: str
) -> dict[str, object]:
    """A signed GateCommand from the console; BillingError without a desk key."""
    if action not in DESK_ACTIONS:
        raise BillingError(f"the desk key does not sign {action!r}")
    path = ctx.config.keys.desk_command_private_key_file
    if path is None or not path.exists():
        raise BillingError(
            "no desk key: set [keys] desk_command_private_key_file and run `gated-billing keys init`"
        )
    now = ctx.clock()
    return Signer.from_pem_file(path).sign(
        {
            "type": "gate_command",
            "id": new_ulid(),
            "site": site,
            "gate": gate,
            "action": action,
            "args": {"operator": operator},
            "issued_at": format_time(now),
            "not_after": format_time(now + DESK_COMMAND_TTL_S),
        }
    )


async def send(ctx: Context, *commands: dict[str, object]) -> None:
    """Publish signed commands to their gates over one connection (QoS 1: the broker has each
    when this returns)."""
    cfg = ctx.config.mqtt
    if cfg is None:
        raise BillingError("no [mqtt] in billing.toml: the console cannot reach the gates")
    async with _sending, session(billing_client(cfg, f"{cfg.client_id}-desk")) as client:
        for command in commands:
            await client.publish(
                cmd_topic(str(command["site"]), str(command["gate"])),
                json.dumps(command, sort_keys=True, separators=(",", ":")),
                qos=1,
            )


def known_gates(ctx: Context, staff_sites: Sequence[str]) -> list[tuple[str, str]]:
    """Gates at ``staff_sites``: those with a snapshot token and those heard from lately."""
    g, ev = s.gates, s.gate_events
    since = ctx.clock() - SEEN_WITHIN_S
    with ctx.reader.connect() as conn:
        found = {
            (r.site, r.gate)
            for r in conn.execute(select(g.c.site, g.c.gate).where(g.c.revoked_at.is_(None)))
        }
        found |= {
            (r.site, r.gate)
            for r in conn.execute(select(ev.c.site, ev.c.gate).where(ev.c.at >= since).distinct())
        }
    return sorted(
        (site, gate) for site, gate in found if ALL_SITES in staff_sites or site in staff_sites
    )
