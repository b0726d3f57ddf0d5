"""A gate killed the instant it opened for a QR code must not let the same code in again.

The door opens before the spent nonce reaches the disk (nothing on the hot path waits for it),
so a restarted gate refuses every code minted before its start; a code minted afterwards goes in.
"""

from __future__ import annotations

import base64
import math
import secrets
import signal
import sys
import time
from pathlib import Path

import nacl.signing
import pytest

from gated import control
from gated.cache.store import CacheStore
from gated.config import load_gate_config
from gated.contract import load_credential_key, mint_qr_code
from tests.gatefixture import GateProcess, write_config
from tests.sync.helpers import member

APP_SEED = bytes(range(64, 96))


def test_a_code_spent_by_a_gate_killed_at_the_door_is_refused_after_the_restart(
    tmp_path: Path,
) -> None:
    root = tmp_path / "gate"
    config = write_config(root)
    cfg = load_gate_config(config)
    app = member("m_app", 1, key=load_credential_key(cfg.keys.credential_key_file))
    app["qr_key"] = base64.b64encode(bytes(nacl.signing.SigningKey(APP_SEED).verify_key)).decode()
    store = CacheStore(cfg.cache_path)
    store.apply_states([app])
    store.close()

    dying = GateProcess(config, root, prefix=(sys.executable, "-m", "tests.qr_kill_child"))
    dying.start()
    # Dated like a phone's code (the current whole second), in a second that began after this
    # gate started, so this gate takes it; and dated before the restart below, however fast that
    # comes. A code dated ahead (the next second) would still be ahead of a quick restart.
    started = time.time()
    time.sleep(math.ceil(started) - started)  # the clock reaches the next whole second
    code = mint_qr_code(APP_SEED, "m_app", int(time.time()), secrets.token_hex(8))
    with pytest.raises(control.DaemonNotRunning):  # killed inside the decision, at the relay
        dying.request("badge", {"qr": code})
    assert dying.proc is not None and dying.proc.wait(10) == -signal.SIGKILL

    gate = GateProcess(config, root)
    gate.start()
    try:
        again = gate.badge(qr=code)
        assert not again["allow"] and again["reason"] == "qr_expired", again
        # The member's app shows its next code: minted after the start, it goes in.
        fresh = mint_qr_code(APP_SEED, "m_app", math.ceil(time.time()), secrets.token_hex(8))
        assert gate.badge(qr=fresh)["allow"]
        assert gate.badge(qr=fresh)["reason"] == "qr_replayed"
    finally:
        gate.stop()
