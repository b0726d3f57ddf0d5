"""An NTAG213 for nfcpy's ``udp`` driver: run as a process, put in and out of the field on command.

nfcpy's udp driver carries each radio frame as one datagram ``b"<bitrate> <hex>"``. This answers
an ISO 14443-A reader the way an NTAG213 with a 7-byte UID does: anticollision over two cascade
levels, GET_VERSION and READ; it stays silent for other commands (as a tag does) and for every
frame while it is out of the field.

    python -m tests.readers.nfc_tag PORT UID   # then "in", "out", "sensed", "quit" on stdin
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from functools import reduce
from operator import xor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

NTAG213_VERSION = bytes.fromhex("0004040201000F03")


class Ntag213:
    """The tag's answers, frame by frame. Pure."""

    def __init__(self, uid: bytes) -> None:
        assert len(uid) == 7, "an NTAG213 has a 7-byte UID"
        self.uid = uid
        bcc0 = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]
        bcc1 = reduce(xor, uid[3:7])
        memory = bytearray(180)
        memory[0:9] = bytes([*uid[0:3], bcc0, *uid[3:7], bcc1])
        memory[12:16] = bytes.fromhex("E1106D00")  # capability container: NDEF, 144 bytes
        memory[16:19] = bytes.fromhex("0300FE")  # an empty NDEF message
        self.memory = bytes(memory)

    def answer(self, frame: bytes) -> bytes | None:
        """The response to one reader frame, or None for silence."""
        uid = self.uid
        if frame in (b"\x26", b"\x52"):  # SENS_REQ / ALL_REQ
            return b"\x44\x00"  # double-size UID
        if frame == b"\x93\x20":
            cl1 = bytes([0x88, *uid[0:3]])
            return cl1 + bytes([reduce(xor, cl1)])
        if frame == b"\x95\x20":
            return uid[3:7] + bytes([reduce(xor, uid[3:7])])
        if frame[:2] == b"\x93\x70":
            return b"\x04"  # SAK: UID not complete
        if frame[:2] == b"\x95\x70":
            return b"\x00"  # SAK: complete, Type 2 tag
        if frame == b"\x60":
            return NTAG213_VERSION
        if len(frame) == 2 and frame[0] == 0x30:
            start = frame[1] * 4
            return (self.memory + self.memory)[start : start + 16]
        return None  # AUTHENTICATE (1A), HALT (50), anything else: a real NTAG stays silent


class TagProcess:
    """The UDP side: answers while in the field."""

    def __init__(self, port: int, uid: bytes) -> None:
        self.tag = Ntag213(uid)
        self.in_field = threading.Event()
        self.sensed = threading.Event()  # a reader polled for tags (it is not holding one)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                datagram, addr = self.sock.recvfrom(1024)
                parts = datagram.split()
                if len(parts) != 2 or parts[0] != b"106A":
                    continue
                frame = bytes.fromhex(parts[1].decode())
                if frame in (b"\x26", b"\x52"):
                    self.sensed.set()
                if not self.in_field.is_set():
                    continue
                response = self.tag.answer(frame)
                if response is not None:
                    self.sock.sendto(b"106A " + response.hex().encode(), addr)


class EmulatedTag:
    """The emulator process; ``present()`` and ``take_away()`` move it in and out of the field."""

    def __init__(self, port: int, uid: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.readers.nfc_tag", str(port), uid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self._say(None) == "ready"

    def _say(self, command: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def present(self) -> None:
        assert self._say("in") == "in"

    def take_away(self) -> None:
        assert self._say("out") == "out"
        assert self._say("sensed") == "sensed"  # the reader noticed and polls again

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def main() -> None:
    port, uid = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
    tag = TagProcess(port, uid)
    threading.Thread(target=tag.serve, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "in":
            tag.in_field.set()
        elif command == "out":
            tag.in_field.clear()
            tag.sensed.clear()
        elif command == "sensed":  # wait until the reader looks for a tag again
            command = "sensed" if tag.sensed.wait(10) else "not sensed"
        elif command == "quit":
            break
        print(command, flush=True)


if __name__ == "__main__":
    main()
