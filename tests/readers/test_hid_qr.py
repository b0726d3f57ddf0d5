from __future__ import annotations

import os
from pathlib import Path

import evdev
import pytest
from evdev import ecodes
from hypothesis import given
from hypothesis import strategies as st

from gated.config import HidQrReaderConfig
from gated.readers.hid_qr import US_KEYS, KeyboardWedgeDecoder
from gated.readers.registry import build_reader
from gated.readers.serial_qr import PARTIAL_TIMEOUT_NS, Rejected
from tests.readers.support import running, wait_until

CODE = "GQ1.m_1001.1764144000.0123456789abcdef.c2lnbmF0dXJl"
_CHAR_KEYS = {ch: (code, False) for code, (plain, _) in US_KEYS.items() for ch in plain}
_CHAR_KEYS.update(
    {
        shifted: (code, True)
        for code, (plain, shifted) in US_KEYS.items()
        if shifted != plain and code < 55
    }
)


def typed(text: str, enter: bool = True) -> list[evdev.InputEvent]:
    """The event stream a keyboard-wedge scanner produces for ``text``: scan codes, shift, SYN."""
    events: list[evdev.InputEvent] = []

    def key(code: int, value: int) -> None:
        events.append(evdev.InputEvent(0, 0, ecodes.EV_MSC, ecodes.MSC_SCAN, 0x70000 + code))
        events.append(evdev.InputEvent(0, 0, ecodes.EV_KEY, code, value))
        events.append(evdev.InputEvent(0, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0))

    for ch in text:
        code, shift = _CHAR_KEYS[ch]
        if shift:
            key(ecodes.KEY_LEFTSHIFT, 1)
        key(code, 1)
        key(code, 0)
        if shift:
            key(ecodes.KEY_LEFTSHIFT, 0)
    if enter:
        key(ecodes.KEY_ENTER, 1)
        key(ecodes.KEY_ENTER, 0)
    return events


def decode(decoder: KeyboardWedgeDecoder, events: list[evdev.InputEvent], at: int = 0) -> list[str]:
    return [item for event in events for item in decoder.feed(event, at)]


def test_key_map_agrees_with_the_kernel_codes() -> None:
    for name, plain in [
        ("KEY_A", "a"),
        ("KEY_Z", "z"),
        ("KEY_1", "1"),
        ("KEY_0", "0"),
        ("KEY_MINUS", "-"),
        ("KEY_DOT", "."),
        ("KEY_SLASH", "/"),
        ("KEY_SEMICOLON", ";"),
        ("KEY_BACKSLASH", "\\"),
        ("KEY_SPACE", " "),
        ("KEY_GRAVE", "`"),
        ("KEY_KP5", "5"),
        ("KEY_KPSLASH", "/"),
    ]:
        assert US_KEYS[ecodes.ecodes[name]][0] == plain, name
    assert ecodes.KEY_ENTER == 28 and ecodes.KEY_KPENTER == 96
    assert {ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT} == {42, 54}


def test_a_rotating_qr_code_types_back_exactly() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    decoder = KeyboardWedgeDecoder(512)
    assert decode(decoder, typed(CODE)) == [CODE]
    assert decode(decoder, typed(printable)) == [printable]


def test_autorepeat_release_and_sync_events_add_nothing() -> None:
    decoder = KeyboardWedgeDecoder(64)
    events = typed("ab", enter=False)
    events.insert(2, evdev.InputEvent(0, 0, ecodes.EV_KEY, ecodes.KEY_A, 2))  # autorepeat
    assert decode(decoder, events + typed("")) == ["ab"]


def test_unmapped_keys_and_overlong_codes_are_rejected_at_enter() -> None:
    decoder = KeyboardWedgeDecoder(8)
    f1 = [evdev.InputEvent(0, 0, ecodes.EV_KEY, ecodes.KEY_F1, 1)]
    out = decode(decoder, typed("ab", enter=False) + f1 + typed("c"))
    assert out == ["qr_unmapped_key"] and isinstance(out[0], Rejected)
    out = decode(decoder, typed("x" * 100))
    assert out == ["qr_overlong"] and isinstance(out[0], Rejected)
    assert decode(decoder, typed("fine")) == ["fine"]
    assert decode(decoder, typed("")) == []  # a bare Enter is nothing


def test_a_partial_code_followed_by_silence_is_dropped() -> None:
    decoder = KeyboardWedgeDecoder(64)
    assert decode(decoder, typed("stale", enter=False), at=0) == []
    out = decode(decoder, typed("fresh"), at=PARTIAL_TIMEOUT_NS + 1)
    assert out == ["qr_partial", "fresh"] and isinstance(out[0], Rejected)


async def test_missing_device_is_absent_not_a_crash(tmp_path: Path) -> None:
    for device in (str(tmp_path / "event99"), "No Such Scanner"):
        reader = build_reader(HidQrReaderConfig(id="hid", device=device))
        async with running(reader):
            await wait_until(lambda r=reader: r.health.errors >= 1)  # type: ignore[misc]
            assert reader.health.state == "absent"
            assert device in reader.health.detail


@pytest.mark.skipif(
    not os.path.exists("/dev/uinput"),
    reason="no /dev/uinput on this machine (kernel without uinput)",
)
async def test_real_uinput_scanner_is_grabbed_and_read() -> None:
    name = f"gated test scanner {os.getpid()}"
    keys = [*US_KEYS, ecodes.KEY_ENTER, ecodes.KEY_LEFTSHIFT]
    with evdev.UInput({ecodes.EV_KEY: keys}, name=name) as scanner:
        reader = build_reader(HidQrReaderConfig(id="hid", device=name, debounce_ms=0))
        async with running(reader) as out:
            await wait_until(lambda: reader.health.state == "ok", what="grabbed")
            other = evdev.InputDevice(scanner.device.path)
            with pytest.raises(OSError):
                other.grab()  # ours is exclusive: nothing else (a console) sees the codes
            other.close()
            for event in typed(CODE):
                scanner.write(event.type, event.code, event.value)
            scanner.syn()
            assert (await out.next()).value == CODE


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 4]), st.integers(0, 300), st.integers(0, 2)), max_size=300
    )
)
def test_any_event_stream_gives_only_bounded_text_or_rejections(
    events: list[tuple[int, int, int]],
) -> None:
    decoder = KeyboardWedgeDecoder(32)
    for i, (type_, code, value) in enumerate(events):
        for item in decoder.feed(evdev.InputEvent(0, 0, type_, code, value), i * 1_000_000):
            if not isinstance(item, Rejected):
                assert 0 < len(item) <= 32 and item.isprintable()
