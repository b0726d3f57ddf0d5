"""Fuzz targets for what a gate parses from strangers: MQTT payloads on the member, manifest and
command topics, control-socket requests and QR codes. Whatever arrives, nothing escapes but the
documented refusal (ContractError and its kinds, a pydantic ValidationError from the models, or
a reply with ``"ok": false``).

In CI they run derandomized and short. ``scripts/fuzz --minutes N`` runs them with
``HYPOTHESIS_PROFILE=fuzz`` (random, many examples a pass) pass after pass for N minutes.
Each fault found so far is an ``@example``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gated.cache.verifier as verifier_process
from gated.contract import (
    ContractError,
    PayloadError,
    Signer,
    Verifier,
    check_command,
    check_site_summary,
    compact_json,
    loads_bounded,
    member_payload,
    member_version,
    mint_qr_code,
    parse_qr_code,
)
from gated.control import Caller, ControlError, ControlServer
from gated.payloads import GateCommand, Manifest
from gated.policy.decide import Member
from gated.policy.qr import QrVerifier

FUZZING = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
# CI: the same examples every run, a few seconds in all. Fuzzing: the loaded profile's.
fuzz = (
    settings()
    if FUZZING
    else settings(
        derandomize=True,
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
)

SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
VERIFIER = Verifier([SIGNER.public_key_raw])
SITE = "downtown"

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_SHORT = b"[" * 30_000 + b"]" * 30_000
DEEP_1020 = b"[" * 1020 + b"]" * 1020


def state(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "member_state",
        "member_id": "m_1",
        "sites": [SITE],
        "version": 7,
        "status": "active",
        "role": "member",
        "valid_from": None,
        "valid_until": None,
        "plan": "basic",
        "schedule": [],
        "zones": [],
        "credentials": ["00" * 32],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": "2026-11-26T08:00:00Z",
    }
    return base | overrides


# The faults' payloads: a signed version at 2^63, nesting past every parser, a field nested just
# under orjson's limit beside a trusted kid, huge strings, invalid UTF-8, wrong types.
WILD_VERSION = compact_json(SIGNER.sign(state(version=2**63)))
DEEP_MEMBER = (
    b'{"type":"member_state","kid":"%s","member_id":"m_1","version":5,"sig":"AAAA","x":%s}'
    % (SIGNER.kid.encode(), DEEP_1020)
)
HUGE_STRING = compact_json(SIGNER.sign(state(plan="x" * 70_000)))
BAD_UTF8 = b'{"member_id":"m_1","version":7,"plan":"\xff\xfe"}'
WRONG_TYPES = compact_json(
    SIGNER.sign(state(version="7", sites="downtown", schedule={"days": 1}, credentials=[1]))
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
FIELDS = list(state())


@st.composite
def member_payloads(draw: st.DrawFn) -> bytes:
    """Raw bytes, arbitrary JSON, or a member state with fields replaced, signed or not."""
    kind = draw(st.sampled_from(["bytes", "json", "state"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4))
    obj = state(**fields)
    for dropped in draw(st.sets(st.sampled_from(FIELDS), max_size=2)):
        obj.pop(dropped, None)
    if draw(st.booleans()):
        with contextlib.suppress(ContractError):  # "type" replaced: not signable, sent unsigned
            obj = SIGNER.sign(obj)
    return compact_json(obj)


@pytest.fixture(scope="module", autouse=True)
def verifier_process_globals() -> Iterator[None]:
    """What ``_init_verifier`` sets in a verifier process, set here without its nice/prctl."""
    saved = verifier_process._verifier, verifier_process._site
    verifier_process._verifier, verifier_process._site = VERIFIER, SITE
    yield
    verifier_process._verifier, verifier_process._site = saved


# --- (a) MQTT payloads ------------------------------------------------------------------------


@fuzz
@given(member_payloads())
@example(WILD_VERSION)
@example(DEEP)
@example(DEEP_SHORT)
@example(DEEP_MEMBER)
@example(HUGE_STRING)
@example(BAD_UTF8)
@example(WRONG_TYPES)
def test_member_payloads_are_refused_with_a_reason_never_an_exception(payload: bytes) -> None:
    # On the loop: the checks before any signature work.
    try:
        _obj, version = member_payload(payload, "m_1")
        assert 1 <= version <= 2**53
    except PayloadError as refused:
        assert refused.reason in (
            "oversized", "too_deep", "malformed", "wrong_member_id", "version_out_of_range"
        )  # fmt: skip
    # The sync's order (the version against the cache first): the same answer and reason, but
    # a state not newer than the cache is dropped before its nesting is counted.
    expected: int | str
    try:
        expected = member_payload(payload, "m_1")[1]
    except PayloadError as refused:
        expected = refused.reason
    for held in (0, 5, 2**53):
        try:
            got = member_version(payload, "m_1", held)
        except PayloadError as refused:
            assert refused.reason == expected
            continue
        if got is not None:
            assert got == expected and got > held
        elif expected == "too_deep":
            obj = orjson.loads(payload)
            assert obj["member_id"] == "m_1" and 1 <= obj["version"] <= held
        else:
            assert isinstance(expected, int) and expected <= held
    # In a verifier process: every payload is a row or a counted reject, never an exception.
    _chunks, rows, _newest, rejects = verifier_process.verify_member_states([payload, payload])
    assert rows + len(rejects) == 2


def signed_object(payload: bytes, verifier: Verifier, kind: Any) -> dict[str, Any]:
    """What the sync does with a manifest or a command payload before acting on it."""
    obj = loads_bounded(payload)
    if not isinstance(obj, dict):
        raise ContractError("not an object")
    return verifier.verify(obj, kind)


@st.composite
def signed_payloads(draw: st.DrawFn, kind: str) -> bytes:
    if draw(st.booleans()):
        return draw(member_payloads())
    obj = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
    obj["type"] = kind
    if draw(st.booleans()):
        obj = SIGNER.sign(obj)
    return compact_json(obj)


@fuzz
@given(signed_payloads("manifest"))
@example(DEEP)
@example(DEEP_SHORT)
@example(
    compact_json(
        SIGNER.sign(
            {"type": "manifest", "site": SITE, "count": 1, "max_version": 2**63, "digest": "0"}
            | {"issued_at": "2026-11-26T08:00:00Z"}
        )
    )
)
@example(BAD_UTF8)
def test_manifest_payloads_only_raise_contract_errors(payload: bytes) -> None:
    """The gate's plain check raises only ContractError, and what it accepts the model accepts."""
    with contextlib.suppress(ContractError):
        body = check_site_summary(signed_object(payload, VERIFIER, "manifest"), "manifest")
        Manifest.model_validate(body)


