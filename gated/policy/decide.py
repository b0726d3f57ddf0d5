"""``decide()``: one badge in, one decision out. Pure: no I/O, the clock passed in.

Records are named tuples the member index makes for each lookup from its compact arrays;
schedules are pre-compiled to minute ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import NamedTuple

from gated.contract import REASON_WORDS
from gated.policy.credential import Credential
from gated.policy.reasons import ALLOWED_STATUSES, STATUS_REASONS

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# One schedule window: (weekday bit mask, start minute, end minute); end <= start runs past midnight.
Window = tuple[int, int, int]


class Member(NamedTuple):
    """What the hot path knows of one member (built from a MemberState).

    A named tuple: the index makes one per lookup from its arrays, and a tuple is the cheapest
    record Python builds (``tuple.__new__`` in C, fields read by C-level getters), so the lookup
    costs about what a dict's did. ``credentials`` is the member's 32-byte card keys
    concatenated (one bytes object)."""

    member_id: str
    version: int
    status: str
    role: str = "member"
    valid_from: float | None = None
    valid_until: float | None = None
    plan: str | None = None
    schedule: tuple[Window, ...] = ()
    zones: frozenset[str] = frozenset()
    credentials: bytes = b""
    qr_key: bytes | None = None
    daily_limit: int | None = None

    def __repr__(self) -> str:  # never print card or app keys
        return f"Member({self.member_id!r}, v{self.version}, {self.status})"


def compile_schedule(windows: list[dict[str, object]]) -> tuple[Window, ...]:
    """``[{"days": ["mon"], "start": "09:00", "end": "16:00"}]`` → ((mask, 540, 960),).

    Raises ValueError for anything else (unknown day, a time that is not HH:MM)."""
    out: list[Window] = []
    for w in windows:
        days = w["days"]
        if not isinstance(days, list):
            raise ValueError("days must be a list")
        mask = 0
        for d in days:
            mask |= 1 << DAYS.index(str(d))
        out.append((mask, _minutes(w["start"], 23), _minutes(w["end"], 24)))
    return tuple(out)


def _minutes(hhmm: object, max_hour: int) -> int:
    text = str(hhmm)
    if (
        len(text) != 5
        or text[2] != ":"
        or not (text[:2] + text[3:]).isascii()
        or not (text[:2] + text[3:]).isdigit()
    ):
        raise ValueError(f"not HH:MM: {text!r}")
    h, m = int(text[:2]), int(text[3:])
    if h > max_hour or m > 59 or (h == 24 and m):
        raise ValueError(f"not a time of day: {text!r}")
    return h * 60 + m


@dataclass(slots=True)
class GateContext:
    """The gate's side of a decision; lockdown and fire are the live input states."""

    site: str
    gate: str
    zones: frozenset[str]
    tz: tzinfo
    anti_passback_s: float = 0.0
    daily_limit: int | None = None
    lockdown: bool = False
    fire: bool = False


@dataclass(slots=True)
class MemberCounters:
    """Per-member, per-gate counters: entries on local ``day`` (a date ordinal) and the time of
    the last counted entry not yet followed by an exit (for anti-passback)."""

    day: int = 0
    entries: int = 0
    inside_since: float | None = None


class Decision(NamedTuple):
    allow: bool
    reason: str
    message: str


_OK = Decision(True, "ok", REASON_WORDS["ok"])
_FIRE = Decision(True, "ok", REASON_WORDS["fire"])
_DENY = {reason: Decision(False, reason, text) for reason, text in REASON_WORDS.items()}


def local_day(now: float, tz: tzinfo) -> int:
    """The local calendar day (proleptic ordinal) of a Unix time."""
    return datetime.fromtimestamp(now, tz).toordinal()


def in_schedule(schedule: tuple[Window, ...], now: float, tz: tzinfo) -> bool:
    """True if ``now`` (site-local) falls in any window; an empty schedule is any time."""
    if not schedule:
        return True
    local = datetime.fromtimestamp(now, tz)
    weekday = local.weekday()
    minute = local.hour * 60 + local.minute
    today = 1 << weekday
    yesterday = 1 << ((weekday - 1) % 7)
    for mask, start, end in schedule:
        if end > start:
            if mask & today and start <= minute < end:
                return True
        else:  # runs past midnight: the evening part today, the morning part from yesterday
            if mask & today and minute >= start:
                return True
            if mask & yesterday and minute < end:
                return True
    return False


def reads_counters(member: Member, gate: GateContext) -> bool:
    """Whether :func:`decide` may read this member's counters: only anti-passback and a daily
    limit do. The hot path fetches them (by member id) only then."""
    return (
        gate.anti_passback_s > 0 or member.daily_limit is not None or gate.daily_limit is not None
    )


def decide(
    member: Member | None,
    credential: Credential,
    gate: GateContext,
    now: float,
    counters: MemberCounters | None,
    credential_fault: str | None = None,
) -> Decision:
    """Decide one badge.

    ``member`` is the cached record (None when the credential is unknown), ``credential`` the
    read (its ``direction`` says which side of the gate), ``now`` the gate's trusted Unix time, ``counters`` this member's
    counters at this gate, ``credential_fault`` a QR fault found while reading the credential.
    Reasons are checked in DESIGN order; the first that applies wins.
    """
    if gate.fire:
        return _FIRE
    if gate.lockdown:
        return _DENY["lockdown"]
    if member is None or member.status == "erased":
        # A code too broken to name a member can only be reported as malformed.
        return (
            _DENY["qr_malformed"]
            if credential_fault == "qr_malformed"
            else _DENY["unknown_credential"]
        )
    if credential_fault is not None:
        return _DENY[credential_fault]
    if credential.direction == "out":
        return _OK  # nobody known is kept inside
    status = member.status
    if status not in ALLOWED_STATUSES:
        return _DENY[status] if status in STATUS_REASONS else _DENY["suspended"]
    if member.valid_until is not None and now >= member.valid_until:
        return _DENY["expired"]
    if member.valid_from is not None and now < member.valid_from:
        return _DENY["not_yet_valid"]
    if member.zones and not (member.zones & gate.zones):
        return _DENY["zone_denied"]
    if member.role == "staff":
        return _OK
    if member.schedule and not in_schedule(member.schedule, now, gate.tz):
        return _DENY["outside_schedule"]
    if (
        counters is not None
        and gate.anti_passback_s > 0
        and counters.inside_since is not None
        and now - counters.inside_since < gate.anti_passback_s
    ):
        return _DENY["anti_passback"]
    limit = member.daily_limit if member.daily_limit is not None else gate.daily_limit
    # A limit of 0 admits nobody, even a member with no counters yet (or only old ones).
    if limit is not None and (
        limit == 0
        or (
            counters is not None
            and counters.entries >= limit
            and counters.day == local_day(now, gate.tz)
        )
    ):
        return _DENY["daily_limit"]
    return _OK
