"""The contract's payloads as pydantic models: how head office, the tools and the tests read and
write MemberState, Manifest, SnapshotTrailer, GateCommand, GateEvent and GateStatus.

The gate does not import this module: it checks what it receives with the plain functions of
:mod:`gated.contract` (``member_row``, ``check_site_summary``, ``check_command``) and builds its
events and status as dicts, because these models cost a gate ~10 MiB of memory. Tests hold the
plain checks and the dicts to these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gated.contract import MAX_VERSION, MEMBER_ID_RE, EventKind, Status

Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ScheduleWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]]
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")


class MemberState(_Payload):
    type: Literal["member_state"] = "member_state"
    kid: str | None = None
    member_id: str = Field(pattern=MEMBER_ID_RE.pattern)
    sites: list[str]
    version: Version
    status: Status
    role: Literal["member", "staff"] = "member"
    valid_from: str | None = None
    valid_until: str | None = None
    plan: str | None = None
    schedule: list[ScheduleWindow] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    credentials: list[str] = Field(default_factory=list)
    qr_key: str | None = None
    daily_limit: int | None = Field(default=None, ge=0)
    issued_at: str
    sig: str | None = None


class _SiteSummary(_Payload):
    """What a manifest and a snapshot trailer both state about a site's members."""

    kid: str | None = None
    site: str
    count: int = Field(ge=0, le=MAX_VERSION)
    max_version: Annotated[int, Field(ge=0, le=MAX_VERSION)]
    digest: str
    issued_at: str
    sig: str | None = None


class Manifest(_SiteSummary):
    type: Literal["manifest"] = "manifest"


class SnapshotTrailer(_SiteSummary):
    type: Literal["snapshot_trailer"] = "snapshot_trailer"
    sha256: str


class GateCommand(_Payload):
    type: Literal["gate_command"] = "gate_command"
    kid: str | None = None
    id: str
    site: str
    gate: str
    action: Literal["pulse", "lockdown_on", "lockdown_off", "resync", "message"]
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: str
    not_after: str
    sig: str | None = None


class GateEvent(_Payload):
    event_id: str
    site: str
    gate: str
    at: str
    kind: EventKind
    member_id: str | None = None
    credential_kind: Literal["card", "qr"] | None = None
    reader_id: str | None = None
    direction: Literal["in", "out"] | None = None
    reason: str | None = None
    latency_us: int | None = None
    source: Literal["reader", "control", "command"] = "reader"
    operator: str | None = None


class GateStatus(_Payload):
    state: Literal["online", "offline"]
    site: str
    gate: str
    software_version: str | None = None
    started_at: str | None = None
    members: int | None = None
    max_version: Annotated[int, Field(ge=0, le=MAX_VERSION)] | None = None
    digest: str | None = None
    last_head_office_at: str | None = None
    outbox_depth: int | None = None
    lockdown: bool | None = None
    # Each reader's health: ``{"id", "kind", "state": "ok"|"fault", "direction"}``.
    readers: list[dict[str, str]] | None = None


def _first_error(exc: ValidationError) -> str:
    """One line for a model's first complaint: the field and what is wrong with it."""
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
