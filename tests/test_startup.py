"""What stops a gate from starting: a real ``gated run`` refuses with one line per problem and exit
code 2, and ``gated config check`` on the same file prints the very same lines without starting
anything. Missing libraries are made missing for the child alone, by a module on its path that
refuses to import, so the tests mean the same on a Pi that has them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gatefixture import GateProcess, gated_cmd, make_keys

REFUSE_IMPORT = 'raise ImportError("hidden from this test", name="{name}")\n'
# An lgpio that imports but finds no GPIO chip, as on a machine that is not a Pi.
LGPIO_WITHOUT_CHIP = """\
class error(Exception):
    pass
def gpiochip_open(chip):
    raise error("can not open gpiochip")
def __getattr__(name):
    return 0  # the constants gpiozero reads at import
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


def write_gate_toml(root: Path, keys: Path, body: str = "", *, credential: str = "") -> Path:
    credential = credential or str(keys / "credential.key")
    path = root / "gated.toml"
    path.write_text(
        'site = "downtown"\ngate = "t1"\n'
        f'state_dir = "{root / "state"}"\ncontrol_socket = "{root / "state" / "control.sock"}"\n'
        f'[keys]\ncredential_key_file = "{credential}"\n'
        f'head_office_public_key_files = ["{keys / "head-office.pub"}"]\n'
        '[metrics]\nlisten = ""\n' + body
    )
    return path


def child_env(root: Path, modules: dict[str, str]) -> dict[str, str]:
    """The environment for a child that sees ``modules`` (name → source) before the real ones."""
    shadow = root / "shadow"
    shadow.mkdir(exist_ok=True)
    for name, source in modules.items():
        (shadow / f"{name}.py").write_text(source)
    path = [str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), COLUMNS="50", NO_COLOR="1")


