"""``gated demo``: the whole gate on one machine, driven the way a technician would drive it.

It makes keys and a config in a scratch folder, imports a sample member list with
``gated members import``, starts ``gated run`` with mock GPIO and the simulated reader, plays a
scripted set of badges through ``gatectl badge`` and prints each decision, reason and latency,
then stops the daemon. The billing story follows: head office, broker and a gate on this
machine, ending with where to sign in to the member app and the staff console.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gated.contract import mint_qr_code
from gated.control import ControlError, DaemonNotRunning, request
from gated.demo_mail import Mail, MailSink

BIN = Path(sys.executable).parent
console = Console()

SITE = "downtown"
GATE = "demo-turnstile"
SITE_TZ = "Europe/Berlin"
GATE_ENV = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def _start(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A long-running part of the demo, its output in ``log``; :func:`_stop` ends it."""
    with log.open("wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=fh, env=env)


def _stop(name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM and wait (each part stops cleanly on it); SIGKILL if it does not within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    console.print(f"[dim]{name} stopped (exit {proc.returncode}); log: {log}[/dim]")


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


def write_demo_config(root: Path, head_office: str = "") -> Path:
    """The demo gate's gated.toml; ``head_office`` adds the TOML sections that connect it
    (``[mqtt]``, ``[head_office]``), else it decides from imported members alone."""
    config = root / "gated.toml"
    config.write_text(
        f"""# written by gated demo
site = "{SITE}"
gate = "{GATE}"
timezone = "{SITE_TZ}"
state_dir = "{root / "state"}"
control_socket = "{root / "state" / "control.sock"}"

[keys]
credential_key_file = "{root / "keys" / "credential.key"}"
head_office_public_key_files = ["{root / "keys" / "head-office.pub"}"]
{head_office}
[policy]
qr_window_s = 30

[door]
pin_factory = "mock"
pulse_ms = 500

[metrics]
listen = "127.0.0.1:0"  # an ephemeral port: never clash with a gate already on this machine

[[readers]]
kind = "sim"
id = "front-desk"
"""
    )
    return config


def wait_ready(
    socket_path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gated exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            request(socket_path, "status", timeout=2)
            return
        except (DaemonNotRunning, OSError):
            time.sleep(0.05)
    raise TimeoutError("gated did not become ready")


def run_demo(workdir: Path | None = None, *, gate_only: bool = False) -> int:
    """Play the gate's scripted badges, then (unless ``gate_only``) the billing story; returns 0
    when every decision came out as expected."""
    root = Path(workdir or tempfile.mkdtemp(prefix="gated-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    code = run_gate_demo(root / "gate")
    if gate_only:
        return code
    return max(code, run_billing_demo(root / "billing"))


def run_gate_demo(root: Path) -> int:
    """One gate from a members file, no head office: the scripted set of badges as a table."""
    from nacl.signing import SigningKey

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
    proc = _start([str(BIN / "gated"), "run", "-c", str(config)], log, GATE_ENV)
    try:
        wait_ready(root / "state" / "control.sock", proc, log)
        console.print(f"[dim]gated running (pid {proc.pid}), state in {root}[/dim]\n")
        # The app's code of the next second: a gate refuses codes minted before it started, and
        # it may have started within this one.
        now = math.ceil(time.time())
        code = mint_qr_code(bytes(app_key), "m_1001", now, secrets.token_hex(8))
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
        console.print()
        _stop("gated", proc, log)


# --- the billing story: head office, broker and gate on one machine ---------------------------

REPO = Path(__file__).resolve().parent.parent
# Kept apart from .venv (it pins its own aiohttp); scripts/bootstrap installs it.
LOCALSTRIPE_PYTHON = REPO / ".venv-localstripe" / "bin" / "python"
# localstripe's own entry point binds every interface and pickles its state into /tmp after each
# write; this one keeps it on loopback and in memory.
_LOCALSTRIPE_MAIN = (
    "import sys; from aiohttp import web; from localstripe.resources import store; "
    "from localstripe.server import app; store.dump_to_disk = lambda: None; "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)"
)
ANN_CARD = "04C0FFEE000001"
BEN_CARD = "04C0FFEE000002"
PAID_AGAIN_TARGET_S = 2.0
# (a card that pays, one that declines) per gateway. localstripe's decline carries no
# decline_code, so billing treats it as soft and retries, like the simulated insufficient_funds.
PAYMENT_METHODS = {
    "stripe": ("pm_card_visa", "pm_card_chargeCustomerFail"),
    "simulated": ("pm_sim_ok", "pm_sim_decline_insufficient_funds"),
}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now for TCP and UDP on every interface, from below the kernel's ephemeral
    range. A port inside that range can be taken at any moment by an outgoing connection, and a
    client polling it before the service listens can even connect to itself (TCP simultaneous
    open): the service then fails to bind, and the poll said it was up."""
    top = _ephemeral_low()
    for _ in range(500):
        port = random.randrange(max(1024, top - 12000), top)
        try:
            with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
                tcp.bind(("0.0.0.0", port))
                udp.bind(("0.0.0.0", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port below {top}")


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "service",
) -> None:
    """Wait until something other than our own poll listens on 127.0.0.1:``port``; raise if
    ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            if s.getsockname() != s.getpeername():  # not connected to itself
                return
        time.sleep(0.02)
    raise TimeoutError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")


def mosquitto_config(root: Path, port: int) -> Path:
    """A site broker as shipped, on loopback only. ``max_queued_messages 0``: the default
    silently drops retained messages past 1,000 for a new subscriber (TESTSTACK.md)."""
    conf = root / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {root}/",
        "max_queued_messages 0",
        f"log_dest file {root}/mosquitto.log",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to `mosquitto`, who cannot write our temp dir
    conf.write_text("\n".join(lines) + "\n")
    return conf


def localstripe_python() -> Path | None:
    """The python that can serve localstripe, or None (then the simulated gateway is used)."""
    probe = [str(LOCALSTRIPE_PYTHON), "-c", "import localstripe.server"]
    if LOCALSTRIPE_PYTHON.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return LOCALSTRIPE_PYTHON
    return None


def billing_config(
    root: Path, mqtt_port: int, http_port: int, stripe_port: int | None, smtp_port: int
) -> Path:
    """The demo's billing.toml: everything on 127.0.0.1, notices delivered to the demo's mail
    sink (:mod:`gated.demo_mail`), links in them pointing at this run's port."""
    keys = root / "keys"
    text = f"""# written by gated demo
database_url = "sqlite:///{root / "billing.db"}"
state_dir = "{root / "billing-state"}"
sites = ["{SITE}"]
gateway = "{"stripe" if stripe_port else "simulated"}"
cycle_interval_s = 0.3  # the demo's month passes in seconds

[keys]
head_office_private_key_file = "{keys / "head-office.key"}"
credential_key_file = "{keys / "credential.key"}"
card_encryption_key_file = "{keys / "cards.key"}"
desk_command_private_key_file = "{keys / "desk.pem"}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "billing-demo"

[http]
host = "127.0.0.1"
port = {http_port}
public_url = "http://127.0.0.1:{http_port}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
sender = "front-desk@gym.example"
"""
    if stripe_port:
        (root / "stripe.key").write_text("sk_test_demo\n")  # localstripe takes any test key
        text += f"""
[stripe]
api_key_file = "{root / "stripe.key"}"
api_base = "http://127.0.0.1:{stripe_port}"
off_session = false  # localstripe rejects off-session confirmation parameters
max_requests_per_s = 100
"""
    path = root / "billing.toml"
    path.write_text(text)
    return path


def head_office_sections(root: Path, mqtt_port: int, http_port: int) -> str:
    """What connects the demo gate to head office: the broker, and the snapshot for its cold
    start (then MQTT); the staff console's desk key (let in once, lockdown)."""
    return f"""desk_command_public_key_files = ["{root / "keys" / "desk.pub"}"]

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
heartbeat_s = 1

[head_office]
snapshot_url = "http://127.0.0.1:{http_port}/v1/sites/{SITE}/snapshot"
token_file = "{root / "gate-token"}"
"""


class Timeline:
    """The story as it happens: seconds since the start, who acted, what came out."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.failures = 0

    def line(self, actor: str, text: str) -> None:
        at = time.monotonic() - self.t0
        console.print(f"[dim]{at:6.1f}s[/dim]  {actor:<8} {text}", soft_wrap=True)

    def badge(self, label: str, result: dict[str, Any], allow: bool, reason: str) -> None:
        ok = result["allow"] == allow and result["reason"] == reason
        self.failures += not ok
        verdict = "[green]ALLOW[/green]" if result["allow"] else "[red]DENY [/red]"
        miss = "" if ok else f"  [red](expected {reason})[/red]"
        self.line(
            "gate",
            f"{label:<40} {verdict}  {result['reason']:<10} "
            f"{result.get('member_id') or '-':<3} {result['latency_us']:>6} µs{miss}",
        )


class BillingStory:
    """Drives the parts the way an operator would: the real CLIs against the running processes."""

    def __init__(self, root: Path, billing_toml: Path, timeline: Timeline) -> None:
        self.billing_toml = billing_toml
        self.socket = root / "state" / "control.sock"
        self.timeline = timeline

    def billing(self, *args: str, note: str = "", shown: str | None = None) -> str:
        """Run ``gated-billing ARGS -c billing.toml``; shows the command (``shown`` when it
        carries a card UID, which never goes to the screen)."""
        res = _run(str(BIN / "gated-billing"), *args, "-c", str(self.billing_toml), check=False)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"gated-billing {' '.join(args[:2])} failed: {last}")
        self._shown(shown or " ".join(args), note)
        return res.stdout.strip()

    def _shown(self, command: str, note: str) -> None:
        self.timeline.line("billing", f"{'$ gated-billing ' + command:<46} [dim]# {note}[/dim]")

    def badge(self, card: str) -> dict[str, Any]:
        return request(self.socket, "badge", {"card": card})

    def gate_status(self, member_id: str) -> str | None:
        found = request(self.socket, "cache_lookup", {"member": member_id})
        return str(found["member"].get("status")) if found["found"] else None

    def wait_gate(self, member_id: str, status: str, timeout: float = 15) -> None:
        """Until the gate's cache holds the member's new status (published by billing over
        MQTT); the story goes on either way and the badge after it shows what the gate knows."""
        deadline = time.monotonic() + timeout
        seen = self.gate_status(member_id)
        while seen != status and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = self.gate_status(member_id)
        self.timeline.line("gate", f"[dim]cache: {member_id} is {seen}[/dim]")

    def pay(self, member_id: str, card: str, note: str) -> tuple[dict[str, Any], dict[str, float]]:
        """``gated-billing pay`` while the member badges every 20 ms: the first allowed result,
        and the seconds to it from the payment being recorded (the command prints its line right
        after the commit, then still has to exit), from the command's start and from its return
        (0 when the door already opened before it returned)."""
        args = [str(BIN / "gated-billing"), "pay", member_id, "-c", str(self.billing_toml)]
        started = time.monotonic()
        with subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            proc.stdout.readline()
            recorded = time.monotonic()
            result = self.badge(card)
            while not result["allow"] and time.monotonic() - recorded < 10:
                time.sleep(0.02)
                result = self.badge(card)
            allowed = time.monotonic()
            _, err = proc.communicate(timeout=60)
        returned = time.monotonic()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"gated-billing pay failed: {last}")
        self._shown(f"pay {member_id}", note)
        return result, {
            "recorded": allowed - recorded,
            "started": allowed - started,
            "returned": max(0.0, allowed - returned),
        }


def _enrol(story: BillingStory, root: Path, card_that_pays: str) -> None:
    """Head office's side of the setup, command by command as docs/billing.md shows it."""
    _run(str(BIN / "gated"), "keys", "generate", "--out", str(root / "keys"), "--force")
    story.billing("keys", "init", note="card encryption key (gated keys generate made the rest)")
    story.billing("plans", "add", "monthly", "--name", "Monthly", "--price", "4990",
                  "--tax-rate-bp", "1900", note="49.90 EUR a month")  # fmt: skip
    token = story.billing("gates", "add", SITE, GATE, note="the gate's snapshot token")
    (root / "gate-token").touch(mode=0o600)
    (root / "gate-token").write_text(token + "\n")
    for member_id, name, card in (("m1", "Ann", ANN_CARD), ("m2", "Ben", BEN_CARD)):
        story.billing("members", "add", member_id, "--name", name, "--plan", "monthly",
                      "--email", f"{name.lower()}{EMAIL_DOMAIN}", "--card", card_that_pays,
                      note="first month charged")  # fmt: skip
        story.billing("cards", "assign", member_id, card,
                      shown=f"cards assign {member_id} <UID>", note=f"{name}'s key fob")  # fmt: skip


def _play(story: BillingStory, gateway: str) -> dict[str, float]:
    """The story itself; returns the payment's timings (:meth:`BillingStory.pay`)."""
    tl, billing = story.timeline, story.billing
    bad_card = PAYMENT_METHODS[gateway][1]
    story.wait_gate("m1", "active")
    story.wait_gate("m2", "active")
    tl.badge("m1 Ann badges in", story.badge(ANN_CARD), True, "ok")

    billing("members", "set-card", "m1", bad_card, note="Ann's card starts declining")
    billing("clock", "advance", "31d", note="renewal due: the charge fails")
    story.wait_gate("m1", "grace")
    tl.badge("m1 Ann badges in (grace)", story.badge(ANN_CARD), True, "ok")

    billing("clock", "advance", "4d", note="the retry fails, past 3 days' grace")
    story.wait_gate("m1", "suspended")
    tl.badge("m1 Ann badges in (suspended)", story.badge(ANN_CARD), False, "suspended")

    result, paid = story.pay("m1", ANN_CARD, note="Ann pays at the front desk")
    tl.badge(f"m1 Ann badges in ({paid['recorded']:.2f} s after paying)", result, True, "ok")

    billing("freeze", "m2", "--months", "1", "--yes", note="Ben freezes his membership")
    story.wait_gate("m2", "frozen")
    tl.badge("m2 Ben badges in (frozen)", story.badge(BEN_CARD), False, "frozen")

    billing("clock", "advance", "31d", note="a month later the freeze ends")
    story.wait_gate("m2", "active")
    tl.badge("m2 Ben badges in (freeze over)", story.badge(BEN_CARD), True, "ok")
    return paid


DEMO_PASSWORD = "demo password 1"
EMAIL_DOMAIN = "@example.com"
ANN_EMAIL = "ann" + EMAIL_DOMAIN
SIGNIN_CODE = re.compile(r"your code to sign in is ([0-9]{6})")
APP_LINK = re.compile(r"https?://\S+/app/\S+")


def _show_mail(timeline: Timeline, mail: Mail) -> None:
    """A mail with a link into the member app (sign-in, welcome, a new address to confirm) on
    the terminal, with the sign-in code: on a demo machine that is how a member reads mail.
    Every other notice only goes to its file."""
    link = APP_LINK.search(mail.text)
    if link is None:
        return
    code = SIGNIN_CODE.search(mail.text)
    # What a mail says is text, never console markup.
    to, subject, url = escape(", ".join(mail.recipients)), escape(mail.subject), escape(link[0])
    what = f"code [bold]{code[1]}[/bold], or open {url}" if code else f"link {url}"
    timeline.line("mail", f"to {to}: {subject}: {what}")


def _console_signins(billing_toml: Path, http_port: int) -> None:
    """Staff accounts for the console, and the member app's address: an owner (password, then
    a second factor: a recovery code or the TOTP key in an authenticator app) and a front desk
    account (password only)."""
    from gated.billing_sync.config import load_billing_config
    from gated.billing_sync.context import db_clock
    from gated.billing_sync.keys import Keys
    from gated.billing_sync.service import Billing
    from gated.billing_sync.simulator import SimulatedGateway
    from gated.billing_sync.store import open_store
    from gated.billing_sync.totp import b32, code_at

    config = load_billing_config(billing_toml)
    engine = open_store(config.database_url)
    clock = db_clock(engine)
    # Staff accounts never charge anybody: no gateway is called.
    gateway = SimulatedGateway(clock=clock)
    billing = Billing(engine, config, gateway, Keys.load(config.keys), clock)
    try:
        access = billing.staff_access()
        access.add("owner", "Olga Owner", "owner", [], DEMO_PASSWORD)
        access.add("desk", "Dana Desk", "front_desk", [], DEMO_PASSWORD)
        seed = access.totp_pending("owner")
        # Enrolled with the previous step's code: the current one still signs in.
        recovery = access.totp_confirm("owner", code_at(seed, billing.clock() - 30)) or []
    finally:
        billing.engine.dispose()
    url = f"http://127.0.0.1:{http_port}"
    console.print(f"staff console: [bold]{url}/desk/[/bold]")
    console.print(
        f"  owner: [bold]owner[/bold] / [bold]{DEMO_PASSWORD}[/bold], code: a recovery code "
        f"({', '.join(recovery[:3])}) or TOTP key {b32(seed)}"
    )
    console.print(f"  front desk: [bold]desk[/bold] / [bold]{DEMO_PASSWORD}[/bold]")
    console.print(f"member app: [bold]{url}/app/[/bold]")
    console.print(
        f"  sign in as [bold]{ANN_EMAIL}[/bold]: the code appears here when you ask for it"
    )


def run_billing_demo(root: Path) -> int:
    """Head office and a gate on this machine: mosquitto, ``gated-billing serve`` (the real stripe
    library against localstripe when it is installed, else the simulated gateway) and ``gated
    run``, then a member's month of dunning and a freeze, as a timeline. Every process it starts
    is stopped on the way out, also on Ctrl-C or an error."""
    root.mkdir(parents=True, exist_ok=True)
    console.print()
    console.rule("[bold]gated demo: billing, broker and gate on one machine")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        console.print("[red]mosquitto is not installed: run scripts/bootstrap[/red]")
        return 1
    stripe_python = localstripe_python()
    try:
        with contextlib.ExitStack() as stack:

            def start(name: str, args: list[str], env: dict[str, str] | None = None) -> Any:
                log = root / f"{name}.log"
                proc = _start(args, log, env)
                stack.callback(_stop, name, proc, log)
                return proc

            mqtt_port = free_port()
            broker = start("mosquitto", [mosquitto, "-c", str(mosquitto_config(root, mqtt_port))])
            wait_for_port(mqtt_port, 20, broker, "mosquitto")
            stripe_port = None
            if stripe_python is not None:
                stripe_port = free_port()
                fake = start(
                    "localstripe", [str(stripe_python), "-c", _LOCALSTRIPE_MAIN, str(stripe_port)]
                )
                wait_for_port(stripe_port, 20, fake, "localstripe")
                gateway = "stripe"
                console.print(
                    f"payments: the real stripe library against localstripe on 127.0.0.1:{stripe_port}"
                )
            else:
                gateway = "simulated"
                console.print(
                    "payments: [yellow]localstripe is not installed (scripts/bootstrap installs it "
                    "into .venv-localstripe): using the simulated gateway[/yellow]"
                )
            http_port = free_port()
            timeline = Timeline()
            # Before serve, so it is stopped after serve: every notice has somewhere to go.
            mail = stack.enter_context(
                MailSink(root / "mail", lambda sent: _show_mail(timeline, sent))
            )
            billing_toml = billing_config(root, mqtt_port, http_port, stripe_port, mail.port)
            gate_toml = write_demo_config(root, head_office_sections(root, mqtt_port, http_port))
            story = BillingStory(root, billing_toml, timeline)
            _enrol(story, root, PAYMENT_METHODS[gateway][0])
            serve = start(
                "gated-billing", [str(BIN / "gated-billing"), "serve", "-c", str(billing_toml)]
            )
            gate = start("gated", [str(BIN / "gated"), "run", "-c", str(gate_toml)], GATE_ENV)
            wait_ready(story.socket, gate, root / "gated.log")
            if serve.poll() is not None:
                raise RuntimeError(f"gated-billing serve exited with {serve.returncode}")
            story.timeline.line(
                "system",
                f"mosquitto :{mqtt_port}, gated-billing serve ({gateway} gateway), gated run "
                f"(mock GPIO), mail sink :{mail.port} (every mail in {root / 'mail'})",
            )
            paid = _play(story, gateway)
            console.print()
            _console_signins(billing_toml, http_port)
            if sys.stdin.isatty():
                # From a terminal the system keeps running for the browser; from a script or
                # a test it stops here.
                console.print("[bold]Everything keeps running: press Ctrl-C to stop.[/bold]")
                with contextlib.suppress(KeyboardInterrupt):
                    while serve.poll() is None and gate.poll() is None:
                        time.sleep(0.5)
    except (
        RuntimeError,
        TimeoutError,
        OSError,
        subprocess.SubprocessError,
        ControlError,
        DaemonNotRunning,
    ) as exc:
        # Everything started is stopped by now; one line says what failed, the logs say why.
        console.print(f"[red]billing story stopped: {exc}[/red] (logs in {root})")
        return 1
    verdict = (
        "[green]within[/green]" if paid["recorded"] < PAID_AGAIN_TARGET_S else "[red]over[/red]"
    )
    console.print(
        f"paid → let in: {paid['recorded']:.2f} s after the payment was recorded ({verdict} "
        f"{PAID_AGAIN_TARGET_S:.0f} s), {paid['returned']:.2f} s after `gated-billing pay` "
        f"returned, {paid['started']:.2f} s after it started"
    )
    failures = story.timeline.failures
    if failures:
        console.print(f"[red]billing story: {failures} unexpected decision(s)[/red]")
    else:
        console.print("[green]billing story: every decision as expected[/green]")
    return 1 if failures else 0
