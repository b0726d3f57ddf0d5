"""Rotating QR verification (DESIGN "Rotating QR"): signature, window, single use per gate."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import nacl.signing
import pytest

from gated.cache.store import CacheStore
from gated.contract import ContractError, mint_qr_code, parse_qr_code
from gated.policy.credential import Credential
from gated.policy.decide import GateContext, Member, decide
from gated.policy.qr import QrVerifier

NOW = 1_795_680_000.0  # 2026-11-26T08:00:00Z
WINDOW = 30
APP_SEED = bytes(range(32, 64))
APP_KEY = bytes(nacl.signing.SigningKey(APP_SEED).verify_key)
OTHER_SEED = bytes(range(64, 96))
NONCE = "0123456789abcdef"
UTC = ZoneInfo("UTC")

MEMBERS = {
    "m_1": Member("m_1", 3, "active", qr_key=APP_KEY),
    "m_nokey": Member("m_nokey", 4, "active"),
    "m_gone": Member("m_gone", 5, "erased"),
}
lookup = MEMBERS.get


def code(
    member_id: str = "m_1", ts: float = NOW, nonce: str = NONCE, seed: bytes = APP_SEED
) -> str:
    return mint_qr_code(seed, member_id, int(ts), nonce)


@pytest.fixture
def verifier() -> QrVerifier:
    return QrVerifier(WINDOW)


def test_valid(verifier: QrVerifier) -> None:
    check = verifier.check(code(), lookup, NOW)
    assert check == (MEMBERS["m_1"], None, ("m_1", NONCE))


def test_code_round_trips_through_parse() -> None:
    member_id, ts, nonce, signed, signature = parse_qr_code(code())
    assert (member_id, ts, nonce) == ("m_1", int(NOW), NONCE)
    assert signed == f"GQ1.m_1.{int(NOW)}.{NONCE}".encode()
    nacl.signing.VerifyKey(APP_KEY).verify(signed, signature)  # raises if it does not verify


def test_scanner_line_endings_are_ignored(verifier: QrVerifier) -> None:
    assert verifier.check(code() + "\r\n", lookup, NOW).fault is None


@pytest.mark.parametrize(
    ("offset", "fault"),
    [
        (-WINDOW - 1, "qr_expired"),  # too old
        (-WINDOW, None),
        (WINDOW, None),
        (WINDOW + 1, "qr_expired"),  # future-dated beyond the window
        (-86400, "qr_expired"),
        (86400 * 365, "qr_expired"),
    ],
)
def test_time_window(verifier: QrVerifier, offset: int, fault: str | None) -> None:
    check = verifier.check(code(ts=NOW + offset), lookup, NOW)
    assert check.fault == fault
    assert check.member is MEMBERS["m_1"]
    assert (check.nonce is None) == (fault is not None)


def test_bad_signature(verifier: QrVerifier) -> None:
    forged = code(seed=OTHER_SEED)  # well formed, signed by a key that is not the member's
    assert verifier.check(forged, lookup, NOW) == (MEMBERS["m_1"], "qr_bad_signature", None)


@pytest.mark.parametrize("part", [1, 2, 3])
def test_tampered_field_breaks_the_signature(verifier: QrVerifier, part: int) -> None:
    fields = code().split(".")
    fields[part] = {1: "m_2", 2: str(int(NOW) + 1), 3: "fedcba9876543210"}[part]
    lookup2 = {**MEMBERS, "m_2": Member("m_2", 9, "active", qr_key=APP_KEY)}.get
    assert verifier.check(".".join(fields), lookup2, NOW).fault == "qr_bad_signature"


def test_flipped_signature_byte(verifier: QrVerifier) -> None:
    text = code()
    head, sig = text.rsplit(".", 1)
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert verifier.check(f"{head}.{flipped}", lookup, NOW).fault == "qr_bad_signature"


GOOD = code()
MALFORMED = [
    "",
    "GQ1",
    "04A1B2C3D4E5F6",
    "https://example.org/?GQ1.m_1",
    GOOD.replace("GQ1.", "GQ2.", 1),
    GOOD.replace("GQ1.", "gq1.", 1),
    GOOD.rsplit(".", 1)[0],  # no signature
    GOOD[:-1],  # signature one character short
    GOOD + "A",  # one too long
    GOOD.replace(NONCE, NONCE.upper()),  # nonce is lower-case hex
    GOOD.replace(NONCE, NONCE[:-1]),  # 15 digits
    GOOD.replace(NONCE, "0123456789abcdeg"),
    GOOD.replace(f".{int(NOW)}.", ".-5.", 1),
    GOOD.replace(f".{int(NOW)}.", ".1e9.", 1),
    GOOD.replace(f".{int(NOW)}.", ".1234567890123.", 1),  # 13 digits
    GOOD.replace("m_1", "m.1", 1),
    GOOD.replace("m_1", "m 1", 1),
    GOOD.replace("m_1", "m" * 65, 1),
    GOOD.replace(".", ":"),
    GOOD.replace(".", "..", 1),
    GOOD + ".extra",
    GOOD[:-5] + "+/+/=",  # standard base64 is not base64url
    "GQ1.m_1." + "\u0661" * 10 + f".{NONCE}.{GOOD.rsplit('.', 1)[1]}",  # non-ASCII digits
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed(verifier: QrVerifier, text: str) -> None:
    assert verifier.check(text, lookup, NOW) == (None, "qr_malformed", None)
    with pytest.raises(ContractError):
        parse_qr_code(text)
    gate = GateContext("downtown", "turnstile-1", frozenset({"main"}), tz=UTC)
    decision = decide(None, Credential("qr", text, "qr-1"), gate, NOW, None, "qr_malformed")
    assert decision.reason == "qr_malformed"


def test_mint_refuses_what_parse_would_refuse() -> None:
    with pytest.raises(ContractError):
        mint_qr_code(APP_SEED, "m.1", int(NOW), NONCE)
    with pytest.raises(ContractError):
        mint_qr_code(APP_SEED, "m_1", int(NOW), "XYZ")


def test_replayed(verifier: QrVerifier) -> None:
    first = verifier.check(code(), lookup, NOW)
    assert first.fault is None and first.nonce is not None
    assert verifier.spend(first.nonce, NOW) == NOW + 2 * WINDOW
    assert verifier.check(code(), lookup, NOW + 1) == (MEMBERS["m_1"], "qr_replayed", None)
    # still a replay at the far edge of the code's window
    assert verifier.check(code(), lookup, NOW + WINDOW).fault == "qr_replayed"
    # past it, the code is simply expired
    assert verifier.check(code(), lookup, NOW + WINDOW + 1).fault == "qr_expired"
    # a fresh nonce from the same member is fine
    assert verifier.check(code(nonce="00000000000000ff"), lookup, NOW + 1).fault is None


def test_same_nonce_another_member_is_not_a_replay(verifier: QrVerifier) -> None:
    members = {**MEMBERS, "m_2": Member("m_2", 7, "active", qr_key=APP_KEY)}
    first = verifier.check(code(), members.get, NOW)
    assert first.nonce is not None
    verifier.spend(first.nonce, NOW)
    assert verifier.check(code("m_2"), members.get, NOW).fault is None


def test_not_replayed_when_first_use_was_denied(verifier: QrVerifier) -> None:
    """Only an accepted code uses its nonce up: a code shown during lockdown still works after."""
    gate = GateContext("downtown", "turnstile-1", frozenset({"main"}), tz=UTC, lockdown=True)
    credential = Credential("qr", code(), "qr-1")
    first = verifier.check(credential.value, lookup, NOW)
    decision = decide(first.member, credential, gate, NOW, None, first.fault)
    assert decision.reason == "lockdown"
    if decision.allow and first.nonce is not None:  # what the daemon does
        verifier.spend(first.nonce, NOW)
    gate.lockdown = False
    again = verifier.check(credential.value, lookup, NOW + 1)
    assert again.fault is None
    assert decide(again.member, credential, gate, NOW + 1, None, again.fault).allow


def test_member_without_qr_key(verifier: QrVerifier) -> None:
    check = verifier.check(code("m_nokey"), lookup, NOW)
    assert check == (MEMBERS["m_nokey"], "qr_bad_signature", None)


@pytest.mark.parametrize("member_id", ["m_unknown", "m_gone"])
def test_unknown_or_erased_member(verifier: QrVerifier, member_id: str) -> None:
    assert verifier.check(code(member_id), lookup, NOW) == (None, "unknown_credential", None)


def test_unknown_member_is_reported_before_a_bad_signature(verifier: QrVerifier) -> None:
    assert verifier.check(code("m_unknown", seed=OTHER_SEED), lookup, NOW).fault == (
        "unknown_credential"
    )


def test_restore_from_disk_rows() -> None:
    """A restart reloads spent nonces: a code used before the restart stays used."""
    before = QrVerifier(WINDOW)
    pair = before.check(code(), lookup, NOW).nonce
    assert pair is not None
    expires = before.spend(pair, NOW)
    rows = [(pair[0], pair[1], expires), ("m_1", "00000000000000aa", NOW - 1)]

    after = QrVerifier(WINDOW)
    after.restore(rows)
    assert after.check(code(), lookup, NOW + 5).fault == "qr_replayed"
    # a row already past its expiry does not block anything
    assert after.check(code(nonce="00000000000000aa"), lookup, NOW + 5).fault is None


def test_restore_across_a_restart_through_the_cache(tmp_path: Path) -> None:
    """The daemon's path: spend, write the row, restart, load the rows back."""
    store = CacheStore(tmp_path / "cache.db")
    before = QrVerifier(WINDOW)
    pair = before.check(code(), lookup, NOW).nonce
    assert pair is not None
    store.spend_nonce(*pair, before.spend(pair, NOW))
    store.spend_nonce("m_1", "00000000000000aa", NOW - 1)  # long expired
    store.close()

    store = CacheStore(tmp_path / "cache.db")
    rows = store.load_nonces(NOW + 5)
    store.close()
    assert rows == [("m_1", NONCE, NOW + 2 * WINDOW)]  # expired rows are dropped on load
    after = QrVerifier(WINDOW)
    after.restore(rows)
    assert after.check(code(), lookup, NOW + 5).fault == "qr_replayed"


