"""The control channel: a Unix socket carrying one JSON object per line each way.

Request: ``{"cmd": "badge", "args": {"card": "04A1B2C3D4E5F6"}}``.
Reply: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "one line"}``. A streaming
command (``events tail -f``) answers with ``{"ok": true, "stream": true}`` and then one
``{"event": {...}}`` line per event until the client hangs up. The caller's uid comes from
SO_PEERCRED and is recorded as the operator of every action.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated.contract import PayloadError, loads_bounded
from gated.errors import GatedError

log = logging.getLogger("gated.control")
MAX_LINE = 64 * 1024


class ControlError(GatedError):
    """A request the daemon refuses; the message goes back to the caller as one line."""


class DaemonNotRunning(GatedError):
    """No daemon answers on the control socket."""


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int | None
    pid: int | None

    @property
    def operator(self) -> str:
        if self.uid is None:
            return "unknown"
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid:{self.uid}"


Result = dict[str, Any] | AsyncIterator[dict[str, Any]]
Handler = Callable[[str, dict[str, Any], Caller], Awaitable[Result]]


def _peer(sock: socket.socket | None) -> Caller:
    if sock is None:
        return Caller(None, None)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
    except OSError:
        return Caller(None, None)
    return Caller(uid, pid)


class ControlServer:
    """Serves ``handler(cmd, args, caller)`` on a Unix socket (mode 0660, group ``gated``)."""

    def __init__(self, path: Path, handler: Handler, rejected: Counter[str] | None = None) -> None:
        self.path = path
        self.handler = handler
        # Refused requests are counted here (the gate passes its own counter: ``status`` shows it).
        self.rejected: Counter[str] = Counter() if rejected is None else rejected
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o660)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(self.path, -1, grp.getgrnam("gated").gr_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = _peer(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    self._reject(caller, "request line too long")
                    await _send(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                reply = await self._dispatch(line, caller)
                if isinstance(reply, dict):
                    await _send(writer, reply)
                    continue
                await _send(writer, {"ok": True, "stream": True})
                async for item in reply:
                    await _send(writer, {"event": item})
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, caller: Caller) -> Result:
        try:
            request = loads_bounded(line, max_bytes=MAX_LINE)
        except PayloadError as exc:
            self._reject(caller, str(exc))
            return {"ok": False, "error": f"bad request: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self._reject(caller, "no cmd")
            return {"ok": False, "error": 'bad request: expected {"cmd": ..., "args": {...}}'}
        args = request.get("args") or {}
        if not isinstance(args, dict):
            self._reject(caller, "args not an object")
            return {"ok": False, "error": "bad request: args must be an object"}
        try:
            result = await self.handler(request["cmd"], args, caller)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # one bad request must not take the socket down; it is logged
            log.exception("event=control_error cmd=%s operator=%s", request["cmd"], caller.operator)
            return {
                "ok": False,
                "error": f"internal error in {request['cmd']}: {type(exc).__name__} (see the daemon's log)",
            }
        if isinstance(result, dict):
            return {"ok": True, "result": result}
        return result

    def _reject(self, caller: Caller, why: str) -> None:
        self.rejected["control_bad_request"] += 1
        log.warning("event=control_rejected reason=%r operator=%s", why, caller.operator)


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


# --- client (gatectl) -------------------------------------------------------------------------


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonNotRunning(f"gated is not running (no daemon at {path})") from exc
    except PermissionError as exc:
        sock.close()
        raise DaemonNotRunning(
            f"permission denied on {path}: run as root or join the 'gated' group"
        ) from exc
    return sock


def request(
    path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """One request, one reply (``result`` on success); ControlError carries the daemon's refusal."""
    with _connect(path, timeout) as sock:
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        reply = json.loads(_readline(sock))
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"))
    return dict(reply["result"])


def stream(path: Path, cmd: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """A streaming request: yields each item until the daemon closes or the caller stops."""
    with _connect(path, 10.0) as sock:
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        # One buffered reader for the head and the events: the first event often arrives in the
        # same segment as the head, and a bare recv() for the head would swallow it.
        lines = sock.makefile("rb")
        first = lines.readline()
        if not first:
            raise DaemonNotRunning("the daemon closed the connection")
        head = json.loads(first)
        if not head.get("ok"):
            raise ControlError(head.get("error", "request failed"))
        sock.settimeout(None)
        for line in lines:
            yield dict(json.loads(line)["event"])


def _readline(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while not chunks.endswith(b"\n"):
        data = sock.recv(65536)
        if not data:
            raise DaemonNotRunning("the daemon closed the connection")
        chunks += data
    return bytes(chunks)
