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
import ctypes
import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated.config import ControlConfig
from gated.contract import PayloadError, loads_bounded
from gated.errors import GatedError

log = logging.getLogger("gated.control")
MAX_LINE = 64 * 1024
TOO_MANY = "too many control connections"
# Repeated refusals (a connection flood) are logged once per interval, with their count.
LOG_INTERVAL_S = 10.0


class ControlError(GatedError):
    """A request the daemon refuses; the message goes back to the caller as one line."""


class DaemonNotRunning(GatedError):
    """No daemon answers on the control socket."""


class ControlAccessDenied(GatedError):
    """The socket is there (the daemon most likely running) but this user may not use it."""


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


class _Connection:
    """One client of the control socket, as far as the connection cap needs to know it."""

    __slots__ = ("busy", "caller", "evicted", "reader", "since", "task", "writer")

    def __init__(
        self, caller: Caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.caller = caller
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        self.busy = False  # running a command or streaming: never evicted
        self.since = time.monotonic()  # connected, or last answered
        self.evicted = False

    def request_waiting(self) -> bool:
        """A whole request line has arrived but is not read yet: a client about to be served
        (gatectl sends its request right after connecting), not one holding a place."""
        # The stream's buffer (private, hence getattr) and the socket's, peeked without reading.
        if b"\n" in getattr(self.reader, "_buffer", b""):
            return True
        transport_socket = self.writer.get_extra_info("socket")
        if transport_socket is None:
            return False
        peek = socket.socket(fileno=transport_socket.fileno())
        try:
            return b"\n" in peek.recv(MAX_LINE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        finally:
            peek.detach()  # the descriptor stays the transport's


class _Throttle:
    """One log line per kind and interval, carrying how many happened since the last one: a
    flood of refused connections must not fill the journal (or the SD card)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def warning(self, kind: str, fmt: str, *args: object) -> None:
        self._unlogged[kind] += 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            return
        log.warning("event=%s count=%d " + fmt, kind, self._unlogged.pop(kind), *args)
        self._last[kind] = now


class ControlServer:
    """Serves ``handler(cmd, args, caller)`` on a Unix socket (mode 0660, group ``gated``).

    At most ``limits.max_connections`` clients at a time. A client at the cap takes the place
    of the connection that has waited longest without a command running (an idle or half-sent
    one), which is told so in one line and closed; only when every connection is running a
    command (or streaming events) is the newcomer refused. A real client sends its request at
    once and is answered in milliseconds, so the newest connection is the one worth serving:
    a technician's gatectl always gets through, and whoever holds connections open only
    displaces their own. Idle and slow clients are timed out; every refusal is counted under
    ``rejected`` and logged at most once per 10 s per kind.
    """

    def __init__(
        self,
        path: Path,
        handler: Handler,
        rejected: Counter[str] | None = None,
        limits: ControlConfig | None = None,
    ) -> None:
        self.path = path
        self.handler = handler
        self.limits = limits or ControlConfig()
        # Refused requests are counted here (the gate passes its own counter: ``status`` shows it).
        self.rejected: Counter[str] = Counter() if rejected is None else rejected
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._throttle = _Throttle()
        self._flooded = False  # connections were refused since the last time none was open

    @property
    def connections(self) -> int:
        """Clients connected now."""
        return len(self._connections)

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
        conn = _Connection(_peer(writer.get_extra_info("socket")), reader, writer)
        if len(self._connections) >= self.limits.max_connections and not self._evict():
            self._refuse(conn, "control_connection_refused", self._too_many("all are busy"))
            await self._hang_up(writer)
            return
        self._connections.add(conn)
        try:
            await self._converse(reader, conn)
        except TimeoutError:  # it stopped reading its replies for request_timeout_s
            self._count("control_write_timeout", conn.caller)
        except ConnectionError:
            pass  # the peer hung up
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
        finally:
            self._connections.discard(conn)
            await self._hang_up(writer)
            if self._flooded and not self._connections:
                self._flooded = False
                await asyncio.to_thread(_give_back_memory)

    async def _converse(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        while True:
            line = await self._read_request(reader, conn)
            if line is None:
                return
            conn.busy = True
            reply = await self._dispatch(line, conn.caller)
            if isinstance(reply, dict):
                await self._send(conn.writer, reply)
            else:
                await self._send(conn.writer, {"ok": True, "stream": True})
                async for item in reply:
                    await self._send(conn.writer, {"event": item})
            conn.busy = False
            conn.since = time.monotonic()

    async def _read_request(self, reader: asyncio.StreamReader, conn: _Connection) -> bytes | None:
        """The next request line, or None when the connection is to be closed (end of input, a
        timeout, an overlong line: each answered in one line first)."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                first = await reader.read(1)
        except TimeoutError:
            self._refuse(conn, "control_idle_timeout", f"idle for {self.limits.idle_timeout_s:g} s")
            return None
        if not first:
            return None
        if first == b"\n":
            return first
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                line = first + await reader.readline()
            # Without its newline the client hung up mid-request: nobody to answer.
            return line if line.endswith(b"\n") else None
        except TimeoutError:
            why = f"request not complete within {self.limits.request_timeout_s:g} s"
            self._refuse(conn, "control_request_timeout", why)
        except (ValueError, asyncio.LimitOverrunError):
            self._reject(conn.caller, "request line too long")
            conn.writer.write(_line({"ok": False, "error": "request line too long"}))
        return None

    def _evict(self) -> bool:
        """Close the connection idle (or half-sent) longest to make room; False if every
        connection is running a command or has one waiting to run."""
        for victim in sorted((c for c in self._connections if not c.busy), key=lambda c: c.since):
            if not victim.request_waiting():
                break
        else:
            return False
        victim.evicted = True
        self._connections.discard(victim)
        self._refuse(
            victim, "control_connection_evicted", self._too_many("the longest idle closed")
        )
        if victim.task is not None:
            victim.task.cancel()
        return True

    def _refuse(self, conn: _Connection, kind: str, why: str) -> None:
        """Count, log (throttled) and tell the client in one line; the caller closes."""
        self._flooded = True
        self._count(kind, conn.caller)
        conn.writer.write(_line({"ok": False, "error": f"{why}: closed, try again"}))

    def _too_many(self, what: str) -> str:
        return f"{TOO_MANY} ({self.limits.max_connections}, {what})"

    def _count(self, kind: str, caller: Caller) -> None:
        self.rejected[kind] += 1
        self._throttle.warning(
            kind, "connections=%d operator=%s", len(self._connections), caller.operator
        )

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(_line(obj))
        # A client that stops reading must not hold its connection (and its buffer) for ever.
        async with asyncio.timeout(self.limits.request_timeout_s):
            await writer.drain()

    async def _hang_up(self, writer: asyncio.StreamWriter) -> None:
        """Close after flushing what is written, but never wait on a peer that does not read."""
        writer.close()
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            writer.transport.abort()

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
        self._throttle.warning("control_rejected", "reason=%r operator=%s", why, caller.operator)


def _give_back_memory() -> None:
    """Return the heap a flood's buffers left free to the system (glibc keeps it otherwise:
    ~6 MB after 4,000 connections). Off the loop, once a flood is over; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --- client (gatectl) -------------------------------------------------------------------------


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                sock.connect(str(path))
                break
            except BlockingIOError:
                # The daemon's accept queue is full (a flood of clients): it drains them in
                # milliseconds, closing the idle ones, so wait for a place as a blocking
                # connect would.
                if time.monotonic() > deadline:
                    sock.close()
                    raise ControlError(
                        f"{path}: no place in the daemon's queue within {timeout:g} s"
                    ) from None
                time.sleep(0.005)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonNotRunning(f"gated is not running (no daemon at {path})") from exc
    except PermissionError as exc:  # EACCES or EPERM: the socket's mode and group say no
        sock.close()
        raise ControlAccessDenied(
            f"permission denied on {path}: join group gated (or use sudo)"
        ) from exc
    return sock


def request(
    path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """One request, one reply (``result`` on success); ControlError carries the daemon's refusal.

    A connection the daemon closed to make room before the request reached it (a flood of
    clients) is tried again until ``timeout``: such a request never ran, so this is safe for
    every command."""
    line = json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _connect(path, timeout) as sock:
                sock.sendall(line)
                reply = json.loads(_readline(sock))
        except (BrokenPipeError, ConnectionResetError):
            if time.monotonic() > deadline:
                raise DaemonNotRunning("the daemon closed the connection") from None
            time.sleep(0.01)
            continue
        if reply.get("ok") or not str(reply.get("error")).startswith(TOO_MANY):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
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
    """The first line the daemon sends (a connection left open after its answer may be told
    more, e.g. that it was closed to make room)."""
    chunks = bytearray()
    while b"\n" not in chunks:
        data = sock.recv(65536)
        if not data:
            raise DaemonNotRunning("the daemon closed the connection")
        chunks += data
    return bytes(chunks[: chunks.index(b"\n") + 1])
