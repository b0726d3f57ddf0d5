"""Run a real gate (``gated run``) as a subprocess on a temporary config, and drive it with
``gatectl`` exactly as a technician would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gated import control

BIN = Path(sys.executable).parent


def gated_cmd(*args: str) -> list[str]:
    return [str(BIN / "gated"), *args]


def gatectl_cmd(*args: str) -> list[str]:
    return [str(BIN / "gatectl"), *args]


def make_keys(folder: Path) -> Path:
    """credential.key, head-office.key/.pub and command.key/.pub in ``folder``."""
    if not (folder / "credential.key").exists():
        subprocess.run(
            gated_cmd("keys", "generate", "--out", str(folder), "--command-key"),
            check=True,
            capture_output=True,
        )
    return folder


def write_config(
    root: Path,
    *,
    extra: str = "",
    readers: str = '[[readers]]\nkind = "sim"\nid = "sim-1"\n',
    **top: Any,
) -> Path:
    keys = make_keys(root / "keys")
    settings = {
        "site": "downtown",
        "gate": "t1",
        "timezone": "Europe/Berlin",
        "state_dir": str(root / "state"),
        "control_socket": str(root / "state" / "control.sock"),
    }
    settings.update({k: v for k, v in top.items()})
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    if "[metrics]" not in extra:
        # Port 0: test gates run side by side and must not fight over the default 9464.
        extra += '\n[metrics]\nlisten = "127.0.0.1:0"\n'

    lines += [
        "[keys]",
        f'credential_key_file = "{keys}/credential.key"',
        f'head_office_public_key_files = ["{keys}/head-office.pub"]',
        f'command_public_key_files = ["{keys}/command.pub"]',
        extra,
        readers,
    ]
    path = root / "gated.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class GateProcess:
    config: Path
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    # Run the daemon through this command (e.g. setpriv dropping a capability).
    prefix: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.log = self.root / "gated.log"

    @property
    def socket(self) -> Path:
        return self.root / "state" / "control.sock"

    def start(self, timeout: float = 15.0) -> None:
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*self.prefix, *gated_cmd("run", "-c", str(self.config))],
                stdout=fh,
                stderr=fh,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gated exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                control.request(self.socket, "status", timeout=2)
                return
            except (control.DaemonNotRunning, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"gated not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return control.request(self.socket, cmd, args)

    def gatectl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            gatectl_cmd("-c", str(self.config), *args),
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def gated(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(gated_cmd(*args), capture_output=True, text=True, timeout=120)

    def badge(self, card: str | None = None, qr: str | None = None) -> dict[str, Any]:
        args = ["badge", "--card", card] if card else ["badge", "--qr", qr or ""]
        out = self.gatectl(*args, "--json")
        if out.returncode not in (0, 1):
            raise RuntimeError(f"gatectl badge failed ({out.returncode}): {out.stderr}")
        return dict(json.loads(out.stdout))
