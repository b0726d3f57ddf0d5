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
