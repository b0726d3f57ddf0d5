"""The gated-billing command line, in-process through typer's runner: every command once, CSV
output, JSON output, one-line errors and exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gated.billing_sync.cli import app
from gated.billing_sync.config import load_billing_config
from gated.config import ConfigError
from gated.contract import parse_qr_code
from tests.billing.helpers import cli_ok, write_cli_config

runner = CliRunner()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_cli_config(tmp_path)
    assert run(path, "keys", "init").exit_code == 0
    assert (
        run(
            path,
            "plans",
            "add",
            "monthly",
            "--name",
            "Monthly",
            "--price",
            "4990",
            "--tax-rate-bp",
            "1900",
            "--freeze-fee",
            "500",
        ).exit_code
        == 0
    )
    return path


def run(cfg: Path, *args: str) -> object:
    result = runner.invoke(app, [*args, "-c", str(cfg)])
    return result


ok = cli_ok


def test_member_lifecycle_through_the_cli(cfg: Path, tmp_path: Path) -> None:
    assert "m1: active" in ok(
        cfg,
        "members",
        "add",
        "m1",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--email",
        "ann@x",
        "--card",
        "pm_sim_ok",
        "--qr",
    )
    ok(
        cfg,
        "members",
        "add",
        "m2",
        "--name",
        "Bob",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_decline_insufficient_funds",
    )
    ok(cfg, "cards", "assign", "m1", "04:a1:b2:c3:d4:e5:f6")
    shown = json.loads(ok(cfg, "members", "show", "m1", "--json"))
    assert shown["status"] == "active" and shown["cards"] == 1
    assert len(shown["published"]["credentials"]) == 1
    listed = list(csv.DictReader(io.StringIO(ok(cfg, "members", "list", "--csv"))))
    assert [(r["member"], r["status"]) for r in listed] == [("m1", "active"), ("m2", "pending")]

    assert "frozen" in ok(cfg, "freeze", "m1", "--months", "1", "--yes")
    ok(cfg, "clock", "advance", "36h")
    # Ended in its second day, which counts as used: the rest of its days' share of the fee
    # (5.95) comes back (the month's length is the clock's: this test runs on today's date).
    unfrozen = re.search(
        r"active; invoice 3: (\d+)\.(\d\d) EUR refunded", ok(cfg, "unfreeze", "m1")
    )
    assert unfrozen is not None
    back = int(unfrozen[1] + unfrozen[2])
    assert 595 * 26 // 28 <= back <= 595 * 29 // 31
    ok(cfg, "charge-extra", "m1", "--amount", "3000", "--kind", "personal_training")
    lines = list(csv.reader(io.StringIO(ok(cfg, "invoices", "m1", "--lines", "--csv"))))
    kinds = [row[11] for row in lines[1:]]
    assert kinds.count("extra") == 1 and kinds.count("membership") == 1 and "freeze_fee" in kinds

    out = ok(cfg, "pay", "m2")
    assert "paid 5938" in out and "active" in out
    assert "pending_cancel" in ok(cfg, "cancel", "m2")

    ok(cfg, "clock", "advance", "31d")
    assert "renewals 1" in ok(cfg, "run")  # m1 renews; m2 is cancelled at period end
    assert json.loads(ok(cfg, "members", "show", "m2", "--json"))["status"] == "cancelled"

    revenue = list(csv.DictReader(io.StringIO(ok(cfg, "report", "revenue", "--csv"))))
    assert sum(int(r["gross"]) for r in revenue) == 5938 * 3 + 595 - back + 3570
    assert [r["gross"] for r in revenue if r["method"] == "refund"] == [str(-back)]
    for name in ("outstanding", "dunning", "attendance"):
        ok(cfg, "report", name, "--csv")

    png = tmp_path / "pass.png"
    code = ok(cfg, "pass", "m1", "--png", str(png)).strip().splitlines()[-1]
    assert parse_qr_code(code)[0] == "m1" and png.read_bytes()[:4] == b"\x89PNG"

    token = ok(cfg, "gates", "add", "downtown", "t1").strip()
    assert token.startswith("gt_")
    ok(cfg, "gates", "revoke", "downtown", "t1")
    ok(cfg, "cards", "revoke", "m1", "04A1B2C3D4E5F6")
    before = json.loads(ok(cfg, "members", "show", "m1", "--json"))["published"]
    assert "republished 2" in ok(cfg, "keys", "rotate")
    after = json.loads(ok(cfg, "members", "show", "m1", "--json"))["published"]
    assert after["version"] > before["version"]
    assert "erased" in ok(cfg, "members", "erase", "m1")


def test_import_csv(cfg: Path, tmp_path: Path) -> None:
    f = tmp_path / "members.csv"
    f.write_text(
        "member_id,name,plan,email,card,cards\nm7,Gus,monthly,g@x,pm_sim_ok,04AABBCCDD\n"
        "m8,Hal,monthly,,pm_sim_ok,\n"
    )
    assert "imported 2" in ok(cfg, "members", "import", str(f))
    assert json.loads(ok(cfg, "members", "show", "m7", "--json"))["cards"] == 1


@pytest.mark.parametrize(
    ("bad_line", "error"),
    [
        ("m9,Ivy,nosuchplan,,pm_sim_ok,", "line 4: no plan 'nosuchplan'"),
        ("m7,Ivy,monthly,,pm_sim_ok,", "line 4: member m7 is on an earlier line too"),
        ("m9,Ivy,monthly,,pm_sim_ok,04AABBCCDD", "line 4: card 04AABBCCDD is on an earlier line"),
        ("m9,Ivy,monthly,,pm_sim_ok,XYZ", "line 4: card 'XYZ'"),
        (",Ivy,monthly,,pm_sim_ok,", "line 4: missing member_id"),
    ],
)
def test_import_with_a_bad_line_imports_nothing_and_names_the_line(
    cfg: Path, tmp_path: Path, bad_line: str, error: str
) -> None:
    f = tmp_path / "members.csv"
    f.write_text(
        "member_id,name,plan,email,card,cards,payer\nm7,Gus,monthly,g@x,pm_sim_ok,04AABBCCDD,\n"
        "m8,Hal,monthly,,,,m7\n" + bad_line + ",\n"
    )
    result = runner.invoke(app, ["members", "import", str(f), "-c", str(cfg)])
    assert result.exit_code == 2, result.output
    assert error in result.stderr and "nothing was imported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = ok(cfg, "members", "list", "--csv")
    assert "m7" not in listed and "m8" not in listed  # not even the good lines before it


def test_errors_are_one_line_with_meaningful_exit_codes(cfg: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["members", "show", "nobody", "-c", str(cfg)])
    assert missing.exit_code == 2 and "no member 'nobody'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    refused = runner.invoke(app, ["freeze", "nobody", "--months", "5", "-c", str(cfg)])
    assert refused.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('sites = ["downtown"]\n[dunning]\ngrace_dayz = 3\n')
    result = runner.invoke(app, ["run", "-c", str(bad)])
    assert result.exit_code == 2
    assert "dunning.grace_dayz: unknown setting" in result.stderr
    assert "Traceback" not in result.output


def test_collections_before_the_last_retry_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('sites = ["downtown"]\n[dunning]\ncollections_days = 5\nretry_days = [3, 7]\n')
    result = runner.invoke(app, ["run", "-c", str(bad)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    with pytest.raises(ConfigError) as refused:
        load_billing_config(bad)
    message = str(refused.value)
    assert "\n" not in message
    assert "dunning: collections_days (5) must be after the last of retry_days (7)" in message


def test_a_payment_reference_used_before_is_refused_in_one_line(cfg: Path) -> None:
    ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly")  # no card: owes 59.38
    assert "paid 1000" in ok(cfg, "pay", "m1", "1000", "--reference", "R-17")
    again = runner.invoke(app, ["pay", "m1", "1000", "--reference", "R-17", "-c", str(cfg)])
    assert again.exit_code != 0 and isinstance(again.exception, SystemExit)
    assert "Traceback" not in again.output and "IntegrityError" not in again.output
    assert "reference R-17 was already used" in " ".join(again.stderr.split())
    assert json.loads(ok(cfg, "members", "show", "m1", "--json"))["owed"] == 5938 - 1000


def test_keys_init_writes_the_public_key_the_gates_need_and_export_prints_it(
    cfg: Path, tmp_path: Path
) -> None:
    from gated.contract import Signer, load_public_key, public_key_raw

    public = tmp_path / "keys" / "ho.pub"  # beside keys/ho.pem
    assert public.exists() and public.stat().st_mode & 0o777 == 0o644
    signer = Signer.from_pem_file(tmp_path / "keys" / "ho.pem")
    assert public_key_raw(load_public_key(public)) == signer.public_key_raw
    exported = ok(cfg, "keys", "export-public")
    assert exported == public.read_text()
    assert "PRIVATE" not in exported
    out = tmp_path / "gate-trust.pub"
    ok(cfg, "keys", "export-public", "--out", str(out))
    assert out.read_text() == public.read_text()
    # A rotation writes the new public key too (the old one stays beside it for the gates).
    ok(cfg, "keys", "rotate")
    rotated = Signer.from_pem_file(tmp_path / "keys" / "ho.pem")
    assert public_key_raw(load_public_key(public)) == rotated.public_key_raw
    assert (
        public_key_raw(load_public_key(tmp_path / "keys" / "ho.pub.old")) == signer.public_key_raw
    )


def test_invoices_are_all_listed_or_the_limit_is_said(cfg: Path) -> None:
    from gated.billing_sync.invoices import InvoiceSpec, create_invoices
    from tests.billing.crashing import billing_for

    ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    b = billing_for(cfg)
    specs = [
        InvoiceSpec("m1", "extra", "EUR", [("extra", f"Towel {i}", 1, 300)], 0, 0, None)
        for i in range(1204)
    ]
    with b.engine.begin() as conn:
        create_invoices(conn, specs, b.clock())
    b.engine.dispose()
    rows = list(csv.reader(io.StringIO(ok(cfg, "invoices", "--csv"))))
    assert len(rows) == 1 + 1205  # the header, then every invoice
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1205, 0, -1)]  # newest first
    with_lines = list(csv.reader(io.StringIO(ok(cfg, "invoices", "--lines", "--csv"))))
    assert len(with_lines) == 1 + 1204 + 2  # the first invoice has a tax line
    table = runner.invoke(app, ["invoices", "--limit", "10", "-c", str(cfg)])
    assert table.exit_code == 0
    assert "showing the newest 10 of 1205 invoices" in " ".join(table.stderr.split())
    limited = ok(cfg, "invoices", "--csv", "--limit", "3")
    assert len(limited.splitlines()) == 1 + 3


def test_revenue_is_by_real_method_with_net_and_tax_apart(cfg: Path) -> None:
    ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    ok(cfg, "members", "add", "m2", "--name", "Bo", "--plan", "monthly", "--card", "pm_sim_sepa")
    ok(cfg, "members", "add", "m3", "--name", "Cy", "--plan", "monthly")  # no card
    ok(cfg, "pay", "m3", "--method", "front_desk")
    ok(cfg, "clock", "advance", "3d")
    ok(cfg, "run")  # the SEPA debit settles
    rows = list(csv.DictReader(io.StringIO(ok(cfg, "report", "revenue", "--csv"))))
    by_method = {r["method"]: r for r in rows}
    assert sorted(by_method) == ["card", "front_desk", "sepa_debit"]
    for r in rows:  # 49.90 net + 19 % tax = 59.38 each
        assert (r["gross"], r["net"], r["tax"], r["payments"]) == ("5938", "4990", "948", "1")
