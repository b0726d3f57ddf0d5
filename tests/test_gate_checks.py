"""The gate's plain checks of signed manifests, snapshot trailers and commands against the pydantic
models of the contract (gated.payloads), which the gate does not import: whatever the gate
accepts, the model accepts, and the gate refuses every value the model refuses. The one
difference on purpose: the gate coerces nothing (``"5"`` or ``True`` is not a count)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gated.contract import MAX_VERSION, Command, ContractError, check_command, check_site_summary
from gated.payloads import GateCommand, Manifest, SnapshotTrailer

SUMMARY = {
    "type": "manifest", "kid": "56475aa75463474c", "site": "downtown", "count": 3,
    "max_version": 42, "digest": "ab" * 32, "issued_at": "2026-11-26T08:00:00Z",
}  # fmt: skip
TRAILER = {**SUMMARY, "type": "snapshot_trailer", "sha256": "cd" * 32}
COMMAND = {
    "type": "gate_command", "kid": "56475aa75463474c", "id": "01JD0000000000000000000000",
    "site": "downtown", "gate": "turnstile-1", "action": "pulse", "args": {"operator": "ann"},
    "issued_at": "2026-11-26T08:00:00Z", "not_after": "2026-11-26T08:01:00Z",
}  # fmt: skip
# Values every field is tried with (the field removed too). The gate refuses the coercible ones
# the model would take: a bool or a numeric string for an integer.
WILD: list[Any] = [None, 0, -1, 5, True, "5", "x", 1.5, [], {}, MAX_VERSION, MAX_VERSION + 1]
COERCED = (True, "5", 1.5)


def _model_accepts(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


def _gate_accepts(kind: str, body: dict[str, Any]) -> bool:
    try:
        if kind == "gate_command":
            check_command(body)
        else:
            check_site_summary(body, kind)  # type: ignore[arg-type]
    except ContractError:
        return False
    return True


CASES = [("manifest", Manifest, SUMMARY), ("snapshot_trailer", SnapshotTrailer, TRAILER),
         ("gate_command", GateCommand, COMMAND)]  # fmt: skip


@pytest.mark.parametrize(("kind", "model", "good"), CASES)
def test_the_gate_accepts_what_the_model_accepts_and_refuses_what_it_refuses(
    kind: str, model: type[BaseModel], good: dict[str, Any]
) -> None:
    assert _gate_accepts(kind, good) and _model_accepts(model, good)
    tried = 0
    for field in good:
        if field == "type":
            continue
        variants = [{k: v for k, v in good.items() if k != field}]
        variants += [{**good, field: value} for value in WILD]
        for body in variants:
            gate, schema = _gate_accepts(kind, body), _model_accepts(model, body)
            if gate:
                assert schema, (field, body.get(field))
            elif schema:  # refused by the gate alone: only a value the model would coerce
                assert body.get(field) in COERCED or type(body.get(field)) is bool, (field, body)
            tried += 1
    assert tried > 50
    # The wrong type is refused, and unknown fields (covered by the signature) are kept.
    assert not _gate_accepts(kind, {**good, "type": "member_state"})
    assert _gate_accepts(kind, {**good, "later_field": [1]})


def test_a_command_comes_out_as_the_gate_runs_it() -> None:
    assert check_command(COMMAND) == Command(
        COMMAND["id"], "downtown", "turnstile-1", "pulse", {"operator": "ann"},
        COMMAND["issued_at"], COMMAND["not_after"],
    )  # fmt: skip
    assert check_command({k: v for k, v in COMMAND.items() if k != "args"}).args == {}
