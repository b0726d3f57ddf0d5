"""gatectl run by someone the control socket's permissions keep out: it must say so, and how to
get in, instead of telling them to start a daemon that is running."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

import pytest

from gated import control
from tests.gatefixture import GateProcess, gatectl_cmd, write_config
from tests.test_doctor import as_technician


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_a_refused_connect_is_access_denied_not_a_stopped_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refuse(self: socket.socket, address: object) -> None:
        raise PermissionError(code, os.strerror(code))

    monkeypatch.setattr(socket.socket, "connect", refuse)
    path = tmp_path / "control.sock"
    with pytest.raises(control.ControlAccessDenied) as info:
        control.request(path, "status")
    assert str(info.value) == f"permission denied on {path}: join group gated (or use sudo)"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_gatectl_outside_the_sockets_group_is_told_to_join_it(tmp_path: Path) -> None:
    # Root without CAP_DAC_OVERRIDE obeys the socket's owner, group and mode like a technician.
    if as_technician("true").returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here (no CAP_SETPCAP)")
    config = write_config(tmp_path)
    gate = GateProcess(config, tmp_path)
    gate.start()
    try:
        os.chown(gate.socket, 65534, 65534)  # someone else's socket, mode 0660: not ours to use
        out = as_technician(*gatectl_cmd("-c", str(config), "status"))
        assert gate.request("status")["site"] == "downtown", "the daemon runs all along"
    finally:
        gate.stop()
    message = " ".join(out.stderr.split())
    assert f"permission denied on {gate.socket}: join group gated (or use sudo)" in message
    assert "systemctl start" not in message
    assert out.returncode == 2
