"""``decide()``: every reason code in DESIGN "Policy", their order, schedules in the site's time
zone, and properties that must hold for any member, gate and time."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.contract import REASON_WORDS, STATUSES
from gated.policy.credential import Credential
from gated.policy.decide import (
    GateContext,
    Member,
    MemberCounters,
    compile_schedule,
    decide,
    in_schedule,
    local_day,
    reads_counters,
)
from gated.policy.reasons import (
    ALLOWED_STATUSES,
    CREDENTIAL_FAULTS,
    DENY_REASONS,
    STATUS_REASONS,
)

BERLIN = ZoneInfo("Europe/Berlin")


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    """A Berlin wall-clock time as Unix seconds."""
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo("UTC")).timestamp()


NOW = local(2026, 11, 26, 10, 0)  # a Thursday, inside off-peak hours
TODAY = local_day(NOW, BERLIN)
OFFPEAK = compile_schedule(
    [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "16:00"}]
)
# Friday and Saturday nights, 22:00 until 02:00 the next morning.
OVERNIGHT = compile_schedule([{"days": ["fri", "sat"], "start": "22:00", "end": "02:00"}])

GATE = GateContext(site="downtown", gate="turnstile-1", zones=frozenset({"main"}), tz=BERLIN)


def member(**kw: Any) -> Member:
    fields: dict[str, Any] = {"member_id": "m_1", "version": 1, "status": "active"}
    fields.update(kw)
    return Member(**fields)


def card(direction: str = "in") -> Credential:
    return Credential("card", "04A1B2C3D4E5F6", "sim-1", direction)  # type: ignore[arg-type]


def reason(
    m: Member | None,
    *,
    gate: GateContext = GATE,
    now: float = NOW,
    counters: MemberCounters | None = None,
    fault: str | None = None,
    direction: str = "in",
) -> str:
    decision = decide(m, card(direction), gate, now, counters, fault)
    # The allow flag and the reason always agree, and the message is the reason's.
    assert decision.allow == (decision.reason == "ok")
    if decision.reason != "ok":
        assert decision.message == REASON_WORDS[decision.reason]
    return decision.reason


# --- every reason code ------------------------------------------------------------------------

CASES = [
    # (id, member, decide kwargs, expected reason)
    ("ok", member(), {}, "ok"),
    ("grace allowed", member(status="grace"), {}, "ok"),
    ("pending_cancel allowed", member(status="pending_cancel"), {}, "ok"),
    ("lockdown", member(), {"gate": replace(GATE, lockdown=True)}, "lockdown"),
    ("unknown card", None, {}, "unknown_credential"),
    ("erased member", member(status="erased"), {}, "unknown_credential"),
    ("qr malformed, no member", None, {"fault": "qr_malformed"}, "qr_malformed"),
    ("qr malformed", member(), {"fault": "qr_malformed"}, "qr_malformed"),
    ("qr bad signature", member(), {"fault": "qr_bad_signature"}, "qr_bad_signature"),
    ("qr expired", member(), {"fault": "qr_expired"}, "qr_expired"),
    ("qr replayed", member(), {"fault": "qr_replayed"}, "qr_replayed"),
    ("pending", member(status="pending"), {}, "pending"),
    ("suspended", member(status="suspended"), {}, "suspended"),
    ("payer_suspended", member(status="payer_suspended"), {}, "payer_suspended"),
    ("frozen", member(status="frozen"), {}, "frozen"),
    ("cancelled", member(status="cancelled"), {}, "cancelled"),
    ("collections", member(status="collections"), {}, "collections"),
    ("expired status", member(status="expired"), {}, "expired"),
    ("unknown status fails closed", member(status="bogus"), {}, "suspended"),
    ("expired date", member(valid_until=NOW - 1), {}, "expired"),
    ("expired at valid_until exactly", member(valid_until=NOW), {}, "expired"),
    ("valid until later", member(valid_until=NOW + 1), {}, "ok"),
    ("not yet valid", member(valid_from=NOW + 1), {}, "not_yet_valid"),
    ("valid from now", member(valid_from=NOW), {}, "ok"),
    ("zone denied", member(zones=frozenset({"spa"})), {}, "zone_denied"),
    ("one zone matches", member(zones=frozenset({"spa", "main"})), {}, "ok"),
    ("no zones = every zone", member(zones=frozenset()), {}, "ok"),
    # off-peak Mon–Fri 09:00–16:00 Europe/Berlin
    ("saturday", member(schedule=OFFPEAK), {"now": local(2026, 11, 28, 10)}, "outside_schedule"),
    ("08:59", member(schedule=OFFPEAK), {"now": local(2026, 11, 26, 8, 59)}, "outside_schedule"),
    ("09:00", member(schedule=OFFPEAK), {"now": local(2026, 11, 26, 9, 0)}, "ok"),
    ("15:59", member(schedule=OFFPEAK), {"now": local(2026, 11, 26, 15, 59)}, "ok"),
    ("16:00", member(schedule=OFFPEAK), {"now": local(2026, 11, 26, 16, 0)}, "outside_schedule"),
    # the site's zone, not UTC: 08:30 UTC is 09:30 in Berlin in winter
    ("utc vs local", member(schedule=OFFPEAK), {"now": utc(2026, 11, 26, 8, 30)}, "ok"),
    # DST starts 2026-03-29: 07:30 UTC is 08:30 CET on Friday but 09:30 CEST on Monday
    ("before DST", member(schedule=OFFPEAK), {"now": utc(2026, 3, 27, 7, 30)}, "outside_schedule"),
    ("after DST", member(schedule=OFFPEAK), {"now": utc(2026, 3, 30, 7, 30)}, "ok"),
    # DST ends 2026-10-25: 14:30 UTC is 16:30 CEST on Friday but 15:30 CET on Monday
    (
        "summer 14:30Z",
        member(schedule=OFFPEAK),
        {"now": utc(2026, 10, 23, 14, 30)},
        "outside_schedule",
    ),
    ("winter 14:30Z", member(schedule=OFFPEAK), {"now": utc(2026, 10, 26, 14, 30)}, "ok"),
    # overnight 22:00–02:00 on Friday and Saturday
    ("fri 22:00", member(schedule=OVERNIGHT), {"now": local(2026, 11, 27, 22, 0)}, "ok"),
    (
        "fri 21:59",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 27, 21, 59)},
        "outside_schedule",
    ),
    (
        "sat 01:59 (fri night)",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 28, 1, 59)},
        "ok",
    ),
    (
        "sat 02:00",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 28, 2, 0)},
        "outside_schedule",
    ),
    ("sun 01:00 (sat night)", member(schedule=OVERNIGHT), {"now": local(2026, 11, 29, 1, 0)}, "ok"),
    (
        "mon 01:00 (sun night)",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 30, 1, 0)},
        "outside_schedule",
    ),
    (
        "fri 01:00 (thu night)",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 27, 1, 0)},
        "outside_schedule",
    ),
    (
        "sun 23:00",
        member(schedule=OVERNIGHT),
        {"now": local(2026, 11, 29, 23, 0)},
        "outside_schedule",
    ),
    # the overnight window across the night DST starts (02:00 CET → 03:00 CEST)
    ("DST night 01:30 CET", member(schedule=OVERNIGHT), {"now": utc(2026, 3, 29, 0, 30)}, "ok"),
    (
        "DST night 03:30 CEST",
        member(schedule=OVERNIGHT),
        {"now": utc(2026, 3, 29, 1, 30)},
        "outside_schedule",
    ),
    # anti-passback: 60 s at this gate
    (
        "anti-passback",
        member(),
        {"gate": replace(GATE, anti_passback_s=60), "counters": MemberCounters(TODAY, 1, NOW - 59)},
        "anti_passback",
    ),
    (
        "anti-passback window over",
        member(),
        {"gate": replace(GATE, anti_passback_s=60), "counters": MemberCounters(TODAY, 1, NOW - 60)},
        "ok",
    ),
    (
        "anti-passback after an exit",
        member(),
        {"gate": replace(GATE, anti_passback_s=60), "counters": MemberCounters(TODAY, 1, None)},
        "ok",
    ),
    (
        "anti-passback off",
        member(),
        {"gate": replace(GATE, anti_passback_s=0), "counters": MemberCounters(TODAY, 1, NOW - 1)},
        "ok",
    ),
    # daily limits
    (
        "member limit reached",
        member(daily_limit=2),
        {"counters": MemberCounters(TODAY, 2)},
        "daily_limit",
    ),
    (
        "member limit not reached",
        member(daily_limit=2),
        {"counters": MemberCounters(TODAY, 1)},
        "ok",
    ),
    (
        "yesterday's entries",
        member(daily_limit=2),
        {"counters": MemberCounters(TODAY - 1, 9)},
        "ok",
    ),
    (
        "gate default reached",
        member(),
        {"gate": replace(GATE, daily_limit=3), "counters": MemberCounters(TODAY, 3)},
        "daily_limit",
    ),
    (
        "member limit overrides the gate's",
        member(daily_limit=5),
        {"gate": replace(GATE, daily_limit=3), "counters": MemberCounters(TODAY, 3)},
        "ok",
    ),
    (
        "member limit below the gate's",
        member(daily_limit=1),
        {"gate": replace(GATE, daily_limit=3), "counters": MemberCounters(TODAY, 1)},
        "daily_limit",
    ),
    ("no limit anywhere", member(), {"counters": MemberCounters(TODAY, 1000)}, "ok"),
    ("limit 0 admits nobody", member(daily_limit=0), {}, "daily_limit"),
    (
        "limit 0, old counters",
        member(daily_limit=0),
        {"counters": MemberCounters(TODAY - 1, 0)},
        "daily_limit",
    ),
    # the day is the site's local day: 23:30 UTC on the 26th is already the 27th in Berlin
    (
        "limit resets at local midnight",
        member(daily_limit=1),
        {"now": utc(2026, 11, 26, 23, 30), "counters": MemberCounters(TODAY, 1)},
        "ok",
    ),
    (
        "limit holds until local midnight",
        member(daily_limit=1),
        {"now": utc(2026, 11, 26, 22, 30), "counters": MemberCounters(TODAY, 1)},
        "daily_limit",
    ),
    # staff skip schedules, anti-passback and limits, not lockdown, statuses, dates or zones
    (
        "staff off-hours",
        member(role="staff", schedule=OFFPEAK),
        {"now": local(2026, 11, 28, 3)},
        "ok",
    ),
    (
        "staff anti-passback",
        member(role="staff"),
        {"gate": replace(GATE, anti_passback_s=60), "counters": MemberCounters(TODAY, 1, NOW - 1)},
        "ok",
    ),
    (
        "staff limit",
        member(role="staff", daily_limit=1),
        {"counters": MemberCounters(TODAY, 5)},
        "ok",
    ),
    ("staff lockdown", member(role="staff"), {"gate": replace(GATE, lockdown=True)}, "lockdown"),
    ("staff suspended", member(role="staff", status="suspended"), {}, "suspended"),
    ("staff expired", member(role="staff", valid_until=NOW - 1), {}, "expired"),
    ("staff zone", member(role="staff", zones=frozenset({"spa"})), {}, "zone_denied"),
    # exits: nobody known is kept inside, whatever their standing or limits
    ("exit suspended", member(status="suspended"), {"direction": "out"}, "ok"),
    ("exit expired date", member(valid_until=NOW - 1), {"direction": "out"}, "ok"),
    (
        "exit outside schedule",
        member(schedule=OFFPEAK),
        {"direction": "out", "now": local(2026, 11, 28, 3)},
        "ok",
    ),
    (
        "exit while inside",
        member(),
        {
            "direction": "out",
            "gate": replace(GATE, anti_passback_s=60),
            "counters": MemberCounters(TODAY, 1, NOW - 1),
        },
        "ok",
    ),
    ("exit unknown card", None, {"direction": "out"}, "unknown_credential"),
    (
        "exit lockdown",
        member(),
        {"direction": "out", "gate": replace(GATE, lockdown=True)},
        "lockdown",
    ),
    ("exit bad qr", member(), {"direction": "out", "fault": "qr_replayed"}, "qr_replayed"),
    # fire opens everything
    ("fire unknown", None, {"gate": replace(GATE, fire=True)}, "ok"),
    ("fire lockdown", None, {"gate": replace(GATE, fire=True, lockdown=True)}, "ok"),
    ("fire suspended", member(status="suspended"), {"gate": replace(GATE, fire=True)}, "ok"),
    (
        "fire bad qr",
        member(),
        {"gate": replace(GATE, fire=True), "fault": "qr_bad_signature"},
        "ok",
    ),
    ("fire malformed qr", None, {"gate": replace(GATE, fire=True), "fault": "qr_malformed"}, "ok"),
]


@pytest.mark.parametrize(("m", "kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reason(m: Member | None, kw: dict[str, Any], expected: str) -> None:
    assert reason(m, **kw) == expected


def test_every_reason_code_is_covered() -> None:
    covered = {c[3] for c in CASES}
    assert covered == {*DENY_REASONS, "ok"}


def test_status_reasons_cover_every_disallowed_status() -> None:
    # Every status of the contract is either allowed, the tombstone, or has its own reason.
    assert set(STATUSES) == ALLOWED_STATUSES | STATUS_REASONS | {"erased"}
    assert set(DENY_REASONS) >= STATUS_REASONS
    assert set(DENY_REASONS) >= CREDENTIAL_FAULTS


def test_fire_has_its_own_message() -> None:
    decision = decide(None, card(), replace(GATE, fire=True), NOW, None)
    assert decision == (True, "ok", REASON_WORDS["fire"])
    assert decide(member(), card(), GATE, NOW, None) == (True, "ok", REASON_WORDS["ok"])


def test_decide_does_not_touch_counters() -> None:
    counters = MemberCounters(TODAY, 1, NOW - 5)
    decide(member(daily_limit=3), card(), replace(GATE, anti_passback_s=1), NOW, counters)
    assert counters == MemberCounters(TODAY, 1, NOW - 5)


def test_reads_counters_wherever_counters_can_deny() -> None:
    """A member's own limit, the gate's limit and anti-passback each make counters decide (so the
    hot path must fetch them); with none of them it may leave them out."""
    full = MemberCounters(TODAY, 5, NOW - 5)
    for m, gate, denied in (
        (member(daily_limit=1), GATE, "daily_limit"),
        (member(), replace(GATE, daily_limit=1), "daily_limit"),
        (member(), replace(GATE, anti_passback_s=60), "anti_passback"),
    ):
        assert reads_counters(m, gate)
        assert (reason(m, gate=gate, counters=full), reason(m, gate=gate)) == (denied, "ok")
    assert not reads_counters(member(), GATE) and reason(member(), counters=full) == "ok"


# --- order: when two reasons apply, the earlier one wins --------------------------------------

APB = replace(GATE, anti_passback_s=60)
PRECEDENCE = [
    ("lockdown > unknown", None, {"gate": replace(GATE, lockdown=True)}, "lockdown"),
    (
        "lockdown > qr fault",
        member(),
        {"gate": replace(GATE, lockdown=True), "fault": "qr_expired"},
        "lockdown",
    ),
    ("unknown > qr expired", None, {"fault": "qr_expired"}, "unknown_credential"),
    (
        "erased > qr bad signature",
        member(status="erased"),
        {"fault": "qr_bad_signature"},
        "unknown_credential",
    ),
    (
        "qr fault > pending",
        member(status="pending"),
        {"fault": "qr_bad_signature"},
        "qr_bad_signature",
    ),
    ("qr fault > suspended", member(status="suspended"), {"fault": "qr_expired"}, "qr_expired"),
    ("pending > expired date", member(status="pending", valid_until=NOW - 1), {}, "pending"),
    ("suspended > zone", member(status="suspended", zones=frozenset({"spa"})), {}, "suspended"),
    ("frozen > not yet valid", member(status="frozen", valid_from=NOW + 1), {}, "frozen"),
    ("expired status > not yet valid", member(status="expired", valid_from=NOW + 1), {}, "expired"),
    (
        "expired date > not yet valid",
        member(valid_until=NOW - 1, valid_from=NOW + 1),
        {},
        "expired",
    ),
    (
        "not yet valid > zone",
        member(valid_from=NOW + 1, zones=frozenset({"spa"})),
        {},
        "not_yet_valid",
    ),
    (
        "zone > schedule",
        member(zones=frozenset({"spa"}), schedule=OFFPEAK),
        {"now": local(2026, 11, 28, 10)},
        "zone_denied",
    ),
    (
        "schedule > anti-passback",
        member(schedule=OFFPEAK),
        {
            "now": local(2026, 11, 28, 10),
            "gate": APB,
            "counters": MemberCounters(TODAY + 2, 1, local(2026, 11, 28, 10) - 1),
        },
        "outside_schedule",
    ),
    (
        "anti-passback > daily limit",
        member(daily_limit=1),
        {"gate": APB, "counters": MemberCounters(TODAY, 1, NOW - 1)},
        "anti_passback",
    ),
]


@pytest.mark.parametrize(
    ("m", "kw", "expected"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_precedence(m: Member | None, kw: dict[str, Any], expected: str) -> None:
    assert reason(m, **kw) == expected


# --- properties -------------------------------------------------------------------------------

SATURDAY = local(2026, 11, 28, 10)
days = st.integers(min_value=TODAY - 2, max_value=TODAY + 2)


@st.composite
def members(draw: st.DrawFn) -> Member | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    return Member(
        member_id="m_1",
        version=draw(st.integers(1, 10**9)),
        status=draw(st.sampled_from([*STATUSES, "bogus"])),
        role=draw(st.sampled_from(["member", "staff"])),
        valid_from=draw(st.none() | st.floats(NOW - 86400 * 400, NOW + 86400 * 400)),
        valid_until=draw(st.none() | st.floats(NOW - 86400 * 400, NOW + 86400 * 400)),
        schedule=draw(st.sampled_from([(), OFFPEAK, OVERNIGHT])),
        zones=draw(st.sampled_from([frozenset(), frozenset({"main"}), frozenset({"spa"})])),
        daily_limit=draw(st.none() | st.integers(0, 5)),
    )


gates = st.builds(
    GateContext,
    site=st.just("downtown"),
    gate=st.just("turnstile-1"),
    zones=st.sampled_from([frozenset({"main"}), frozenset({"spa", "main"})]),
    tz=st.sampled_from([BERLIN, ZoneInfo("UTC"), ZoneInfo("America/New_York")]),
    anti_passback_s=st.sampled_from([0.0, 60.0, 3600.0]),
    daily_limit=st.none() | st.integers(0, 5),
    lockdown=st.booleans(),
    fire=st.booleans(),
)
counters_st = st.none() | st.builds(
    MemberCounters,
    day=days,
    entries=st.integers(0, 10),
    inside_since=st.none() | st.floats(NOW - 7200, NOW),
)
times = st.floats(NOW - 86400 * 30, NOW + 86400 * 30)
faults = st.none() | st.sampled_from(sorted(CREDENTIAL_FAULTS))
directions = st.sampled_from(["in", "out"])


@settings(max_examples=150, deadline=None)
@given(members(), gates, times, counters_st, faults, directions)
def test_counters_matter_only_where_reads_counters_says(
    m: Member | None,
    gate: GateContext,
    now: float,
    counters: MemberCounters | None,
    fault: str | None,
    direction: str,
) -> None:
    """The hot path fetches a member's counters only when ``reads_counters`` says decide() may
    read them: otherwise any counters give the decision no counters give."""
    if m is None:
        return
    # As drawn (a gate or member with a limit or anti-passback reads them), and with neither.
    plain = (m._replace(daily_limit=None), replace(gate, anti_passback_s=0.0, daily_limit=None))
    assert not reads_counters(*plain)
    for member, ctx in ((m, gate), plain):
        if not reads_counters(member, ctx):
            assert decide(member, card(direction), ctx, now, counters, fault) == decide(
                member, card(direction), ctx, now, None, fault
            )


@settings(max_examples=400, deadline=None)
@given(members(), gates, times, counters_st, faults, directions)
def test_properties(
    m: Member | None,
    gate: GateContext,
    now: float,
    counters: MemberCounters | None,
    fault: str | None,
    direction: str,
) -> None:
    decision = decide(m, card(direction), gate, now, counters, fault)
    assert decision.reason in DENY_REASONS or decision.reason == "ok"
    if decision.allow:
        assert decision.reason == "ok"
    else:
        assert decision.reason != "ok"
    if gate.fire:
        assert decision.allow
    elif gate.lockdown:
        assert decision == (False, "lockdown", REASON_WORDS["lockdown"])
    elif m is None or m.status == "erased" or fault is not None:
        assert not decision.allow
    elif direction == "in" and m.status not in ALLOWED_STATUSES:
        # Exits let anybody known out; entries need a status in good standing.
        assert not decision.allow


@st.composite
def conflicts(draw: st.DrawFn) -> tuple[Member | None, dict[str, Any], str]:
    """A badge for which a random set of reasons applies at once, with the reason that must win:
    the first of them in DESIGN order."""
    applies: set[str] = set()
    lockdown = draw(st.booleans())
    if lockdown:
        applies.add("lockdown")
    fault = draw(faults)
    if draw(st.integers(0, 4)) == 0:
        applies.add("qr_malformed" if fault == "qr_malformed" else "unknown_credential")
        m = None
    else:
        if fault:
            applies.add(fault)
        status = draw(st.sampled_from(sorted(ALLOWED_STATUSES | STATUS_REASONS)))
        if status in STATUS_REASONS:
            applies.add(status)
        valid_until = valid_from = None
        if draw(st.booleans()):
            valid_until = SATURDAY - 1
            applies.add("expired")
        if draw(st.booleans()):
            valid_from = SATURDAY + 1
            applies.add("not_yet_valid")
        zones = frozenset({"spa"}) if draw(st.booleans()) else frozenset()
        if zones:
            applies.add("zone_denied")
        schedule = OFFPEAK if draw(st.booleans()) else ()
        if schedule:
            applies.add("outside_schedule")
        m = member(
            status=status,
            valid_from=valid_from,
            valid_until=valid_until,
            zones=zones,
            schedule=schedule,
            daily_limit=1,
        )
    inside = SATURDAY - 1 if draw(st.booleans()) else None
    if inside is not None and m is not None:
        applies.add("anti_passback")
    entries = draw(st.integers(0, 1))
    if entries and m is not None:
        applies.add("daily_limit")
    kw = {
        "gate": replace(GATE, lockdown=lockdown, anti_passback_s=60),
        "now": SATURDAY,
        "counters": MemberCounters(local_day(SATURDAY, BERLIN), entries, inside),
        "fault": fault,
    }
    expected = min(applies, key=DENY_REASONS.index) if applies else "ok"
    return m, kw, expected


@settings(max_examples=400, deadline=None)
@given(conflicts())
def test_first_applicable_reason_wins(case: tuple[Member | None, dict[str, Any], str]) -> None:
    m, kw, expected = case
    assert reason(m, **kw) == expected


# --- schedules and local days -----------------------------------------------------------------


def test_compile_schedule() -> None:
    assert OFFPEAK == ((0b0011111, 540, 960),)
    assert OVERNIGHT == ((0b0110000, 1320, 120),)
    assert compile_schedule([]) == ()


def test_empty_schedule_is_any_time() -> None:
    assert in_schedule((), local(2026, 11, 28, 3), BERLIN)


def test_whole_day_window() -> None:
    # end <= start runs past midnight: 00:00–00:00 is the whole day and the night after it
    sunday = compile_schedule([{"days": ["sun"], "start": "00:00", "end": "00:00"}])
    assert in_schedule(sunday, local(2026, 11, 29, 0, 0), BERLIN)
    assert in_schedule(sunday, local(2026, 11, 29, 23, 59), BERLIN)
    assert not in_schedule(sunday, local(2026, 11, 28, 23, 59), BERLIN)


def test_local_day_follows_the_site_zone() -> None:
    late = utc(2026, 11, 26, 23, 30)
    assert local_day(late, BERLIN) == local_day(late, ZoneInfo("UTC")) + 1
    assert local_day(late, ZoneInfo("America/New_York")) == local_day(late, ZoneInfo("UTC"))
