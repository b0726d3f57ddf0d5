"""Command-line entry points: ``gated`` (run a gate, manage its files) and ``gatectl`` (talk to a
running gate over its control socket). Errors print one line and exit codes mean what
:mod:`gated.edge` says; ``--json`` prints one document."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gated.config import ConfigError, GateConfig, load_gate_config
from gated.contract import ContractError
from gated.edge import (
    EXIT_NO,
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    LazyConsole,
    RefusalsAsOneLine,
    err_console,
    error_line,
    fail,
    setup_logging,
)
from gated.errors import GatedError

if TYPE_CHECKING:
    from rich.table import Table

console = LazyConsole()


def escape(text: str) -> str:
    """rich's markup escape, imported when a command prints (the daemon never does)."""
    from rich.markup import escape as markup_escape

    return markup_escape(text)


def new_table(*columns: str, **options: Any) -> Table:
    """A rich Table, imported when a command prints one."""
    from rich.table import Table

    return Table(*columns, **options)


class _GatedApp(typer.Typer):
    """``gated``, with ``gated run`` parsed here rather than by typer: typer coerces every
    parameter through pydantic, which cost a running gate ~9 MB of RSS and ~0.1 s of CPU before
    READY=1 (BENCHMARKS.md). Every other command, and ``run`` with anything but its two options
    (``--help``, a typo), goes through typer as before."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = list(args[0] if args else kwargs.get("args") or sys.argv[1:])
        options = _run_options(argv)
        if options is None:
            return super().__call__(*args, **kwargs)
        try:
            try:
                run(**options)
            except GatedError as exc:  # as RefusalsAsOneLine does for typer's commands
                fail(str(exc))
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        return None


def _run_options(argv: list[str]) -> dict[str, Any] | None:
    """``run [-c|--config FILE] [--log-level LEVEL]`` as run()'s arguments, else None."""
    if not argv or argv[0] != "run":
        return None
    options: dict[str, Any] = {"config": Path("/etc/gated/gated.toml"), "log_level": None}
    names = {"-c": "config", "--config": "config", "--log-level": "log_level"}
    rest = argv[1:]
    while rest:
        flag, _, value = rest.pop(0).partition("=")
        if flag not in names or (not value and not rest) or (flag == "-c" and value):
            return None
        value = value or rest.pop(0)
        options[names[flag]] = Path(value) if names[flag] == "config" else value
    return options


gated_app = _GatedApp(
    cls=RefusalsAsOneLine,
    name="gated",
    help="The gated turnstile daemon and its offline tools (config, keys, members).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate configuration files.", no_args_is_help=True)
keys_app = typer.Typer(help="Make the credential key and Ed25519 key pairs.", no_args_is_help=True)
members_app = typer.Typer(
    help="Load members into a gate's cache or publish them as head office.", no_args_is_help=True
)
gated_app.add_typer(config_app, name="config")
gated_app.add_typer(keys_app, name="keys")
gated_app.add_typer(members_app, name="members")
command_app = typer.Typer(help="Sign remote commands for gates.", no_args_is_help=True)
gated_app.add_typer(command_app, name="command")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to gated.toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def refuse_on(problems: list[str]) -> None:
    """Print one ``error:`` line per problem and exit 2 if there is any."""
    for problem in problems:
        error_line(problem)
    if problems:
        raise typer.Exit(EXIT_REFUSED)


# --- gated -----------------------------------------------------------------------------------


@gated_app.callback()
def gated_main() -> None:
    """The gated turnstile daemon and its offline tools (config, keys, members)."""
    setup_logging()


@gated_app.command()
def run(
    config: ConfigOpt = Path("/etc/gated/gated.toml"),
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: $GATED_LOG_LEVEL, else INFO)."),
    ] = None,
) -> None:
    """Run the gate: readers → policy → door, the cache, the control socket (and MQTT sync).

    Whatever stops it from starting (the config, a key file, the broker's files, the door's pin
    factory, a reader's driver) is one line each and exit code 2, before anything is opened.
    """
    cfg = load_gate_config(config)
    setup_logging(log_level, default="INFO")
    from gated.preflight import startup_problems

    refuse_on(startup_problems(cfg))
    from gated.daemon import Gate

    # A GatedError (the door's GPIO, a reader's pins, ...) becomes one line in RefusalsAsOneLine;
    # the system's own refusals (a state_dir it cannot write, a socket path it cannot bind) here.
    try:
        gate = Gate(cfg)
        asyncio.run(gate.run())
    except (OSError, sqlite3.Error) as exc:
        fail(f"gated run: {exc}")


