"""Head-office time is a floor, not a master (DESIGN "Time"), against a real ``gated run`` and a
real mosquitto: one signed state dated 2030 must not move the gate's clock."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import nacl.signing
from gpiozero.pins.mock import MockFactory

from gated.cache.store import CacheStore
from gated.clock import ClockProbe
from gated.config import load_gate_config
from gated.contract import Signer, format_time, mint_qr_code, parse_time
from gated.daemon import Gate
from gated.push import command_json, sign_command
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.helpers import SITE, EventSink, HeadOffice, uid_for, wait_until

Y2030 = "2030-01-01T00:00:00Z"
APP_SEED = bytes(range(32, 64))
DAY = 86400


def publish_site(hq: HeadOffice) -> None:
    """Members whose fate depends on the date, and one state signed with an issued_at in 2030."""
    now = time.time()
    app_key = base64.b64encode(bytes(nacl.signing.SigningKey(APP_SEED).verify_key)).decode()
    soon = hq.state("m_soon", 1, cards=[uid_for(1)])
    soon["valid_until"] = format_time(now + 2 * DAY)
    later = hq.state("m_later", 2, cards=[uid_for(2)])
    later["valid_from"] = format_time(now + 300 * DAY)
    app = hq.state("m_app", 3)
    app["qr_key"] = app_key
    wild = hq.state("m_wild", 4, cards=[uid_for(4)])
    wild["issued_at"] = Y2030
    hq.publish(soon, later, app, wild)


def command(gate: GateProcess, hq: HeadOffice, action: str, issued: float | None = None) -> None:
    signer = Signer.from_pem_file(gate.root / "keys" / "command.key")
    cmd = sign_command(signer, site=SITE, gate="t1", action=action, now=issued)
    hq.raw(f"gated/v1/sites/{SITE}/gates/t1/cmd", command_json(cmd), retain=False)


def gate_now(gate: GateProcess) -> float:
    return parse_time(gate.request("status")["now"]).timestamp()


def gate_started(gate: GateProcess) -> float:
    return parse_time(gate.request("status")["started_at"]).timestamp()


def assert_decides_on_todays_date(gate: GateProcess) -> None:
    assert abs(gate_now(gate) - time.time()) < 60
    assert gate.badge(card=uid_for(1))["allow"], "valid for 2 more days: allowed"
    assert gate.badge(card=uid_for(2))["reason"] == "not_yet_valid"
    # Dated like a phone (the current second), once a second has begun since the gate last
    # started: a code dated in the second the gate started within counts as from before it.
    started = gate_started(gate)
    wait_until(lambda: int(time.time()) > started, what="a second begun after the start")
    code = mint_qr_code(APP_SEED, "m_app", int(time.time()), secrets.token_hex(8))
    assert gate.badge(qr=code)["allow"], "a QR code minted now is accepted"


def test_a_signed_state_from_2030_is_applied_but_its_time_ignored(
    gate: GateProcess, hq: HeadOffice, mosquitto: Mosquitto
) -> None:
    sink = EventSink(mosquitto.port)
    publish_site(hq)
    gate.start()
    wait_until(lambda: gate.badge(card=uid_for(4))["allow"], what="the 2030 state applied")
    assert_decides_on_todays_date(gate)
    clock = gate.request("status")["clock"]
    assert clock["plausible"] and clock["skewed_objects"] >= 1
    assert clock["last_skew_s"] > 365 * DAY
    doctor = {c["name"]: c for c in gate.request("doctor")["checks"]}
    assert doctor["clock skew"]["level"] == "warn"
    assert "ahead of this gate's clock" in doctor["clock skew"]["message"]
    skew = wait_until(
        lambda: [e for e in sink.unique().values() if e["kind"] == "clock_skew"],
        what="the clock_skew event at head office",
    )
    sink.close()
    assert len(skew) == 1, "one event, not one per skewed object"
    assert "ahead of this gate's clock: time ignored" in skew[0]["reason"]

    command(gate, hq, "lockdown_on")  # a fresh command runs
    wait_until(lambda: gate.request("status")["lockdown"], what="lockdown from a fresh command")
    command(gate, hq, "lockdown_off", issued=time.time() + 3600)  # an hour ahead: refused
    wait_until(
        lambda: gate.request("status")["sync"]["commands"].get("refused_issued_in_future") == 1,
        what="the command from the future refused",
    )
    assert gate.request("status")["lockdown"]

    gate.stop()  # nothing of 2030 was saved: a restart decides on today's date too
    gate.start()
    wait_until(lambda: gate.request("status")["sync"]["in_sync"], what="in step after restart")
    command(gate, hq, "lockdown_off")
    wait_until(lambda: not gate.request("status")["lockdown"], what="lockdown off")
    assert_decides_on_todays_date(gate)


def test_a_gate_misled_before_repairs_itself(gate: GateProcess, hq: HeadOffice) -> None:
    """A cache written by a gate that believed 2030 (its newest head-office time saved) decides
    on today's date once it runs this version."""
    config = load_gate_config(gate.config)
    store = CacheStore(config.cache_path)
    store.set("newest_issued_at", parse_time(Y2030).timestamp())
    store.close()
    publish_site(hq)
    gate.start()
    wait_until(lambda: gate.request("status")["sync"]["in_sync"], what="in step")
    assert_decides_on_todays_date(gate)


def test_a_saved_time_in_2030_is_discarded_by_a_synchronized_clock(tmp_path: Path) -> None:
    """The saved last good time itself far ahead: with the clock synchronized (this machine's
    may not be, so the probe says it is) the gate discards it and raises it."""
    cfg = load_gate_config(write_config(tmp_path))
    store = CacheStore(cfg.cache_path)
    store.set("last_good_time", parse_time(Y2030).timestamp())
    store.close()

    def start(synced: bool) -> Gate:
        return Gate(cfg, pin_factory=MockFactory(), clock=ClockProbe(synchronized=lambda: synced))

    misled = start(False)  # not synchronized: the saved time may be right, the gate keeps it
    assert misled.clock.now() >= parse_time(Y2030).timestamp()
    misled.writer.close()

    gate = start(True)
    try:
        assert abs(gate.clock.now() - time.time()) < 5
        assert gate.clock.good_time() is not None
        events: list[dict[str, Any]] = gate.writer.submit(lambda s: s.recent_events(10)).result()
        assert [e["kind"] for e in events] == ["clock_skew"]
        assert "discarded" in events[0]["reason"]
    finally:
        gate.writer.close()
