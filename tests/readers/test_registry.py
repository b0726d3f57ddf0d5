from __future__ import annotations

import asyncio
import re
import sys
import tomllib
from pathlib import Path

import pytest

from gated.config import ConfigError, SerialQrReaderConfig, SimReaderConfig, gate_config_from
from gated.readers.registry import build_reader
from tests.readers.support import running, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs" / "readers.md"


def _doc_readers() -> list[dict[str, object]]:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    return [reader for block in blocks for reader in tomllib.loads(block)["readers"]]


def test_every_config_example_in_the_docs_validates_and_builds() -> None:
    examples = _doc_readers()
    assert {r["kind"] for r in examples} == {"pcsc", "nfc", "serial_qr", "hid_qr", "wiegand"}
    config = gate_config_from({"site": "downtown", "gate": "t1", "readers": examples})
    for entry in config.readers:
        assert not isinstance(entry, SimReaderConfig)
        reader = build_reader(entry)
        assert asyncio.iscoroutinefunction(reader.run)
        assert (reader.id, reader.kind, reader.direction) == (entry.id, entry.kind, entry.direction)
        assert reader.health.state == "absent" and reader.health.reads == 0


def test_bad_reader_settings_are_one_line_errors() -> None:
    cases = {
        "readers[0].d1_pin: d0_pin and d1_pin must be different pins": {
            "kind": "wiegand",
            "d0_pin": 5,
            "d1_pin": 5,
        },
        "readers[0].baudrate": {"kind": "serial_qr", "baudrate": 0},
        "readers[0].targets[0]": {"kind": "nfc", "targets": ["106Z"]},
        "readers[0].device: required setting is missing": {"kind": "hid_qr"},
    }
    for expected, reader in cases.items():
        with pytest.raises(ConfigError) as info:
            gate_config_from({"site": "s", "gate": "g", "readers": [reader]})
        assert str(info.value).startswith(expected)


async def test_a_missing_driver_library_is_a_reader_fault_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "serial", None)  # import serial → ImportError
    reader = build_reader(SerialQrReaderConfig(id="qr", port=str(tmp_path / "tty")))
    async with running(reader):
        await wait_until(lambda: reader.health.errors >= 1)
    assert reader.health.state == "error"
    assert (
        reader.health.detail
        == "the pyserial library is not installed (pip install 'gated[readers]')"
    )
