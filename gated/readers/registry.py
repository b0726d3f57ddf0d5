"""Builds the reader a ``[[readers]]`` entry describes, for every kind (the simulated one too).
Driver libraries (pyscard, nfcpy, evdev, pyserial, lgpio) are imported when a reader first
opens its device, so a missing one is a reader fault in ``gatectl readers``, not a crash."""

from __future__ import annotations

from typing import Any

from gated.config import (
    HidQrReaderConfig,
    NfcReaderConfig,
    PcscReaderConfig,
    SerialQrReaderConfig,
    SimReaderConfig,
    WiegandReaderConfig,
)
from gated.readers.base import Reader

HardwareReaderConfig = (
    PcscReaderConfig
    | NfcReaderConfig
    | SerialQrReaderConfig
    | HidQrReaderConfig
    | WiegandReaderConfig
)


AnyReaderConfig = SimReaderConfig | HardwareReaderConfig


def build_reader(config: AnyReaderConfig, *, pin_factory: Any = None) -> Reader:
    """The reader for one config entry. ``pin_factory`` is the gpiozero factory the door uses;
    Wiegand readers share it (None: gpiozero's default)."""
    if isinstance(config, SimReaderConfig):
        from gated.readers.sim import SimReader

        return SimReader(config)
    if isinstance(config, PcscReaderConfig):
        from gated.readers.pcsc import PcscReader

        return PcscReader(config)
    if isinstance(config, NfcReaderConfig):
        from gated.readers.nfc import NfcReader

        return NfcReader(config)
    if isinstance(config, SerialQrReaderConfig):
        from gated.readers.serial_qr import SerialQrReader

        return SerialQrReader(config)
    if isinstance(config, HidQrReaderConfig):
        from gated.readers.hid_qr import HidQrReader

        return HidQrReader(config)
    if isinstance(config, WiegandReaderConfig):
        from gated.readers.wiegand import WiegandReader

        return WiegandReader(config, pin_factory)
    raise TypeError(f"no reader for kind {getattr(config, 'kind', config)!r}")
