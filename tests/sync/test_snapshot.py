"""Cold start and anti-entropy by signed snapshot, served over HTTP by a small local server."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import gated.cache.snapshot as snapshot_module
from gated.cache.snapshot import (
    SNAPSHOT_PIECE_BYTES,
    SNAPSHOT_WRITE_BYTES,
    SnapshotError,
    fetch_snapshot,
)
from gated.config import HeadOfficeConfig
from gated.contract import Signer, build_snapshot, format_time
from tests.gatefixture import GateProcess, write_config
from tests.services import Mosquitto
from tests.sync.conftest import mqtt_section
from tests.sync.helpers import SITE, TOKEN, HeadOffice, SnapshotServer, uid_for, wait_until


@pytest.fixture
def server() -> Iterator[SnapshotServer]:
    s = SnapshotServer()
    yield s
    s.close()


@pytest.fixture
def snap_gate(
    tmp_path: Path, mosquitto: Mosquitto, server: SnapshotServer
) -> Iterator[GateProcess]:
    root = tmp_path / "gate"
    root.mkdir()
    (root / "token").write_text(TOKEN + "\n")
    head_office = f'[head_office]\nsnapshot_url = "{server.url}"\ntoken_file = "{root / "token"}"\n'
    config = write_config(root, extra=mqtt_section(mosquitto.url) + head_office)
    proc = GateProcess(config, root)
    yield proc
    proc.stop()


@pytest.fixture
def hq(snap_gate: GateProcess, mosquitto: Mosquitto) -> Iterator[HeadOffice]:
    office = HeadOffice(snap_gate.root / "keys", mosquitto.port)
    yield office
    office.close()


def states(hq: HeadOffice, n: int, version_base: int = 0, **kw: Any) -> list[dict[str, Any]]:
    return [hq.state(f"s_{i}", version_base + i + 1, cards=[uid_for(i)], **kw) for i in range(n)]


def snapshot(
    hq: HeadOffice, items: list[dict[str, Any]], signer: Signer | None = None, site: str = SITE
) -> bytes:
    return build_snapshot(site, items, signer or hq.signer, format_time(time.time()))


def test_empty_gate_starts_from_the_snapshot(
    snap_gate: GateProcess, server: SnapshotServer, hq: HeadOffice
) -> None:
    items = states(hq, 2000)
    items[5]["status"] = "erased"
    server.body = snapshot(hq, items)
    snap_gate.start()
    # The index is swapped in a loop pass before the snapshot's report is written: wait for both.
    status = wait_until(
        lambda: (
            (s := snap_gate.request("status"))["members"] == 1999
            and s["sync"]["last_snapshot"]
            and s
        ),
        what="snapshot",
    )
    assert status["max_version"] == 2000
    last = status["sync"]["last_snapshot"]
    assert last["ok"] and last["applied"] == 2000 and last["in_sync"]
    assert server.requests[0] == f"Bearer {TOKEN}"
    assert snap_gate.request("badge", {"card": uid_for(9)})["allow"]
    assert snap_gate.request("badge", {"card": uid_for(5)})["reason"] == "unknown_credential"
    # Retained states not newer than the snapshot are skipped before any signature work.
    hq.publish(*items[:100], manifest=False)
    wait_until(
        lambda: snap_gate.request("status")["sync"]["skipped"].get("not_newer", 0) >= 100,
        what="retained states skipped",
    )


def test_bad_snapshots_are_refused_whole(
    snap_gate: GateProcess, server: SnapshotServer, hq: HeadOffice
) -> None:
    server.body = snapshot(hq, states(hq, 100))
    snap_gate.start()
    wait_until(lambda: snap_gate.request("status")["members"] == 100, what="first snapshot")
    before = snap_gate.request("status")["digest"]

    newer = states(hq, 100, version_base=1000, status="suspended")
    good = snapshot(hq, newer)
    raw = bytearray(gzip.decompress(good))
    raw[raw.index(b"suspended")] = ord("S")
    bad = {
        "truncated": good[: len(good) // 2],
        "tampered": gzip.compress(bytes(raw)),
        "wrongly signed": snapshot(hq, newer, Signer(Ed25519PrivateKey.generate())),
        "other site": snapshot(hq, newer, site="uptown"),
        "older": snapshot(hq, states(hq, 100, version_base=-50)[60:]),
        # Signed, but its last state (in a later piece than the first: states are ~340 bytes)
        # is unusable: the rows already handed to the writer are rolled back with it.
        "malformed state": snapshot(
            hq,
            [
                *states(hq, 2 * SNAPSHOT_PIECE_BYTES // 340, version_base=2000)[:-1],
                {**newer[0], "status": "bogus"},
            ],
        ),
    }
    for what, body in bad.items():
        server.body = body
        out = snap_gate.gatectl("resync", "--json")
        assert out.returncode != 0, what
        assert "resync refused" in out.stderr, (what, out.stderr)
        assert snap_gate.request("status")["digest"] == before, what
    doctor = snap_gate.gatectl("doctor", "--json")
    assert "last snapshot refused" in doctor.stdout
    # Each snapshot's download and verified body are removed, refused or not.
    assert not list((snap_gate.root / "state").glob(".snapshot-*"))

    server.body = good
    out = snap_gate.gatectl("resync", "--json")
    assert out.returncode == 0, out.stderr
    assert snap_gate.request("badge", {"card": uid_for(3)})["reason"] == "suspended"


def test_a_gate_apart_from_the_manifest_fetches_a_snapshot(
    snap_gate: GateProcess, server: SnapshotServer, hq: HeadOffice
) -> None:
    items = states(hq, 50)
    hq.publish(*items[:10], manifest=False)
    snap_gate.start()  # starts empty, but the server has nothing yet: syncs from retained
    wait_until(lambda: snap_gate.request("status")["members"] == 10, what="retained sync")
    server.body = snapshot(hq, items)
    hq.states = {s["member_id"]: s for s in items}
    hq.publish_manifest()  # the manifest says 50: the gate is behind it
    # The cold start's failed snapshot is reported first; wait for the anti-entropy one's report.
    status = wait_until(
        lambda: (
            (s := snap_gate.request("status"))["members"] == 50
            and (s["sync"]["last_snapshot"] or {}).get("reason") == "anti_entropy"
            and s
        ),
        timeout=15,
        what="anti-entropy snapshot",
    )
    assert status["sync"]["in_sync"]
    assert status["sync"]["last_snapshot"]["reason"] == "anti_entropy"


def test_a_snapshot_file_is_read_where_it_lies(tmp_path: Path, mosquitto: Mosquitto) -> None:
    root = tmp_path / "gate"
    root.mkdir()
    source = tmp_path / "site.snapshot.gz"
    config = write_config(
        root,
        extra=mqtt_section(mosquitto.url) + f'[head_office]\nsnapshot_url = "file://{source}"\n',
    )
    # What a gate killed during a snapshot leaves behind: removed by the next snapshot.
    stale = root / "state" / ".snapshot-killed"
    stale.mkdir(parents=True)
    (stale / "body.jsonl").write_bytes(b"{}\n" * 1000)
    gate = GateProcess(config, root)
    hq = HeadOffice(root / "keys", mosquitto.port)
    try:
        gate.start()
        out = gate.gatectl("resync", "--json")
        assert out.returncode != 0
        assert f"snapshot file {source}: No such file or directory" in out.stderr, out.stderr

        items = states(hq, 3 * SNAPSHOT_PIECE_BYTES // 340)  # several pieces
        items[7]["status"] = "suspended"
        source.write_bytes(snapshot(hq, items))
        out = gate.gatectl("resync", "--json")
        assert out.returncode == 0, out.stderr
        status = gate.request("status")
        assert status["members"] == len(items)
        assert status["sync"]["last_snapshot"]["in_sync"]
        assert gate.request("badge", {"card": uid_for(len(items) - 1)})["allow"]
        assert gate.request("badge", {"card": uid_for(7)})["reason"] == "suspended"
        assert source.exists()  # read where it lies, not moved or removed
        assert not list((root / "state").glob(".snapshot-*"))
    finally:
        hq.close()
        gate.stop()


def test_a_download_is_stored_whole_and_a_too_large_one_is_refused(
    tmp_path: Path, server: SnapshotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    head_office = HeadOfficeConfig(snapshot_url=server.url, token_file=tmp_path / "token")
    # Several of the file's writes, with a remainder: the bytes arrive whole and in order.
    server.body = os.urandom(SNAPSHOT_WRITE_BYTES * 3 + 12345)
    into = tmp_path / "snapshot.gz"
    assert asyncio.run(fetch_snapshot(head_office, into)) == into
    assert into.read_bytes() == server.body

    monkeypatch.setattr(snapshot_module, "SNAPSHOT_MAX_BYTES", SNAPSHOT_WRITE_BYTES)
    with pytest.raises(SnapshotError, match="is larger than"):
        asyncio.run(fetch_snapshot(head_office, tmp_path / "big.gz"))
