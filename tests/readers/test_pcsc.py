"""PC/SC reader against a real pcscd with vsmartcard's virtual reader and a test card."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gated.config import PcscReaderConfig
from gated.readers.registry import build_reader
from tests.readers import pcscd_stack
from tests.readers.pcscd_stack import PcscdStack
from tests.readers.support import running, wait_until
from tests.readers.vpcd_card import VirtualCard

pytestmark = [
    pytest.mark.needs_pcscd,
    pytest.mark.skipif(bool(pcscd_stack.missing()), reason=str(pcscd_stack.missing())),
]

UID = "04A1B2C3D4E5F6"


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[PcscdStack]:
    with pcscd_stack.run_pcscd(tmp_path / "pcscd") as stack:
        yield stack


def _config(**kw: object) -> PcscReaderConfig:
    settings = {"id": "pcsc-in", "reader_name": "gated test pcd 00 00", "debounce_ms": 0, **kw}
    return PcscReaderConfig(**settings)  # type: ignore[arg-type]


async def test_insert_remove_reinsert_gives_two_reads_and_a_held_card_one(
    pcscd: PcscdStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader = build_reader(_config())
    card = VirtualCard(pcscd.port, UID)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok", what="reader found")
        assert reader.health.detail == pcscd.reader
        card.insert()
        credential = await out.next()
        assert (credential.kind, credential.value, credential.reader_id) == ("card", UID, "pcsc-in")
        assert card.apdus == 1  # one GET DATA, however long the card stays
        await wait_until(lambda: card.apdus == 1 and out.queue.empty(), what="no second read")
        card.remove()
        card.insert()
        assert (await out.next()).value == UID
        card.remove()
        assert reader.health.reads == 2 and reader.health.errors == 0
    assert UID not in caplog.text.upper()


async def test_debounce_drops_a_quick_represent(pcscd: PcscdStack) -> None:
    reader = build_reader(_config(debounce_ms=60_000))
    card = VirtualCard(pcscd.port, UID)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        card.insert()
        await out.next()
        card.remove()
        card.insert()
        await wait_until(lambda: card.apdus == 2, what="second presentation read")
        card.remove()
        assert out.queue.empty() and reader.health.reads == 1


async def test_pcscd_restart_is_absent_then_recovered(pcscd: PcscdStack) -> None:
    reader = build_reader(_config())
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        pcscd.stop()
        await wait_until(lambda: reader.health.state == "absent", what="pcscd gone noticed")
        assert "pcscd" in reader.health.detail
        pcscd.start()
        await wait_until(lambda: reader.health.state == "ok", timeout=10, what="recovered")
        card = VirtualCard(pcscd.port, "A1B2C3D4")
        card.insert()
        assert (await out.next()).value == "A1B2C3D4"
        card.remove()


async def test_no_matching_reader_names_what_pcscd_sees(pcscd: PcscdStack) -> None:
    reader = build_reader(PcscReaderConfig(id="p", reader_name="ACR122U"))
    async with running(reader):
        await wait_until(lambda: reader.health.errors >= 1)
        assert reader.health.state == "absent"
        assert "ACR122U" in reader.health.detail and pcscd.reader in reader.health.detail


async def test_card_without_get_data_is_rejected_not_a_crash(pcscd: PcscdStack) -> None:
    class Mute(VirtualCard):
        def answer(self, apdu: bytes) -> bytes:
            return b"\x6a\x81"  # function not supported

    reader = build_reader(_config())
    card = Mute(pcscd.port, UID)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        card.insert()
        await wait_until(lambda: reader.health.rejected == 1, what="rejected")
        card.remove()
        assert out.queue.empty() and reader.health.state == "ok"


async def test_without_pcscd_the_reader_is_absent() -> None:
    reader = build_reader(_config())
    async with running(reader):
        await wait_until(lambda: reader.health.errors >= 1)
        assert reader.health.state == "absent" and "pcscd is not running" in reader.health.detail
