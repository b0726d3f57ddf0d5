"""The audit log: the CLI's money, status, card and access commands each leave one row with the
Unix user and the member's fields before and after; a command that fails leaves none; erasing a
member blanks the values and keeps the field names."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gated.billing_sync.audit import Actor
from gated.billing_sync.cli import app, build
from gated.billing_sync.config import load_billing_config
from gated.billing_sync.errors import NotFound
from tests.billing.helpers import cli_ok, make_billing, write_cli_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_cli_config(tmp_path)
    cli_ok(path, "keys", "init")
    cli_ok(path, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    return path


def entries(cfg: Path) -> list[dict[str, object]]:
    billing = build(load_billing_config(cfg))
    try:
        return list(reversed(billing.audit_entries()))
    finally:
        billing.engine.dispose()


def test_cli_actions_are_audited_as_the_unix_user(cfg: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    cli_ok(
        cfg,
        "members",
        "add",
        "m1",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_decline_insufficient_funds",
    )
    cli_ok(cfg, "pay", "m1")
    cli_ok(cfg, "cards", "assign", "m1", "04:A1:B2:C3")
    cli_ok(cfg, "freeze", "m1", "--months", "1", "--yes")
    cli_ok(cfg, "unfreeze", "m1")
    cli_ok(cfg, "cancel", "m1")
    cli_ok(cfg, "cards", "revoke", "m1", "04A1B2C3")
    assert "olga: one-time password " in cli_ok(cfg, "staff", "add", "olga", "--role", "owner")
    failed = CliRunner().invoke(app, ["freeze", "nobody", "-c", str(cfg)])
    assert failed.exit_code == 2
    rows = entries(cfg)
    actions = [r["action"] for r in rows]
    assert actions == [
        "manage_plans",
        "enrol",
        "take_payment",
        "assign_card",
        "freeze",
        "unfreeze",
        "cancel",
        "revoke_card",
        "staff_add",
    ]
    assert {r["actor"] for r in rows} == {me} and {r["actor_kind"] for r in rows} == {"cli"}
    by = {r["action"]: r for r in rows}
    assert by["enrol"]["changes"]["status"] == [None, "pending"]
    assert by["take_payment"]["changes"]["status"] == ["pending", "active"]
    assert by["take_payment"]["changes"]["owed"] == [4990, 0]
    assert by["take_payment"]["detail"] == {"amount": 4990, "method": "front_desk"}
    assert by["assign_card"]["changes"] == {"cards": [0, 1]}
    assert by["freeze"]["changes"]["status"] == ["active", "frozen"]
    assert by["unfreeze"]["changes"]["status"] == ["frozen", "active"]
    assert by["cancel"]["changes"]["status"] == ["active", "pending_cancel"]
    assert by["revoke_card"]["changes"] == {"cards": [1, 0]}
    assert by["staff_add"]["member_id"] is None and by["staff_add"]["detail"] == {
        "role": "owner",
        "staff": "olga",
    }
    # No row says anything a member typed, nor the card's UID.
    dumped = json.dumps(rows)
    assert "Ann" not in dumped and "A1B2" not in dumped.upper().replace(":", "")


def test_erasure_blanks_values_and_keeps_field_names(tmp_path: Path) -> None:
    billing, _ = make_billing(tmp_path)
    actor = Actor("staff", "dan", "front_desk", "10.0.0.7")
    with billing.audited(actor, "enrol", "m1"):
        billing.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    with billing.audited(actor, "freeze", "m1") as entry:
        billing.freeze("m1", 1)
        entry.detail["months"] = 1
    with pytest.raises(NotFound), billing.audited(actor, "cancel", "nobody"):
        billing.cancel("nobody")
    rows = billing.audit_entries(member_id="m1")
    assert [r["action"] for r in rows] == ["freeze", "enrol"]
    assert rows[0]["address"] == "10.0.0.7" and rows[0]["role"] == "front_desk"
    assert rows[0]["changes"]["status"] == ["active", "frozen"]
    billing.erase("m1")
    for row in billing.audit_entries(member_id="m1"):
        assert row["changes"] and all(v == [None, None] for v in row["changes"].values())
    assert billing.audit_entries(member_id="m1")[0]["detail"] == {"months": 1}
