"""A membership's status in plain words: what it means, why, and what the member can do."""

from __future__ import annotations

from typing import Any, NamedTuple

from gated.billing_sync.notices import format_amount


class StatusWords(NamedTuple):
    """``headline`` (one short sentence), ``detail`` (why), ``action`` (what to do, or "")."""

    headline: str
    detail: str
    action: str
    allowed: bool


def day(iso: str | None) -> str:
    """``2026-12-01T00:00:00Z`` → ``2026-12-01`` ("-" when unset)."""
    return iso[:10] if iso else "-"


def status_words(m: dict[str, Any]) -> StatusWords:
    """Words for the membership ``m`` as ``MemberAccess.membership`` returns it."""
    status = m["published_status"] or m["status"]
    owed = format_amount(m["owed"], m["currency"]) if m["owed"] else ""
    pay = "Pay it with the link below or at the front desk."
    card = (
        " Your bank asked us not to try this card again: give the front desk a new card."
        if m["needs_new_card"]
        else ""
    )
    if status == "active":
        return StatusWords("Your membership is active.", "The gates let you in.", "", True)
    if status == "grace":
        retry = f" We try again on {day(m['next_retry_at'])}." if m["next_retry_at"] else ""
        return StatusWords(
            "Your last payment did not go through.",
            f"{owed} is open. You can keep training until {day(m['valid_until'])}.{retry}{card}",
            pay,
            True,
        )
    if status == "pending_cancel":
        return StatusWords(
            "Your membership is cancelled.",
            f"You can keep training until {day(m['cancel_at'])}.",
            "",
            True,
        )
    if status == "pending":
        return StatusWords(
            "Your membership starts once the first payment is made.",
            f"{owed} is open." if owed else "The first payment is being processed.",
            pay if owed else "",
            False,
        )
    if status == "suspended":
        if m["owed"]:
            return StatusWords(
                "Your membership is suspended.",
                f"{owed} is unpaid.{card} The gates let you in again as soon as it is paid.",
                pay,
                False,
            )
        return StatusWords(
            "Your membership is suspended.",
            "A payment of yours is disputed with your bank.",
            "Talk to the front desk to settle it.",
            False,
        )
    if status == "payer_suspended":
        return StatusWords(
            "Your membership is on hold.",
            "The person who pays for your membership has a payment open.",
            "Once they pay, the gates let you in again.",
            False,
        )
    if status == "frozen":
        until = day(m["freeze"][1]) if m["freeze"] else "-"
        return StatusWords(
            "Your membership is frozen.",
            f"It is active again on {until}; your contract runs that much longer.",
            "",
            False,
        )
    if status == "collections":
        return StatusWords(
            "Your membership has ended for an unpaid debt.",
            f"{owed} has been unpaid for too long and is with collections.",
            "Talk to the front desk.",
            False,
        )
    if status == "cancelled":
        return StatusWords(
            "Your membership has ended.",
            "It was cancelled.",
            "Ask the front desk to rejoin.",
            False,
        )
    if status == "expired":
        return StatusWords(
            "Your membership has ended.",
            f"It ran until {day(m['paid_through'])}.",
            "Ask the front desk to start a new one.",
            False,
        )
    return StatusWords(f"Status: {status}.", "", "Talk to the front desk.", False)
