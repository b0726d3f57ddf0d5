"""Reason codes, in the order ``decide()`` checks them (the first that applies wins)."""

from __future__ import annotations

from typing import Final

ALLOWED_STATUSES: Final = frozenset({"active", "grace", "pending_cancel"})

DENY_REASONS: Final = (
    "lockdown",
    "unknown_credential",
    "qr_malformed",
    "qr_bad_signature",
    "qr_expired",
    "qr_replayed",
    "pending",
    "suspended",
    "payer_suspended",
    "frozen",
    "cancelled",
    "collections",
    "expired",
    "not_yet_valid",
    "zone_denied",
    "outside_schedule",
    "anti_passback",
    "daily_limit",
)

# Faults found while reading the credential itself (before the member's standing is looked at).
CREDENTIAL_FAULTS: Final = frozenset(
    {"qr_malformed", "qr_bad_signature", "qr_expired", "qr_replayed"}
)

# A status that is not allowed maps to the deny reason of the same name ("expired" included).
STATUS_REASONS: Final = frozenset(
    {"pending", "suspended", "payer_suspended", "frozen", "cancelled", "collections", "expired"}
)

MESSAGES: Final = {
    "ok": "Welcome",
    "lockdown": "Gate locked down",
    "unknown_credential": "Card not recognised: please see the front desk",
    "qr_malformed": "Code not readable: refresh it in the app",
    "qr_bad_signature": "Code not valid: refresh it in the app",
    "qr_expired": "Code expired: refresh it in the app",
    "qr_replayed": "Code already used: refresh it in the app",
    "pending": "Membership not started yet: please see the front desk",
    "suspended": "Membership suspended: payment overdue",
    "payer_suspended": "Membership on hold: the account holder's payment is overdue",
    "frozen": "Membership frozen",
    "cancelled": "Membership cancelled",
    "collections": "Account in collections: please see the front desk",
    "expired": "Membership expired",
    "not_yet_valid": "Membership not valid yet",
    "zone_denied": "Your plan does not include this area",
    "outside_schedule": "Outside your plan's hours",
    "anti_passback": "Already checked in",
    "daily_limit": "Daily visit limit reached",
    "fire": "Fire alarm: door open",
}
