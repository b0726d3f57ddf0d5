from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import given
from hypothesis import strategies as st

from gated.config import WiegandReaderConfig
from gated.readers.registry import build_reader
from gated.readers.wiegand import BadFrame, WiegandDecoder, decode_frame, encode_26, encode_34
from tests.readers.support import running, wait_until

MS = 1_000_000


@given(st.integers(0, 255), st.integers(0, 65535))
def test_26_bit_frames_round_trip(facility: int, number: int) -> None:
    assert decode_frame(encode_26(facility, number)) == f"w26:{facility}:{number}"


@given(st.binary(min_size=4, max_size=4), st.sampled_from(["as_sent", "reversed"]))
def test_34_bit_frames_give_the_pcsc_uid(uid: bytes, order: Any) -> None:
    assert decode_frame(encode_34(uid.hex(), order), order) == uid.hex().upper()


def test_reversed_byte_order_matches_a_reader_that_sends_the_uid_backwards() -> None:
    sent = encode_34("D4C3B2A1")  # such a reader sends the PC/SC UID A1B2C3D4 byte-reversed
    assert decode_frame(sent, "reversed") == "A1B2C3D4"
    assert decode_frame(sent, "as_sent") == "D4C3B2A1"


@given(st.integers(0, 25), st.integers(0, 255), st.integers(0, 65535))
def test_any_flipped_bit_in_a_26_bit_frame_is_refused(i: int, facility: int, number: int) -> None:
    bits = encode_26(facility, number)
    bits[i] ^= 1
    with pytest.raises(BadFrame, match="wiegand_parity"):
        decode_frame(bits)


@pytest.mark.parametrize("length", [0, 1, 4, 25, 27, 33, 35, 37])
def test_other_lengths_are_refused(length: int) -> None:
    with pytest.raises(BadFrame, match="wiegand_length"):
        decode_frame([0] * length)


def test_decoder_completes_a_frame_one_timeout_after_its_last_bit() -> None:
    decoder = WiegandDecoder(frame_timeout_ms=20)
    t = 1000 * MS
    for bit in encode_26(12, 3456):
        assert decoder.bit(bit, t) is None
        t += 2 * MS  # a typical 2 ms bit interval
    last = t - 2 * MS
    assert decoder.deadline_ns == last + 20 * MS
    assert decoder.flush(last + 19 * MS) is None
    assert decoder.flush(last + 20 * MS) == "w26:12:3456"
    assert decoder.deadline_ns is None
    assert decoder.flush(last + 100 * MS) is None


def test_a_late_timer_still_separates_frames_by_their_gap() -> None:
    decoder = WiegandDecoder(frame_timeout_ms=20)
    t = 0
    for bit in encode_34("04A1B2C3"):
        decoder.bit(bit, t)
        t += MS
    first, *rest = encode_26(1, 2)
    t += 50 * MS
    assert decoder.bit(first, t) == "04A1B2C3"
    for bit in rest:
        t += MS
        decoder.bit(bit, t)
    assert decoder.flush(t + 20 * MS) == "w26:1:2"


def test_noise_burst_is_one_rejected_frame_with_bounded_memory() -> None:
    decoder = WiegandDecoder(frame_timeout_ms=20)
    for i in range(10_000):
        decoder.bit(i & 1, i * 1000)
    result = decoder.flush(10_000 * 1000 + 20 * MS)
    assert isinstance(result, BadFrame) and str(result) == "wiegand_length"


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    factory = MockFactory()
    previous = Device.pin_factory
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = previous


def _swipe(factory: MockFactory, bits: list[int], d0: int = 5, d1: int = 6) -> int:
    """Pulse the data lines as a reader does; returns the time of the last bit."""
    last = 0
    for bit in bits:
        pin = factory.pin(d1 if bit else d0)
        pin.drive_low()
        last = time.monotonic_ns()
        pin.drive_high()
    return last


async def test_reader_on_mock_gpio_reads_both_formats_within_30_ms(mock_pins: MockFactory) -> None:
    config = WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6, byte_order="reversed", debounce_ms=0)
    reader = build_reader(config, pin_factory=mock_pins)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok", what="pins ready")
        last = _swipe(mock_pins, encode_34("A1B2C3D4", "reversed"))
        credential, emitted = await out.next_timed()
        assert (credential.kind, credential.value, credential.reader_id) == (
            "card",
            "A1B2C3D4",
            "w",
        )
        assert (emitted - last) / MS < 30
        _swipe(mock_pins, encode_26(7, 4242))
        assert (await out.next()).value == "w26:7:4242"
        assert reader.health.reads == 2


async def test_bad_frames_are_counted_and_the_reader_keeps_reading(mock_pins: MockFactory) -> None:
    config = WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6, debounce_ms=0)
    reader = build_reader(config, pin_factory=mock_pins)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        bits = encode_26(1, 1)
        bits[3] ^= 1
        _swipe(mock_pins, bits)
        await wait_until(lambda: reader.health.rejected == 1, what="parity reject")
        await asyncio.sleep(0.03)  # the next swipe must start a new frame: leave a gap
        _swipe(mock_pins, [1, 0, 1])
        await wait_until(lambda: reader.health.rejected == 2, what="length reject")
        await asyncio.sleep(0.03)
        _swipe(mock_pins, encode_26(1, 1))
        assert (await out.next()).value == "w26:1:1"
        assert out.queue.empty()


async def test_a_card_held_is_one_read_within_the_debounce_window(mock_pins: MockFactory) -> None:
    config = WiegandReaderConfig(id="w", d0_pin=5, d1_pin=6, debounce_ms=1500)
    reader = build_reader(config, pin_factory=mock_pins)
    async with running(reader) as out:
        await wait_until(lambda: reader.health.state == "ok")
        _swipe(mock_pins, encode_26(3, 3))
        assert (await out.next()).value == "w26:3:3"
        await asyncio.sleep(0.03)
        _swipe(mock_pins, encode_26(3, 3))  # many readers repeat while a card stays in the field
        await asyncio.sleep(0.1)
        assert out.queue.empty() and reader.health.reads == 1


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 50 * MS)), max_size=200))
def test_any_bit_stream_gives_only_values_or_counted_rejections(
    stream: list[tuple[int, int]],
) -> None:
    decoder = WiegandDecoder(frame_timeout_ms=20)
    t = 0
    results = []
    for bit, gap in stream:
        t += gap
        results.append(decoder.bit(bit, t))
    results.append(decoder.flush(t + 20 * MS))
    assert decoder.deadline_ns is None
    for result in results:
        assert (
            result is None
            or isinstance(result, BadFrame)
            or result.startswith("w26:")
            or len(result) == 8
        )
