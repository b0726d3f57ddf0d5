"""The pure billing state machine: every transition table-driven, invariants with hypothesis."""

from __future__ import annotations

import calendar
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.billing_sync import engine as eng
from gated.billing_sync.engine import DAY, Account, Rules

R = Rules(
    grace_days=3, suspend_min_owed=0, max_grace_days=14, collections_days=30, retry_days=(3, 7)
)
T = 1_800_000_000
PAID = Account(paid_through=T + 10 * DAY, previous="active")
OVERDUE = Account(paid_through=T, owed=5000, overdue_since=T, first_failure_at=T, previous="grace")


@pytest.mark.parametrize(
    ("name", "acct", "now", "rules", "expected"),
    [
        ("paid up", PAID, T, R, "active"),
        (
            "never paid",
            Account(paid_through=T, owed=5000, overdue_since=T, activated=False),
            T + DAY,
            R,
            "pending",
        ),
        ("no subscription date", Account(paid_through=None), T, R, "pending"),
        ("overdue inside grace", OVERDUE, T + 3 * DAY, R, "grace"),
        ("overdue past grace", OVERDUE, T + 3 * DAY + 1, R, "suspended"),
        (
            "small debt stays in grace",
            OVERDUE._replace(owed=100),
            T + 10 * DAY,
            replace(R, suspend_min_owed=500),
            "grace",
        ),
        (
            "small debt capped by max_grace_days",
            OVERDUE._replace(owed=100),
            T + 14 * DAY + 1,
            replace(R, suspend_min_owed=500),
            "suspended",
        ),
        (
            "debt at the threshold suspends",
            OVERDUE._replace(owed=500),
            T + 4 * DAY,
            replace(R, suspend_min_owed=500),
            "suspended",
        ),
        ("collections after collections_days", OVERDUE, T + 30 * DAY, R, "collections"),
        (
            "processing keeps previous",
            OVERDUE._replace(processing=True, previous="active"),
            T + 20 * DAY,
            R,
            "active",
        ),
        ("dispute suspends a paid member", PAID._replace(disputed=True), T, R, "suspended"),
        ("frozen inside the window", PAID._replace(freeze=(T, T + 30 * DAY)), T + DAY, R, "frozen"),
        (
            "freeze ends on its day",
            PAID._replace(freeze=(T, T + 5 * DAY)),
            T + 5 * DAY,
            R,
            "active",
        ),
        (
            "frozen before it starts is active",
            PAID._replace(freeze=(T + DAY, T + 5 * DAY)),
            T,
            R,
            "active",
        ),
        ("pending cancel", PAID._replace(cancel_at=T + 10 * DAY), T, R, "pending_cancel"),
        (
            "cancelled at the date",
            PAID._replace(cancel_at=T + 10 * DAY),
            T + 10 * DAY,
            R,
            "cancelled",
        ),
        # A debt never keeps the gates open past the end of the contract; it is still chased.
        ("cancelled but owing is denied", OVERDUE._replace(cancel_at=T), T + DAY, R, "cancelled"),
        (
            "cancelled and owing reaches collections",
            OVERDUE._replace(cancel_at=T, first_failure_at=T),
            T + 30 * DAY,
            R,
            "collections",
        ),
    ],
)
def test_status_table(name: str, acct: Account, now: int, rules: Rules, expected: str) -> None:
    assert eng.status_at(acct, now, rules) == expected, name


@pytest.mark.parametrize(
    ("decline", "advice", "expected"),
    [
        ("insufficient_funds", None, "soft"),
        ("generic_decline", None, "soft"),
        ("processing_error", None, "soft"),
        ("try_again_later", None, "soft"),
        ("issuer_not_available", None, "soft"),
        (None, None, "soft"),  # localstripe sends no decline_code
        ("lost_card", None, "hard"),
        ("stolen_card", None, "hard"),
        ("fraudulent", None, "hard"),
        ("pickup_card", None, "hard"),
        ("incorrect_number", None, "hard"),
        ("insufficient_funds", "do_not_try_again", "hard"),
        ("authentication_required", None, "auth"),
    ],
)
def test_decline_classes(decline: str | None, advice: str | None, expected: str) -> None:
    assert eng.classify_decline(decline, advice) == expected