@fuzz
@given(signed_payloads("gate_command"))
@example(DEEP)
@example(DEEP_SHORT)
@example(compact_json(SIGNER.sign({"type": "gate_command", "id": "x", "args": "not a dict"})))
def test_command_payloads_only_raise_contract_errors(payload: bytes) -> None:
    """As for manifests: ContractError only, and the model accepts what the gate runs."""
    with contextlib.suppress(ContractError):
        body = signed_object(payload, VERIFIER, "gate_command")
        command = check_command(body)
        assert GateCommand.model_validate(body).action == command.action


# --- (b) control-socket requests --------------------------------------------------------------


async def handler(cmd: str, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    if cmd == "status":
        return {"args": len(args)}
    raise ControlError(f"unknown command {cmd!r}")


CONTROL = ControlServer(Path("/nonexistent/control.sock"), handler)
requests = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"cmd": json_values, "args": json_values}).map(
        lambda v: json.dumps(v).encode()
    ),
)


@fuzz
@given(requests)
@example(DEEP_SHORT)
@example(b'{"cmd":"status","args":' + DEEP_SHORT + b"}")
@example(b'{"cmd":"status","args":{"a":"' + b"x" * 70_000 + b'"}}')
@example(b"\xff\xfe not json")
@example(b'{"cmd": 1, "args": []}')
@example(b'{"cmd": "status", "args": {"n": 9223372036854775808}}')
def test_control_requests_are_always_answered(line: bytes) -> None:
    reply = asyncio.run(CONTROL._dispatch(line + b"\n", Caller(None, None)))
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and "\n" not in reply["error"]


# --- (c) QR codes -----------------------------------------------------------------------------

APP_SEED = bytes(range(32, 64))
NOW = 1_795_680_000.0
QR_MEMBER = Member("m_1", 3, "active", qr_key=bytes(nacl.signing.SigningKey(APP_SEED).verify_key))
GOOD_QR = mint_qr_code(APP_SEED, "m_1", int(NOW), "0123456789abcdef")


@st.composite
def qr_codes(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    parts = GOOD_QR.split(".")
    index = draw(st.integers(0, len(parts) - 1))
    parts[index] = draw(st.text(max_size=100))
    return ".".join(parts)


@fuzz
@given(qr_codes())
@example(GOOD_QR)
@example("GQ1.m_1.99999999999999999999.0123456789abcdef." + "A" * 86)
@example("GQ1." + "m" * 100_000)
@example("GQ1.m_1.١٢٣.0123456789abcdef." + "A" * 86)  # non-ASCII digits
@example("\udcff" * 10)
def test_qr_codes_are_decided_never_raised(text: str) -> None:
    try:
        member_id, _ts, nonce, _signed, signature = parse_qr_code(text)
        assert len(signature) == 64 and len(nonce) == 16 and member_id
    except ContractError:
        pass
    check = QrVerifier(30).check(text, {"m_1": QR_MEMBER}.get, NOW)
    assert check.fault in (
        None, "qr_malformed", "unknown_credential", "qr_bad_signature", "qr_expired", "qr_replayed"
    )  # fmt: skip