@gated_app.command()
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the demo's keys, config and cache (default: a new temp folder)."
        ),
    ] = None,
    gate_only: Annotated[
        bool, typer.Option(help="Only the gate's scripted badges, without billing and broker.")
    ] = False,
) -> None:
    """Run the whole system on this machine (mock GPIO, a simulated reader, a local broker and
    billing) and play a scripted story: the gate's badges, then a member's month of dunning."""
    from gated.demo import run_demo

    raise typer.Exit(run_demo(workdir, gate_only=gate_only))


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The gated.toml to validate.")]) -> None:
    """Check a gated.toml finds everything `gated run` needs, without starting anything.

    The file itself (one line naming the field), then what `gated run` would refuse to start on:
    key files that are missing, unreadable or not keys, the broker's and head office's files,
    the door's pin factory library, each reader's driver library. One line per problem, exit 2.
    """
    from gated.preflight import startup_problems

    cfg = load_gate_config(file)
    refuse_on(startup_problems(cfg))
    readers = ", ".join(f"{r.id} ({r.kind}, {r.direction})" for r in cfg.readers)
    console.print(
        f"[green]ok[/green] {escape(str(file))}: site {cfg.site}, gate {cfg.gate}, "
        f"readers: {readers}",
        highlight=False,
    )


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key files.")] = Path(
        "/etc/gated"
    ),
    command_key: Annotated[
        bool,
        typer.Option(
            "--command-key",
            help="Also make command.key/command.pub (keep command.key off the billing host).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite existing keys (cards enrolled under the old credential key stop working).",
        ),
    ] = False,
) -> None:
    """Make credential.key (HMAC, 64 hex digits) and head-office.key/.pub (Ed25519 PEM).

    Private files are written mode 0600; refuses to overwrite unless --force.
    """
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gated.contract import key_id, private_key_pem, public_key_pem, public_key_raw

    out.mkdir(parents=True, exist_ok=True)
    pairs = ["head-office"] + (["command"] if command_key else [])
    targets = [out / "credential.key"] + [
        out / f"{n}.{ext}" for n in pairs for ext in ("key", "pub")
    ]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        fail(f"refusing to overwrite {', '.join(existing)} (use --force)")

    def write(path: Path, data: bytes, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, mode)

    write(out / "credential.key", (secrets.token_hex(32) + "\n").encode(), 0o600)
    console.print(f"wrote {out / 'credential.key'} (mode 0600)")
    for name in pairs:
        key = Ed25519PrivateKey.generate()
        write(out / f"{name}.key", private_key_pem(key), 0o600)
        write(out / f"{name}.pub", public_key_pem(key.public_key()), 0o644)
        console.print(
            f"wrote {out / name}.key (0600) and {name}.pub, kid {key_id(public_key_raw(key.public_key()))}"
        )


def save_current_image(cfg: GateConfig, credential_key: bytes) -> bool:
    """Save the index image of the cache as it is now, so the next start reads the image
    instead of the rows; False if it could not be written (the start then rebuilds)."""
    from gated.cache.image import IMAGE_NAME, image_tag, save_image
    from gated.cache.store import CacheStore

    store = CacheStore(cfg.cache_path, cfg.durability)
    try:
        index = store.load_index()
        image = cfg.cache_path.with_name(IMAGE_NAME)
        return save_image(index, image, store.generation()[0], image_tag(cfg.site, credential_key))
    except OSError as exc:  # a full disk: the import stands, the next start rebuilds
        logging.getLogger("gated.cache").warning(
            "event=index_image_save_failed path=%s error=%s", cfg.state_dir, exc
        )
        return False
    finally:
        store.close()


