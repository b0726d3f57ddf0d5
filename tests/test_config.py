"""gated.toml: the shipped example validates; a bad file gets one line naming the field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gated.config import ConfigError, load_gate_config, parse_duration

REPO = Path(__file__).resolve().parent.parent
GATED = REPO / ".venv" / "bin" / "gated"
SHIPPED = REPO / "config" / "gated.toml"
MINIMAL = 'site = "downtown"\ngate = "turnstile-1"\n'


def test_shipped_config_validates() -> None:
    cfg = load_gate_config(SHIPPED)
    assert (cfg.site, cfg.gate, cfg.zones, cfg.timezone) == (
        "downtown",
        "turnstile-1",
        ["main"],
        "Europe/Berlin",
    )
    assert cfg.policy.max_offline == 72 * 3600
    assert [(r.kind, r.id, r.direction) for r in cfg.readers] == [("sim", "sim-1", "in")]
    assert cfg.door.pin_factory == "mock"


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "gated.toml"
    path.write_text(
        MINIMAL
        + 'state_dir = "state"\n[[readers]]\nkind = "sim"\n[[readers]]\nkind = "sim"\ndirection = "out"\n'
    )
    cfg = load_gate_config(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.cache_path == tmp_path / "state" / "cache.db"
    assert cfg.durability == "crash"
    assert (cfg.policy.anti_passback_s, cfg.policy.daily_limit, cfg.policy.qr_window_s) == (
        0,
        None,
        30,
    )
    assert (
        cfg.door.relay_pin,
        cfg.door.green_led_pin,
        cfg.door.red_led_pin,
        cfg.door.buzzer_pin,
    ) == (17, 27, 22, 23)
    assert (cfg.door.pulse_ms, cfg.door.held_open_s, cfg.door.relay_active_high) == (3000, 30, True)
    assert [(r.id, r.direction) for r in cfg.readers] == [("sim-1", "in"), ("sim-2", "out")]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("72h", 259200),
        ("30s", 30),
        ("1500ms", 1.5),
        ("15m", 900),
        ("3d", 259200),
        ("45", 45),
        (10, 10),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


BAD = [
    # (id, file text, what the one line must name)
    ("unknown top-level key", MINIMAL + "gates = 2\n", ["gates", "unknown setting"]),
    (
        "unknown key in a section",
        MINIMAL + "[door]\npulse_msec = 10\n",
        ["door.pulse_msec", "unknown setting"],
    ),
    ("unknown section", MINIMAL + "[doors]\npulse_ms = 10\n", ["doors", "unknown setting"]),
    ("wrong type", MINIMAL + '[door]\npulse_ms = "long"\n', ["door.pulse_ms"]),
    ("wrong type in a list", 'site = "downtown"\ngate = "t1"\nzones = "main"\n', ["zones"]),
    ("out of range", MINIMAL + "[policy]\nqr_window_s = 0\n", ["policy.qr_window_s"]),
    ("bad timezone", MINIMAL + 'timezone = "Mars/Olympus"\n', ["timezone", "Mars/Olympus"]),
    (
        "bad duration",
        MINIMAL + '[policy]\nmax_offline = "3 weeks"\n',
        ["policy.max_offline", "3 weeks"],
    ),
    ("bad enum", MINIMAL + 'durability = "paranoid"\n', ["durability"]),
    ("realtime priority", MINIMAL + "realtime_priority = 100\n", ["realtime_priority", "99"]),
    ("missing site", 'gate = "t1"\n', ["site", "missing"]),
    ("bad id", 'site = "down town"\ngate = "t1"\n', ["site"]),
    ("bad mqtt url", MINIMAL + '[mqtt]\nurl = "http://broker"\n', ["mqtt.url", "mqtt://"]),
    ("reader kind", MINIMAL + '[[readers]]\nkind = "telepathy"\n', ["readers[0]"]),
    (
        "reader field",
        MINIMAL + '[[readers]]\nkind = "wiegand"\nd0_pin = 5\n',
        ["readers[0].d1_pin", "missing"],
    ),
    (
        "duplicate reader ids",
        MINIMAL + '[[readers]]\nkind = "sim"\nid = "a"\n[[readers]]\nkind = "sim"\nid = "a"\n',
        ["readers", "'a'"],
    ),
    ("bad TOML", 'site = "downtown\ngate = \n', ["not valid TOML"]),
]


@pytest.mark.parametrize(("text", "names"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_file_gives_one_line(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "gated.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_gate_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for name in names:
        assert name in message


LAX = [
    # (id, file text, what the setting reads as): the coercions pydantic made, kept for files
    # that relied on them
    ("integer as text", MINIMAL + '[door]\npulse_ms = "3000"\n', ("door", "pulse_ms", 3000)),
    ("whole float as integer", MINIMAL + "realtime_priority = 9.0\n", ("", "realtime_priority", 9)),
    (
        "yes as true",
        MINIMAL + '[door]\nrelay_active_high = "no"\n',
        ("door", "relay_active_high", False),
    ),
    (
        "0 as false",
        MINIMAL + "[door]\nrelay_active_high = 0\n",
        ("door", "relay_active_high", False),
    ),
    ("integer as float", MINIMAL + "[policy]\nqr_window_s = 45\n", ("policy", "qr_window_s", 45.0)),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in LAX], ids=[c[0] for c in LAX])
def test_values_read_as_before(
    tmp_path: Path, text: str, expected: tuple[str, str, object]
) -> None:
    path = tmp_path / "gated.toml"
    path.write_text(text)
    cfg = load_gate_config(path)
    section, name, value = expected
    got = getattr(getattr(cfg, section) if section else cfg, name)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            MINIMAL + "[door]\npulse_ms = 1.5\n",
            "door.pulse_ms: Input should be a valid integer, got a number with a fractional part",
        ),
        (
            MINIMAL + '[door]\nrelay_active_high = "maybe"\n',
            "door.relay_active_high: Input should be a valid boolean, unable to interpret input",
        ),
        (
            MINIMAL + "[mqtt]\nheartbeat_s = 0\n[door]\npulse_ms = 0\n",
            "mqtt.heartbeat_s: Input should be greater than 0 (and 1 more problem)",
        ),
        (
            MINIMAL + '[[readers]]\nkind = "nfc"\ntargets = []\n',
            "readers[0].targets: List should have at least 1 item after validation, not 0",
        ),
        (
            MINIMAL + '[[readers]]\nid = "x"\n',
            "readers[0]: Unable to extract tag using discriminator 'kind'",
        ),
    ],
)
def test_lines_in_pydantic_wording(tmp_path: Path, text: str, line: str) -> None:
    """The gate's checks are not pydantic's any more; a file still gets the line it got."""
    path = tmp_path / "gated.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_gate_config(path)
    assert str(info.value) == f"{path}: {line}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_gate_config(tmp_path / "nope.toml")
    assert "\n" not in str(info.value)


def test_folder_or_non_utf8_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_gate_config(tmp_path)
    assert "\n" not in str(info.value)
    binary = tmp_path / "gated.toml"
    binary.write_bytes(b'site = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_gate_config(binary)
    assert "\n" not in str(info.value)


def run_gated(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "60", "NO_COLOR": "1"}
    return subprocess.run(
        [str(GATED), *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )


def test_cli_config_check_ok(tmp_path: Path) -> None:
    """The shipped file passes once its key files exist (here in a folder of the test's)."""
    keys = tmp_path / "keys"
    made = run_gated("keys", "generate", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    config = tmp_path / "gated.toml"
    config.write_text(SHIPPED.read_text().replace("/etc/gated/", f"{keys}/"))
    result = run_gated("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (MINIMAL + '[door]\npulse_ms = "long"\n', "door.pulse_ms"),
        (MINIMAL + 'timezone = "Mars/Olympus"\n', "timezone"),
        ('site = "downtown\n', "not valid TOML"),
        (None, "no such file"),
        ("", "cannot read"),
    ],
    ids=["wrong type", "bad timezone", "bad TOML", "missing file", "a folder"],
)
def test_cli_config_check_bad(tmp_path: Path, text: str | None, name: str) -> None:
    path = tmp_path / "a-rather-long-folder-name-so-the-line-would-wrap" / "gated.toml"
    if text == "":
        path.mkdir(parents=True)
    elif text is not None:
        path.parent.mkdir()
        path.write_text(text)
    result = run_gated("config", "check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and str(path) in lines[0]


def test_a_gpio_pin_has_one_job(tmp_path: Path) -> None:
    path = tmp_path / "gated.toml"
    path.write_text(
        'site = "a"\ngate = "b"\n[door]\nrelay_pin = 17\n'
        '[[readers]]\nkind = "wiegand"\nid = "w"\nd0_pin = 5\nd1_pin = 17\n'
    )
    with pytest.raises(ConfigError) as err:
        load_gate_config(path)
    assert str(err.value).endswith("readers.w.d1_pin: GPIO 17 is already used by door.relay_pin")
