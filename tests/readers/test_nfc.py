"""nfcpy reader against nfcpy's udp driver, with an NTAG213 emulated in a second process."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from gated.config import NfcReaderConfig
from gated.readers.registry import build_reader
from tests.readers.nfc_tag import EmulatedTag, Ntag213
from tests.readers.support import running, wait_until
from tests.services import free_port

UID = "04A1B2C3D4E5F6"


@pytest.fixture
def tag() -> Iterator[tuple[EmulatedTag, int]]:
    port = free_port()
    t = EmulatedTag(port, UID)
    yield t, port
    t.close()


def _config(port: int, **kw: object) -> NfcReaderConfig:
    settings = {"id": "nfc-in", "path": f"udp:127.0.0.1:{port}", "targets": ["106A"], **kw}
    return NfcReaderConfig(**settings)  # type: ignore[arg-type]


async def test_tag_presented_held_removed_and_presented_again(
    tag: tuple[EmulatedTag, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator, port = tag
    reader = build_reader(_config(port, debounce_ms=200))
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok", what="device open")
        emulator.present()
        credential = await out.next(timeout=10)
        assert (credential.kind, credential.value, credential.reader_id) == ("card", UID, "nfc-in")
        emulator.take_away()
        assert out.queue.empty()
        await wait_until(
            lambda: time.monotonic_ns() - credential.at > 200_000_000, what="debounce over"
        )
        emulator.present()
        assert (await out.next(timeout=10)).value == UID
        assert reader.health.reads == 2 and reader.health.state == "ok"
    assert UID not in caplog.text.upper()  # nfcpy logs tag identifiers at DEBUG: not ours


async def test_a_tag_left_in_the_field_is_one_read(tag: tuple[EmulatedTag, int]) -> None:
    emulator, port = tag
    reader = build_reader(_config(port, debounce_ms=0))
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        emulator.present()
        await out.next(timeout=10)
        with pytest.raises(TimeoutError):
            await out.next(timeout=1.0)  # ten presence checks later, still the same read
        assert reader.health.reads == 1


def test_emulated_tag_answers_like_an_ntag213() -> None:
    tag = Ntag213(bytes.fromhex(UID))
    assert tag.answer(b"\x26") == b"\x44\x00"
    assert tag.answer(b"\x93\x20") == bytes.fromhex("8804A1B2") + bytes([0x88 ^ 0x04 ^ 0xA1 ^ 0xB2])
    assert tag.answer(b"\x30\x00")[:3] == bytes.fromhex("04A1B2")  # type: ignore[index]
    assert tag.answer(b"\x1a\x00") is None