PASS = PAID._replace(renews=False)  # a fixed-term pass paid until T + 10 days


@pytest.mark.parametrize(
    ("name", "acct", "now", "status", "renews", "until"),
    [
        ("pass inside its period", PASS, T, "active", False, PASS.paid_through),
        ("pass on its last second", PASS, T + 10 * DAY - 1, "active", False, PASS.paid_through),
        ("pass ends expired, no grace", PASS, T + 10 * DAY, "expired", False, PASS.paid_through),
        ("a plan that renews bills instead", PAID, T + 10 * DAY, "active", True, None),
        (
            "a pass's first period is still billed",
            PASS._replace(activated=False, paid_through=T),
            T,
            "pending",
            True,
            None,
        ),
        (
            "frozen pass: the freeze pushed the end out",
            PASS._replace(freeze=(T, T + 5 * DAY), paid_through=T + 15 * DAY),
            T + 12 * DAY,
            "active",
            False,
            T + 15 * DAY,
        ),
        (
            "a debt on a pass is dunned first",
            PASS._replace(owed=1000, overdue_since=T + 11 * DAY, first_failure_at=T + 11 * DAY),
            T + 12 * DAY,
            "grace",
            False,
            None,
        ),
        (
            "a cancelled pass is cancelled",
            PASS._replace(cancel_at=T),
            T + 10 * DAY,
            "cancelled",
            False,
            None,
        ),
    ],
)
def test_fixed_term_passes_expire(
    name: str, acct: Account, now: int, status: str, renews: bool, until: int | None
) -> None:
    got = eng.status_at(acct, now, R)
    assert got == status, name
    assert eng.renewal_due(acct, now) is renews, name
    if until is not None and got in ("active", "expired"):
        # Entry is allowed until the pass ends: no grace days after a period nobody renews.
        assert eng.valid_until(acct, got, R) == until, name
    if got == "expired":
        assert eng.next_review(acct, now, R) is None, name  # nothing more will happen


def test_soft_retries_follow_the_schedule_then_stop() -> None:
    acct = Account(paid_through=T, owed=5000, overdue_since=T)
    acct = eng.after_failure(acct, "soft", T, R)
    assert acct.first_failure_at == T and acct.next_retry_at == T + 3 * DAY
    acct = eng.after_failure(eng.on_retry_started(acct), "soft", T + 3 * DAY, R)
    assert acct.next_retry_at == T + 7 * DAY
    acct = eng.after_failure(eng.on_retry_started(acct), "soft", T + 7 * DAY, R)
    assert acct.next_retry_at is None and acct.retries_done == 2


def test_late_retry_keeps_a_day_between_attempts() -> None:
    acct = eng.on_retry_started(eng.after_failure(Account(owed=1, overdue_since=T), "soft", T, R))
    acct = eng.after_failure(acct, "soft", T + 20 * DAY, R)
    assert acct.next_retry_at == T + 21 * DAY


@pytest.mark.parametrize("decline", ["hard", "auth"])
def test_hard_and_auth_declines_never_retry(decline: eng.DeclineClass) -> None:
    acct = eng.after_failure(Account(owed=1, overdue_since=T), decline, T, R)
    assert acct.next_retry_at is None
    assert acct.needs_new_card is (decline == "hard")
    assert not eng.retry_due(acct, T + 100 * DAY)


def test_valid_until_is_paid_through_plus_grace_and_grace_stays_inside() -> None:
    assert eng.valid_until(PAID, "active", R) == PAID.paid_through + 3 * DAY  # type: ignore[operator]
    until = eng.valid_until(OVERDUE, "grace", R)
    assert until is not None
    assert eng.status_at(OVERDUE, until, R) == "grace"
    assert eng.status_at(OVERDUE, until + 1, R) == "suspended"