def test_prune_forgets_only_expired_nonces(verifier: QrVerifier) -> None:
    verifier.restore([("m_1", NONCE, NOW + 10), ("m_1", "00000000000000aa", NOW - 10)])
    verifier.prune(NOW)
    assert set(verifier._spent) == {("m_1", NONCE)}
    assert verifier.check(code(), lookup, NOW).fault == "qr_replayed"
    verifier.prune(NOW + 10)  # expiry is exclusive: at expires_at the nonce may be forgotten
    assert verifier._spent == {}


def test_spend_bounds_memory(verifier: QrVerifier) -> None:
    for i in range(5000):
        verifier.spend(("m_1", f"{i:016x}"), NOW + i)
    # older nonces were pruned as newer ones came in; the newest are still held
    assert len(verifier._spent) <= 4097
    assert ("m_1", f"{4999:016x}") in verifier._spent


def test_after_a_start_codes_minted_before_it_are_expired() -> None:
    """A nonce spent the instant before a kill -9 may never have reached the disk: a (re)started
    gate refuses every code older than its start, even one no nonce row remembers."""
    started = QrVerifier(WINDOW, not_before=NOW + 0.5)
    assert started.check(code(ts=NOW), lookup, NOW + 1).fault == "qr_expired"
    assert started.check(code(ts=NOW - 10), lookup, NOW + 1).fault == "qr_expired"
    assert started.check(code(ts=NOW + 1), lookup, NOW + 1).fault is None
