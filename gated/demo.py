"""``gated demo``: the whole gate on one machine, driven the way a technician would drive it.

It makes keys and a config in a scratch folder, imports a sample member list with
``gated members import``, starts ``gated run`` with mock GPIO and the simulated reader, plays a
scripted set of badges through ``gatectl badge`` and prints each decision, reason and latency,
then stops the daemon.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from gated.contract import mint_qr_code

BIN = Path(sys.executable).parent
console = Console()

SITE_TZ = "Europe/Berlin"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def _offpeak_window(now: datetime) -> dict[str, Any]:
    """A plan window that is certainly not now (so the off-peak member is refused whatever the
    hour the demo runs): two to three hours from now, every day."""
    start = now + timedelta(hours=2)
    end = now + timedelta(hours=3)
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    return {"days": days, "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


def sample_members(app_public_key_b64: str) -> list[dict[str, Any]]:
    now = datetime.now(ZoneInfo(SITE_TZ))
    until = (now + timedelta(days=30)).astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {"member_id": "m_1001", "status": "active", "plan": "full", "valid_until": until,
         "cards": ["04:A1:B2:C3:D4:E5:F6"], "qr_key": app_public_key_b64},
        {"member_id": "m_1002", "status": "frozen", "plan": "full", "cards": ["04A1B2C3D4E5F7"]},
        {"member_id": "m_1003", "status": "suspended", "plan": "full", "cards": ["04A1B2C3D4E5F8"]},
        {"member_id": "m_1004", "status": "active", "plan": "offpeak", "valid_until": until,
         "cards": ["04A1B2C3D4E5F9"], "schedule": [_offpeak_window(now)]},
        {"member_id": "s_1", "status": "active", "role": "staff", "cards": ["04A1B2C3D4E5FA"]},
    ]  # fmt: skip


def write_demo_config(root: Path) -> Path:
    config = root / "gated.toml"
    config.write_text(
        f"""# written by gated demo
site = "downtown"
gate = "demo-turnstile"
timezone = "{SITE_TZ}"
state_dir = "{root / "state"}"
control_socket = "{root / "state" / "control.sock"}"

[keys]
credential_key_file = "{root / "keys" / "credential.key"}"
head_office_public_key_files = ["{root / "keys" / "head-office.pub"}"]

[policy]
qr_window_s = 30

[door]
pin_factory = "mock"
pulse_ms = 500

[[readers]]
kind = "sim"
id = "front-desk"
"""
    )
    return config


def wait_ready(
    socket_path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15
) -> None:
    from gated import control

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gated exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            control.request(socket_path, "status", timeout=2)
            return
        except (control.DaemonNotRunning, OSError):
            time.sleep(0.05)
    raise TimeoutError("gated did not become ready")


def run_demo(workdir: Path | None = None) -> int:
    """Play the scripted story; returns 0 when every decision came out as expected."""
    from nacl.signing import SigningKey

    root = Path(workdir or tempfile.mkdtemp(prefix="gated-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]gated demo: one turnstile, mock GPIO, simulated reader")
    _run(str(BIN / "gated"), "keys", "generate", "--out", str(root / "keys"), "--force")
    config = write_demo_config(root)
    app_key = SigningKey.generate()  # the member app's key pair; the gate only gets the public half
    members = sample_members(base64.b64encode(bytes(app_key.verify_key)).decode())
    (root / "members.json").write_text(json.dumps(members, indent=2))
    out = _run(
        str(BIN / "gated"), "members", "import", str(root / "members.json"), "-c", str(config)
    )
    console.print(f"[dim]{out.stdout.strip()}[/dim]")

    log = root / "gated.log"
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "gated"), "run", "-c", str(config)], stdout=fh, stderr=fh, env=env
        )
    try:
        wait_ready(root / "state" / "control.sock", proc, log)
        console.print(f"[dim]gated running (pid {proc.pid}), state in {root}[/dim]\n")
        code = mint_qr_code(bytes(app_key), "m_1001", int(time.time()), secrets.token_hex(8))
        story = [
            ("active member, card", ["--card", "04:a1:b2:c3:d4:e5:f6"], True, "ok"),
            ("frozen member", ["--card", "04A1B2C3D4E5F7"], False, "frozen"),
            ("suspended (overdue) member", ["--card", "04A1B2C3D4E5F8"], False, "suspended"),
            ("unknown card", ["--card", "DEADBEEF01"], False, "unknown_credential"),
            (
                "off-peak member outside hours",
                ["--card", "04A1B2C3D4E5F9"],
                False,
                "outside_schedule",
            ),
            ("staff card", ["--card", "04A1B2C3D4E5FA"], True, "ok"),
            ("fresh rotating QR (member app)", ["--qr", code], True, "ok"),
            ("the same QR replayed", ["--qr", code], False, "qr_replayed"),
        ]
        table = Table("#", "badge", "decision", "reason", "member", "latency", title="decisions")
        failures = 0
        for i, (label, args, want_allow, want_reason) in enumerate(story, 1):
            res = _run(
                str(BIN / "gatectl"), "-c", str(config), "badge", *args, "--json", check=False
            )
            if res.returncode not in (0, 1):
                raise RuntimeError(f"gatectl badge failed: {res.stderr.strip()}")
            result = json.loads(res.stdout)
            ok = result["allow"] == want_allow and result["reason"] == want_reason
            failures += not ok
            verdict = "[green]ALLOW[/green]" if result["allow"] else "[red]DENY[/red]"
            table.add_row(str(i), label, verdict, result["reason"] + ("" if ok else f" [red](expected {want_reason})[/red]"),
                          result["member_id"] or "-", f"{result['latency_us']} µs")  # fmt: skip
        console.print(table)
        status = json.loads(
            _run(str(BIN / "gatectl"), "-c", str(config), "status", "--json").stdout
        )
        console.print(
            f"\nstatus: {status['members']} members cached, max version {status['max_version']}, "
            f"{status['outbox_depth']} events in the outbox, decisions {status['decisions']}"
        )
        tail = _run(str(BIN / "gatectl"), "-c", str(config), "events", "tail", "-n", "3")
        console.print("last events (gatectl events tail -n 3):\n" + tail.stdout.rstrip())
        return 1 if failures else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        console.print(f"\n[dim]gated stopped (exit {proc.returncode}); log: {log}[/dim]")