def gated(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # A gate that starts by mistake would serve for ever: the timeout turns that into a failure.
    return subprocess.run(gated_cmd(*args), capture_output=True, text=True, env=env, timeout=60)


Case = Callable[[Path, Path], tuple[Path, dict[str, str], list[str]]]


def door_library_missing(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    config = write_gate_toml(root, keys, '[door]\npin_factory = "lgpio"\n')
    env = child_env(root, {"lgpio": REFUSE_IMPORT.format(name="lgpio")})
    return config, env, ["[door] pin_factory 'lgpio' needs lgpio: install the pi extra"]


def credential_key_missing(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    config = write_gate_toml(root, keys, credential=str(root / "nowhere" / "credential.key"))
    return config, child_env(root, {}), ["credential.key: no such file (make them with"]


def credential_key_not_hex(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    bad = root / "credential.key"
    bad.write_text("not-a-key\n")
    config = write_gate_toml(root, keys, credential=str(bad))
    return config, child_env(root, {}), ["credential_key_file", "must be 64 hex digits"]


def public_key_not_pem(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    # With [mqtt] the head-office keys are used: a credential key where a PEM key belongs.
    config = write_gate_toml(root, keys, '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    config.write_text(config.read_text().replace("head-office.pub", "credential.key"))
    return config, child_env(root, {}), ["head_office_public_key_files", "credential.key"]


def broker_port_out_of_range(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    config = write_gate_toml(root, keys, '[mqtt]\nurl = "mqtt://127.0.0.1:99999"\n')
    return config, child_env(root, {}), ["mqtt.url: port 99999 is not a TCP port"]


def broker_not_mqtt(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    config = write_gate_toml(root, keys, '[mqtt]\nurl = "https://broker.example"\n')
    return config, child_env(root, {}), ["mqtt.url: must look like mqtt://HOST:PORT"]


def broker_ca_missing(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    body = f'[mqtt]\nurl = "mqtts://127.0.0.1:8883"\nca_file = "{root / "ca.pem"}"\n'
    config = write_gate_toml(root, keys, body)
    return config, child_env(root, {}), ["[mqtt] ca_file", "ca.pem: no such file"]


def reader_library_missing(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    body = '[[readers]]\nkind = "hid_qr"\nid = "scanner"\ndevice = "/dev/input/event9"\n'
    config = write_gate_toml(root, keys, body)
    env = child_env(root, {"evdev": REFUSE_IMPORT.format(name="evdev")})
    return config, env, ["readers.scanner (hid_qr): the evdev library is not installed"]


def three_problems(root: Path, keys: Path) -> tuple[Path, dict[str, str], list[str]]:
    body = (
        '[door]\npin_factory = "lgpio"\n'
        '[[readers]]\nkind = "pcsc"\nid = "desk"\n'
        '[[readers]]\nkind = "nfc"\nid = "tag"\n'
    )
    config = write_gate_toml(root, keys, body, credential=str(root / "credential.key"))
    refuse = {n: REFUSE_IMPORT.format(name=n) for n in ("lgpio", "smartcard", "nfc")}
    return (
        config,
        child_env(root, refuse),
        ["credential_key_file", "pin_factory 'lgpio'", "readers.desk (pcsc)", "readers.tag (nfc)"],
    )


CASES: list[Case] = [
    door_library_missing,
    credential_key_missing,
    credential_key_not_hex,
    public_key_not_pem,
    broker_port_out_of_range,
    broker_not_mqtt,
    broker_ca_missing,
    reader_library_missing,
    three_problems,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_gated_run_and_config_check_refuse_alike(tmp_path: Path, keys: Path, case: Case) -> None:
    config, env, expected = case(tmp_path, keys)
    run = gated(env, "run", "-c", str(config))
    check = gated(env, "config", "check", str(config))
    for result in (run, check):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    lines = run.stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines), run.stderr
    # One line per problem, every problem named, and the check finds exactly what run refuses.
    assert len(lines) == (len(expected) if case is three_problems else 1), run.stderr
    for part in expected:
        assert part in run.stderr, (part, run.stderr)
    assert check.stderr == run.stderr
    assert not (tmp_path / "state" / "control.sock").exists()


def test_a_gpio_chip_that_cannot_be_opened_is_one_line(tmp_path: Path, keys: Path) -> None:
    """The door is opened inside the running gate: a DoorError there is one line and exit 2 too.
    Without opening the GPIO (the daemon may hold it) the check cannot know, and says ok."""
    config = write_gate_toml(tmp_path, keys, '[door]\npin_factory = "lgpio"\n')
    env = child_env(tmp_path, {"lgpio": LGPIO_WITHOUT_CHIP})
    run = gated(env, "run", "-c", str(config))
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if not line.startswith("level=")]
    assert len(errors) == 1 and errors[0].startswith("error: [door] pin_factory 'lgpio'"), (
        run.stderr
    )
    assert "Traceback" not in run.stderr
    assert gated(env, "config", "check", str(config)).returncode == 0


def test_a_reader_whose_device_is_missing_starts_and_is_reported(
    tmp_path: Path, keys: Path
) -> None:
    """An unplugged reader is not a start-up failure: the gate starts (its other readers and the
    fire input work), retries the device, and `gatectl readers` names it absent (exit 1)."""
    shutil.copytree(keys, tmp_path / "keys")
    body = '[[readers]]\nkind = "serial_qr"\nid = "qr-1"\nport = "/dev/ttyGATEDNONE"\n'
    config = write_gate_toml(tmp_path, tmp_path / "keys", body)
    check = gated(child_env(tmp_path, {}), "config", "check", str(config))
    assert check.returncode == 0, check.stderr
    gate = GateProcess(config, tmp_path)
    gate.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # the reader's first attempt at its device runs in its own thread
            readers = gate.gatectl("readers", "--json")
            (reader,) = json.loads(readers.stdout)["readers"]
            if reader["state"] != "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reader["state"] == "absent" and "/dev/ttyGATEDNONE" in reader["detail"], reader
        assert readers.returncode == 1, readers.stderr
    finally:
        assert gate.stop() == 0


def test_a_running_gate_has_not_loaded_pydantic(tmp_path: Path, keys: Path) -> None:
    """``gated run`` parses its options and checks gated.toml without pydantic, and reads its
    public key files without cryptography: together ~19 MB of a gate's RSS (BENCHMARKS.md).
    ``--config=FILE`` and ``--log-level`` take the same path, and ``run --help`` is typer's."""
    shutil.copytree(keys, tmp_path / "keys")
    # [mqtt] (a broker that is not there): the sync loads the head office's public key.
    config = write_gate_toml(tmp_path, tmp_path / "keys", '[mqtt]\nurl = "mqtt://127.0.0.1:9"\n')
    gate = GateProcess(config, tmp_path)
    gate.start()
    try:
        assert gate.proc is not None
        maps = Path(f"/proc/{gate.proc.pid}/maps").read_text()
        assert "_sqlite3" in maps  # the process the gate runs in: its libraries are listed
        assert "pydantic" not in maps and "cryptography" not in maps
    finally:
        assert gate.stop() == 0
    env = child_env(tmp_path, {"pydantic": REFUSE_IMPORT.format(name="pydantic")})
    bad = write_gate_toml(tmp_path, tmp_path / "keys", "[door]\npulse_ms = 0\n")
    run = gated(env, "run", f"--config={bad}", "--log-level", "DEBUG")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == f"error: {bad}: door.pulse_ms: Input should be greater than 0"
    usage = gated(dict(os.environ, COLUMNS="80"), "run", "--help")
    assert usage.returncode == 0 and "--config" in usage.stdout, usage.stderr
