"""Body limits on a real ``gated-billing serve``: a declared Content-Length over the route's limit
is refused before the body is read, a chunked body is refused as it passes the limit, and a
300 MiB unsigned POST costs the server no memory to speak of."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gated.http_limits import BodyLimit
from tests.billing.test_crash import billing_for
from tests.billing.test_webhooks import event, signed
from tests.services import free_port
from tests.sync.helpers import wait_until

BIN = Path(sys.executable).parent / "gated-billing"
WEBHOOK = "/v1/stripe/webhook"
MIB = 1 << 20


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc

    def vm_hwm_kib(self) -> int:
        """The server's peak resident memory so far (kernel's VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("billing-limits")
    (root / "stripe.key").write_text("sk_test_x\n")
    (root / "whsec").write_text("whsec_test_secret\n")
    port = free_port()
    config = root / "billing.toml"
    config.write_text(
        f'database_url = "sqlite:///{root}/billing.db"\nstate_dir = "{root}/state"\n'
        'sites = ["downtown"]\n'
        f'[keys]\nhead_office_private_key_file = "{root}/keys/ho.key"\n'
        f'credential_key_file = "{root}/keys/credential.key"\n'
        f'card_encryption_key_file = "{root}/keys/cards.key"\n'
        f'[stripe]\napi_key_file = "{root}/stripe.key"\nwebhook_secret_file = "{root}/whsec"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    billing_for(config).engine.dispose()  # keys and store
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([str(BIN), "serve", "-c", str(config)], stdout=log, stderr=log)

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return proc.poll() is not None
        return True

    wait_until(up, timeout=30, what="gated-billing serve listening")
    assert proc.poll() is None, (root / "serve.log").read_text()
    yield Server(port, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, (root / "serve.log").read_text()[-3000:]


def read_status(sock: socket.socket) -> int:
    """The status code of the response on ``sock`` (its first line)."""
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise AssertionError(f"connection closed before a status line: {head!r}")
        head += data
    return int(head.split(b" ", 2)[1])


def head(path: str, *fields: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *fields, "", ""]
    return "\r\n".join(lines).encode()


def post_declared(server: Server, path: str, length: int) -> int:
    """Send only the head with ``Content-Length: length``: an answer can only come before a body
    byte was read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head(path, f"Content-Length: {length}"))
        return read_status(sock)


def post_chunked(server: Server, path: str, total: int, chunk: int = 64 << 10) -> tuple[int, int]:
    """Stream ``total`` bytes chunked (no Content-Length) until the server answers or hangs up;
    returns (status, bytes sent)."""
    sent = 0
    block = b"%x\r\n" % chunk + b"x" * chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head(path, "Transfer-Encoding: chunked", "Content-Type: application/json"))
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(block)
                sent += chunk
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is waiting
        return read_status(sock), sent


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    server: Server,
) -> None:
    assert post_declared(server, WEBHOOK, 2 * MIB) == 413
    assert post_declared(server, "/pay/sometoken", 65 << 10) == 413  # a form: 64 KiB
    assert post_declared(server, "/healthz", 65 << 10) == 413  # any other route: 64 KiB


def test_a_chunked_body_is_refused_as_it_passes_the_limit(server: Server) -> None:
    status, sent = post_chunked(server, WEBHOOK, 2 * MIB)
    assert status == 413, sent


def test_a_signed_webhook_under_the_limit_still_works(server: Server) -> None:
    import httpx

    payload, headers = signed(event("evt_limits_1", "customer.created", {"id": "cus_1"}))
    reply = httpx.post(f"http://127.0.0.1:{server.port}{WEBHOOK}", content=payload, headers=headers)
    assert reply.status_code == 200 and reply.json() == {"received": True, "applied": False}
    unsigned = httpx.post(f"http://127.0.0.1:{server.port}{WEBHOOK}", content=b"{}" * 1000)
    assert unsigned.status_code == 400


def test_a_300_mib_chunked_post_does_not_grow_the_server(server: Server) -> None:
    post_chunked(server, WEBHOOK, 2 * MIB)  # warm: the refusal path has run once
    before = server.vm_hwm_kib()
    started = time.monotonic()
    status, sent = post_chunked(server, WEBHOOK, 300 * MIB, chunk=MIB)
    assert status == 413
    grew_kib = server.vm_hwm_kib() - before
    print(f"sent {sent / MIB:.0f} MiB in {time.monotonic() - started:.2f}s; VmHWM +{grew_kib} KiB")
    assert sent < 300 * MIB
    assert grew_kib < 4 * 1024


def test_the_middleware_picks_the_first_matching_route() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    limits = BodyLimit(app, [(r"/desk/members/[^/]+/photo", 5 * MIB), (r"/v1/.*", MIB)], 100)
    assert limits.limit_for("/desk/members/m_1/photo") == 5 * MIB
    assert limits.limit_for("/desk/members/m_1/photo/x") == 100
    assert limits.limit_for("/v1/stripe/webhook") == MIB
    assert limits.limit_for("/pay/abc") == 100
