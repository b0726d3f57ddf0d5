"""The door: strike relay, LEDs, buzzer and the door's sensors, through gpiozero.

The door obeys and never decides: the daemon calls :meth:`Door.grant` or :meth:`Door.deny` after
policy has decided, and the door reports what its sensors see as :class:`DoorEvent`\\ s.

Hardware sits behind gpiozero's pin factory, chosen by ``[door] pin_factory``: ``"mock"`` is
gpiozero's ``MockFactory`` (the demo and the tests drive its pins), ``"lgpio"`` the real Pi.

Wiring of the inputs (all optional; every one is a dry contact between the BCM pin and ground,
read with the Pi's internal pull-up, so no external resistor is needed):

- ``door_contact_pin``: a reed contact that is *closed while the door is shut* (normally closed).
  A cut wire therefore reads as an open door and raises an alarm instead of hiding one.
- ``exit_button_pin``: a request-to-exit push button, normally open; pressed = closed.
- ``fire_input_pin``: the fire panel's volt-free contact, *closed while there is no fire*
  (normally closed, the fail-safe convention of fire-release interfaces): an alarm or a cut wire
  opens it and the door is released. Leave the pin unset if no fire panel is connected.
- ``passage_sensor_pin``: a turnstile rotation switch or beam, closed while someone passes.

All methods are called on the event loop's thread. gpiozero reports input edges on its own
threads with real pins; they are handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gpiozero import LED, Buzzer, DigitalInputDevice, OutputDevice
from gpiozero.exc import GPIOZeroError
from gpiozero.pins import Factory

from gated.config import DoorConfig
from gated.errors import GatedError

log = logging.getLogger(__name__)

DoorEventKind = Literal["door_forced", "door_held", "door_closed", "fire", "exit"]

_GRANT_BEEP_S = 0.1
_DENY_BEEP_S = 0.6
_DENY_RED_S = 1.0
# A door contact opens a moment after the strike releases, and a member who pushes at the very end
# of the pulse is still an authorized opening; the grace is capped by the pulse so that a short
# pulse (a fast turnstile) keeps a proportionally short window.
_OPEN_GRACE_S = 1.0
# Reed contacts and push buttons bounce for a few milliseconds; without this one press or one
# door swing could read as several edges (and several events).
_BOUNCE_S = 0.02

# pin_factory name -> (module, class, what to do when its library is missing)
_FACTORIES: dict[str, tuple[str, str, str]] = {
    "mock": ("gpiozero.pins.mock", "MockFactory", "reinstall gated"),
    "lgpio": (
        "gpiozero.pins.lgpio",
        "LGPIOFactory",
        "install the pi extra: pip install 'gated[pi]'",
    ),
    "rpigpio": (
        "gpiozero.pins.rpigpio",
        "RPiGPIOFactory",
        "install RPi.GPIO: pip install RPi.GPIO",
    ),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory", "install pigpio: pip install pigpio"),
    "native": ("gpiozero.pins.native", "NativeFactory", "reinstall gated"),
}


class DoorError(GatedError):
    """The door hardware cannot be used; the message is one line for a human."""


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """Something the door's sensors saw; ``kind`` is the GateEvent kind it becomes."""

    kind: DoorEventKind
    detail: str | None = None


def _factory_class(name: str) -> Any:
    try:
        module_name, class_name, hint = _FACTORIES[name]
    except KeyError:
        raise DoorError(f"[door] pin_factory: unknown factory {name!r}") from None
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise DoorError(
            f"[door] pin_factory {name!r} needs {exc.name or 'a library'}: {hint}"
        ) from exc
    # A library that is there but broken (a wrong version, a missing shared object) fails with
    # anything at all; the edge still gets one line naming the factory.
    except Exception as exc:
        raise DoorError(f"[door] pin_factory {name!r}: its library does not load: {exc}") from exc