@members_app.command("import")
def members_import(
    file: Annotated[
        Path, typer.Argument(help="Members as a JSON list or CSV (raw card UIDs in 'cards').")
    ],
    config: ConfigOpt = Path("/etc/gated/gated.toml"),
    json_out: JsonOpt = False,
) -> None:
    """Load a members file straight into this gate's cache (a site with no head office).

    Card UIDs are hashed with the credential key as they are read and never stored. Versions are
    assigned above the cache's highest. Nothing is applied if any row is bad. A running daemon
    picks the new members up at once.
    """
    from gated.cache.store import CacheStore
    from gated.contract import load_credential_key
    from gated.members import read_members_file

    cfg = load_gate_config(config)
    try:
        key = load_credential_key(cfg.keys.credential_key_file)
    except (OSError, ContractError) as exc:
        fail(f"credential key: {exc}")
    store = CacheStore(cfg.cache_path, cfg.durability)
    try:
        states = read_members_file(
            file, key, default_site=cfg.site, first_version=store.max_version() + 1
        )
        applied = store.apply_states(states)
    finally:
        store.close()
    refreshed = None
    from gated import control

    try:
        refreshed = control.request(cfg.control_socket, "cache_refresh")
    except (control.DaemonNotRunning, control.ControlAccessDenied, control.ControlError, OSError):
        refreshed = None
    # A running daemon saves its own image; without one, the next start would rebuild the index
    # from the rows (~5 s of CPU at 1,000,000 members): the import does it now instead.
    image_saved = refreshed is None and bool(applied) and save_current_image(cfg, key)
    result = {
        "file": str(file),
        "read": len(states),
        "applied": len(applied),
        "daemon_refreshed": refreshed is not None,
        "index_image_saved": image_saved,
    }
    if json_out:
        print(json.dumps(result))
    else:
        console.print(
            f"imported {len(applied)} of {len(states)} members from {file}"
            + (" (the running gate has them now)" if refreshed else ""),
            highlight=False,
        )


def _broker_options(
    cfg: GateConfig | None, url: str | None, username: str | None, password_file: Path | None
) -> Any:
    """Broker settings from the options, falling back on the config's [mqtt]."""
    from gated.push import Broker

    mqtt = cfg.mqtt if cfg is not None else None
    url = url or (mqtt.url if mqtt else None)
    if url is None:
        return None
    password_file = password_file or (mqtt.password_file if mqtt else None)
    try:
        password = password_file.read_text().strip() if password_file else None
    except OSError as exc:
        fail(f"password file: {exc}")
    return Broker(
        url,
        username=username or (mqtt.username if mqtt else None),
        password=password,
        ca_file=mqtt.ca_file if mqtt else None,
    )


UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Broker URL (default: the config's mqtt url).")
]
UserOpt = Annotated[str | None, typer.Option("--username", help="Broker user name.")]
PasswordOpt = Annotated[Path | None, typer.Option("--password-file", help="Broker password file.")]


