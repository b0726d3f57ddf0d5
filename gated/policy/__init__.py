"""Pure entry policy: ``decide()`` and rotating-QR verification. No I/O lives here."""

from gated.policy.decide import Decision, GateContext, Member, MemberCounters, decide
from gated.policy.reasons import ALLOWED_STATUSES, DENY_REASONS

__all__ = [
    "ALLOWED_STATUSES",
    "DENY_REASONS",
    "Decision",
    "GateContext",
    "Member",
    "MemberCounters",
    "decide",
]
