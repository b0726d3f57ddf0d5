"""The gate's trusted time (DESIGN "Time"), every branch through an injected probe."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gated.clock import (
    SKEW_ALARM_INTERVAL_S,
    SKEW_LIMIT_S,
    ClockProbe,
    TrustedClock,
    issued_too_far_ahead,
)

NOW = 1_796_601_600.0  # 2026-12-07T00:00:00Z
RELEASE = NOW - 30 * 86400
DAY = 86400.0
Y2030 = 1_893_456_000.0  # 2030-01-01T00:00:00Z
BOOTED_IN_1970 = 120.0


@dataclass
class FakeTime:
    system: float
    synced: bool | None
    mono: float = 1000.0

    def probe(self) -> ClockProbe:
        return ClockProbe(
            system=lambda: self.system,
            monotonic=lambda: self.mono,
            synchronized=lambda: self.synced,
            release_time=RELEASE,
        )

    def tick(self, seconds: float) -> None:
        """Both clocks run (the system clock as it does when nothing sets it)."""
        self.system += seconds
        self.mono += seconds


def make(
    system: float, synced: bool | None, saved: float | None
) -> tuple[FakeTime, TrustedClock, list[tuple[str, str]]]:
    fake = FakeTime(system, synced)
    clock = TrustedClock(saved, fake.probe())
    alarms: list[tuple[str, str]] = []
    clock.listen(lambda kind, reason: alarms.append((kind, reason)))
    return fake, clock, alarms


# saved, synchronized, system clock → plausible, now (after 60 s of both clocks), alarm kinds
CASES = [
    ("synced, saved behind", NOW - 3600, True, NOW, True, NOW + 60, []),
    ("synced, nothing saved", None, True, NOW, True, NOW + 60, []),
    ("synced, saved 1 h ahead: a floor", NOW + 3600, True, NOW, True, NOW + 3660, []),
    ("synced, saved 2 days ahead: discarded", NOW + 2 * DAY, True, NOW, True, NOW + 60, ["clock_skew"]),
    ("synced, saved in 2030: discarded", Y2030, True, NOW, True, NOW + 60, ["clock_skew"]),
    ("unsynced, past release and saved", NOW - 60, False, NOW, True, NOW + 60, []),
    ("unsynced, nothing saved, past release", None, False, NOW, True, NOW + 60, []),
    ("unknown sync, past release and saved", NOW - 60, None, NOW, True, NOW + 60, []),
    ("unsynced, booted in 1970", NOW, False, BOOTED_IN_1970, False, NOW + 60, []),
    ("unsynced, 1970, nothing saved: release", None, False, BOOTED_IN_1970, False, RELEASE + 60, []),
    ("unsynced, before release", None, False, RELEASE - DAY, False, RELEASE + 60, []),
    ("unsynced, behind saved", NOW + 3600, False, NOW, False, NOW + 3660, []),
    ("unsynced, saved in 2030: kept, unsure", Y2030, False, NOW, False, Y2030 + 60, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("saved", "synced", "system", "plausible", "now", "alarms"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_now_follows_a_plausible_clock_and_a_floor(
    saved: float | None,
    synced: bool | None,
    system: float,
    plausible: bool,
    now: float,
    alarms: list[str],
) -> None:
    fake, clock, raised = make(system, synced, saved)
    fake.tick(60)
    assert clock.plausible() is plausible
    assert clock.now() == pytest.approx(now)
    assert [kind for kind, _ in raised] == alarms
    assert (clock.good_time() is not None) is plausible  # only a plausible clock is saved


def test_a_discard_at_start_is_raised_once_a_listener_is_attached() -> None:
    fake = FakeTime(NOW, True)
    clock = TrustedClock(Y2030, fake.probe())
    raised: list[tuple[str, str]] = []
    clock.listen(lambda kind, reason: raised.append((kind, reason)))
    assert raised[0][0] == "clock_skew" and "2030-01-01T00:00:00Z discarded" in raised[0][1]
    assert clock.stats()["discarded_saved_time"] == "2030-01-01T00:00:00Z"


# issued_at relative to a plausible now → skewed?
SKEW_CASES = [
    ("a second ahead", 1, 0),
    ("exactly 5 min ahead", SKEW_LIMIT_S, 0),
    ("5 min and a second ahead", SKEW_LIMIT_S + 1, 1),
    ("in 2030", Y2030 - NOW, 1),
    ("an hour behind", -3600, 0),
]


@pytest.mark.parametrize(
    ("ahead", "skewed"), [c[1:] for c in SKEW_CASES], ids=[c[0] for c in SKEW_CASES]
)
@pytest.mark.parametrize("synced", [True, False])
def test_a_plausible_clock_ignores_head_office_time(
    ahead: float, skewed: int, synced: bool
) -> None:
    _, clock, raised = make(NOW, synced, NOW - 60)
    clock.observe(NOW + ahead)
    assert clock.now() == NOW
    assert clock.skew_count == skewed
    assert [kind for kind, _ in raised] == ["clock_skew"] * skewed
    if skewed:
        assert clock.last_skew_s == pytest.approx(ahead)
        assert clock.last_skew_age() == 0


def test_skew_is_counted_every_time_and_raised_once_per_interval() -> None:
    fake, clock, raised = make(NOW, True, None)
    for _ in range(1000):
        clock.observe(Y2030)
    assert clock.skew_count == 1000 and len(raised) == 1
    fake.tick(SKEW_ALARM_INTERVAL_S)
    clock.observe(Y2030)
    assert clock.skew_count == 1001 and len(raised) == 2
    assert "1001 objects so far" in raised[1][1]
    assert clock.now() == NOW + SKEW_ALARM_INTERVAL_S


def test_an_implausible_clock_takes_the_first_head_office_time_as_base() -> None:
    fake, clock, raised = make(BOOTED_IN_1970, False, NOW - DAY)
    assert clock.now() == NOW - DAY
    clock.observe(NOW - 2 * DAY)  # an old retained object says nothing: no base
    assert clock.now() == NOW - DAY and raised == []
    clock.observe(NOW)
    assert clock.now() == NOW
    assert [kind for kind, _ in raised] == ["clock_unsynced"]
    assert clock.stats()["head_office_base"] == "2026-12-07T00:00:00Z"
    fake.tick(100)
    assert clock.now() == NOW + 100  # runs on the monotonic clock from the base
    clock.observe(NOW + 100 + 120)  # a later one lifts it...
    assert clock.now() == NOW + 220
    clock.observe(Y2030)  # ...but never more than 5 min above base + monotonic time
    assert clock.now() == NOW + 100 + SKEW_LIMIT_S
    assert clock.skew_count == 1
    fake.tick(60)
    clock.observe(NOW + 160)  # an older one never lowers it
    assert clock.now() == NOW + 160 + SKEW_LIMIT_S
    assert clock.good_time() is None, "head-office time is never saved"


def test_a_wild_first_base_is_repaired_when_the_clock_synchronizes() -> None:
    fake, clock, raised = make(BOOTED_IN_1970, False, None)
    clock.observe(Y2030)  # the one case the design accepts: nothing else to go by
    assert clock.now() == Y2030 and [kind for kind, _ in raised] == ["clock_unsynced"]
    fake.synced = True
    fake.system = NOW
    assert clock.refresh() is True
    assert clock.plausible() and clock.now() == NOW


def test_a_saved_time_in_2030_is_discarded_once_the_clock_synchronizes() -> None:
    fake, clock, raised = make(NOW, False, Y2030)
    assert not clock.plausible() and clock.now() == Y2030
    clock.refresh()
    assert raised == []
    fake.synced = True
    clock.refresh()
    assert [kind for kind, _ in raised] == ["clock_skew"]
    assert clock.now() == NOW
    assert clock.good_time() == NOW


def test_a_saved_good_time_keeps_an_unsynchronized_clock_plausible_as_it_runs() -> None:
    fake, clock, _ = make(NOW, False, NOW - 60)
    assert clock.good_time() == NOW
    fake.tick(60)
    assert clock.plausible() and clock.good_time() == NOW + 60
    fake.system -= 3600  # someone sets the clock back an hour: not believed
    assert not clock.plausible()
    assert clock.now() == NOW + 60
    fake.mono += 10
    assert clock.now() == NOW + 70


@pytest.mark.parametrize(
    ("issued_at", "refused"),
    [(NOW, False), (NOW + SKEW_LIMIT_S, False), (NOW + SKEW_LIMIT_S + 1, True), (NOW + 3600, True)],
)
def test_a_command_from_the_future_is_refused(issued_at: float, refused: bool) -> None:
    assert issued_too_far_ahead(issued_at, NOW) is refused
