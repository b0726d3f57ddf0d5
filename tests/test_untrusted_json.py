"""The one parser for untrusted JSON and the version bounds of the contract models."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gated.contract import (
    MAX_JSON_DEPTH,
    MAX_VERSION,
    PayloadError,
    json_depth_exceeds,
    loads_bounded,
    member_payload,
    member_version,
)
from gated.payloads import Manifest, MemberState


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"[]" + b"}" * (depth - 1)


def test_nesting_up_to_the_limit_parses_and_one_more_is_refused() -> None:
    assert loads_bounded(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(PayloadError) as refused:
        loads_bounded(nested(MAX_JSON_DEPTH + 1))
    assert refused.value.reason == "too_deep"


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,  # never closed
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" * 60_000 + b"}" * 4_000,
    ],
)
def test_deep_or_broken_nesting_is_a_payload_error_never_a_recursion_error(
    payload: bytes,
) -> None:
    with pytest.raises(PayloadError) as refused:
        loads_bounded(payload, max_bytes=1 << 20)
    assert refused.value.reason in ("too_deep", "malformed")


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"note": "[" * 1000 + '\\"{' * 500, "list": [[1], {"b": "]]]"}]})
    assert loads_bounded(text.encode())["list"][1] == {"b": "]]]"}
    assert not json_depth_exceeds(b'["' + b"[" * 100 + b'"]', 4)
    # An unterminated string runs to the end (linear time on quotes and backslashes).
    assert not json_depth_exceeds(b'"\\"' * 20_000, 4)


def test_size_encoding_and_syntax_are_refused_with_their_reason() -> None:
    with pytest.raises(PayloadError) as refused:
        loads_bounded(b" " * 70_000)
    assert refused.value.reason == "oversized"
    for bad in (b'{"a": "\xff\xfe"}', b"", b"NaN", b'{"a": 1,}', b"\x00"):
        with pytest.raises(PayloadError) as refused:
            loads_bounded(bad)
        assert refused.value.reason == "malformed", bad


def test_member_payload_checks_before_any_signature_work() -> None:
    obj, version = member_payload(b'{"member_id": "m_1", "version": 7}', "m_1")
    assert version == 7 and obj["member_id"] == "m_1"
    cases = {
        b'{"member_id": "m_1", "version": 9223372036854775808}': "version_out_of_range",
        b'{"member_id": "m_1", "version": 0}': "version_out_of_range",
        b'{"member_id": "m_1", "version": "7"}': "malformed",
        b'{"member_id": "m_1", "version": true}': "malformed",
        b'{"member_id": "m_2", "version": 7}': "wrong_member_id",
        b"[1, 2]": "malformed",
        nested(40): "too_deep",
    }
    for payload, reason in cases.items():
        with pytest.raises(PayloadError) as refused:
            member_payload(payload, "m_1")
        assert refused.value.reason == reason, payload
        # The sync's order gives the same reasons, whatever the cache holds.
        for held in (0, 7, MAX_VERSION):
            with pytest.raises(PayloadError) as refused:
                member_version(payload, "m_1", held)
            assert refused.value.reason == reason, (payload, held)
    assert member_version(b'{"member_id": "m_1", "version": 7}', "m_1", 6) == 7
    assert member_version(b'{"member_id": "m_1", "version": 7}', "m_1", 7) is None
    # A state nested too deep is refused when newer, and dropped unread when not.
    deep = b'{"member_id": "m_1", "version": 7, "x": %s}' % nested(40)
    with pytest.raises(PayloadError) as refused:
        member_version(deep, "m_1", 6)
    assert refused.value.reason == "too_deep"
    assert member_version(deep, "m_1", 7) is None
    assert member_payload(b'{"member_id": "m_1", "version": %d}' % MAX_VERSION, "m_1")[1] == (
        MAX_VERSION
    )


def test_models_bound_versions_at_2_to_the_53() -> None:
    state = {
        "member_id": "m_1",
        "sites": ["downtown"],
        "status": "active",
        "issued_at": "2026-11-26T08:00:00Z",
    }
    assert MemberState.model_validate({**state, "version": MAX_VERSION}).version == MAX_VERSION
    manifest = {"site": "downtown", "count": 1, "digest": "00", "issued_at": "2026-11-26T08:00:00Z"}
    assert Manifest.model_validate({**manifest, "max_version": MAX_VERSION})
    for wild in (MAX_VERSION + 1, 2**63, 2**64):
        with pytest.raises(ValidationError):
            MemberState.model_validate({**state, "version": wild})
        with pytest.raises(ValidationError):
            Manifest.model_validate({**manifest, "max_version": wild})