def check_pin_factory(name: str) -> None:
    """Raise :class:`DoorError` if the pin factory's library cannot be imported here. The GPIO is
    not opened: the running daemon may hold it, so only ``gated run`` finds a chip it cannot use."""
    _factory_class(name)


def open_pin_factory(name: str) -> Factory:
    """Create the gpiozero pin factory named by ``[door] pin_factory``, or raise :class:`DoorError`."""
    factory_class = _factory_class(name)
    try:
        return factory_class()
    # lgpio raises its own lgpio.error and pigpio an OSError-like error; whatever the library, the
    # edge gets one line naming the factory instead of a traceback.
    except Exception as exc:
        raise DoorError(f"[door] pin_factory {name!r}: cannot open the GPIO: {exc}") from exc


class _TimedOutput:
    """An output device that switches itself off after a while, on the loop's clock."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        device: Any,
        keep_on: Callable[[], bool] = lambda: False,
    ) -> None:
        self.device = device
        self._loop = loop
        self._keep_on = keep_on
        self._off_handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """True while a timed ``on`` has not yet expired."""
        return self._off_handle is not None

    def on_for(self, seconds: float) -> int:
        """Switch on now and off ``seconds`` from now; a second call restarts the time.

        Returns ``time.monotonic_ns()`` just after the pin was driven: the end of a decision's
        latency budget."""
        self.device.on()
        driven = time.monotonic_ns()
        self.cancel()
        self._off_handle = self._loop.call_later(seconds, self._expire)
        return driven

    def cancel(self) -> None:
        """Forget the pending switch-off (the output stays as it is)."""
        if self._off_handle is not None:
            self._off_handle.cancel()
            self._off_handle = None

    def _expire(self) -> None:
        self._off_handle = None
        if not self._keep_on():
            self.device.off()


@dataclass(slots=True)
class _PendingPassage:
    on_passage: Callable[[bool], None]
    deadline: asyncio.TimerHandle | None = None


class Door:
    """The relay, LEDs and buzzer of one gate, and its optional contact, exit, fire and passage inputs."""

    def __init__(
        self,
        config: DoorConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[DoorEvent], None],
        *,
        pin_factory: Factory | None = None,
    ) -> None:
        """Claim the pins. ``pin_factory`` overrides ``config.pin_factory`` (tests pass a MockFactory).

        If the fire input is already active, the relay is energized and ``on_event`` receives the
        ``fire`` event before this returns.
        """
        self._config = config
        self._loop = loop
        self._on_event = on_event
        self._pulse_s = config.pulse_ms / 1000
        self._owns_factory = pin_factory is None
        self._factory = open_pin_factory(config.pin_factory) if pin_factory is None else pin_factory
        self._closed = False
        self._fire = False
        self._contact_is_open: bool | None = None
        self._alarm = False
        self._authorized_until = float("-inf")
        self._held_handle: asyncio.TimerHandle | None = None
        self._passages: deque[_PendingPassage] = deque()
        self._devices: list[Any] = []
        try:
            relay = self._claim(
                "relay_pin",
                lambda: OutputDevice(
                    config.relay_pin,
                    active_high=config.relay_active_high,
                    initial_value=False,
                    pin_factory=self._factory,
                ),
            )
            # A pulse ending during a fire alarm must not lock the door the fire panel released.
            self._relay = _TimedOutput(loop, relay, keep_on=lambda: self._fire)
            self._green = self._timed("green_led_pin", LED, config.green_led_pin)
            self._red = self._timed("red_led_pin", LED, config.red_led_pin)
            self._buzzer = self._timed("buzzer_pin", Buzzer, config.buzzer_pin)
            self._contact = self._input(
                "door_contact_pin", config.door_contact_pin, self._on_contact
            )
            self._input("exit_button_pin", config.exit_button_pin, self._on_exit_button)
            self._fire_input = self._input(
                "fire_input_pin", config.fire_input_pin, self._on_fire_loop
            )
            self._passage = self._input(
                "passage_sensor_pin", config.passage_sensor_pin, self._on_passage_sensor
            )
        except BaseException:
            self._release()
            raise
        # Take the inputs' state at start as the baseline: a door found open is not "forced" (we
        # did not see it open) but it is timed for being held; a fire found active is acted on.
        if self._contact is not None:
            self._on_contact(bool(self._contact.is_active))
        if self._fire_input is not None:
            self._on_fire_loop(bool(self._fire_input.is_active))

    # --- commands -------------------------------------------------------------------------------

    def grant(self, on_passage: Callable[[bool], None] | None = None) -> int:
        """Open for one member: relay on now for ``pulse_ms``, green LED for the pulse, short beep.

        With a passage sensor fitted, ``on_passage(True)`` is called on the first passage within
        ``pulse_ms`` (several pending grants are matched to passages oldest first), else
        ``on_passage(False)`` when the window ends. Without a sensor it is never called: the
        caller counts the entry at the grant (see :attr:`has_passage_sensor`). Returns when the
        relay was driven (``time.monotonic_ns()``).
        """
        driven = self._open()
        if on_passage is not None and self._passage is not None:
            pending = _PendingPassage(on_passage)
            pending.deadline = self._loop.call_later(self._pulse_s, self._passage_missed, pending)
            self._passages.append(pending)
        return driven

    def deny(self) -> int:
        """Refuse: red LED for about a second and a long beep; the relay is left alone. Returns
        when the red LED was driven (``time.monotonic_ns()``)."""
        driven = self._red.on_for(_DENY_RED_S)
        self._buzzer.on_for(_DENY_BEEP_S)
        return driven

    def pulse(self, source: str) -> None:
        """Open for an operator (``source`` e.g. "control" or "command"), like a grant without passage tracking."""
        log.info("door_pulse source=%s", source)
        self._open()

    # --- state ----------------------------------------------------------------------------------

    @property
    def fire_active(self) -> bool:
        """True while the fire input holds the door open."""
        return self._fire

    @property
    def contact_open(self) -> bool | None:
        """Whether the door contact reads open; None when no contact is fitted."""
        return self._contact_is_open

    @property
    def has_passage_sensor(self) -> bool:
        """True when a passage sensor is fitted, so entries are counted on passage, not on grant."""
        return self._passage is not None

    @property
    def factory(self) -> Factory:
        """The pin factory, shared with GPIO readers (Wiegand) so one process claims pins once."""
        return self._factory

    @property
    def relay_energized(self) -> bool:
        """True while the strike is released (a pulse, a grant, or the fire input)."""
        return bool(self._relay.device.is_active)

    @property
    def pin_factory_name(self) -> str:
        """The gpiozero pin factory in use, e.g. "MockFactory" or "LGPIOFactory"."""
        return type(self._factory).__name__

    def close(self) -> None:
        """De-energize the outputs, cancel timers and release the pins.

        Grants still waiting for a passage are reported as not passed: the door can no longer
        watch for it, and the caller still gets to record the grant.
        """
        if self._closed:
            return
        self._closed = True
        for timed in (self._relay, self._green, self._red, self._buzzer):
            timed.cancel()
            timed.device.off()
        if self._held_handle is not None:
            self._held_handle.cancel()
            self._held_handle = None
        while self._passages:
            pending = self._passages.popleft()
            if pending.deadline is not None:
                pending.deadline.cancel()
            pending.on_passage(False)
        self._release()

    # --- internals ------------------------------------------------------------------------------

    def _claim(self, field: str, build: Callable[[], Any]) -> Any:
        try:
            device = build()
        except GPIOZeroError as exc:
            raise DoorError(f"[door] {field}: {exc}") from exc
        self._devices.append(device)
        return device

    def _timed(self, field: str, device_class: Any, pin: int) -> _TimedOutput:
        device = self._claim(field, lambda: device_class(pin, pin_factory=self._factory))
        return _TimedOutput(self._loop, device)

    def _input(self, field: str, pin: int | None, handler: Callable[[bool], None]) -> Any:
        """A pulled-up input whose edges reach ``handler(closed)`` on the loop; None if not fitted."""
        if pin is None:
            return None
        device = self._claim(
            field,
            lambda: DigitalInputDevice(
                pin, pull_up=True, bounce_time=_BOUNCE_S, pin_factory=self._factory
            ),
        )
        # The level is captured at the edge: by the time the loop runs the handler the pin may
        # already read differently, and each edge must be judged on its own.
        device.when_activated = lambda: self._from_gpio(handler, True)
        device.when_deactivated = lambda: self._from_gpio(handler, False)
        return device

    def _from_gpio(self, handler: Callable[[bool], None], closed: bool) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            # MockFactory fires callbacks synchronously on the thread that drives the pin, which
            # is the loop's own thread in the demo and the tests.
            self._dispatch(handler, closed)
        else:
            self._loop.call_soon_threadsafe(self._dispatch, handler, closed)

    def _dispatch(self, handler: Callable[[bool], None], closed: bool) -> None:
        if not self._closed:
            handler(closed)

    def _open(self) -> int:
        driven = self._relay.on_for(self._pulse_s)
        grace = min(_OPEN_GRACE_S, self._pulse_s)
        self._authorized_until = max(
            self._authorized_until, self._loop.time() + self._pulse_s + grace
        )
        self._green.on_for(self._pulse_s)
        self._buzzer.on_for(_GRANT_BEEP_S)
        return driven

    def _emit(self, kind: DoorEventKind, detail: str | None = None) -> None:
        # Alarms stand out in the journal; an exit or a cleared alarm is routine.
        alarm = kind in ("door_forced", "door_held") or detail == "active"
        log.log(
            logging.WARNING if alarm else logging.INFO, "door_event kind=%s detail=%s", kind, detail
        )
        self._on_event(DoorEvent(kind, detail))

    def _on_contact(self, closed: bool) -> None:
        is_open = not closed
        if is_open == self._contact_is_open:
            return
        first_reading = self._contact_is_open is None
        self._contact_is_open = is_open
        if is_open:
            authorized = self._fire or self._loop.time() <= self._authorized_until
            if not authorized and not first_reading:
                self._alarm = True
                self._emit("door_forced")
            self._start_held_timer()
        else:
            if self._held_handle is not None:
                self._held_handle.cancel()
                self._held_handle = None
            if self._alarm:
                self._alarm = False
                self._emit("door_closed")

    def _start_held_timer(self) -> None:
        if self._held_handle is None:
            self._held_handle = self._loop.call_later(self._config.held_open_s, self._held_expired)

    def _held_expired(self) -> None:
        self._held_handle = None
        # A door the fire panel released is meant to stand open; the timer restarts at "cleared".
        if self._fire:
            return
        self._alarm = True
        self._emit("door_held")

    def _on_exit_button(self, closed: bool) -> None:
        if closed:
            self._open()
            self._emit("exit", "exit_button")

    def _on_fire_loop(self, closed: bool) -> None:
        active = not closed
        if active == self._fire:
            return
        self._fire = active
        if active:
            self._relay.device.on()
            self._emit("fire", "active")
        else:
            # A pulse still running keeps the relay until its own end.
            if not self._relay.running:
                self._relay.device.off()
            if self._contact_is_open:
                self._start_held_timer()
            self._emit("fire", "cleared")

    def _on_passage_sensor(self, closed: bool) -> None:
        if closed and self._passages:
            pending = self._passages.popleft()
            if pending.deadline is not None:
                pending.deadline.cancel()
            pending.on_passage(True)

    def _passage_missed(self, pending: _PendingPassage) -> None:
        self._passages.remove(pending)
        pending.on_passage(False)

    def _release(self) -> None:
        for device in reversed(self._devices):
            device.close()
        self._devices.clear()
        if self._owns_factory:
            self._factory.close()
