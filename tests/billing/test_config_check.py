"""``gated-billing config check``: billing.toml validated on its own, and beside the gates'
files: a gate whose QR window is below twice the pass's refresh is named with what to change
(exit 1); a bad file is one line (exit 2)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gated.billing_sync.cli import app
from tests.billing.helpers import write_cli_config
from tests.gatefixture import write_config


def billing_toml(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = write_cli_config(folder)
    cfg.write_text(cfg.read_text() + extra)
    return cfg


def check(cfg: Path, *gates: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["config", "check", *map(str, gates), "-c", str(cfg)])
    return result.exit_code, result.output


def gate(root: Path, name: str, window: int | None) -> Path:
    policy = f"[policy]\nqr_window_s = {window}\n" if window is not None else ""
    return write_config(root / name, extra=policy, gate=name)


def test_a_gate_window_below_twice_the_refresh_is_named(tmp_path: Path) -> None:
    cfg = billing_toml(tmp_path, "[app]\nqr_refresh_s = 12\n")
    wide, default, narrow = (
        gate(tmp_path, "wide", 24),
        gate(tmp_path, "std", None),
        gate(tmp_path, "narrow", 20),
    )
    code, out = check(cfg, wide, default)
    assert code == 0 and "warning" not in out and "gates checked 2" in out
    code, out = check(cfg, wide, narrow)
    assert code == 1
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "downtown/narrow" in warnings[0]
    assert (
        "qr_window_s to at least 24" in warnings[0] and "qr_refresh_s to at most 10" in warnings[0]
    )
    # The shipped defaults (30 s window, 10 s refresh) leave room.
    code, _ = check(billing_toml(tmp_path / "plain"), default)
    assert code == 0


def test_a_bad_file_is_one_line(tmp_path: Path) -> None:
    cfg = billing_toml(tmp_path, "[app]\nqr_refresh_s = 0\n")
    code, out = check(cfg)
    assert code == 2 and "qr_refresh_s" in out and len(out.strip().splitlines()) == 1
    code, out = check(billing_toml(tmp_path / "ok"), tmp_path / "missing.toml")
    assert code == 2 and "missing.toml" in out
