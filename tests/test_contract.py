"""The wire contract: DESIGN's test vector, signing rules, card keys and snapshots."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.contract import (
    ContractError,
    SignatureError,
    Signer,
    Verifier,
    build_snapshot,
    canonical_json,
    card_key,
    erased_state,
    is_random_uid,
    key_id,
    load_public_key_raw,
    normalize_uid,
    parse_time,
    read_snapshot,
    site_digest,
)

# --- DESIGN "Signed objects" test vector ------------------------------------------------------

PRIVATE = bytes(range(32))
CREDENTIAL_KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
UID = "04A1B2C3D4E5F6"
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
KID = "56475aa75463474c"
CARD_KEY = "7d49c66ea0609cf85a291cf2f6451f3ca1f6192c92963bee14662136e4d65e56"
CANONICAL = (
    '{"credentials":["7d49c66ea0609cf85a291cf2f6451f3ca1f6192c92963bee14662136e4d65e56"],'
    '"daily_limit":null,"issued_at":"2026-11-26T08:00:00Z","kid":"56475aa75463474c",'
    '"member_id":"m_1001","plan":"offpeak","qr_key":null,"role":"member",'
    '"schedule":[{"days":["mon","tue","wed","thu","fri"],"end":"16:00","start":"09:00"}],'
    '"sites":["downtown"],"status":"active","type":"member_state",'
    '"valid_from":"2026-01-01T00:00:00Z","valid_until":"2026-12-04T00:00:00Z","version":42,'
    '"zones":[]}'
)
SIG = "+4s05kADqTFsOAYO540xuaIV7dmg+R4GcsprKBNTgj2Y1PpIvnwu6jFCqvUofgClMt1wIIAjj2WS67XlKOBCAg=="
DIGEST = "70822a2e43eb35cbcaab64cb406f13731819a16b4903ff6ca5e80eee02e6f640"


def vector_state() -> dict[str, Any]:
    return {
        "type": "member_state",
        "member_id": "m_1001",
        "sites": ["downtown"],
        "version": 42,
        "status": "active",
        "role": "member",
        "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": "2026-12-04T00:00:00Z",
        "plan": "offpeak",
        "schedule": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "16:00"}
        ],
        "zones": [],
        "credentials": [card_key(CREDENTIAL_KEY, UID)],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": "2026-11-26T08:00:00Z",
    }


SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(PRIVATE))
OTHER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
VERIFIER = Verifier([SIGNER.public_key_raw])


def test_vector_public_key_and_kid() -> None:
    assert base64.b64encode(SIGNER.public_key_raw).decode() == PUBLIC_B64
    assert SIGNER.kid == KID == key_id(base64.b64decode(PUBLIC_B64))


def test_vector_card_key() -> None:
    assert card_key(CREDENTIAL_KEY, UID) == CARD_KEY


def test_vector_canonical_form_and_signature() -> None:
    signed = SIGNER.sign(vector_state())
    assert signed["kid"] == KID
    assert signed["sig"] == SIG
    body = {k: v for k, v in signed.items() if k != "sig"}
    assert canonical_json(body) == CANONICAL.encode()
    # the published object verifies, from its wire form too
    assert VERIFIER.verify(signed, "member_state") == body
    assert VERIFIER.verify(json.loads(json.dumps(signed)), "member_state") == body


def test_vector_digest() -> None:
    assert site_digest([("m_1001", 42), ("m_7", 3)]) == DIGEST
    assert site_digest([("m_7", 3), ("m_1001", 42)]) == DIGEST  # XOR: order does not matter
    assert site_digest([]) == "0" * 64


def test_canonical_json_is_utf8_sorted_compact() -> None:
    assert canonical_json({"b": 1, "a": "Jürgen", "c": [1, {"z": None, "y": True}]}) == (
        '{"a":"Jürgen","b":1,"c":[1,{"y":true,"z":null}]}'.encode()
    )


# --- verifying --------------------------------------------------------------------------------


def test_tampered_field_is_refused() -> None:
    signed = SIGNER.sign(vector_state())
    for field, value in [
        ("version", 43),
        ("status", "suspended"),
        ("credentials", []),
        ("valid_until", None),
    ]:
        with pytest.raises(SignatureError):
            VERIFIER.verify({**signed, field: value}, "member_state")


def test_other_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="untrusted key"):
        VERIFIER.verify(OTHER.sign(vector_state()), "member_state")
    # claiming the trusted kid does not help a signature made with another key
    forged = {**OTHER.sign(vector_state()), "kid": KID}
    with pytest.raises(SignatureError, match="bad signature"):
        VERIFIER.verify(forged, "member_state")


def test_rotation_trusts_several_keys() -> None:
    both = Verifier([SIGNER.public_key_raw, OTHER.public_key_raw])
    assert both.kids == sorted([SIGNER.kid, OTHER.kid])
    both.verify(OTHER.sign(vector_state()), "member_state")
    both.verify(SIGNER.sign(vector_state()), "member_state")
    with pytest.raises(ContractError):
        Verifier([])


def test_wrong_type_is_refused() -> None:
    signed = SIGNER.sign(vector_state())
    with pytest.raises(ContractError, match="expected type"):
        VERIFIER.verify(signed, "manifest")
    # relabelling a signed object as another kind breaks its signature
    manifest = SIGNER.sign(
        {
            "type": "manifest",
            "site": "downtown",
            "count": 0,
            "max_version": 0,
            "digest": "0" * 64,
            "issued_at": "2026-11-26T08:00:00Z",
        }
    )
    with pytest.raises(SignatureError):
        VERIFIER.verify({**manifest, "type": "member_state"}, "member_state")
    with pytest.raises(ContractError):
        SIGNER.sign({"type": "invoice"})


@pytest.mark.parametrize("sig", [None, 42, "", "not base64!", base64.b64encode(b"x" * 63).decode()])
def test_missing_or_broken_signature(sig: object) -> None:
    signed = SIGNER.sign(vector_state())
    obj = {k: v for k, v in signed.items() if k != "sig"}
    if sig is not None:
        obj["sig"] = sig
    with pytest.raises(SignatureError):
        VERIFIER.verify(obj, "member_state")


@pytest.mark.parametrize("kid", [None, 5, [], {}, [KID], "0" * 16])
def test_garbage_kid_is_a_signature_error(kid: object) -> None:
    """Whatever arrives over MQTT, verify() fails with SignatureError, never a TypeError."""
    with pytest.raises(SignatureError, match="untrusted key"):
        VERIFIER.verify({**SIGNER.sign(vector_state()), "kid": kid}, "member_state")


def test_unknown_fields_are_covered_by_the_signature() -> None:
    signed = SIGNER.sign({**vector_state(), "note": "gold member", "extra": {"x": 1}})
    body = VERIFIER.verify(signed, "member_state")
    assert body["note"] == "gold member"
    with pytest.raises(SignatureError):
        VERIFIER.verify({**signed, "note": "platinum member"}, "member_state")
    with pytest.raises(SignatureError):
        VERIFIER.verify({**SIGNER.sign(vector_state()), "added": "later"}, "member_state")
    with pytest.raises(SignatureError):
        VERIFIER.verify({k: v for k, v in signed.items() if k != "extra"}, "member_state")


@pytest.mark.parametrize(
    "extra",
    [
        {"plan": "Ganztägig – Kraft & Cardio 💪"},  # non-ASCII stays UTF-8
        {"note": 'tab\there, nl\nthere, bell\x07, del\x7f, quote " and \\'},
        {"note": "line\u2028separator"},
        {"ratio": 0.1, "big": 1e300, "small": -0.0},
        {"huge": 2**70},  # past 64 bits: orjson refuses it, the slow form signs it
    ],
)
def test_verify_by_the_definition_whatever_the_fast_encoder_does(extra: dict[str, Any]) -> None:
    """Head office signs json.dumps' canonical form; the gate verifies with a faster encoder and
    must never refuse a genuine state where the two might differ, nor accept a changed one."""
    signed = SIGNER.sign({**vector_state(), **extra})
    wire = json.loads(json.dumps(signed, ensure_ascii=False))
    assert VERIFIER.verify(wire, "member_state")["version"] == 42
    tampered = {**wire, "version": 43}
    with pytest.raises(SignatureError):
        VERIFIER.verify(tampered, "member_state")


# --- card UIDs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "uid"),
    [
        ("04A1B2C3D4E5F6", "04A1B2C3D4E5F6"),
        ("04a1b2c3d4e5f6", "04A1B2C3D4E5F6"),
        ("04:a1:b2:c3:d4:e5:f6", "04A1B2C3D4E5F6"),
        ("04-A1-B2-C3", "04A1B2C3"),
        ("04 a1 b2 c3", "04A1B2C3"),
        (" 04A1B2C3\n", "04A1B2C3"),
        ("0a", "0A"),
    ],
)
def test_normalize_uid(text: str, uid: str) -> None:
    assert normalize_uid(text) == uid
    assert card_key(CREDENTIAL_KEY, text) == card_key(CREDENTIAL_KEY, uid)


@pytest.mark.parametrize("text", ["", " ", "::", "0", "04A1B", "04G1", "0x04A1", "04.A1", "04_a1"])
def test_normalize_uid_refuses(text: str) -> None:
    with pytest.raises(ContractError):
        normalize_uid(text)


def test_card_key_depends_on_the_credential_key() -> None:
    assert card_key(bytes(32), UID) != CARD_KEY


def test_random_uids() -> None:
    assert is_random_uid("08123456")
    assert not is_random_uid("04123456")
    assert not is_random_uid("0812345678AB")  # only 4-byte UIDs are random IDs


def test_times_need_an_offset() -> None:
    assert parse_time("2026-11-26T08:00:00Z").timestamp() == 1_795_680_000
    assert parse_time("2026-11-26T09:00:00+01:00").timestamp() == 1_795_680_000
    with pytest.raises(ContractError):
        parse_time("2026-11-26T08:00:00")
    with pytest.raises(ContractError):
        parse_time("yesterday")


# --- snapshots --------------------------------------------------------------------------------

ISSUED = "2026-11-26T08:00:00Z"


def snapshot_states() -> list[dict[str, Any]]:
    states = [vector_state()]
    for i in range(5):
        state = vector_state()
        state.update(member_id=f"m_{i}", version=100 + i, credentials=[], plan=None)
        states.append(state)
    states.append(erased_state("m_gone", ["downtown"], 200, ISSUED))
    return states


def test_snapshot_round_trip() -> None:
    data = build_snapshot("downtown", snapshot_states(), SIGNER, ISSUED)
    trailer, states = read_snapshot(data, VERIFIER, "downtown")
    assert states == [{**s, "kid": KID} for s in snapshot_states()]
    assert all("sig" not in s for s in states)
    assert trailer["site"] == "downtown"
    assert trailer["count"] == 6  # the erased member is not counted
    assert trailer["max_version"] == 200  # but its version is
    live = [(s["member_id"], s["version"]) for s in snapshot_states() if s["status"] != "erased"]
    assert trailer["digest"] == site_digest(live)


def _regzip(data: bytes, edit: Any) -> bytes:
    return gzip.compress(edit(gzip.decompress(data)))


def _tamper_line(raw: bytes) -> bytes:
    lines = raw.split(b"\n")
    lines[1] = lines[1].replace(b'"status":"active"', b'"status":"staff"')
    assert lines[1] != raw.split(b"\n")[1]
    return b"\n".join(lines)


def _drop_line(raw: bytes) -> bytes:
    lines = raw.split(b"\n")
    del lines[2]
    return b"\n".join(lines)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="truncated gzip"),
        pytest.param(lambda d: d[:-8], id="gzip trailer cut"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: _regzip(d, lambda r: r[:-1]), id="last newline cut"),
        pytest.param(
            lambda d: _regzip(d, lambda r: r[: r.rfind(b"\n", 0, len(r) - 1) + 1]), id="no trailer"
        ),
        pytest.param(lambda d: _regzip(d, lambda r: r[: len(r) // 2] + b"\n"), id="cut mid-body"),
        pytest.param(lambda d: _regzip(d, _tamper_line), id="tampered line"),
        pytest.param(lambda d: _regzip(d, _drop_line), id="dropped line"),
        pytest.param(lambda d: _regzip(d, lambda r: b'{"x":1}\n' + r), id="added line"),
        pytest.param(lambda d: _regzip(d, lambda r: r + b"[]\n"), id="not an object"),
        pytest.param(
            lambda d: _regzip(d, lambda r: r + b'{"type":"snapshot_trailer","kid":[],"sig":"x"}\n'),
            id="garbage trailer kid",
        ),
    ],
)
def test_snapshot_refuses_damage(corrupt: Any) -> None:
    data = build_snapshot("downtown", snapshot_states(), SIGNER, ISSUED)
    with pytest.raises(ContractError):
        read_snapshot(corrupt(data), VERIFIER, "downtown")


def test_snapshot_refuses_another_site() -> None:
    data = build_snapshot("uptown", snapshot_states(), SIGNER, ISSUED)
    with pytest.raises(ContractError, match="uptown"):
        read_snapshot(data, VERIFIER, "downtown")


def test_snapshot_refuses_an_untrusted_signer() -> None:
    data = build_snapshot("downtown", snapshot_states(), OTHER, ISSUED)
    with pytest.raises(SignatureError):
        read_snapshot(data, VERIFIER, "downtown")


def test_snapshot_refuses_a_trailer_for_another_body() -> None:
    """A genuine trailer spliced onto another body is caught by its sha256."""
    one = gzip.decompress(build_snapshot("downtown", snapshot_states(), SIGNER, ISSUED))
    two = gzip.decompress(build_snapshot("downtown", snapshot_states()[:3], SIGNER, ISSUED))
    cut_one = one.rfind(b"\n", 0, len(one) - 1) + 1
    cut_two = two.rfind(b"\n", 0, len(two) - 1) + 1
    with pytest.raises(ContractError, match="sha256"):
        read_snapshot(gzip.compress(one[:cut_one] + two[cut_two:]), VERIFIER, "downtown")


def test_event_ids_are_ulids_carrying_their_time() -> None:
    from gated.contract import new_ulid

    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
    ids = {new_ulid(1790000000.123) for _ in range(2000)}
    assert len(ids) == 2000
    for ulid in list(ids)[:50]:
        assert len(ulid) == 26 and set(ulid) <= set(alphabet)
        # 26 characters × 5 bits = 130: the first 10 characters carry the 48-bit millisecond time
        bits = "".join(f"{alphabet.index(c):05b}" for c in ulid[:10])
        assert int(bits, 2) == 1790000000123
    assert new_ulid(1790000000.000) < new_ulid(1790000000.001)


def test_hot_path_hasher_is_hmac_sha256() -> None:
    from gated.contract import CredentialHasher, card_credential_string, credential_digest

    key = bytes(range(32))
    hasher = CredentialHasher(key)
    for text in ("card:04A1B2C3D4E5F6", "w26:12:3456", "card:", "card:" + "AB" * 40):
        assert hasher(text) == credential_digest(key, text)
    # A reader's value, hashed from the state that has taken in "card:" already.
    for value in ("04A1B2C3D4E5F6", "w26:12:3456", "", "AB" * 40):
        assert hasher.card_value(value) == credential_digest(key, card_credential_string(value))


def test_site_summary_counts_and_digests_the_live_states_and_takes_every_version() -> None:
    """One summary for the manifest (push, billing) and the snapshot trailer: an erased member
    raises max_version but is neither counted nor in the digest."""
    from gated.contract import site_summary

    states = [
        {"member_id": "m_1001", "version": 42, "status": "active"},
        {"member_id": "m_7", "version": 3, "status": "suspended"},
        {"member_id": "m_9", "version": 50, "status": "erased"},
    ]
    summary = site_summary(states)
    assert (summary.count, summary.max_version, summary.digest) == (2, 50, DIGEST)
    assert site_summary([]).digest == "0" * 64


def test_statuses_are_the_status_literal() -> None:
    from typing import get_args

    from gated.contract import STATUSES, Status

    assert get_args(Status) == STATUSES and "erased" in STATUSES


def test_a_gate_reads_public_key_files_as_cryptography_does(tmp_path: Path) -> None:
    """The gate reads Ed25519 public keys without cryptography (its bindings cost a gate ~9 MiB):
    the same 32 bytes for the test vector's key and for a new one, and a clear refusal for
    anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from gated.contract import private_key_pem, public_key_pem

    path = tmp_path / "head-office.pub"
    for private in (Ed25519PrivateKey.from_private_bytes(PRIVATE), Ed25519PrivateKey.generate()):
        path.write_bytes(public_key_pem(private.public_key()))
        assert load_public_key_raw(path) == private.public_key().public_bytes_raw()
    path.write_bytes(public_key_pem(Ed25519PrivateKey.from_private_bytes(PRIVATE).public_key()))
    assert base64.b64encode(load_public_key_raw(path)).decode() == PUBLIC_B64
    x25519 = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for wrong in (
        x25519,
        private_key_pem(Ed25519PrivateKey.generate()),
        b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        b"\xff\xfe",
        b"",
    ):
        path.write_bytes(wrong)
        with pytest.raises(ContractError, match="not an Ed25519 public key"):
            load_public_key_raw(path)
