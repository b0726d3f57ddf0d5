"""The demo's SMTP sink: a real smtplib client delivers a sign-in notice to it, the demo reads the
code from it, and garbage gets error replies instead of stopping the server."""

from __future__ import annotations

import queue
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gated.billing_sync.config import SmtpConfig
from gated.billing_sync.notices import deliver, render
from gated.demo import SIGNIN_CODE, Timeline, _show_mail
from gated.demo_mail import MAX_LINE, Mail, MailSink
from tests.billing.helpers import make_billing


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[MailSink, queue.Queue[Mail]]]:
    got: queue.Queue[Mail] = queue.Queue()
    with MailSink(tmp_path / "mail", got.put) as running:
        yield running, got


def _signin_mail(to: str) -> EmailMessage:
    notice = render(
        "signin", to, "m1", name="Ann", code="493817", minutes=15,
        link="http://127.0.0.1:8080/app/signin/link/abc_DEF-123",
    )  # fmt: skip
    msg = EmailMessage()
    msg["From"] = "front-desk@gym.example"
    msg["To"] = to
    msg["Subject"] = notice.subject
    # A line that starts with a dot: smtplib stuffs it, the sink must take the extra dot off.
    msg.set_content(notice.body + ".signed, the front desk\n")
    return msg


def test_a_sign_in_mail_is_kept_and_its_code_shown(
    sink: tuple[MailSink, queue.Queue[Mail]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, got = sink
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        client.noop()
        client.send_message(_signin_mail("ann@example.com"))
    mail = got.get(timeout=5)
    assert mail.recipients == ("ann@example.com",)
    assert mail.sender == "front-desk@gym.example"
    assert mail.subject == "Your sign-in code"
    assert SIGNIN_CODE.search(mail.text) and "\n.signed, the front desk" in mail.text
    assert (
        b"\r\n.signed" in mail.path.read_bytes() and b"\r\n..signed" not in mail.path.read_bytes()
    )
    assert mail.path.stat().st_mode & 0o077 == 0  # a code that signs in: the user's only
    _show_mail(Timeline(), mail)
    shown = capsys.readouterr().out
    assert "to ann@example.com: Your sign-in code: code 493817, or open" in shown
    assert "http://127.0.0.1:8080/app/signin/link/abc_DEF-123" in shown


def test_a_notice_without_a_member_app_link_stays_in_its_file(
    sink: tuple[MailSink, queue.Queue[Mail]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, got = sink
    receipt = render("receipt", "ben@example.com", "m2", name="Ben", amount="49.90 EUR",
                     invoice="2026-000123")  # fmt: skip
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        client.sendmail("front-desk@gym.example", ["ben@example.com"],
                        f"Subject: {receipt.subject}\r\n\r\n{receipt.body}")  # fmt: skip
    mail = got.get(timeout=5)
    _show_mail(Timeline(), mail)
    assert capsys.readouterr().out == ""
    assert b"2026-000123" in mail.path.read_bytes()


def test_billing_delivers_a_sign_in_to_the_sink_and_its_code_signs_in(
    tmp_path: Path, sink: tuple[MailSink, queue.Queue[Mail]]
) -> None:
    server, got = sink
    b, clock = make_billing(tmp_path)
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="ann@example.com", payment_method="pm_sim_ok"
    )
    access = b.member_access()
    assert access.start_signin(
        "ann@example.com", "flow-1", "http://127.0.0.1:8080/app/signin/link/"
    )
    smtp = SmtpConfig(host="127.0.0.1", port=server.port, sender="front-desk@gym.example")
    # The receipt of the first month waits behind the sign-in, which goes first.
    assert deliver(b.engine, smtp, clock.now) == 2
    mail = got.get(timeout=5)
    assert mail.recipients == ("ann@example.com",)
    code = SIGNIN_CODE.search(mail.text)
    assert code, mail.text
    assert access.redeem_code("flow-1", code[1]) == "m1"
    assert got.get(timeout=5).subject.startswith("Receipt")


def _talk(conn: socket.socket, line: bytes) -> bytes:
    conn.sendall(line)
    return conn.recv(4096)


def test_garbage_gets_error_replies_and_the_sink_keeps_serving(
    sink: tuple[MailSink, queue.Queue[Mail]],
) -> None:
    server, got = sink
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        assert conn.recv(4096).startswith(b"220")
        assert _talk(conn, b"\xff\xfe\x00 garbage\r\n").startswith(b"500")
        assert _talk(conn, b"\r\n").startswith(b"500")
        assert _talk(conn, b"MAIL nowhere\r\n").startswith(b"500")
        assert _talk(conn, b"RCPT TO:<ann@example.com>\r\n").startswith(b"503")
        assert _talk(conn, b"DATA\r\n").startswith(b"503")
        assert _talk(conn, b"MAIL FROM:<a@example.com>\r\n").startswith(b"250")
        assert _talk(conn, b"RSET\r\n").startswith(b"250")
        assert _talk(conn, b"DATA\r\n").startswith(b"503")  # RSET forgot the sender
        assert _talk(conn, b"x" * (MAX_LINE + 10) + b"\r\n").startswith(b"500 line too long")
        assert conn.recv(4096) == b""  # and the connection is closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.recv(4096)
        conn.sendall(b"MAIL FROM:<a@example.com>\r\n")
        conn.recv(4096)
        conn.sendall(b"RCPT TO:<b@example.com>\r\nDATA\r\n")
        conn.recv(4096)
        conn.close()  # gone in the middle of DATA: nothing kept
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        client.helo("test")
        client.send_message(_signin_mail("ben@example.com"))
    assert got.get(timeout=5).recipients == ("ben@example.com",)
    assert got.empty()