@members_app.command("push")
def members_push(
    file: Annotated[
        Path, typer.Argument(help="The site's members as a JSON list or CSV (raw UIDs in 'cards').")
    ],
    key: Annotated[Path, typer.Option("--key", help="The head-office private key (PEM).")] = Path(
        "/etc/gated/head-office.key"
    ),
    snapshot: Annotated[
        Path | None, typer.Option("--snapshot", help="Write a signed snapshot file instead.")
    ] = None,
    config: ConfigOpt = Path("/etc/gated/gated.toml"),
    url: UrlOpt = None,
    username: UserOpt = None,
    password_file: PasswordOpt = None,
    version_floor: Annotated[
        int | None,
        typer.Option(
            "--version-floor",
            min=0,
            help="Continue versions above N too (at least every gate's max_version; 0 for a new site).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign every member with the head-office key and publish them retained with the manifest.

    The small head office for a site without gated-billing: the site, credential key and broker
    come from a gate's config. Versions continue above the retained manifest, every gate's
    retained status and this key's own record (KEY.versions.json), or the existing snapshot;
    when none is known, the push is refused: give --version-floor. The file is the whole site:
    mark leavers cancelled or erased, don't drop them.
    """
    from gated.contract import (
        Signer,
        Verifier,
        load_credential_key,
        load_public_key,
        public_key_raw,
    )
    from gated.push import push_members, version_record_path

    cfg = load_gate_config(config)
    try:
        credential_key = load_credential_key(cfg.keys.credential_key_file)
        signer = Signer.from_pem_file(key)
        trusted = Verifier(
            [signer.public_key_raw]
            + [public_key_raw(load_public_key(p)) for p in cfg.keys.head_office_public_key_files]
        )
    except (OSError, ValueError, ContractError) as exc:
        fail(f"keys: {exc}")
    broker = None if snapshot else _broker_options(cfg, url, username, password_file)
    result = asyncio.run(
        push_members(
            file,
            site=cfg.site,
            credential_key=credential_key,
            signer=signer,
            trusted=trusted,
            broker=broker,
            snapshot=snapshot,
            record=version_record_path(key),
            floor=version_floor,
            show_progress=not json_out,
        )
    )
    if json_out:
        emit_json(result)
    elif snapshot:
        console.print(
            f"wrote {snapshot}: {result['states']} states, {result['count']} members, "
            f"max version {result['max_version']}",
            highlight=False,
        )
    else:
        console.print(
            f"published {result['published']} members (versions {result['first_version']}.."
            f"{result['max_version']}) and the manifest ({result['count']} members)",
            highlight=False,
        )


@command_app.command("sign")
def command_sign(
    action: Annotated[
        str, typer.Argument(help="pulse, lockdown_on, lockdown_off, resync, message")
    ],
    gate: Annotated[str, typer.Option("--gate", help="The gate id it is for.")],
    site: Annotated[
        str | None, typer.Option("--site", help="Site id (default: the config's).")
    ] = None,
    key: Annotated[
        Path, typer.Option("--key", help="A command private key (PEM), not the head-office key.")
    ] = Path("/etc/gated/command.key"),
    ttl: Annotated[str, typer.Option("--ttl", help="Valid for this long (at most 5m).")] = "60s",
    text: Annotated[str | None, typer.Option("--text", help="The text of a message.")] = None,
    publish: Annotated[bool, typer.Option("--publish", help="Send it to the gate now.")] = False,
    config: ConfigOpt = Path("/etc/gated/gated.toml"),
    url: UrlOpt = None,
    username: UserOpt = None,
    password_file: PasswordOpt = None,
) -> None:
    """Print a signed GateCommand as one JSON line (and with --publish, send it)."""
    from gated.config import parse_duration
    from gated.contract import COMMAND_ACTIONS, Signer
    from gated.push import command_json, publish_command, sign_command

    cfg = load_gate_config(config) if config.exists() and (site is None or publish) else None
    site = site or (cfg.site if cfg else None)
    if site is None:
        fail("give --site (or a config with the site)")
    actions = COMMAND_ACTIONS
    if action not in actions:
        fail(f"unknown action {action!r}; one of: {', '.join(actions)}")
    try:
        command = sign_command(
            Signer.from_pem_file(key),
            site=site,
            gate=gate,
            action=action,
            args={"text": text} if text is not None else {},
            ttl_s=parse_duration(ttl),
        )
        if publish:
            broker = _broker_options(cfg, url, username, password_file)
            if broker is None:
                fail("--publish needs --url or a config with [mqtt]")
            asyncio.run(publish_command(broker, command))
    except (OSError, ValueError) as exc:
        fail(str(exc))
    print(command_json(command))


# --- gatectl -----------------------------------------------------------------------------------

gatectl_app = typer.Typer(
    cls=RefusalsAsOneLine,
    name="gatectl",
    help="Diagnose and operate a running gate over its control socket.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect the member cache.", no_args_is_help=True)
events_app = typer.Typer(help="Read the gate's events.", no_args_is_help=True)
door_app = typer.Typer(help="Operate the door.", no_args_is_help=True)
antipassback_app = typer.Typer(help="Anti-passback overrides.", no_args_is_help=True)
gatectl_app.add_typer(cache_app, name="cache")
gatectl_app.add_typer(events_app, name="events")
gatectl_app.add_typer(door_app, name="door")
gatectl_app.add_typer(antipassback_app, name="antipassback")

_socket_path: Path = Path("/run/gated/control.sock")
_config_path: Path = Path("/etc/gated/gated.toml")


@gatectl_app.callback()
def gatectl_main(
    socket: Annotated[
        Path | None, typer.Option("--socket", help="The daemon's control socket.")
    ] = None,
    config: ConfigOpt = Path("/etc/gated/gated.toml"),
) -> None:
    """Global options come before the command: gatectl -c /etc/gated/gated.toml status."""
    global _socket_path, _config_path
    setup_logging()
    _config_path = config
    if socket is not None:
        _socket_path = socket
    elif config.exists():
        try:
            _socket_path = load_gate_config(config).control_socket
        except ConfigError:
            _socket_path = Path("/run/gated/control.sock")  # doctor reports the bad file


def call(cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    from gated import control

    try:
        return control.request(_socket_path, cmd, args, timeout=timeout)
    except control.ControlAccessDenied as exc:
        fail(str(exc))
    except control.DaemonNotRunning as exc:
        fail(
            f"{exc}. Start it with: systemctl start gated (or gated run -c FILE)", EXIT_NOT_RUNNING
        )
    except (OSError, ValueError) as exc:
        fail(f"control socket {_socket_path}: {exc}", EXIT_NOT_RUNNING)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":")))


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = new_table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, escape(json.dumps(v) if isinstance(v, dict | list) else str(v)))
    return table


@gatectl_app.command()
def status(json_out: JsonOpt = False) -> None:
    """The gate's state: members, versions, lockdown, outbox, head-office contact, counters."""
    result = call("status")
    if json_out:
        emit_json(result)
    else:
        console.print(kv_table(f"gate {result['site']}/{result['gate']}", result))


@gatectl_app.command()
def readers(json_out: JsonOpt = False) -> None:
    """Each reader: kind, side, state (ok / absent / error), last read, reads and errors.

    Exit 1 if a reader is not ok (with --json too)."""
    result = call("readers")
    if json_out:
        emit_json(result)
    else:
        print_readers(result["readers"])
    if any(r["state"] != "ok" for r in result["readers"]):
        raise typer.Exit(EXIT_NO)


def print_readers(readers: list[dict[str, Any]]) -> None:
    table = new_table(
        "id", "kind", "direction", "state", "last read", "reads", "errors", "rejected", "detail"
    )
    for r in readers:
        colour = {"ok": "green", "absent": "yellow"}.get(r["state"], "red")
        table.add_row(
            r["id"],
            r["kind"],
            r["direction"],
            f"[{colour}]{r['state']}[/{colour}]",
            r["last_read_at"] or "-",
            str(r["reads"]),
            str(r["errors"]),
            str(r["rejected"]),
            escape(r["detail"]),
        )
    console.print(table)


@cache_app.command("stats")
def cache_stats(json_out: JsonOpt = False) -> None:
    """Members, card keys, tombstones, max version, digest, database size."""
    result = call("cache_stats")
    if json_out:
        emit_json(result)
    else:
        console.print(kv_table("member cache", result))


@cache_app.command("lookup")
def cache_lookup(
    card: Annotated[
        str | None, typer.Option("--card", help="A card UID (any case, : - or space separators).")
    ] = None,
    member: Annotated[str | None, typer.Option("--member", help="A member id.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """What the gate knows of one card or member (exit 1 if unknown)."""
    if (card is None) == (member is None):
        fail("give exactly one of --card UID or --member ID")
    result = call("cache_lookup", {"card": card, "member": member})
    if json_out:
        emit_json(result)
    elif not result["found"]:
        console.print("not in the cache")
    else:
        console.print(
            kv_table(
                f"member {result['member'].get('member_id')}",
                {**result["member"], "counters": result["counters"]},
            )
        )
    if not result["found"]:
        raise typer.Exit(EXIT_NO)


@gatectl_app.command()
def badge(
    card: Annotated[
        str | None, typer.Option("--card", help="Card UID, normalized as readers do.")
    ] = None,
    qr: Annotated[str | None, typer.Option("--qr", help="A rotating QR code (GQ1.…).")] = None,
    reader: Annotated[
        str | None, typer.Option("--reader", help="Which sim reader (default: the first).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Present a credential through the real decision path (one deliberate read, not debounced).

    The door acts on the decision. Exit 0 if allowed, 1 if denied.
    """
    if (card is None) == (qr is None):
        fail("give exactly one of --card UID or --qr CODE")
    result = call("badge", {"card": card, "qr": qr, "reader": reader})
    if json_out:
        emit_json({k: result[k] for k in ("allow", "reason", "member_id", "latency_us")})
    else:
        colour = "green" if result["allow"] else "red"
        verdict = "ALLOW" if result["allow"] else "DENY"
        console.print(
            f"[{colour}]{verdict}[/{colour}] {result['reason']}  member={result['member_id'] or '-'}  "
            f"latency={result['latency_us']}µs  {result.get('message', '')}",
            highlight=False,
        )
    if not result["allow"]:
        raise typer.Exit(EXIT_NO)


@events_app.command("tail")
def events_tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many recent events first.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Recent events not yet delivered to head office (and, with -f, every new one).

    With --json and without -f: one document {"events": [...]}; with -f: one event per line.
    """
    if not follow:
        result = call("events_tail", {"limit": limit})
        if json_out:
            emit_json(result)
        else:
            for ev in result["events"]:
                print_event(ev)
        return
    from gated import control

    try:
        for ev in control.stream(_socket_path, "events_tail", {"limit": limit, "follow": True}):
            if json_out:
                emit_json(ev)
                sys.stdout.flush()
            else:
                print_event(ev)
    except control.ControlAccessDenied as exc:
        fail(str(exc))
    except control.DaemonNotRunning as exc:
        fail(str(exc), EXIT_NOT_RUNNING)
    except KeyboardInterrupt:
        pass


def print_event(ev: dict[str, Any]) -> None:
    colour = {"entry": "green", "exit": "green", "deny": "red"}.get(ev["kind"], "yellow")
    parts = [ev["at"], f"[{colour}]{ev['kind']:<12}[/{colour}]", escape(ev.get("reason") or "")]
    if ev.get("member_id"):
        parts.append(f"member={ev['member_id']}")
    if ev.get("reader_id"):
        parts.append(f"reader={ev['reader_id']}")
    if ev.get("latency_us") is not None:
        parts.append(f"{ev['latency_us']}µs")
    if ev.get("operator"):
        parts.append(f"by {ev['operator']}")
    console.print("  ".join(parts), highlight=False)


@door_app.command("pulse")
def door_pulse(json_out: JsonOpt = False) -> None:
    """Open the door once (recorded with your user name; never counted as a visit)."""
    result = call("door_pulse")
    emit_json(result) if json_out else console.print(f"door pulsed for {result['pulse_ms']} ms")


@gatectl_app.command()
def lockdown(
    state: Annotated[str, typer.Argument(help="on or off")],
    json_out: JsonOpt = False,
) -> None:
    """Refuse every badge (on) or return to normal (off). Survives a restart; fire still opens."""
    if state not in ("on", "off"):
        fail("lockdown takes on or off")
    result = call("lockdown", {"on": state == "on"})
    emit_json(result) if json_out else console.print(
        f"lockdown {'ON' if result['lockdown'] else 'off'}"
    )


@antipassback_app.command("reset")
def antipassback_reset(
    member: Annotated[str, typer.Argument(help="Member id.")], json_out: JsonOpt = False
) -> None:
    """Let a member badge in again at once (e.g. they left through a door without a reader)."""
    result = call("antipassback_reset", {"member": member})
    emit_json(result) if json_out else console.print(f"anti-passback cleared for {member}")


@gatectl_app.command()
def enroll(
    reader: Annotated[
        str | None, typer.Option("--reader", help="Reader id (default: any card reader).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a card.")] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Wait for the next card on a reader and print its UID for the front desk (opens nothing)."""
    if not json_out:
        err_console.print(f"present the card{' on ' + reader if reader else ''} …")
    result = call("enroll", {"reader": reader, "timeout": timeout}, timeout=timeout + 5)
    if json_out:
        emit_json(result)
    else:
        console.print(
            f"UID {result['uid'] or '-'}"
            + (f"  wiegand {result['wiegand']}" if result.get("wiegand") else "")
            + f"  (reader {result['reader_id']})"
        )


@gatectl_app.command()
def resync(json_out: JsonOpt = False) -> None:
    """Fetch a fresh signed snapshot from head office now (the cache keeps serving meanwhile)."""
    result = call("resync", timeout=120)
    emit_json(result) if json_out else console.print(kv_table("resync", result))


@gatectl_app.command()
def doctor(json_out: JsonOpt = False) -> None:
    """Check everything a dead turnstile can be down to; each problem with its fix.

    Works with the daemon down (checks what the config file allows). Exit 0 ok, 1 warn, 2 fail.
    """
    from gated import control
    from gated.doctor import LEVEL_EXIT, config_checks, merge, worst

    # A missing file is itself a finding (config fail), not a reason to skip the file checks.
    _cfg, local = config_checks(_config_path)
    remote = None
    error = fix = None
    try:
        remote = control.request(_socket_path, "doctor", timeout=15)["checks"]
    except control.ControlAccessDenied as exc:
        error, fix = str(exc), "sudo usermod -aG gated $USER, then log in again; or sudo gatectl"
    except control.DaemonNotRunning as exc:
        error = str(exc)
    except (control.ControlError, OSError, ValueError) as exc:
        error = f"daemon did not answer: {exc}"
    checks = merge(local, remote, error, fix)
    level = worst(checks)
    if json_out:
        emit_json({"result": level, "checks": [c.as_dict() for c in checks]})
    else:
        table = new_table("check", "result", "detail", "fix")
        for c in checks:
            colour = {"ok": "green", "warn": "yellow", "fail": "red"}[c.level]
            table.add_row(
                escape(c.name), f"[{colour}]{c.level}[/{colour}]", escape(c.message), escape(c.fix)
            )
        console.print(table)
    raise typer.Exit(LEVEL_EXIT[level])
