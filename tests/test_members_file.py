"""Members files (JSON list or CSV): UIDs hashed as read, versions assigned, bad rows named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gated.contract import card_key
from gated.members import MembersFileError, read_members_file
from gated.payloads import MemberState

KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
VECTOR_CARD_KEY = "7d49c66ea0609cf85a291cf2f6451f3ca1f6192c92963bee14662136e4d65e56"
SCHEDULE = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "16:00"}]


def read(path: Path, first_version: int = 1) -> list[dict[str, Any]]:
    return read_members_file(path, KEY, default_site="downtown", first_version=first_version)


def write_json(tmp_path: Path, rows: list[Any], name: str = "members.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def write_csv(tmp_path: Path, text: str, name: str = "members.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_file(tmp_path: Path) -> None:
    path = write_json(
        tmp_path,
        [
            {
                "member_id": "m_1001",
                "cards": ["04:a1:b2:c3:d4:e5:f6"],
                "plan": "offpeak",
                "schedule": SCHEDULE,
                "valid_until": "2026-12-04T00:00:00Z",
            },
            {
                "member_id": "m_7",
                "status": "frozen",
                "role": "staff",
                "zones": ["spa"],
                "daily_limit": 2,
            },
        ],
    )
    first, second = read(path, first_version=101)
    assert first["credentials"] == [VECTOR_CARD_KEY]
    assert "cards" not in first
    assert (first["version"], second["version"]) == (101, 102)
    assert first["sites"] == ["downtown"]  # the gate's site when the file names none
    assert (first["status"], first["role"], first["schedule"]) == ("active", "member", SCHEDULE)
    assert (second["status"], second["role"], second["zones"], second["daily_limit"]) == (
        "frozen",
        "staff",
        ["spa"],
        2,
    )
    for state in (first, second):
        MemberState.model_validate(state)  # every MemberState field, valid
        assert state["type"] == "member_state"


def test_csv_file(tmp_path: Path) -> None:
    schedule = json.dumps(SCHEDULE).replace('"', '""')
    path = write_csv(
        tmp_path,
        "member_id,cards,status,zones,sites,schedule,daily_limit,valid_until\n"
        f'm_1001,04A1B2C3D4E5F6; DE-AD-BE-EF,active,main;spa,downtown;uptown,"{schedule}",3,2026-12-04T00:00:00Z\n'
        "m_7,,suspended,,,,,\n",
    )
    first, second = read(path, first_version=5)
    assert first["credentials"] == sorted([VECTOR_CARD_KEY, card_key(KEY, "DEADBEEF")])
    assert (first["zones"], first["sites"], first["schedule"]) == (
        ["main", "spa"],
        ["downtown", "uptown"],
        SCHEDULE,
    )
    assert (first["daily_limit"], first["valid_until"]) == (3, "2026-12-04T00:00:00Z")
    assert (second["credentials"], second["status"], second["sites"]) == (
        [],
        "suspended",
        ["downtown"],
    )
    assert (second["daily_limit"], second["valid_until"], second["schedule"]) == (None, None, [])
    assert [s["version"] for s in (first, second)] == [5, 6]


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_bytes("member_id,cards\nm_1,04a1b2c3d4e5f6\n".encode("utf-8-sig"))
    assert read(path)[0]["credentials"] == [VECTOR_CARD_KEY]


@pytest.mark.parametrize(
    "uid",
    [
        "04A1B2C3D4E5F6",
        "04a1b2c3d4e5f6",
        "04:A1:B2:C3:D4:E5:F6",
        "04-a1-b2-c3-d4-e5-f6",
        "04 A1 B2 C3 D4 E5 F6",
    ],
)
def test_uid_normalization(tmp_path: Path, uid: str) -> None:
    path = write_json(tmp_path, [{"member_id": "m_1", "cards": [uid]}])
    assert read(path)[0]["credentials"] == [VECTOR_CARD_KEY]


def test_same_card_twice_is_one_key(tmp_path: Path) -> None:
    path = write_json(
        tmp_path, [{"member_id": "m_1", "cards": ["04a1b2c3d4e5f6", "04:A1:B2:C3:D4:E5:F6"]}]
    )
    assert read(path)[0]["credentials"] == [VECTOR_CARD_KEY]


def test_no_raw_uid_in_the_states(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{"member_id": "m_1", "cards": ["04:a1:b2:c3:d4:e5:f6"]}])
    text = json.dumps(read(path)).upper()
    assert "04A1B2C3D4E5F6" not in text and "04:A1:B2" not in text


def test_empty_files(tmp_path: Path) -> None:
    assert read(write_json(tmp_path, [])) == []
    assert read(write_csv(tmp_path, "member_id,cards\n")) == []


BAD_JSON = [
    # (id, rows, what the message must name)
    (
        "bad uid",
        [{"member_id": "m_1"}, {"member_id": "m_2", "cards": ["04A1B"]}],
        ["item 1", "cards"],
    ),
    ("non-hex uid", [{"member_id": "m_1", "cards": ["nothex"]}], ["item 0", "cards"]),
    ("cards not a list", [{"member_id": "m_1", "cards": 4711}], ["item 0", "cards"]),
    ("unknown field", [{"member_id": "m_1", "colour": "red"}], ["item 0", "colour"]),
    ("version is assigned, not given", [{"member_id": "m_1", "version": 9}], ["item 0", "version"]),
    ("bad status", [{"member_id": "m_1", "status": "vip"}], ["item 0", "status"]),
    ("bad member id", [{"member_id": "m 1"}], ["item 0", "member_id"]),
    ("missing member id", [{"cards": []}], ["item 0", "member_id"]),
    ("bad time", [{"member_id": "m_1", "valid_until": "next year"}], ["item 0"]),
    (
        "bad schedule",
        [{"member_id": "m_1", "schedule": [{"days": ["mon"], "start": "9", "end": "16:00"}]}],
        ["item 0", "schedule"],
    ),
    ("negative limit", [{"member_id": "m_1", "daily_limit": -1}], ["item 0", "daily_limit"]),
    ("not an object", [{"member_id": "m_1"}, "m_2"], ["item 1"]),
]


@pytest.mark.parametrize(("rows", "names"), [b[1:] for b in BAD_JSON], ids=[b[0] for b in BAD_JSON])
def test_bad_json_row(tmp_path: Path, rows: list[Any], names: list[str]) -> None:
    with pytest.raises(MembersFileError) as info:
        read(write_json(tmp_path, rows))
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert "04A1B" not in message  # a raw UID is not repeated back


BAD_CSV = [
    ("bad uid on line 3", "member_id,cards\nm_1,04A1B2\nm_2,04A1B\n", ["line 3", "cards"]),
    ("too many columns", "member_id,cards\nm_1,04A1B2,extra\n", ["line 2", "columns"]),
    ("too few columns", "member_id,cards,status\nm_1,04A1B2\n", ["line 2", "columns"]),
    ("bad schedule JSON", "member_id,schedule\nm_1,[{\n", ["line 2", "schedule"]),
    ("limit not a number", "member_id,daily_limit\nm_1,lots\n", ["line 2", "daily_limit"]),
    ("unknown column", "member_id,colour\nm_1,red\n", ["line 2", "colour"]),
]


@pytest.mark.parametrize(("text", "names"), [b[1:] for b in BAD_CSV], ids=[b[0] for b in BAD_CSV])
def test_bad_csv_row(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(MembersFileError) as info:
        read(write_csv(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_duplicate_member_ids_are_refused(tmp_path: Path) -> None:
    path = write_json(tmp_path, [{"member_id": "m_1"}, {"member_id": "m_2"}, {"member_id": "m_1"}])
    with pytest.raises(MembersFileError, match=r"item 2.*'m_1'.*twice"):
        read(path)
    csv = write_csv(tmp_path, "member_id\nm_1\nm_1\n")
    with pytest.raises(MembersFileError, match="line 3"):
        read(csv)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("members.json", "[{", "not valid JSON"),
        ("members.json", '{"member_id": "m_1"}', "JSON list"),
    ],
)
def test_bad_json_file(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MembersFileError, match=problem):
        read(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_bytes("member_id,plan\nm_1,Jürgen's plan\n".encode("cp1252"))
    with pytest.raises(MembersFileError, match="UTF-8"):
        read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MembersFileError, match=r"nope\.csv"):
        read(tmp_path / "nope.csv")
