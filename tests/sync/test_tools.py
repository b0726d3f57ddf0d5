"""``gated members push`` and ``gated command sign`` against a real broker and a real gate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from gated.contract import Verifier, read_snapshot
from tests.gatefixture import GateProcess, gated_cmd
from tests.services import Mosquitto
from tests.sync.helpers import SITE, EventSink, HeadOffice, uid_for, wait_until


def write_members(path: Path, n: int, status: str = "active") -> Path:
    path.write_text(
        json.dumps(
            [{"member_id": f"p_{i}", "cards": [uid_for(i)], "status": status} for i in range(n)]
        )
    )
    return path


def gated(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gated_cmd(*args), capture_output=True, text=True, timeout=120)


def test_push_publishes_signed_members_and_versions_continue(gate: GateProcess) -> None:
    gate.start()
    keys = gate.root / "keys"
    members = write_members(gate.root / "members.json", 300)
    push = ("members", "push", "-c", str(gate.config), "--key", str(keys / "head-office.key"))
    out = gated(*push, str(members), "--json")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["published"] == 300 and first["first_version"] == 1
    wait_until(lambda: gate.request("status")["sync"]["in_sync"], what="gate in step")
    assert gate.request("badge", {"card": uid_for(7)})["allow"]

    write_members(members, 300, status="suspended")
    out = gated(*push, str(members), "--json")
    second = json.loads(out.stdout)
    assert second["first_version"] == 301 and second["max_version"] == 600
    wait_until(
        lambda: gate.request("badge", {"card": uid_for(7)})["reason"] == "suspended",
        what="second push applied",
    )
    wait_until(lambda: gate.request("status")["sync"]["in_sync"], what="in step again")

    human = gated(*push, str(members))
    assert human.returncode == 0 and "published 300 members" in human.stdout


def test_push_snapshot_file_is_signed_and_continues(gate: GateProcess, tmp_path: Path) -> None:
    keys = gate.root / "keys"
    members = write_members(tmp_path / "members.json", 50)
    out_file = tmp_path / "site.snapshot.gz"
    push = ("members", "push", "-c", str(gate.config), "--key", str(keys / "head-office.key"))
    assert gated(*push, str(members), "--snapshot", str(out_file)).returncode == 0
    assert gated(*push, str(members), "--snapshot", str(out_file)).returncode == 0
    verifier = Verifier.from_pem_files([keys / "head-office.pub"])
    trailer, states = read_snapshot(out_file.read_bytes(), verifier, SITE)
    assert trailer["count"] == 50 and trailer["max_version"] == 100
    assert [s["version"] for s in states] == list(range(51, 101))


def test_signed_commands_run_once_and_bad_ones_are_refused(
    gate: GateProcess, hq: HeadOffice, mosquitto: Mosquitto
) -> None:
    gate.start()
    keys = gate.root / "keys"
    wait_until(lambda: gate.request("status")["sync"]["subscribed"], what="subscribed")

    def sign(
        action: str, *extra: str, key: str = "command.key", publish: bool = True
    ) -> dict[str, Any]:
        args = ["command", "sign", action, "--gate", extra[0] if extra else "t1"]
        args += ["-c", str(gate.config), "--key", str(keys / key)]
        args += ["--publish"] if publish else []
        out = gated(*args)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def commands() -> dict[str, int]:
        return dict(gate.request("status")["sync"]["commands"])

    lockdown = sign("lockdown_on")
    wait_until(lambda: gate.request("status")["lockdown"], what="lockdown from a command")
    assert gate.request("badge", {"card": uid_for(1)})["reason"] == "lockdown"
    hq.raw(f"gated/v1/sites/{SITE}/gates/t1/cmd", json.dumps(lockdown), retain=False)  # replay
    wait_until(lambda: commands().get("refused_replayed") == 1, what="replay refused")

    cmd_topic = f"gated/v1/sites/{SITE}/gates/t1/cmd"
    other_gate = sign("lockdown_off", "t2", publish=False)
    hq.raw(cmd_topic, json.dumps(other_gate), retain=False)  # on our topic, signed for t2
    wait_until(lambda: commands().get("refused_misaddressed") == 1, what="misaddressed refused")
    sign("pulse", key="head-office.key")  # the head-office key may not command gates
    expired = sign("pulse", publish=False)
    expired["not_after"] = "2020-01-01T00:00:00Z"  # breaks the signature as well: both refuse
    hq.raw(cmd_topic, json.dumps(expired), retain=False)
    wait_until(
        lambda: commands().get("refused_bad_signature") == 2, what="forged and untrusted refused"
    )
    assert gate.request("status")["lockdown"], "no refused command may act"
    sink = EventSink(mosquitto.port)
    try:
        unlock = sign("lockdown_off")
        wait_until(lambda: not gate.request("status")["lockdown"], what="lockdown off")
        event = wait_until(
            lambda: next((e for e in sink.unique().values() if e["kind"] == "lockdown"), None),
            what="the lockdown event",
        )
        assert event["source"] == "command" and event["operator"] == unlock["id"]
        assert event["reason"] == "off"
    finally:
        sink.close()
    hq.publish(hq.state("c_1", 1, cards=[uid_for(1)]))
    wait_until(lambda: gate.request("status")["sync"]["applied"] == 1, what="one member")
    resubscribes = gate.request("status")["sync"]["received"]["members"]
    sign("resync")  # no snapshot source: the broker sends every retained state again
    wait_until(lambda: commands()["run"] == 3, what="resync command run")
    wait_until(
        lambda: gate.request("status")["sync"]["received"].get("members", 0) > resubscribes,
        what="retained states sent again",
    )
