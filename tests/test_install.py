"""scripts/install-pi into a throwaway root: what it writes, with which modes, and that a second
run changes nothing. Real-system actions (users, chown, udev, systemctl) are listed, not run."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gated.config import load_gate_config
from gated.contract import load_credential_key

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install-pi"
VENV = Path(sys.executable).parent.parent  # the venv running the tests already holds gated


def install(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(INSTALL), "--prefix", str(prefix), "--no-apt", "--venv", str(VENV), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every file and folder: mode, content hash, mtime (a rewrite with equal bytes shows too)."""
    found: dict[str, tuple[int, str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "venv"]  # the venv is a link to ours
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel == ".install-pi/skipped":
                continue
            if p.is_symlink():  # may point into the real root: compare where, not what
                found[rel] = (0, os.readlink(p), p.lstat().st_mtime_ns)
                continue
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            found[rel] = (mode(p), digest, p.lstat().st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pi")
    install(root)
    return root


def test_config_and_keys_have_the_right_modes(root: Path) -> None:
    etc = root / "etc/gated"
    assert mode(etc) == 0o750
    assert mode(etc / "gated.toml") == 0o640
    assert (etc / "gated.toml").read_text() == (REPO / "config/gated.toml").read_text()
    assert load_gate_config(etc / "gated.toml").state_dir == Path("/var/lib/gated")
    for secret in ("credential.key", "head-office.key"):
        assert mode(etc / secret) == 0o600, secret
    assert mode(etc / "head-office.pub") == 0o644
    assert len(load_credential_key(etc / "credential.key")) == 32


def test_system_files_are_the_shipped_ones(root: Path) -> None:
    shipped = {
        "etc/systemd/system/gated.service": "systemd/gated.service",
        "etc/udev/rules.d/60-gated-readers.rules": "config/udev/60-gated-readers.rules",
        "etc/modprobe.d/gated-nfc-blacklist.conf": "config/modprobe.d/gated-nfc-blacklist.conf",
        "etc/systemd/journald.conf.d/gated.conf": "config/journald/gated.conf",
    }
    for installed, source in shipped.items():
        assert (root / installed).read_bytes() == (REPO / source).read_bytes(), installed
        assert mode(root / installed) == 0o644
    blacklist = (root / "etc/modprobe.d/gated-nfc-blacklist.conf").read_text().split("\n")
    assert {"blacklist pn533_usb", "blacklist pn533", "blacklist nfc"} <= set(blacklist)
    # gatectl and gated on the PATH point into the venv (as seen from the real root).
    for tool in ("gated", "gatectl"):
        assert os.readlink(root / "usr/local/bin" / tool) == f"/opt/gated/venv/bin/{tool}"
    # The unit starts what the installer put in place.
    assert (root / "opt/gated/venv/bin/gated").exists()
    assert (
        "ExecStart=/opt/gated/venv/bin/gated run -c /etc/gated/gated.toml"
        in (root / "etc/systemd/system/gated.service").read_text()
    )


def test_real_system_actions_are_listed_under_a_prefix(root: Path) -> None:
    skipped = (root / ".install-pi/skipped").read_text().splitlines()
    assert any(line.startswith("useradd --system --gid gated") for line in skipped)
    assert "usermod --append --groups gpio,dialout,input,plugdev gated" in skipped
    assert f"chown gated:gated {root}/etc/gated/credential.key" in skipped
    assert f"chown root:gated {root}/etc/gated/gated.toml" in skipped
    assert "systemctl enable gated.service" in skipped


def test_second_run_changes_nothing_and_keeps_local_edits(tmp_path: Path) -> None:
    install(tmp_path)
    config = tmp_path / "etc/gated/gated.toml"
    config.write_text(config.read_text().replace('gate = "turnstile-1"', 'gate = "turnstile-7"'))
    config.chmod(0o644)  # someone loosened it by hand: the installer tightens it again
    first = snapshot(tmp_path)
    out = install(tmp_path)
    assert "nothing to change" in out.stdout
    assert mode(config) == 0o640
    second = snapshot(tmp_path)
    _, digest, mtime = first["etc/gated/gated.toml"]
    assert second == {**first, "etc/gated/gated.toml": (0o640, digest, mtime)}
    assert 'gate = "turnstile-7"' in config.read_text()


def test_keys_from_head_office_are_used_and_no_private_key_lands(tmp_path: Path) -> None:
    head_office = tmp_path / "ho"
    subprocess.run(
        [str(VENV / "bin/gated"), "keys", "generate", "--out", str(head_office)],
        check=True,
        capture_output=True,
    )
    root = tmp_path / "root"
    install(root, "--keys-from", str(head_office))
    etc = root / "etc/gated"
    assert (etc / "credential.key").read_bytes() == (head_office / "credential.key").read_bytes()
    assert mode(etc / "credential.key") == 0o600
    assert (etc / "head-office.pub").read_bytes() == (head_office / "head-office.pub").read_bytes()
    assert not (etc / "head-office.key").exists()


def test_unknown_option_is_refused() -> None:
    out = subprocess.run([str(INSTALL), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --frobnicate" in out.stderr
