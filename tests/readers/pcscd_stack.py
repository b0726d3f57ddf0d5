"""A real pcscd with vsmartcard's virtual reader on a free loopback port, for one test or bench.

Only one pcscd can run on a machine (its socket is fixed under /run/pcscd), so the stack holds a
file lock while it runs and refuses to start beside a pcscd it did not start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.services import free_port, stop_process, wait_for_port

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_NAME = "Gated Test PCD"
LOCK = Path("/tmp/gated-test-pcscd.lock")


def pcscd_binary() -> str | None:
    """The pcscd executable, or None when it is not installed."""
    return shutil.which("pcscd") or (
        "/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None
    )


def missing() -> str | None:
    """Why the stack cannot run here, or None."""
    if pcscd_binary() is None:
        return "pcscd is not installed (scripts/test installs pcscd)"
    if not VPCD_DRIVER.exists():
        return "vsmartcard-vpcd is not installed (scripts/test installs vsmartcard-vpcd)"
    try:
        import smartcard  # noqa: F401
    except ImportError:
        return "pyscard is not installed (pip install 'gated[readers]')"
    return None


@dataclass
class PcscdStack:
    conf_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def reader(self) -> str:
        """The PC/SC name of the first virtual reader."""
        return f"{READER_NAME} 00 00"

    def start(self, timeout: float = 10.0) -> None:
        exe = pcscd_binary()
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--foreground", "--config", str(self.conf_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout, self.proc)
        self._wait_for_reader(timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def _wait_for_reader(self, timeout: float) -> None:
        from smartcard import scard

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr == scard.SCARD_S_SUCCESS:
                hr, readers = scard.SCardListReaders(context, [])
                scard.SCardReleaseContext(context)
                if hr == scard.SCARD_S_SUCCESS and self.reader in readers:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"pcscd did not show {self.reader!r} within {timeout}s")


def _other_pcscd_running() -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pcscd":
                return True
    return False


@contextlib.contextmanager
def run_pcscd(workdir: Path) -> Iterator[PcscdStack]:
    """Start pcscd with one vpcd reader on a free port; stop it afterwards, whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run on this machine waits its turn
        if _other_pcscd_running():
            raise RuntimeError("a pcscd is already running on this machine; stop it first")
        port = free_port()
        conf = workdir / "reader.conf.d"
        conf.mkdir(exist_ok=True)
        (conf / "vpcd").write_text(
            f'FRIENDLYNAME "{READER_NAME}"\nDEVICENAME /dev/null:{port:#x}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID {port:#x}\n"
        )
        stack = PcscdStack(conf, port)
        try:
            stack.start()  # a pcscd that never showed its reader is stopped too
            yield stack
        finally:
            stack.stop()
