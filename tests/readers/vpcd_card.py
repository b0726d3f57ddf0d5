"""A contactless card on vsmartcard's virtual reader (vpcd), answering GET DATA with its UID.

Debian's ``vicc`` cannot answer ``FF CA 00 00 00``, so this speaks the vpcd socket protocol
itself: TCP to the reader's port; every frame is a 2-byte big-endian length and a payload; a
1-byte payload is a control code (00 power off, 01 power on, 02 reset, 04 get ATR, the only one
answered, with the ATR); a longer payload is an APDU answered with one frame. Connecting inserts
the card, closing the socket removes it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

# The ATR an ACR122U reports for a MIFARE Classic 1K (PC/SC part 3 storage card).
ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
GET_UID = bytes.fromhex("FFCA000000")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class VirtualCard:
    """Insert with :meth:`insert`, remove with :meth:`remove`; answers in a background thread."""

    def __init__(self, port: int, uid: str, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.uid = bytes.fromhex(uid)
        self.apdus = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def insert(self, timeout: float = 5.0) -> None:
        sock = socket.create_connection(self.address, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()

    def remove(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            if _QUICKACK is not None:  # or the reader's next APDU waits ~40 ms on a delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("vpcd closed the connection")
            data += chunk
        return data

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        sock.sendall(struct.pack(">H", len(payload)) + payload)

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                (length,) = struct.unpack(">H", self._recv_exact(sock, 2))
                payload = self._recv_exact(sock, length)
                if length == 1:
                    if payload == b"\x04":
                        self._send(sock, ATR)
                    continue
                self.apdus += 1
                self._send(sock, self.answer(payload))

    def answer(self, apdu: bytes) -> bytes:
        """GET DATA (UID) as an ACR122U answers it; anything else: instruction not supported."""
        if apdu == GET_UID:
            return self.uid + b"\x90\x00"
        return b"\x6d\x00"
