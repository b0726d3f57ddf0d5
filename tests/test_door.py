"""The door against gpiozero's MockFactory: the same device code that drives a Pi's pins.

Timings use a 50 ms pulse and the loop's clock; waits poll a condition instead of sleeping a
fixed long time.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from gated.config import DoorConfig
from gated.door import Door, DoorError, DoorEvent, open_pin_factory

RELAY, GREEN, RED, BUZZER = 17, 27, 22, 23
CONTACT, EXIT, FIRE, PASSAGE = 5, 6, 13, 19
PULSE_S = 0.05
# Scheduling slack on a loaded 2-core CI machine (a timer may fire late, never early); the
# lower bound is what catches a pulse that ends too soon or fails to restart.
SLACK_S = 0.3


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """A fresh MockFactory per test, so no pin reservation leaks into the next test."""
    pins = MockFactory(pin_class=MockPin)
    yield pins
    pins.reset()
    pins.close()


@pytest.fixture
def events() -> list[DoorEvent]:
    return []


@pytest.fixture
def make_door(factory: MockFactory, events: list[DoorEvent]) -> Iterator[Callable[..., Door]]:
    doors: list[Door] = []

    def make(**overrides: Any) -> Door:
        config = DoorConfig(**{"pulse_ms": 50, "held_open_s": 0.1, **overrides})
        door = Door(config, asyncio.get_running_loop(), events.append, pin_factory=factory)
        doors.append(door)
        return door

    yield make
    for door in doors:
        door.close()


def pin(factory: MockFactory, number: int) -> MockPin:
    return factory.pin(number)


async def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll until ``condition()`` holds; return the loop time at which it was seen."""
    deadline = now() + timeout
    while not condition():
        if now() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)
    return now()


async def assert_drops_after(mock_pin: MockPin, since: float, expected: float) -> None:
    """Wait for ``mock_pin`` to go low; it must do so ``expected`` s after ``since``, not earlier."""
    dropped = await wait_for(lambda: not mock_pin.state)
    assert expected - 0.005 <= dropped - since <= expected + SLACK_S


def now() -> float:
    return asyncio.get_running_loop().time()


def states(mock_pin: MockPin) -> list[bool]:
    return [s.state for s in mock_pin.states]


