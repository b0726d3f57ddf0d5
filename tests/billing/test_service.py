"""The billing service over a real SQLite store with the simulated gateway: renewals, dunning,
freezes, cancellations, disputes, households, cards, erasure and the version sequence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.engine import FreezeRefused
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import ChargeResult, GatewayRejected
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.contract import card_key, parse_time, site_digest
from tests.billing.helpers import DAY, Clock, make_billing, notices, published, step

ALLOWED = {"active", "grace", "pending_cancel"}


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    return make_billing(tmp_path)


def owed(b: Billing, member_id: str) -> int:
    return int(b.member(member_id)["owed"])


def test_first_charge_activates_with_an_itemized_invoice(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="ann@x", payment_method="pm_sim_ok")
    state = published(b, "m1")
    assert state["status"] == "active"
    # valid_until = paid-through (one calendar month) + grace (3 days)
    assert parse_time(state["valid_until"]).timestamp() == clock.now + 31 * DAY + 3 * DAY
    with b.engine.connect() as conn:
        inv = conn.execute(select(schema.invoices)).one()
        lines = conn.execute(select(schema.invoice_lines).order_by(schema.invoice_lines.c.id)).all()
    assert (inv.subtotal, inv.tax, inv.total, inv.amount_paid, inv.status) == (
        4990,
        948,
        5938,
        5938,
        "paid",
    )
    assert [(ln.kind, ln.amount) for ln in lines] == [("membership", 4990), ("tax", 948)]
    assert notices(b, "m1") == ["receipt"]


def test_renewal_on_the_due_date_moves_paid_through(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    first_until = published(b, "m1")["valid_until"]
    step(b, clock, 30)
    assert published(b, "m1")["valid_until"] == first_until  # not yet due (31-day December)
    step(b, clock, 1)
    state = published(b, "m1")
    assert state["status"] == "active" and state["valid_until"] > first_until


def test_soft_decline_grace_retries_suspension_collections_and_payment(
    tmp_path: Path,
) -> None:
    clock = Clock()
    gw = SimulatedGateway(clock=clock, script={"pm_card": ["ok", "insufficient_funds"]})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_card")
    step(b, clock, 31)  # renewal fails
    assert published(b, "m1")["status"] == "grace"  # still let in
    assert notices(b, "m1")[-1] == "failure"
    step(b, clock, 3)  # retry 1 at +3 days fails; still inside grace (3 days)
    with b.engine.connect() as conn:
        attempts = conn.execute(select(schema.payment_attempts.c.state)).scalars().all()
    assert attempts.count("failed") == 2
    step(b, clock, 1)  # past grace_days
    state = published(b, "m1")
    assert state["status"] == "suspended"
    assert "suspension" in notices(b, "m1")
    step(b, clock, 4)  # retry 2 at +7 days fails; no more automatic retries
    step(b, clock, 10)
    with b.engine.connect() as conn:
        attempts = conn.execute(select(schema.payment_attempts.c.state)).scalars().all()
    assert attempts.count("failed") == 3
    step(b, clock, 13)  # 30 days after the first failure
    assert published(b, "m1")["status"] == "collections"
    version_before = published(b, "m1")["version"]
    paid = b.record_payment("m1")  # on 1 February, when the next period starts
    # February's renewal is billed at once on the same card and declined: grace from now.
    assert paid == 5938 and owed(b, "m1") == 5938
    state = published(b, "m1")
    assert state["status"] == "grace" and state["version"] > version_before
    assert b.member("m1")["next_retry_at"] is not None


def test_hard_decline_never_retries_and_a_new_card_pays(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_lost_card")
    step(b, clock, 31)
    assert b.member("m1")["needs_new_card"] is True
    step(b, clock, 20)
    with b.engine.connect() as conn:
        n = len(conn.execute(select(schema.payment_attempts)).all())
    assert n == 2  # the first charge and the failed renewal: never retried
    assert "new_card" in notices(b, "m1")
    assert published(b, "m1")["status"] == "suspended"
    b.set_payment_method("m1", "pm_sim_ok")
    assert published(b, "m1")["status"] == "active"


def test_do_not_try_again_advice_is_hard(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_advice_insufficient_funds")
    step(b, clock, 40)
    with b.engine.connect() as conn:
        rows = conn.execute(select(schema.payment_attempts.c.decline_class)).scalars().all()
    assert rows == [None, "hard"]


def test_authentication_required_sends_a_pay_link(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_authentication_required")
    step(b, clock, 31)
    assert notices(b, "m1")[-1] == "pay_link"
    with b.engine.connect() as conn:
        body = (
            conn.execute(
                select(schema.notifications.c.body).order_by(schema.notifications.c.id.desc())
            )
            .scalars()
            .first()
        )
    assert body is not None and "/pay/" in body
    assert b.member("m1")["next_retry_at"] is None


def test_small_debt_stays_in_grace_until_max_grace_days(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, dunning={"suspend_min_owed": 10_000, "max_grace_days": 14})
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    b.charge_extra("m1", "class_pack", "Yoga 5-pack", 2000)
    assert owed(b, "m1") == 2380
    step(b, clock, 10)
    assert published(b, "m1")["status"] == "grace"
    step(b, clock, 5)
    assert published(b, "m1")["status"] == "suspended"


def test_sepa_stays_processing_and_keeps_status_until_it_settles(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_sepa")
    step(b, clock, 31)
    with b.engine.connect() as conn:
        state = (
            conn.execute(
                select(schema.payment_attempts.c.state).order_by(
                    schema.payment_attempts.c.id.desc()
                )
            )
            .scalars()
            .first()
        )
    assert state == "processing"
    step(b, clock, 2)
    assert published(b, "m1")["status"] == "active"  # kept while the bank decides
    step(b, clock, 2)
    assert owed(b, "m1") == 0 and published(b, "m1")["status"] == "active"


def test_sepa_failure_after_days_starts_dunning(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_sepa_fail")
    step(b, clock, 35)
    assert owed(b, "m1") == 5938
    assert published(b, "m1")["status"] in ("suspended", "grace")


def test_freeze_denies_bills_fee_extends_and_ends(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    paid_before = parse_time(b.member("m1")["paid_through"]).timestamp()
    b.freeze("m1", 1)
    assert published(b, "m1")["status"] == "frozen"
    info = b.member("m1")
    assert parse_time(info["paid_through"]).timestamp() == paid_before + 31 * DAY
    with b.engine.connect() as conn:
        fee = conn.execute(select(schema.invoices).where(schema.invoices.c.kind == "freeze")).one()
    assert (fee.subtotal, fee.status) == (500, "paid")
    assert "freeze" in notices(b, "m1")
    with pytest.raises(FreezeRefused):
        b.freeze("m1", 1)
    step(b, clock, 30)
    assert published(b, "m1")["status"] == "frozen"
    step(b, clock, 1)
    assert published(b, "m1")["status"] == "active"  # the day it ends


def test_freeze_refused_when_owing_or_too_long(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    with pytest.raises(FreezeRefused):
        b.freeze("m1", 4)
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)
    with pytest.raises(FreezeRefused):
        b.freeze("m1", 1)


def test_unfreeze_early_gives_back_the_unused_time(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    paid_before = parse_time(b.member("m1")["paid_through"]).timestamp()
    b.freeze("m1", 2)
    step(b, clock, 10)
    b.unfreeze("m1")
    assert published(b, "m1")["status"] == "active"
    assert parse_time(b.member("m1")["paid_through"]).timestamp() == paid_before + 10 * DAY


def test_cancel_runs_to_the_end_of_the_paid_period(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    when = b.cancel("m1")
    assert published(b, "m1")["status"] == "pending_cancel"
    step(b, clock, 30)
    assert published(b, "m1")["status"] == "pending_cancel"
    step(b, clock, 1)
    assert clock.now >= when
    assert published(b, "m1")["status"] == "cancelled"
    with b.engine.connect() as conn:
        assert len(conn.execute(select(schema.invoices)).all()) == 1  # no renewal after cancel


def test_cancel_respects_the_minimum_term(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_plan(PlanSpec("annual", "12-month term", 3990, "EUR", min_term_months=3))
    b.add_member("m1", "Ann", plan_id="annual", payment_method="pm_sim_ok")
    b.cancel("m1")
    step(b, clock, 70)
    assert published(b, "m1")["status"] == "pending_cancel"
    with b.engine.connect() as conn:
        assert len(conn.execute(select(schema.invoices)).all()) == 3  # renewed until the term ends
    step(b, clock, 25)
    assert published(b, "m1")["status"] == "cancelled"


def _intent_of(b: Billing, member_id: str) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.payment_attempts.c.gateway_ref).where(
                    schema.payment_attempts.c.member_id == member_id
                )
            )
            .scalars()
            .first()
        )


def test_dispute_suspends_until_closed_in_any_order(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok")
    b.dispute_opened("dp_1", _intent_of(b, "m1"))
    assert published(b, "m1")["status"] == "suspended"
    b.dispute_closed("dp_1", _intent_of(b, "m1"), "won")
    assert published(b, "m1")["status"] == "active"
    # closed arrives before created: the late "created" must not suspend again
    b.dispute_closed("dp_2", _intent_of(b, "m2"), "won")
    b.dispute_opened("dp_2", _intent_of(b, "m2"))
    assert published(b, "m2")["status"] == "active"


def test_lost_dispute_reopens_the_money(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.dispute_opened("dp_1", _intent_of(b, "m1"))
    b.dispute_closed("dp_1", _intent_of(b, "m1"), "lost")
    b.dispute_closed("dp_1", _intent_of(b, "m1"), "lost")  # a repeat changes nothing
    assert owed(b, "m1") == 5938


def test_household_dependant_follows_the_payer(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("payer", "Pat", plan_id="monthly", email="p@x", payment_method="pm_sim_ok")
    b.add_member("kid", "Kim", plan_id="monthly", payer_id="payer")
    assert published(b, "kid")["status"] == "active"  # charged to the payer's card
    b.set_payment_method("payer", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)
    assert published(b, "payer")["status"] == "grace"
    assert published(b, "kid")["status"] == "grace"
    step(b, clock, 4)
    assert published(b, "payer")["status"] == "suspended"
    assert published(b, "kid")["status"] in ("payer_suspended", "suspended")
    b.record_payment("payer")
    assert published(b, "payer")["status"] == "active"
    assert published(b, "kid")["status"] != "payer_suspended"


def test_payer_suspended_folds_a_paid_dependant(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("payer", "Pat", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("kid", "Kim", plan_id="monthly", payer_id="payer")
    b.dispute_opened("dp_1", _intent_of(b, "payer"))
    assert published(b, "payer")["status"] == "suspended"
    assert published(b, "kid")["status"] == "payer_suspended"
    b.dispute_closed("dp_1", _intent_of(b, "payer"), "won")
    assert published(b, "kid")["status"] == "active"


def test_cards_are_encrypted_and_published_as_hmac_keys(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok")
    b.assign_card("m1", "04:a1:b2:c3:d4:e5:f6")
    expected = card_key(b.keys.credential_key, "04A1B2C3D4E5F6")
    assert published(b, "m1")["credentials"] == [expected]
    with pytest.raises(BillingError, match="already assigned"):
        b.assign_card("m2", "04A1B2C3D4E5F6")
    db = Path(b.config.database_url.removeprefix("sqlite:///"))
    b.engine.dispose()
    raw = db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes()
        if db.with_name(db.name + "-wal").exists()
        else b""
    )
    assert b"04A1B2C3D4E5F6" not in raw and b"04a1b2c3d4e5f6" not in raw
    b.revoke_card("m1", "04a1b2c3d4e5f6")
    assert published(b, "m1")["credentials"] == []


def test_credential_key_rotation_republishes_new_card_keys(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.assign_card("m1", "04A1B2C3D4E5F6")
    before = published(b, "m1")
    new_key = bytes(range(32))
    assert b.rotate_credential_key(new_key) == 1
    after = published(b, "m1")
    assert after["credentials"] == [card_key(new_key, "04A1B2C3D4E5F6")]
    assert after["version"] > before["version"]


def test_erase_publishes_a_tombstone_and_updates_the_manifest(
    billing: tuple[Billing, Clock],
) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_ok")
    b.assign_card("m1", "04A1B2C3D4E5F6")
    b.erase("m1")
    state = published(b, "m1")
    assert state["status"] == "erased"
    assert state["credentials"] == [] and state["plan"] is None and state["valid_until"] is None
    info = b.member("m1")
    assert info["name"] == "" and info["email"] is None and info["cards"] == 0
    _assert_manifests_match(b)


def _assert_manifests_match(b: Billing) -> None:
    with b.engine.connect() as conn:
        states = conn.execute(select(schema.member_states)).all()
        manifests = {r.site: r for r in conn.execute(select(schema.site_manifests))}
    for site in b.config.sites:
        live = [
            (r.member_id, r.version)
            for r in states
            if site in json.loads(r.sites) and r.status != "erased"
        ]
        row = manifests[site]
        assert row.digest == site_digest(live)
        assert row._mapping["count"] == len(live)
        assert row.max_version == max(r.version for r in states if site in json.loads(r.sites))


def test_versions_are_unique_increasing_and_the_manifest_digest_holds(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    for i in range(6):
        b.add_member(
            f"m{i}",
            f"M{i}",
            plan_id="monthly",
            payment_method="pm_sim_ok" if i % 2 else "pm_sim_decline_generic_decline",
            sites=["downtown"] if i < 3 else None,
        )
    b.record_payment("m0")
    step(b, clock, 40)
    with b.engine.connect() as conn:
        versions = (
            conn.execute(
                select(schema.status_outbox.c.version).order_by(
                    schema.status_outbox.c.created_at, schema.status_outbox.c.version
                )
            )
            .scalars()
            .all()
        )
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    _assert_manifests_match(b)


def test_unchanged_member_is_not_republished(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    v = published(b, "m1")["version"]
    step(b, clock, 5)
    assert published(b, "m1")["version"] == v


def test_webhook_intent_update_is_applied_once(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_sepa")
    step(b, clock, 31)
    ref = _intent_of_latest(b)
    assert b.intent_update(ref, ChargeResult(ref, "succeeded")) is True
    assert b.intent_update(ref, ChargeResult(ref, "succeeded")) is False
    assert b.intent_update(ref, ChargeResult(ref, "failed", "insufficient_funds")) is False
    assert owed(b, "m1") == 0
    with b.engine.connect() as conn:
        assert len(conn.execute(select(schema.payments)).all()) == 2


def _intent_of_latest(b: Billing) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.payment_attempts.c.gateway_ref).order_by(
                    schema.payment_attempts.c.id.desc()
                )
            )
            .scalars()
            .first()
        )


def test_gate_events_are_recorded_once(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    ev = {
        "event_id": "01JABCDEF0000000000000000A",
        "site": "downtown",
        "gate": "t1",
        "at": "2026-12-01T09:00:00Z",
        "kind": "entry",
        "member_id": "m1",
    }
    assert b.record_gate_events([ev, ev]) == 1
    assert b.record_gate_events([ev]) == 0


def test_front_desk_payment_validation(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    with pytest.raises(BillingError, match="owes nothing"):
        b.record_payment("m1")
    b.add_member("m2", "Bob", plan_id="monthly", payment_method="pm_sim_decline_insufficient_funds")
    with pytest.raises(BillingError):
        b.record_payment("m2", 10_000_000)
    b.record_payment("m2", 1000)
    assert owed(b, "m2") == 4938
    assert published(b, "m2")["status"] == "pending"
    b.record_payment("m2")
    assert published(b, "m2")["status"] == "active"


def test_front_desk_does_not_take_money_a_sepa_debit_is_already_taking(
    billing: tuple[Billing, Clock],
) -> None:
    """A SEPA debit for the first invoice is processing: the front desk may take what else is
    owed, but not that invoice, or the settled debit would pay it a second time."""
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_sepa")
    with pytest.raises(BillingError, match=r"owes nothing beyond invoice 1, whose charge"):
        b.record_payment("m1")
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    b.charge_extra("m1", "personal_training", "PT session", 3000)  # declined, left open
    with pytest.raises(BillingError, match=r"between 1 and 3570 .*less invoice 1 whose"):
        b.record_payment("m1", 10_000)
    assert b.record_payment("m1") == 3570  # the extra, with its tax, and nothing else
    clock.advance(3)
    b.run_cycle()  # the debit settles
    with b.reader.connect() as conn:
        rows = conn.execute(
            select(schema.invoices.c.total, schema.invoices.c.amount_paid, schema.invoices.c.status)
        ).all()
    assert len(rows) == 2
    assert [(paid, status) for total, paid, status in rows] == [
        (total, "paid") for total, _, _ in rows
    ]
    assert owed(b, "m1") == 0


def test_qr_pass_verifies_with_the_published_app_key(billing: tuple[Billing, Clock]) -> None:
    import base64

    import nacl.signing

    from gated.contract import mint_qr_code, parse_qr_code

    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok", with_qr=True)
    code = mint_qr_code(b.app_private_key("m1"), "m1", clock.now, "00112233aabbccdd")
    member_id, _, _, signed_bytes, signature = parse_qr_code(code)
    key = nacl.signing.VerifyKey(base64.b64decode(published(b, "m1")["qr_key"]))
    assert member_id == "m1" and key.verify(signed_bytes, signature) == signed_bytes
    b.erase("m1")
    assert published(b, "m1")["qr_key"] is None


def test_simulated_intent_is_charged_once_however_often_confirmed(tmp_path: Path) -> None:
    clock = Clock()
    gw = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    # The same file opened by another process (a CLI command beside `serve`).
    other = SimulatedGateway(tmp_path / "sim.db", clock=clock)

    def intent(key: str, pm: str) -> str:
        return gw.create_intent(
            customer_ref="cus_1",
            payment_method=pm,
            amount=5938,
            currency="EUR",
            idempotency_key=key,
            metadata={},
        )

    ok = intent("inv1-a1", "pm_sim_ok")
    assert intent("inv1-a1", "pm_sim_ok") == ok  # the idempotency key finds the same intent
    assert gw.confirm_intent(ok, "inv1-a1").state == "succeeded"
    assert gw.confirm_intent(ok, "inv1-a1").state == "succeeded"
    assert other.confirm_intent(ok, "inv1-a1").state == "succeeded"
    # Confirmed elsewhere first: this object's own confirm answers with that result.
    declined = intent("inv2-a1", "pm_sim_decline_insufficient_funds")
    assert other.confirm_intent(declined, "inv2-a1").decline_code == "insufficient_funds"
    assert gw.confirm_intent(declined, "inv2-a1").decline_code == "insufficient_funds"
    assert gw.charged_total() == other.charged_total() == 5938
    with pytest.raises(GatewayRejected):
        gw.confirm_intent("pi_sim_0000000099", "inv3-a1")


@pytest.mark.parametrize("where", ["memory", "file"])
def test_simulated_gateway_answers_alike_from_memory_and_from_a_file(
    tmp_path: Path, where: str
) -> None:
    clock = Clock()
    path = tmp_path / "sim.db" if where == "file" else None
    gw = SimulatedGateway(path, clock=clock, script={"pm_card": ["insufficient_funds", "ok"]})

    def intent(key: str, pm: str, amount: int = 1000) -> str:
        return gw.create_intent(
            customer_ref="cus_1",
            payment_method=pm,
            amount=amount,
            currency="EUR",
            idempotency_key=key,
            metadata={},
        )

    ok = intent("k1", "pm_sim_ok")
    assert intent("k1", "pm_sim_ok") == ok and intent("k2", "pm_sim_ok", 1) != ok
    assert gw.confirm_intent(ok, "k1") == ChargeResult(ok, "succeeded")
    assert gw.confirm_intent(ok, "k1") == ChargeResult(ok, "succeeded")  # charged once
    sepa = intent("k3", "pm_sim_sepa", 2000)
    assert gw.confirm_intent(sepa, "k3").state == "processing"
    clock.advance(2.9)
    assert gw.retrieve_intent(sepa).state == "processing"
    clock.advance(0.2)
    assert gw.retrieve_intent(sepa) == ChargeResult(sepa, "succeeded", method="sepa_debit")
    # The script answers one confirmation at a time, then keeps its last outcome.
    declined = gw.confirm_intent(intent("k4", "pm_card"), "k4")
    assert (declined.state, declined.decline_code) == ("failed", "insufficient_funds")
    assert gw.confirm_intent(intent("k5", "pm_card"), "k5").state == "succeeded"
    assert gw.confirm_intent(intent("k6", "pm_card"), "k6").state == "succeeded"
    advice = gw.confirm_intent(intent("k7", "pm_sim_advice_card_velocity_exceeded"), "k7")
    assert advice.decline_code == "card_velocity_exceeded"
    assert advice.advice_code == "do_not_try_again"
    # On-session, the member authenticates at once.
    auth = intent("k8", "pm_sim_decline_authentication_required")
    assert gw.confirm_intent(auth, "k8", return_url="https://gym.example/pay").state == "succeeded"
    assert gw.charged_total() == 1000 + 2000 + 1000 + 1000 + 1000
    for unknown in ("pi_sim_0000000099", "pi_nonsense"):
        with pytest.raises(GatewayRejected):
            gw.confirm_intent(unknown, "k9")
        with pytest.raises(GatewayRejected):
            gw.retrieve_intent(unknown)
    with pytest.raises(GatewayRejected):
        intent("k10", "pm_sim_ok", 0)


def test_a_member_who_joined_on_the_31st_renews_on_the_last_day_of_each_month(
    tmp_path: Path,
) -> None:
    clock = Clock(int(datetime(2027, 1, 31, 9, 30, tzinfo=UTC).timestamp()))
    b, _ = make_billing(tmp_path, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    ends = [b.member("m1")["paid_through"]]
    for _ in range(115):  # a cycle a day, as serve runs them
        step(b, clock, 1)
        if b.member("m1")["paid_through"] != ends[-1]:
            ends.append(b.member("m1")["paid_through"])
    assert [e[:10] for e in ends] == [
        "2027-02-28",
        "2027-03-31",
        "2027-04-30",
        "2027-05-31",
    ]


def test_a_front_desk_payment_sends_a_receipt(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="ann@example.org")  # no card: owes
    assert notices(b, "m1") == ["new_card"]
    b.record_payment("m1", 1000, reference="R-1")
    b.record_payment("m1")
    n = schema.notifications
    with b.engine.connect() as conn:
        receipts = conn.execute(
            select(n.c.to_addr, n.c.body).where(n.c.kind == "receipt").order_by(n.c.id)
        ).all()
    assert [r.to_addr for r in receipts] == ["ann@example.org"] * 2
    # Named by the invoice's legal number, as printed on the PDF the receipt carries.
    assert "we received 10.00 EUR for invoice downtown-2026-000001." in receipts[0].body
    assert "we received 49.38 EUR for invoice downtown-2026-000001." in receipts[1].body


def test_a_desk_payment_tells_what_holds_when_a_renewal_on_a_dead_card_is_due_too(
    tmp_path: Path,
) -> None:
    """Ann's renewal failed and she was suspended; she pays it at the desk days into the next
    period, whose renewal is due at once on the same dead card. What the desk is told, what
    the gates get and what the notices say agree: she is in grace from now, not suspended the
    next day after a notice promising she can keep training."""
    b, clock = make_billing(tmp_path, dunning={"collections_days": 60})
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31 + 35)  # the renewal of 1 Jan fails; suspended, then into February
    assert b.member("m1")["status"] == "suspended"
    before = len(notices(b, "m1"))
    b.record_payment("m1")  # the January invoice, at the desk on 5 February
    after_desk = b.member("m1")["status"]
    assert after_desk == published(b, "m1")["status"] == "grace"
    assert b.member("m1")["owed"] == 5938  # February's renewal, billed and declined now
    kinds = notices(b, "m1")[before:]
    assert kinds == ["receipt", "failure"]
    for _ in range(3):  # the grace the failure notice promises
        step(b, clock, 1)
        assert published(b, "m1")["status"] == "grace"
    assert "suspension" not in notices(b, "m1")[before:]
