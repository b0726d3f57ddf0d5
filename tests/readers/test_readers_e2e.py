"""A real ``gated run`` with a PC/SC reader (pcscd + vpcd) and a serial QR scanner (pty), driven as
in the field: cards on the reader, codes from the scanner, ``gatectl readers``, ``enroll``, and a
pcscd restart."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gatefixture import GateProcess, gatectl_cmd, write_config
from tests.readers import pcscd_stack
from tests.readers.pcscd_stack import PcscdStack
from tests.readers.vpcd_card import VirtualCard

pytestmark = [
    pytest.mark.needs_pcscd,
    pytest.mark.skipif(bool(pcscd_stack.missing()), reason=str(pcscd_stack.missing())),
]

MEMBER_UID = "04A1B2C3D4E5F6"
STRANGER_UID = "04C0FFEE123456"


def wait_for(probe: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[GateProcess, PcscdStack, int]]:
    with pcscd_stack.run_pcscd(tmp_path / "pcscd") as stack:
        master, slave = os.openpty()
        readers = (
            f'[[readers]]\nkind = "pcsc"\nid = "entry"\nreader_name = "{stack.reader}"\n'
            f'[[readers]]\nkind = "serial_qr"\nid = "qr-exit"\ndirection = "out"\n'
            f'port = "{os.ttyname(slave)}"\n'
        )
        config = write_config(tmp_path, readers=readers, extra="[door]\npulse_ms = 200\n")
        members = tmp_path / "members.json"
        members.write_text(
            json.dumps([{"member_id": "m_1", "status": "active", "cards": [MEMBER_UID]}])
        )
        gate = GateProcess(config, tmp_path)
        out = gate.gated("members", "import", str(members), "-c", str(config))
        assert out.returncode == 0, out.stderr
        gate.start()
        try:
            yield gate, stack, master
        finally:
            gate.stop()
            os.close(master)
            os.close(slave)


def readers(gate: GateProcess) -> dict[str, dict[str, Any]]:
    out = gate.gatectl("readers", "--json")
    return {r["id"]: r for r in json.loads(out.stdout)["readers"]}


def events(gate: GateProcess) -> list[dict[str, Any]]:
    return list(json.loads(gate.gatectl("events", "tail", "--json").stdout)["events"])


def test_cards_codes_enrolment_and_a_pcscd_restart_through_the_daemon(
    site: tuple[GateProcess, PcscdStack, int],
) -> None:
    gate, stack, scanner = site
    wait_for(lambda: all(r["state"] == "ok" for r in readers(gate).values()), what="readers ok")

    card = VirtualCard(stack.port, MEMBER_UID)
    card.insert()
    entry = wait_for(lambda: [e for e in events(gate) if e["kind"] == "entry"], what="entry event")[
        0
    ]
    assert (entry["member_id"], entry["reader_id"], entry["source"]) == ("m_1", "entry", "reader")
    assert entry["credential_kind"] == "card" and entry["direction"] == "in"
    card.remove()

    os.write(scanner, b"not-a-gate-code\r\n")
    deny = wait_for(
        lambda: [e for e in events(gate) if e["reader_id"] == "qr-exit" and e["kind"] == "deny"],
        what="qr event",
    )[0]
    assert deny["credential_kind"] == "qr" and deny["direction"] == "out"
    assert deny["reason"] == "qr_malformed"

    enroll = subprocess.Popen(
        gatectl_cmd(
            "-c", str(gate.config), "enroll", "--reader", "entry", "--timeout", "20", "--json"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    before = len(events(gate))
    time.sleep(0.5)  # let gatectl reach the daemon before the card arrives
    stranger = VirtualCard(stack.port, STRANGER_UID)
    stranger.insert()
    out, err = enroll.communicate(timeout=25)
    stranger.remove()
    assert enroll.returncode == 0, err
    assert json.loads(out) == {"reader_id": "entry", "uid": STRANGER_UID, "wiegand": None}
    assert len(events(gate)) == before  # an enrolment read is not a badge: no event, no relay

    stack.stop()
    wait_for(lambda: readers(gate)["entry"]["state"] == "absent", what="pcscd loss shown")
    assert "pcscd" in readers(gate)["entry"]["detail"]
    stack.start()
    wait_for(lambda: readers(gate)["entry"]["state"] == "ok", timeout=15, what="recovery shown")

    # The state flips at once; its event is committed by the cache writer a moment later.
    def recovery_events() -> list[str] | None:
        kinds = [e["kind"] for e in events(gate) if e["reader_id"] == "entry"]
        return kinds if kinds[-1] == "reader_ok" else None

    kinds = wait_for(recovery_events, what="reader_ok event after the fault")
    assert "reader_fault" in kinds

    gate.stop()
    log = gate.log.read_text().upper()
    assert MEMBER_UID not in log and STRANGER_UID not in log