def test_renewal_due_rules() -> None:
    assert eng.renewal_due(Account(paid_through=T), T)
    assert not eng.renewal_due(Account(paid_through=T), T - 1)
    assert not eng.renewal_due(Account(paid_through=T, open_renewal=True), T)
    assert not eng.renewal_due(Account(paid_through=T, processing=True), T)
    assert not eng.renewal_due(Account(paid_through=T, cancel_at=T), T)
    assert eng.renewal_due(Account(paid_through=T, cancel_at=T + 1), T)
    # A dependant locked out by their payer is not billed meanwhile.
    assert not eng.renewal_due(Account(paid_through=T, payer_ok=False), T)


def test_household_folding() -> None:
    assert eng.published_status("active", "suspended") == "payer_suspended"
    assert eng.published_status("active", "grace") == "active"
    assert eng.published_status("frozen", "suspended") == "frozen"
    assert eng.published_status("active", None) == "active"
    assert eng.published_status("active", "frozen") == "active"  # the payer's own pause


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ("2026-01-31", 1, "2026-02-28"),
        ("2028-01-31", 1, "2028-02-29"),
        ("2026-11-15", 3, "2027-02-15"),
        ("2026-12-01", 12, "2027-12-01"),
    ],
)
def test_add_months(start: str, months: int, expected: str) -> None:
    from datetime import UTC, datetime

    ts = int(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp())
    got = datetime.fromtimestamp(eng.add_months(ts, months), UTC).strftime("%Y-%m-%d")
    assert got == expected


def test_freeze_rules() -> None:
    eng.check_freeze("active", 0, 1)
    eng.check_freeze("active", 0, 3)
    for status, owed, months in [
        ("active", 0, 0),
        ("active", 0, 4),
        ("grace", 100, 1),
        ("suspended", 0, 1),
    ]:
        with pytest.raises(eng.FreezeRefused):
            eng.check_freeze(status, owed, months)


def test_cancel_date_respects_minimum_term() -> None:
    assert eng.cancel_date(T + DAY, T, 0, T) == T + DAY
    assert eng.cancel_date(T + DAY, T, 12, T) == eng.add_months(T, 12)


def test_tax_rounds_half_up() -> None:
    assert eng.tax_of(4990, 1900) == 948  # 948.1
    assert eng.tax_of(50, 1000) == 5
    assert eng.tax_of(5, 1000) == 1  # 0.5 rounds up


# --- properties -------------------------------------------------------------------------------

times = st.integers(min_value=T - 400 * DAY, max_value=T + 400 * DAY)
accounts = st.builds(
    Account,
    paid_through=st.one_of(st.none(), times),
    owed=st.integers(0, 100_000),
    overdue_since=st.one_of(st.none(), times),
    first_failure_at=st.one_of(st.none(), times),
    freeze=st.one_of(
        st.none(), st.tuples(times, st.integers(1, 90 * DAY)).map(lambda p: (p[0], p[0] + p[1]))
    ),
    cancel_at=st.one_of(st.none(), times),
    disputed=st.booleans(),
    processing=st.booleans(),
    previous=st.sampled_from(["active", "grace", "suspended", "pending", "expired"]),
    activated=st.booleans(),
    renews=st.booleans(),
)
rules = st.builds(
    Rules,
    grace_days=st.integers(0, 10),
    suspend_min_owed=st.integers(0, 10_000),
    max_grace_days=st.integers(0, 30),
    collections_days=st.integers(1, 60),
)


@given(accounts, times, rules)
def test_member_paid_in_full_is_never_denied(acct: Account, now: int, r: Rules) -> None:
    """Nothing owed, paid past now, not frozen, disputed or cancelled → a status the gate allows,
    with valid_until in the future."""
    acct = acct._replace(
        owed=0,
        activated=True,
        disputed=False,
        freeze=None,
        cancel_at=None,
        paid_through=now + 1 + (acct.paid_through or 0) % (60 * DAY),
    )
    status = eng.status_at(acct, now, r)
    assert status in eng.GOOD_STANDING
    until = eng.valid_until(acct, status, r)
    assert until is not None and until > now


