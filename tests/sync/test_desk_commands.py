"""The staff console's desk key at a real gate: trusted for ``pulse`` and lockdown only, for at
most 60 s, and the signed ``args.operator`` named in the gate's event; the offline command key
keeps its own wider rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.contract import Signer, format_time, new_ulid, public_key_pem
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import SITE, EventSink, HeadOffice, wait_until

TOPIC = f"gated/v1/sites/{SITE}/gates/t1/cmd"


@pytest.fixture
def desk_gate(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[GateProcess, Signer]]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "desk.pub"
    pub.write_bytes(public_key_pem(key.public_key()))
    extra = f'desk_command_public_key_files = ["{pub}"]\n' + mqtt_section(mosquitto.url)
    proc = GateProcess(write_config(tmp_path / "gate", extra=extra), tmp_path / "gate")
    yield proc, Signer(key)
    proc.stop()


def command(signer: Signer, action: str, ttl: float, **args: Any) -> dict[str, Any]:
    now = datetime.now(UTC).timestamp()
    return signer.sign(
        {
            "type": "gate_command",
            "id": new_ulid(),
            "site": SITE,
            "gate": "t1",
            "action": action,
            "args": args,
            "issued_at": format_time(now),
            "not_after": format_time(now + ttl),
        }
    )


def test_the_desk_key_pulses_once_and_does_nothing_else(
    desk_gate: tuple[GateProcess, Signer], mosquitto: Mosquitto
) -> None:
    gate, desk = desk_gate
    gate.start()
    wait_until(lambda: gate.request("status")["sync"]["subscribed"], what="subscribed")
    hq = HeadOffice(gate.root / "keys", mosquitto.port)
    sink = EventSink(mosquitto.port)
    commands = lambda: dict(gate.request("status")["sync"]["commands"])  # noqa: E731
    try:
        hq.raw(TOPIC, json.dumps(command(desk, "resync", 30)), retain=False)
        wait_until(lambda: commands().get("refused_not_allowed_for_desk_key") == 1)
        hq.raw(TOPIC, json.dumps(command(desk, "pulse", 61)), retain=False)
        wait_until(lambda: commands().get("refused_lifetime_too_long") == 1)
        assert not gate.request("status")["door"]["relay_energized"]

        pulse = command(desk, "pulse", 30, operator="dana")
        hq.raw(TOPIC, json.dumps(pulse), retain=False)
        # The relay is driven through gpiozero's MockFactory pin; status reads it back.
        wait_until(lambda: gate.request("status")["door"]["relay_energized"], what="relay on")
        event = wait_until(
            lambda: next((e for e in sink.unique().values() if e["reason"] == "door_pulse"), None),
            what="the pulse's event",
        )
        assert event["source"] == "command" and event["operator"] == "dana"
        hq.raw(TOPIC, json.dumps(pulse), retain=False)
        wait_until(lambda: commands().get("refused_replayed") == 1, what="replay refused")
        # The offline command key is not bound by the desk key's rules.
        offline = Signer.from_pem_file(gate.root / "keys" / "command.key")
        hq.raw(TOPIC, json.dumps(command(offline, "pulse", 120)), retain=False)
        wait_until(lambda: commands().get("run") == 2, what="the command key's pulse")
    finally:
        sink.close()
        hq.close()
