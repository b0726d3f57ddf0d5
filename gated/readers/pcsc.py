"""PC/SC card readers (ACR122U, ACR1252 and other CCID readers) through pcscd and pyscard.

The session waits in ``SCardGetStatusChange`` on the reader and on pcscd's plug-and-play
pseudo-reader, so it costs nothing while idle. A card becoming present is read once with GET DATA
(``FF CA 00 00 00``); a card held on the reader stays present and is not read again. A reader that
is unplugged, or a pcscd that stops, ends the session; the device thread retries until the reader
is back, so hot-plug and a pcscd restart need no restart of the gate.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from gated.contract import normalize_uid
from gated.readers.device import DeviceAbsent, DeviceError, Link, ThreadedReader, missing_driver

if TYPE_CHECKING:
    from gated.config import PcscReaderConfig

PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]
_WAIT_MS = 2000  # a cancel wakes the wait at once; the timeout only bounds a lost cancel


def _scard() -> Any:
    try:
        from smartcard import scard
    except ImportError as exc:
        raise missing_driver("pyscard") from exc
    return scard


def _service_fault(scard: Any, hr: int, doing: str) -> DeviceAbsent | DeviceError:
    message = scard.SCardGetErrorMessage(hr)
    if hr in (scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED):
        return DeviceAbsent(f"pcscd is not running ({message}); start pcscd")
    return DeviceError(f"{doing}: {message}")


def list_readers(scard: Any, context: int) -> list[str]:
    """The reader names pcscd sees (empty when none); DeviceFault when pcscd is gone."""
    hr, readers = scard.SCardListReaders(context, [])
    if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if hr != scard.SCARD_S_SUCCESS:
        raise _service_fault(scard, hr, "listing readers")
    return list(readers)


def match_reader(readers: list[str], wanted: str) -> str | None:
    """The first reader whose name contains ``wanted`` (case-insensitive; empty = the first)."""
    wanted = wanted.casefold()
    return next((name for name in readers if wanted in name.casefold()), None)


class PcscReader(ThreadedReader):
    """One PC/SC reader, chosen by a substring of its name."""

    kind = "pcsc"

    def __init__(self, config: PcscReaderConfig) -> None:
        super().__init__(config)
        self._config = config
        self._context: int | None = None

    def _interrupt(self) -> None:
        context = self._context
        if context is not None:
            _scard().SCardCancel(context)

    def _session(self, stop: threading.Event, link: Link) -> None:
        scard = _scard()
        hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr != scard.SCARD_S_SUCCESS:
            raise _service_fault(scard, hr, "connecting to pcscd")
        self._context = context
        try:
            if not stop.is_set():
                self._watch(scard, context, stop, link)
        finally:
            self._context = None
            scard.SCardReleaseContext(context)

    def _watch(self, scard: Any, context: int, stop: threading.Event, link: Link) -> None:
        readers = list_readers(scard, context)
        name = match_reader(readers, self._config.reader_name)
        if name is None:
            seen = ", ".join(readers) or "none"
            raise DeviceAbsent(
                f"no PC/SC reader matching {self._config.reader_name!r} (pcscd sees: {seen})"
            )
        link.ready(name)
        states: list[tuple[str, int]] = [
            (name, scard.SCARD_STATE_UNAWARE),
            (PNP_NOTIFICATION, scard.SCARD_STATE_UNAWARE),
        ]
        present = False
        while not stop.is_set():
            hr, changed = scard.SCardGetStatusChange(context, _WAIT_MS, states)
            if hr in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
                continue
            if hr != scard.SCARD_S_SUCCESS:
                raise _service_fault(scard, hr, "waiting for a card")
            at = time.monotonic_ns()
            reader_state = changed[0][1]
            if reader_state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_IGNORE):
                raise DeviceAbsent(f"{name}: unplugged")
            if changed[1][1] & scard.SCARD_STATE_CHANGED and name not in list_readers(
                scard, context
            ):
                raise DeviceAbsent(f"{name}: unplugged")
            now_present = bool(reader_state & scard.SCARD_STATE_PRESENT)
            if now_present and not present and not reader_state & scard.SCARD_STATE_MUTE:
                self._read_uid(scard, context, name, at, link)
            present = now_present
            states = [
                (reader, state & ~scard.SCARD_STATE_CHANGED) for reader, state, _atr in changed
            ]

    def _read_uid(self, scard: Any, context: int, name: str, at: int, link: Link) -> None:
        hr, card, protocol = scard.SCardConnect(
            context,
            name,
            scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if hr != scard.SCARD_S_SUCCESS:
            link.error(f"connecting to the card: {scard.SCardGetErrorMessage(hr)}")
            return
        try:
            hr, response = scard.SCardTransmit(card, protocol, GET_UID)
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        if hr != scard.SCARD_S_SUCCESS:
            link.error(f"reading the UID: {scard.SCardGetErrorMessage(hr)}")
        elif len(response) < 3 or response[-2:] != [0x90, 0x00]:
            link.reject("pcsc_no_uid")  # a card or reader that does not answer GET DATA
        else:
            link.read("card", normalize_uid(bytes(response[:-2]).hex()), at)