@given(accounts, times, rules)
def test_next_review_is_in_the_future_and_status_is_stable_until_then(
    acct: Account, now: int, r: Rules
) -> None:
    """No status change can slip between reviews: the status just before the next review time
    equals the status now."""
    nxt = eng.next_review(acct, now, r)
    if nxt is None:
        assert eng.status_at(acct, now + 800 * DAY, r) == eng.status_at(acct, now, r)
        return
    if nxt == now:  # a charge is due: the scheduler acts at once
        assert eng.renewal_due(acct, now) or eng.retry_due(acct, now) or eng.first_charge_due(acct)
        return
    assert nxt > now
    assert eng.status_at(acct, nxt - 1, r) == eng.status_at(acct, now, r)


@given(accounts, times, rules, st.sampled_from(["soft", "hard", "auth"]))
def test_retries_stay_under_the_cap(
    acct: Account, now: int, r: Rules, decline: eng.DeclineClass
) -> None:
    """However failures arrive, a member gets at most len(retry_days) automatic retries."""
    retries = 0
    acct = acct._replace(
        owed=1000,
        overdue_since=now,
        processing=False,
        needs_new_card=False,
        retries_done=0,
        next_retry_at=None,
        first_failure_at=None,
        payer_ok=True,
    )
    acct = eng.after_failure(acct, decline, now, r)
    while acct.next_retry_at is not None and retries < 50:
        now = acct.next_retry_at
        assert eng.retry_due(acct, now)
        acct = eng.after_failure(eng.on_retry_started(acct), decline, now, r)
        retries += 1
    assert retries <= len(r.retry_days)
    if decline != "soft":
        assert retries == 0


def test_first_billed_never_reaches_before_today() -> None:
    def day(text: str) -> int:
        return int(datetime.fromisoformat(f"{text}T00:00:00+00:00").timestamp())

    noon = day("2026-12-01") + DAY // 2
    assert eng.first_billed(noon + DAY, 1, True, noon) == noon + DAY  # ahead: as given
    assert eng.first_billed(day("2026-12-01"), 1, True, noon) == day("2026-12-01")  # today
    # A past join day: its next renewal date at or after today, anchored to the join day.
    assert eng.first_billed(day("2026-09-01"), 1, True, noon) == day("2026-12-01")
    assert eng.first_billed(day("2026-09-15"), 1, True, noon) == day("2026-12-15")
    assert eng.first_billed(day("2026-01-31"), 1, True, noon) == day("2026-12-31")
    assert eng.first_billed(day("2026-03-15"), 12, True, noon) == day("2027-03-15")
    # A pass bought in the past ran to its own end, however long ago.
    assert eng.first_billed(day("2026-08-01"), 3, False, noon) == day("2026-11-01")


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2090, 12, 31),
        timezones=st.just(UTC),
    ),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=40),
)
def test_renewals_stay_on_the_anchor_day(anchor: datetime, months: int, renewals: int) -> None:
    """Renewal after renewal, each period ends on the day of the contract's start (clamped to
    the month's last day, at the same time of day), never drifting to an earlier day: 31 Jan
    -> 28/29 Feb -> 31 Mar -> 30 Apr -> 31 May, as Stripe's billing cycle anchor does."""
    anchor = anchor.replace(microsecond=0)  # the store keeps whole seconds
    start = int(anchor.timestamp())
    paid_through = start
    for n in range(1, renewals + 1):
        paid_through = eng.period_end(start, paid_through, months)
        end = datetime.fromtimestamp(paid_through, UTC)
        index = anchor.month - 1 + n * months
        year, month = anchor.year + index // 12, index % 12 + 1
        assert (end.year, end.month) == (year, month)
        assert end.day == min(anchor.day, calendar.monthrange(year, month)[1])
        assert end.time() == anchor.time()


def test_a_period_that_does_not_start_on_the_anchor_day_runs_whole_months() -> None:
    # After a freeze moved paid-through off the anchor day, periods run from the new day.
    start = int(datetime(2027, 1, 31, tzinfo=UTC).timestamp())
    moved = int(datetime(2027, 5, 15, tzinfo=UTC).timestamp())
    assert eng.period_end(start, moved, 1) == int(datetime(2027, 6, 15, tzinfo=UTC).timestamp())
