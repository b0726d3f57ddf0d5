"""``gated members push`` never reuses or goes below the versions a site's gates hold, even when
the broker has lost its retained manifest: it continues above every gate's retained status and
its own record, and refuses when it can know none of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gated.contract import manifest_topic, status_topic
from tests.gatefixture import GateProcess
from tests.sync.helpers import SITE, HeadOffice, uid_for, wait_until
from tests.sync.test_tools import gated, write_members


def push(gate: GateProcess, members: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    keys = gate.root / "keys"
    out = gated(
        "members", "push", "-c", str(gate.config), "--key", str(keys / "head-office.key"),
        str(members), "--json", *extra,
    )  # fmt: skip
    return out.returncode, json.loads(out.stdout) if out.returncode == 0 else {}, out.stderr


def gate_max_version(gate: GateProcess) -> int:
    return int(gate.request("status")["sync"]["ours"]["max_version"])


def test_push_continues_above_the_gates_when_the_manifest_is_gone(
    gate: GateProcess, hq: HeadOffice
) -> None:
    gate.start()
    record = gate.root / "keys" / "head-office.key.versions.json"
    members = write_members(gate.root / "members.json", 50)
    code, first, err = push(gate, members)
    assert code == 0, err
    assert first["first_version"] == 1
    wait_until(lambda: gate_max_version(gate) == 50, what="first push applied")

    # The broker loses its retained manifest (persistence lost, topic cleared); the gate holds 50.
    hq.raw(manifest_topic(SITE), b"")
    write_members(members, 50, status="cancelled")
    code, second, err = push(gate, members)
    assert code == 0, err
    assert second["first_version"] == 51, second
    assert first["continued_above"]["gates"] == {"t1": 0}
    assert second["continued_above"] == {
        "manifest": None,
        "gates": {"t1": 50},
        "record": 50,
        "floor": None,
    }
    wait_until(
        lambda: gate.request("badge", {"card": uid_for(7)})["reason"] == "cancelled",
        what="the cancellation applied, not skipped as not newer",
    )

    # Without the record, the gate's retained status alone is enough.
    record.unlink()
    hq.raw(manifest_topic(SITE), b"")
    wait_until(lambda: gate_max_version(gate) == 100, what="second push applied")
    code, third, err = push(gate, members)
    assert code == 0 and third["first_version"] == 101, (err, third)

    # Nothing known (no manifest, no gate online, no record): refused, with what to do.
    gate.stop()
    record.unlink()
    hq.raw(manifest_topic(SITE), b"")
    hq.raw(status_topic(SITE, "t1"), b"")
    code, _, err = push(gate, members)
    assert code == 2 and "--version-floor" in err and "\n" not in err.strip(), err
    assert not record.exists()
    code, fourth, err = push(gate, members, "--version-floor", "150")
    assert code == 0 and fourth["first_version"] == 151, err
    assert json.loads(record.read_text()) == {SITE: 200}
