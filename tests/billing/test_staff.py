"""Staff accounts: the CLI (add, list, disable, reset), argon2 passwords, TOTP against RFC 6238's
vectors, codes that work once, recovery codes, seeds encrypted at rest, sessions that expire and
end, and the permission table the docs show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gated.billing_sync import schema, totp
from gated.billing_sync.cli import app
from gated.billing_sync.errors import BillingError
from gated.billing_sync.permissions import ACTIONS, PERMISSIONS, ROLES, allowed, markdown_table
from gated.billing_sync.staff import SESSION_S, StaffAccess
from tests.billing.helpers import Clock, make_billing, write_cli_config

RFC_SEED = b"12345678901234567890"


@pytest.mark.parametrize(
    ("unix", "code"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_totp_matches_rfc_6238_vectors(unix: int, code: str) -> None:
    assert totp.code_at(RFC_SEED, unix, digits=8) == code


def test_totp_sha256_vector_and_provisioning_uri() -> None:
    seed256 = b"12345678901234567890123456789012"
    assert totp.code_at(seed256, 59, digits=8, digest="sha256") == "46119246"
    uri = totp.provisioning_uri(RFC_SEED, "ann", "gated")
    assert uri.startswith("otpauth://totp/gated%3Aann?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")


def test_a_code_matches_its_step_once_and_only_near_now() -> None:
    now = 1_800_000_000
    code = totp.code_at(RFC_SEED, now)
    step = int(now // 30)
    assert totp.matching_step(RFC_SEED, code, now, None) == step
    assert totp.matching_step(RFC_SEED, code, now + 30, None) == step  # one step late: fine
    assert totp.matching_step(RFC_SEED, code, now + 90, None) is None  # three: too old
    assert totp.matching_step(RFC_SEED, code, now, step) is None  # used already
    assert totp.matching_step(RFC_SEED, "12345", now, None) is None
    assert totp.matching_step(RFC_SEED, "abcdef", now, None) is None


def test_permission_table_in_docs_equals_the_code() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "console.md").read_text()
    assert markdown_table() in docs
    assert set(PERMISSIONS) == set(ROLES)
    # Front desk never reaches money beyond the desk, plans, staff, lockdown or the audit log.
    for action in ("view_revenue", "manage_plans", "manage_staff", "lockdown", "view_audit"):
        assert not allowed("front_desk", action)
    assert all(allowed("owner", a) for a in ACTIONS)
    with pytest.raises(KeyError):
        allowed("owner", "no_such_action")
    assert not allowed("janitor", "take_payment")


@pytest.fixture
def staff(tmp_path: Path) -> tuple[StaffAccess, Clock]:
    billing, clock = make_billing(tmp_path)
    return billing.staff_access(), clock


def _enrol(access: StaffAccess, clock: Clock, staff_id: str) -> tuple[bytes, list[str]]:
    seed = access.totp_pending(staff_id)
    codes = access.totp_confirm(staff_id, totp.code_at(seed, clock()))
    assert codes is not None and len(codes) == 8
    return seed, codes


def test_accounts_passwords_and_second_factor(staff: tuple[StaffAccess, Clock]) -> None:
    access, clock = staff
    one_time = access.add("ann", "Ann Owner", "owner", [], None)
    ann = access.get("ann")
    assert ann.sites == ("*",) and ann.must_change_password and ann.needs_setup
    assert access.check_password("ann", one_time) == ann
    assert access.check_password("ann", one_time + "x") is None
    assert access.check_password("nobody", one_time) is None
    with pytest.raises(BillingError, match="exists"):
        access.add("ann", "Ann", "owner", [], None)
    with pytest.raises(BillingError, match="unknown role"):
        access.add("zed", "Zed", "janitor", [], None)
    with pytest.raises(BillingError, match="unknown site"):
        access.add("zed", "Zed", "front_desk", ["mars"], None)
    with pytest.raises(BillingError, match="at least 10"):
        access.set_password("ann", "short")
    access.set_password("ann", "correct horse battery")
    assert access.check_password("ann", "correct horse battery") is not None

    # Enrolment: the seed is stored encrypted, the code used to confirm does not work again.
    seed, recovery = _enrol(access, clock, "ann")
    with access.engine.connect() as conn:
        stored = conn.execute(
            select(schema.staff.c.totp_secret, schema.staff.c.password_hash)
        ).first()
    assert stored is not None and seed not in stored.totp_secret
    assert stored.password_hash.startswith("$argon2id$")
    assert not access.get("ann").needs_setup
    assert not access.check_second_factor("ann", totp.code_at(seed, clock()))  # replayed
    clock.now += 30
    code = totp.code_at(seed, clock())
    assert access.check_second_factor("ann", code)
    assert not access.check_second_factor("ann", code)  # the same code twice: once
    assert not access.check_second_factor("ann", "000000")
    # A recovery code works once, whatever its dashes and case.
    assert access.check_second_factor("ann", recovery[0].upper())
    assert not access.check_second_factor("ann", recovery[0])


def test_sessions_expire_end_and_die_with_the_account(staff: tuple[StaffAccess, Clock]) -> None:
    access, clock = staff
    access.add("bob", "Bob", "front_desk", ["downtown"], "a long password")
    bob = access.get("bob")
    assert bob.covers(["downtown"]) and not bob.covers(["uptown"]) and not bob.needs_setup
    t1 = access.open_session("bob", "ua", "127.0.0.1")
    t2 = access.open_session("bob", "ua", "127.0.0.1")
    session = access.session(t1)
    assert session is not None and session.staff.id == "bob" and not session.setup_only
    access.end_session(t1)
    assert access.session(t1) is None and access.session(t2) is not None
    clock.now += SESSION_S
    assert access.session(t2) is None  # expired
    t3 = access.open_session("bob", "ua", "127.0.0.1")
    access.disable("bob")
    assert access.session(t3) is None
    assert access.check_password("bob", "a long password") is None
    # Reset: enabled again with a one-time password, sessions gone, TOTP to enrol again.
    new = access.reset("bob", None)
    assert access.check_password("bob", new) is not None and access.get("bob").needs_setup is True


def test_staff_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = write_cli_config(tmp_path)

    def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
        result = runner.invoke(app, [*args, "-c", str(cfg)], input=stdin)
        return result.exit_code, result.output

    assert run("keys", "init")[0] == 0
    code, output = run("staff", "add", "owner1", "--role", "owner", "--name", "Olga")
    assert code == 0, output
    found = re.search(r"one-time password (\S+)", output)
    assert found
    code, output = run(
        "staff",
        "add",
        "desk1",
        "--role",
        "front_desk",
        "--site",
        "downtown",
        "--ask-password",
        stdin="desk password 1\ndesk password 1\n",
    )
    assert code == 0 and "desk1: added" in output
    assert run("staff", "add", "desk1", "--role", "front_desk")[0] == 2  # refused: exists
    assert run("staff", "add", "x", "--role", "janitor")[0] == 2
    code, output = run("staff", "list", "--csv")
    assert code == 0
    assert "owner1,Olga,owner,*,no,setup" in output
    assert "desk1,desk1,front_desk,downtown,no,active" in output
    assert run("staff", "disable", "desk1")[0] == 0
    assert "desk1,desk1,front_desk,downtown,no,disabled" in run("staff", "list", "--csv")[1]
    assert run("staff", "disable", "nobody")[0] == 2
    code, output = run("staff", "reset", "desk1")
    assert code == 0 and "one-time password" in output
    assert "desk1,desk1,front_desk,downtown,no,setup" in run("staff", "list", "--csv")[1]
