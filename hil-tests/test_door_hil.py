"""The door on a real Pi through lgpio: relay, LEDs, buzzer and (if wired) the door contact.

Run on the Pi with the pi extra installed and the door wired as in ``gated/door.py``:

    GATED_HIL_DOOR=1 pytest hil-tests/test_door_hil.py

``GATED_HIL_DOOR_CONTACT_PIN`` (BCM) adds the contact check; keep the door shut while it runs.
The relay clicks and the LEDs and buzzer work in front of you: watch and listen.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from gated.config import DoorConfig
from gated.door import Door, DoorEvent

pytestmark = pytest.mark.skipif(
    os.environ.get("GATED_HIL_DOOR") != "1", reason="set GATED_HIL_DOOR=1 on a wired Pi"
)


def _config() -> DoorConfig:
    contact = os.environ.get("GATED_HIL_DOOR_CONTACT_PIN")
    return DoorConfig(
        pin_factory="lgpio", pulse_ms=500, door_contact_pin=int(contact) if contact else None
    )


async def test_grant_drives_the_real_relay_for_the_pulse() -> None:
    events: list[DoorEvent] = []
    door = Door(_config(), asyncio.get_running_loop(), events.append)
    try:
        assert door.pin_factory_name == "LGPIOFactory"
        relay = door._relay.device  # read back the output level the chip reports
        door.grant()
        assert relay.value == 1
        await asyncio.sleep(0.6)
        assert relay.value == 0
        door.deny()
        await asyncio.sleep(1.1)
        if door.contact_open is not None:
            assert door.contact_open is False, "shut the door before running this test"
        assert events == []
    finally:
        door.close()
