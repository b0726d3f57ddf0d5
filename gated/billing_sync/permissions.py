"""What each staff role may do: the one permission table. The console checks every request
against it on the server (never by hiding a button), and docs/console.md shows the same table
(``markdown_table``; a test compares the two)."""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["front_desk", "manager", "owner"]
ROLES: tuple[Role, ...] = get_args(Role)

# Each action with what it means, in the order the docs list them.
ACTIONS: dict[str, str] = {
    "view_members": "search members, open a member's page, watch the live check-in feed",
    "take_payment": "record a payment taken at the desk",
    "freeze": "freeze and unfreeze a membership",
    "cancel": "cancel a membership",
    "take_photo": "take or upload a member's photo",
    "assign_card": "enrol a card for a member",
    "revoke_card": "revoke a member's card",
    "sell": "sell a product, a day pass or a guest pass",
    "let_in_once": "open a gate once for someone (a signed pulse command)",
    "refund": "refund a payment",
    "write_off": "write off what a member owes",
    "payment_plan": "put what a member owes on a payment plan, or split a plan's rest again",
    "change_plan": "change a member's plan (an upgrade now, prorated, or any plan from the renewal)",
    "revoke_pass": "revoke a member's app pass",
    "lockdown": "lock down a site's gates, and lift it",
    "view_revenue": "see revenue, dashboards and reports",
    "manage_plans": "create and change plans and prices",
    "manage_staff": "add, disable and reset staff accounts",
    "manage_api_tokens": "issue and revoke API tokens for integrators",
    "view_audit": "browse and export the audit log",
    "erase_members": "carry out or refuse a member's request for erasure",
}

_FRONT_DESK = {
    "view_members",
    "take_payment",
    "freeze",
    "cancel",
    "take_photo",
    "assign_card",
    "revoke_card",
    "sell",
    "let_in_once",
}
_MANAGER = _FRONT_DESK | {
    "refund",
    "write_off",
    "payment_plan",
    "change_plan",
    "revoke_pass",
    "view_revenue",
    "manage_plans",
}

PERMISSIONS: dict[Role, frozenset[str]] = {
    "front_desk": frozenset(_FRONT_DESK),
    "manager": frozenset(_MANAGER),
    "owner": frozenset(ACTIONS),
}

# Roles that must sign in with a second factor (TOTP or a recovery code).
TOTP_REQUIRED: frozenset[Role] = frozenset({"manager", "owner"})


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (False for an unknown role or action)."""
    if action not in ACTIONS:
        raise KeyError(f"unknown action {action!r}")
    return action in PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]


def markdown_table() -> str:
    """The permission table as docs/console.md shows it."""
    lines = [
        "| action | what | " + " | ".join(ROLES) + " |",
        "| --- | --- | " + " | ".join(":-:" for _ in ROLES) + " |",
    ]
    for action, what in ACTIONS.items():
        marks = " | ".join("yes" if action in PERMISSIONS[r] else "no" for r in ROLES)
        lines.append(f"| `{action}` | {what} | {marks} |")
    return "\n".join(lines) + "\n"
