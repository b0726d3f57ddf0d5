"""Real services for tests: each starts on an ephemeral loopback port and stops with the test."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gated.demo import free_port, wait_for_port


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = 5.0, sig: int = signal.SIGTERM
) -> None:
    """``sig`` (SIGTERM), then SIGKILL if it has not exited within ``timeout``; nothing if
    already gone."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Mosquitto:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    extra_config: str = ""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        """(Re)start on the same port with the same persistence directory."""
        self.proc = _spawn_mosquitto(self.workdir, self.port, self.extra_config)


def _spawn_mosquitto(workdir: Path, port: int, extra: str) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    # max_queued_messages 0: the default silently drops retained messages past 1,000 for a new
    # subscriber. Persistence keeps sessions across a restart, as a site broker does.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {workdir}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        f"log_dest file {workdir}/mosquitto.log\nuser root\n{extra}"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, proc=proc)
    return proc


@contextlib.contextmanager
def run_mosquitto(workdir: Path, extra_config: str = "") -> Iterator[Mosquitto]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        raise RuntimeError("mosquitto is not installed (scripts/test installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    broker = Mosquitto(port, workdir, _spawn_mosquitto(workdir, port, extra_config), extra_config)
    try:
        yield broker
    finally:
        broker.stop()


# --- localstripe (a fake Stripe for the real stripe library) ------------------------------------

LOCALSTRIPE_VERSION = "1.15.10"
LOCALSTRIPE_VENV = Path(__file__).resolve().parent.parent / ".venv-localstripe"
# localstripe's own entry point binds every interface; this one keeps it on loopback.
_LOCALSTRIPE_MAIN = (
    "import sys; from aiohttp import web; from localstripe.server import app; "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)"
)


def ensure_localstripe() -> Path | None:
    """The python of a venv holding localstripe (kept apart: it pins its own aiohttp), created
    on first use; None when it cannot be installed (no registry access)."""
    python = LOCALSTRIPE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import localstripe.server"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    try:
        subprocess.run(
            ["python3", "-m", "venv", str(LOCALSTRIPE_VENV)], check=True, capture_output=True
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"localstripe=={LOCALSTRIPE_VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return python if subprocess.run(probe, capture_output=True).returncode == 0 else None


@dataclass
class LocalStripe:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_localstripe(python: Path) -> Iterator[LocalStripe]:
    """localstripe from scratch (state in memory only) on an ephemeral loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(python), "-c", _LOCALSTRIPE_MAIN, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=20, proc=proc)
        yield LocalStripe(port, proc)
    finally:
        stop_process(proc)


# --- PostgreSQL (a throwaway cluster for the billing store) -------------------------------------


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(versions[-1]).parent if versions else None


@dataclass
class Postgres:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database`` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create an empty database (a copy of the database ``template``, which no session may
        be connected to) and return its SQLAlchemy URL."""
        import psycopg

        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')  # type: ignore[arg-type]
        return self.url(name)


def _wait_until_accepting(port: int, timeout: float = 20.0) -> None:
    """PostgreSQL listens before it accepts sessions ("the database system is starting up"):
    wait until a session opens."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres").close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@contextlib.contextmanager
def run_postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster in a temporary folder, listening on an ephemeral port on
    127.0.0.1 (and a Unix socket in that folder), trust authentication, durability off (it is
    thrown away). PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/bootstrap installs it)")
    as_user: dict[str, object] = {}
    workdir = Path(tempfile.mkdtemp(prefix="gated-pg-"))
    if os.geteuid() == 0:
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        shutil.chown(workdir, "postgres", "postgres")
    data = workdir / "data"
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[call-overload]
        )
        port = free_port()
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={workdir}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_user,  # type: ignore[call-overload]
        )
        try:
            wait_for_port(port, timeout=20, proc=proc)
            _wait_until_accepting(port)
            yield Postgres(port, workdir, proc)
        finally:
            # SIGINT is PostgreSQL's fast shutdown: it ends open sessions instead of waiting.
            stop_process(proc, sig=signal.SIGINT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
