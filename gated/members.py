"""Members files (JSON list or CSV) → MemberState objects, hashing card UIDs as they are read.

A members file carries the MemberState fields without ``type``, ``kid``, ``sig`` and
``version``, and raw card UIDs in ``cards``. The raw UIDs never leave this function: only their
HMAC card keys do. In CSV, list fields (``cards``, ``zones``, ``sites``) are separated by ``;``
and ``schedule`` is JSON.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gated.cache.index import member_row
from gated.config import format_validation_error
from gated.contract import ContractError, card_key, format_time
from gated.errors import GatedError
from gated.payloads import MemberState

LIST_FIELDS = ("cards", "zones", "sites")
INT_FIELDS = ("daily_limit",)
ALLOWED_FIELDS = {
    "member_id", "sites", "status", "role", "valid_from", "valid_until", "plan", "schedule",
    "zones", "cards", "credentials", "qr_key", "daily_limit", "issued_at",
}  # fmt: skip


class MembersFileError(GatedError):
    """A members file that cannot be loaded; one line naming the row and field."""


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MembersFileError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # e.g. a spreadsheet's CSV export in Windows-1252
        raise MembersFileError(f"{path}: not UTF-8 text (save the file as UTF-8)") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MembersFileError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise MembersFileError(f"{path}: expected a JSON list of members")
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise MembersFileError(f"{path}: item {i}: expected an object")
            yield f"item {i}", item
        return
    reader = csv.DictReader(text.splitlines())
    for i, raw in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for k, v in raw.items():
            if k is None or v is None:
                raise MembersFileError(f"{path}: line {i}: wrong number of columns")
            v = v.strip()
            if k in LIST_FIELDS:
                row[k] = [x.strip() for x in v.split(";") if x.strip()]
            elif k == "schedule":
                try:
                    row[k] = json.loads(v) if v else []
                except ValueError as exc:
                    raise MembersFileError(f"{path}: line {i}: schedule: not JSON") from exc
            elif k in INT_FIELDS:
                try:
                    row[k] = int(v) if v else None
                except ValueError as exc:
                    raise MembersFileError(f"{path}: line {i}: {k}: not a whole number") from exc
            else:
                row[k] = v or None
        yield f"line {i}", row


def read_members_file(
    path: Path, credential_key: bytes, *, default_site: str, first_version: int
) -> list[dict[str, Any]]:
    """Read and validate every row; returns MemberStates (unsigned) with versions assigned from
    ``first_version`` upwards. Raises MembersFileError on the first bad row, before anything is
    applied."""
    issued_at = format_time(time.time())
    states: list[dict[str, Any]] = []
    seen: set[str] = set()
    for where, row in _rows(path):
        unknown = set(row) - ALLOWED_FIELDS
        if unknown:
            raise MembersFileError(f"{path}: {where}: unknown field {sorted(unknown)[0]!r}")
        cards = row.pop("cards", None) or []
        if not isinstance(cards, list) or not all(isinstance(uid, str) for uid in cards):
            raise MembersFileError(f"{path}: {where}: cards: expected a list of card UIDs")
        try:
            keys = [card_key(credential_key, uid) for uid in cards]
        except ContractError as exc:
            raise MembersFileError(f"{path}: {where}: cards: {exc}") from exc
        state = {
            "type": "member_state",
            "kid": None,
            "member_id": row.get("member_id"),
            "sites": row.get("sites") or [default_site],
            "version": first_version + len(states),
            "status": row.get("status") or "active",
            "role": row.get("role") or "member",
            "valid_from": row.get("valid_from"),
            "valid_until": row.get("valid_until"),
            "plan": row.get("plan"),
            "schedule": row.get("schedule") or [],
            "zones": row.get("zones") or [],
            "credentials": sorted(set(keys + list(row.get("credentials") or []))),
            "qr_key": row.get("qr_key"),
            "daily_limit": row.get("daily_limit"),
            "issued_at": row.get("issued_at") or issued_at,
        }
        try:
            model = MemberState.model_validate(state)
            member_row(state)  # times and keys usable by the gate
        except ValidationError as exc:
            raise MembersFileError(f"{path}: {where}: {format_validation_error(exc)}") from exc
        except ContractError as exc:
            raise MembersFileError(f"{path}: {where}: {exc}") from exc
        if model.member_id in seen:
            raise MembersFileError(f"{path}: {where}: member_id {model.member_id!r} appears twice")
        seen.add(model.member_id)
        states.append(state)
    return states
