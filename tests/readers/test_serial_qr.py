from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.config import SerialQrReaderConfig
from gated.readers.registry import build_reader
from gated.readers.serial_qr import PARTIAL_TIMEOUT_NS, LineFramer, Rejected
from tests.readers.support import running, wait_until

CODE = "GQ1.m_1001.1764144000.0123456789abcdef.c2lnbmF0dXJl"


class Scanner:
    """A pty pair behind a stable symlink, as udev gives a USB-CDC scanner (/dev/ttyACM0)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()

    def plug(self) -> None:
        self.master, slave = os.openpty()
        self._slave_path = os.ttyname(slave)
        os.close(slave)
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(self._slave_path)

    def unplug(self) -> None:
        os.close(self.master)
        self.master = -1
        self.link.unlink(missing_ok=True)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[Scanner]:
    s = Scanner(tmp_path / "ttyACM0")
    yield s
    if s.master >= 0:
        with contextlib.suppress(OSError):
            os.close(s.master)


def _config(port: Path, **kw: object) -> SerialQrReaderConfig:
    return SerialQrReaderConfig(id="qr-in", port=str(port), debounce_ms=0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
async def test_each_line_ending_gives_one_code(scanner: Scanner, ending: bytes) -> None:
    reader = build_reader(_config(scanner.link))
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok", what="port open")
        scanner.send(CODE.encode() + ending + b"second" + ending)
        first, second = await out.next(), await out.next()
        assert (first.kind, first.value, first.reader_id) == ("qr", CODE, "qr-in")
        assert second.value == "second"
        assert reader.health.rejected == 0


async def test_garbage_overlong_and_partial_lines_are_counted_and_dropped(scanner: Scanner) -> None:
    reader = build_reader(_config(scanner.link, max_length=64))
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        scanner.send(b"\x00\xff\xfe\x1b[2J\r")  # binary garbage
        scanner.send(b"A" * 10_000 + b"\r")  # overlong
        scanner.send(b"ok-1\r")
        assert (await out.next()).value == "ok-1"
        assert reader.health.rejected == 2
        scanner.send(b"half-a-co")  # then silence: must not prefix the next code
        await wait_until(
            lambda: reader.health.rejected == 3, timeout=3, what="partial line dropped"
        )
        scanner.send(b"ok-2\n")
        assert (await out.next()).value == "ok-2"


async def test_unplug_and_replug_recover_without_a_restart(scanner: Scanner) -> None:
    reader = build_reader(_config(scanner.link))
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        scanner.unplug()
        await wait_until(lambda: reader.health.state == "absent", what="unplug noticed")
        assert "ttyACM0" in reader.health.detail
        scanner.plug()
        await wait_until(lambda: reader.health.state == "ok", timeout=8, what="replug noticed")
        scanner.send(b"after-replug\r")
        assert (await out.next()).value == "after-replug"


async def test_missing_port_is_absent_not_a_crash(tmp_path: Path) -> None:
    reader = build_reader(_config(tmp_path / "nope"))
    async with running(reader):
        await wait_until(lambda: reader.health.errors >= 1, what="first attempt")
        assert reader.health.state == "absent"
        assert "no such device" in reader.health.detail


def test_framer_splits_a_stream_at_any_chunk_boundary() -> None:
    stream = b"one\r\ntwo\rthree\n\n\rfour\r"
    for cut in range(len(stream) + 1):
        framer = LineFramer(64)
        out = framer.feed(stream[:cut], 0) + framer.feed(stream[cut:], 1)
        assert out == ["one", "two", "three", "four"]


def test_framer_drops_a_partial_line_after_silence() -> None:
    framer = LineFramer(64)
    assert framer.feed(b"abc", 0) == []
    assert framer.expire(PARTIAL_TIMEOUT_NS) is None
    out = framer.feed(b"def\r", PARTIAL_TIMEOUT_NS + 1)
    assert out == ["qr_partial", "def"]
    assert isinstance(out[0], Rejected) and not isinstance(out[1], Rejected)


@given(st.lists(st.binary(max_size=80), max_size=30), st.integers(1, 64))
def test_any_byte_stream_gives_only_bounded_text_or_rejections(
    chunks: list[bytes], limit: int
) -> None:
    framer = LineFramer(limit)
    t = 0
    for chunk in chunks:
        t += 100_000_000
        for item in framer.feed(chunk, t):
            if not isinstance(item, Rejected):
                assert 0 < len(item) <= limit and item.isprintable()
