"""The demo's mail server: a small SMTP sink on 127.0.0.1 that keeps every mail it is given.

``gated-billing serve`` delivers its notices to it over real SMTP, so the demo shows what a
member would receive: each mail goes to a file, and each is handed to a callback with its
text (the demo prints a sign-in code on the terminal, which is the point of a demo on one
machine). It speaks just enough SMTP for smtplib (EHLO/HELO, MAIL, RCPT, DATA with
dot-unstuffing, RSET, NOOP, QUIT) and answers anything else with an error, never a crash.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import logging
import socketserver
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType

log = logging.getLogger("gated.demo.mail")

# RFC 5321 allows 1,000 octets a line; a longer one is garbage, answered and dropped.
MAX_LINE = 1000
MAX_MESSAGE = 10 * 1024 * 1024
# A client silent this long is dropped, so a stalled one never holds a thread for ever.
IDLE_S = 30.0


@dataclass(frozen=True)
class Mail:
    """One mail the sink accepted: the envelope, the subject, its plain text (transfer
    encoding undone) and the file it was written to."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    text: str
    path: Path


class _Session(socketserver.StreamRequestHandler):
    """One SMTP connection."""

    server: _Server
    timeout = IDLE_S

    def handle(self) -> None:
        # The client went away or fell silent: nothing left to answer.
        with contextlib.suppress(OSError):
            self._converse()

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode("ascii") + b"\r\n")

    def _line(self) -> bytes | None:
        """The next line without its ending; None at the end of the connection or when the
        line is too long (the connection is then closed: the rest of it cannot be trusted)."""
        line = self.rfile.readline(MAX_LINE + 2)
        if not line:
            return None
        if not line.endswith(b"\n"):
            self._reply("500 line too long")
            return None
        return line.rstrip(b"\r\n")

    def _converse(self) -> None:
        self._reply("220 gated-demo mail sink ready")
        sender: str | None = None
        recipients: list[str] = []
        while (line := self._line()) is not None:
            text = line.decode("ascii", "replace")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self._reply("250-gated-demo\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760")
            elif verb == "HELO":
                self._reply("250 gated-demo")
            elif verb == "MAIL" and arg.upper().startswith("FROM:"):
                sender, recipients = _address(arg[5:]), []
                self._reply("250 ok")
            elif verb == "RCPT" and arg.upper().startswith("TO:"):
                if sender is None:
                    self._reply("503 MAIL first")
                else:
                    recipients.append(_address(arg[3:]))
                    self._reply("250 ok")
            elif verb == "DATA":
                if sender is None or not recipients:
                    self._reply("503 MAIL and RCPT first")
                    continue
                self._reply("354 end with <CRLF>.<CRLF>")
                data = self._data()
                if data is None:
                    return
                if len(data) > MAX_MESSAGE:
                    self._reply("552 message too big")
                else:
                    path = self.server.keep(data)
                    self._reply("250 ok: kept")
                    # After the answer: whatever the callback does, the sender is done with it.
                    self.server.announce(sender, tuple(recipients), data, path)
                sender, recipients = None, []
            elif verb == "RSET":
                sender, recipients = None, []
                self._reply("250 ok")
            elif verb == "NOOP":
                self._reply("250 ok")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("500 command not recognized")

    def _data(self) -> bytes | None:
        """The message up to the line with a single dot, dot-unstuffed, or None if the
        connection ends first. Past ``MAX_MESSAGE`` lines are read and dropped (so the session
        stays in step) and the result is one byte too long, for the caller to refuse."""
        lines: list[bytes] = []
        size = 0
        while (line := self._line()) is not None:
            if line == b".":
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            size += len(line) + 2
            if size <= MAX_MESSAGE:
                lines.append(line + b"\r\n")
            elif size - len(line) - 2 <= MAX_MESSAGE:
                lines = [b"\0" * (MAX_MESSAGE + 1)]
        return None


def _address(arg: str) -> str:
    """The address of ``<addr> PARAMS`` (or a bare address)."""
    arg = arg.strip()
    if arg.startswith("<"):
        return arg[1 : arg.find(">")] if ">" in arg else arg[1:]
    return arg.split(" ", 1)[0]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, folder: Path, on_mail: Callable[[Mail], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Session)
        self.folder = folder
        self.on_mail = on_mail
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def keep(self, data: bytes) -> Path:
        """Write a mail to the next numbered file; returns the file."""
        with self._lock:
            path = self.folder / f"{next(self._numbers):04d}.eml"
        # Sign-in mails carry a code that signs in: readable by the demo's user only.
        path.touch(mode=0o600)
        path.write_bytes(data)
        return path

    def announce(self, sender: str, recipients: tuple[str, ...], data: bytes, path: Path) -> None:
        """Hand a kept mail to the callback, taken apart."""
        message = email.message_from_bytes(data, policy=email.policy.default)
        subject = str(message.get("Subject", ""))
        self.on_mail(Mail(sender, recipients, subject, _text(message), path))

    def handle_error(self, request: object, client_address: object) -> None:
        """A mail the sink could not take apart: one line, not a traceback over the demo."""
        error = sys.exc_info()[1]
        log.warning("event=demo_mail_error error=%s", type(error).__name__)


def _text(message: EmailMessage) -> str:
    """The plain-text body, transfer encoding undone; empty when there is none."""
    body = message.get_body(("plain",))
    if not isinstance(body, EmailMessage):
        return ""
    try:
        return str(body.get_content())
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        return ""


class MailSink:
    """``with MailSink(folder, on_mail) as sink:`` serves SMTP on 127.0.0.1:``sink.port`` in a
    thread until the block ends; every accepted mail is written to ``folder`` and handed to
    ``on_mail`` (from the server's thread)."""

    def __init__(self, folder: Path, on_mail: Callable[[Mail], None]) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._server = _Server(folder, on_mail)
        # A short poll: stopping waits for it, and the demo stops with Ctrl-C.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demo-mail", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def __enter__(self) -> MailSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