async def test_grant_pulses_relay_for_pulse_ms_with_green_led_and_short_beep(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door()
    relay, green, buzzer = pin(factory, RELAY), pin(factory, GREEN), pin(factory, BUZZER)
    start = now()
    door.grant()
    # Synchronous: the relay is energized before grant() returns (the latency budget's end).
    assert relay.state and green.state and buzzer.state

    await assert_drops_after(relay, start, PULSE_S)
    # The green LED's switch-off is its own timer, due a few µs after the relay's: on a busy
    # machine the loop can wake between the two, so wait for it with the same bounds.
    await assert_drops_after(green, start, PULSE_S)
    await assert_drops_after(buzzer, start, 0.1)
    assert states(relay) == [False, True, False]
    assert relay.states[-1].timestamp == pytest.approx(PULSE_S, abs=SLACK_S)
    assert states(green) == [False, True, False]
    assert not pin(factory, RED).state


async def test_grant_during_pulse_restarts_it(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door()
    relay = pin(factory, RELAY)
    door.grant()
    await asyncio.sleep(PULSE_S / 2)
    second = now()
    door.grant()
    await assert_drops_after(relay, second, PULSE_S)
    assert states(relay) == [False, True, False]


async def test_deny_lights_red_and_beeps_long_without_touching_relay(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door()
    relay, red, buzzer = pin(factory, RELAY), pin(factory, RED), pin(factory, BUZZER)
    start = now()
    door.deny()
    assert red.state and buzzer.state
    await assert_drops_after(buzzer, start, 0.6)
    await assert_drops_after(red, start, 1.0)
    assert states(relay) == [False]
    assert not pin(factory, GREEN).state


async def test_inverted_relay_is_energized_low(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door(relay_active_high=False)
    relay = pin(factory, RELAY)
    assert relay.state  # idle = high = de-energized on an active-low board
    door.grant()
    assert not relay.state
    await wait_for(lambda: relay.state)
    assert states(relay)[-2:] == [False, True]


async def test_pulse_opens_like_a_grant(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door()
    relay = pin(factory, RELAY)
    door.pulse("control")
    assert relay.state and pin(factory, GREEN).state
    await wait_for(lambda: not relay.state)


async def test_contact_opening_without_grant_is_forced_then_closed(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(door_contact_pin=CONTACT)
    contact = pin(factory, CONTACT)
    contact.drive_low()  # the pull-up reads an unwired contact as open; shut the door first
    assert door.contact_open is False
    assert events == []

    contact.drive_high()
    assert door.contact_open is True
    assert events == [DoorEvent("door_forced")]
    contact.drive_low()
    assert events == [DoorEvent("door_forced"), DoorEvent("door_closed")]


async def test_contact_opening_during_grant_is_not_forced(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(door_contact_pin=CONTACT)
    contact = pin(factory, CONTACT)
    contact.drive_low()
    door.grant()
    contact.drive_high()
    contact.drive_low()  # shut well within held_open_s
    await asyncio.sleep(0.15)
    assert events == []


async def test_contact_opening_after_the_window_is_forced(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(door_contact_pin=CONTACT)
    contact = pin(factory, CONTACT)
    contact.drive_low()
    door.grant()
    # The window is the pulse plus a grace of at most one pulse.
    await asyncio.sleep(2 * PULSE_S + SLACK_S)
    contact.drive_high()
    assert events == [DoorEvent("door_forced")]


async def test_door_held_open_raises_held_then_closed(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(door_contact_pin=CONTACT)
    contact = pin(factory, CONTACT)
    contact.drive_low()
    door.grant()
    opened = now()
    contact.drive_high()
    held_at = await wait_for(lambda: bool(events))
    assert events == [DoorEvent("door_held")]
    assert held_at - opened == pytest.approx(0.1, abs=SLACK_S)
    contact.drive_low()
    assert events == [DoorEvent("door_held"), DoorEvent("door_closed")]


async def test_exit_button_pulses_and_reports_exit(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    make_door(exit_button_pin=EXIT, door_contact_pin=CONTACT)
    contact, button, relay = pin(factory, CONTACT), pin(factory, EXIT), pin(factory, RELAY)
    contact.drive_low()
    button.drive_low()  # pressed: closes to ground
    assert relay.state
    assert events == [DoorEvent("exit", "exit_button")]
    button.drive_high()
    contact.drive_high()  # walking out is an authorized opening
    assert events == [DoorEvent("exit", "exit_button")]
    await wait_for(lambda: not relay.state)


async def test_fire_holds_relay_through_grants_and_releases_on_clear(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(fire_input_pin=FIRE, door_contact_pin=CONTACT)
    fire, relay, contact = pin(factory, FIRE), pin(factory, RELAY), pin(factory, CONTACT)
    # The fire loop is normally closed: unwired (pulled high) reads as fire, fail-safe.
    assert door.fire_active and relay.state
    assert events == [DoorEvent("fire", "active")]
    fire.drive_low()
    contact.drive_low()
    assert not door.fire_active and not relay.state
    events.clear()

    fire.drive_high()
    assert events == [DoorEvent("fire", "active")]
    assert relay.state
    door.grant()
    door.pulse("command")
    contact.drive_high()  # the fire panel released the door: not forced
    await asyncio.sleep(PULSE_S + 0.1 + SLACK_S)  # past the pulse and held_open_s
    assert relay.state
    assert events == [DoorEvent("fire", "active")]

    contact.drive_low()
    fire.drive_low()
    assert not relay.state
    assert events == [DoorEvent("fire", "active"), DoorEvent("fire", "cleared")]


async def test_passage_within_pulse_reports_true_else_false(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door(passage_sensor_pin=PASSAGE)
    sensor = pin(factory, PASSAGE)
    assert door.has_passage_sensor
    passed: list[bool] = []

    door.grant(passed.append)
    sensor.drive_low()
    sensor.drive_high()
    assert passed == [True]

    start = now()
    door.grant(passed.append)
    missed_at = await wait_for(lambda: len(passed) == 2)
    assert passed == [True, False]
    assert missed_at - start == pytest.approx(PULSE_S, abs=SLACK_S)
    sensor.drive_low()  # a passage with no grant waiting matches nothing
    assert passed == [True, False]


async def test_without_passage_sensor_on_passage_is_never_called(
    factory: MockFactory, make_door: Callable[..., Door]
) -> None:
    door = make_door()
    passed: list[bool] = []
    assert not door.has_passage_sensor
    door.grant(passed.append)
    await wait_for(lambda: not pin(factory, RELAY).state)
    await asyncio.sleep(0.01)
    assert passed == []


async def test_edges_from_another_thread_are_handled_on_the_loop(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    make_door(door_contact_pin=CONTACT)
    contact = pin(factory, CONTACT)
    contact.drive_low()
    # Real pin factories call back on their own threads; the door must not run handlers there.
    await asyncio.to_thread(contact.drive_high)
    await wait_for(lambda: bool(events))
    assert events == [DoorEvent("door_forced")]


async def test_close_turns_off_releases_pins_and_resolves_pending_passages(
    factory: MockFactory, make_door: Callable[..., Door], events: list[DoorEvent]
) -> None:
    door = make_door(passage_sensor_pin=PASSAGE, door_contact_pin=CONTACT)
    pin(factory, CONTACT).drive_low()
    passed: list[bool] = []
    door.grant(passed.append)
    door.close()
    assert passed == [False]
    assert not pin(factory, RELAY).state
    await asyncio.sleep(PULSE_S + SLACK_S)
    assert passed == [False]
    # The pins are free again.
    make_door(passage_sensor_pin=PASSAGE, door_contact_pin=CONTACT)


async def test_pin_used_twice_is_a_one_line_door_error(make_door: Callable[..., Door]) -> None:
    with pytest.raises(DoorError, match=r"^\[door\] green_led_pin: "):
        make_door(green_led_pin=RELAY)
    make_door()  # the failed attempt released what it had claimed


async def test_pin_factory_comes_from_config() -> None:
    door = Door(DoorConfig(pin_factory="mock"), asyncio.get_running_loop(), lambda event: None)
    try:
        assert door.pin_factory_name == "MockFactory"
        assert door.contact_open is None and not door.fire_active
    finally:
        door.close()


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is installed")
def test_lgpio_without_the_library_says_how_to_install_it() -> None:
    with pytest.raises(DoorError, match=r"pip install 'gated\[pi\]'"):
        open_pin_factory("lgpio")
