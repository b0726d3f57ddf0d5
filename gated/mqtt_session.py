"""Every MQTT client gated runs (the gate's sync, the billing publisher, `gated members push`,
`gated command sign --publish`): one constructor (:func:`client_for`, TLS built once), a session
whose goodbye is bounded, aiomqtt's waits made to honour a cancellation on Python 3.11, and the
gate's direct message path.

This is the one module that touches aiomqtt's and paho's private attributes (``client._client``,
``_disconnected``, ``_sock``, ``_packet_read``, ``_loop_rc_handle``, ``Client._wait_for``); the
versions they were measured with are pinned in pyproject.toml, and ``tests/test_mqtt_session.py``
fails with :func:`missing_internals`'s list when an upgrade moves them.

aiomqtt's exit waits for its DISCONNECT to complete with no time limit: a broker or socket that
never answers would hold a stopping service until the service manager kills it (a gate that is
restarting lets nobody in meanwhile). ``session(client)`` is ``async with client`` that leaves
after DISCONNECT_TIMEOUT_S; whatever ended the session (a cancellation, a lost link) surfaces as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import MQTTErrorCode

from gated.errors import GatedError

log = logging.getLogger("gated.mqtt")

DISCONNECT_TIMEOUT_S = 5.0
# MQTT packets read per pass of the loop on the direct path (see take_messages_directly).
READ_PACKETS_PER_PASS = 8
T = TypeVar("T")


class BrokerSetupError(GatedError):
    """A broker URL, password file or TLS file that cannot be used; one line."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The TLS files of an ``mqtts://`` broker: its CA (None: the system's) and, optionally, our
    client certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def read_password(path: Path | None) -> str | None:
    """The broker password from its file (stripped), or None. Raises BrokerSetupError."""
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise BrokerSetupError(f"mqtt password_file: {exc.strerror or exc}") from exc


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """The TLS context for an ``mqtts://`` broker. Raises BrokerSetupError naming the file that
    cannot be used."""
    try:
        context = ssl.create_default_context(
            cafile=str(files.ca_file) if files.ca_file is not None else None
        )
        if files.cert_file is not None:
            context.load_cert_chain(
                str(files.cert_file), str(files.key_file) if files.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise BrokerSetupError(f"mqtt TLS files: {exc}") from exc
    return context


def client_for(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: TlsFiles | None = None,
    client_id: str | None = None,
    clean_session: bool | None = None,
    will: aiomqtt.Will | None = None,
    keepalive: int = 60,
    max_inflight_messages: int | None = None,
    timeout: float | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (TLS from ``tls``,
    default port 1883 or 8883). Raises BrokerSetupError for a bad URL or unusable TLS files."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("mqtt", "mqtts"):
        raise BrokerSetupError(f"broker URL must be mqtt://HOST:PORT or mqtts://HOST:PORT: {url}")
    host, _, port = rest.rstrip("/").partition(":")
    secure = scheme == "mqtts"
    try:
        port_number = int(port) if port else (8883 if secure else 1883)
    except ValueError as exc:
        raise BrokerSetupError(f"broker URL has a bad port: {url}") from exc
    return aiomqtt.Client(
        host,
        port_number,
        identifier=client_id,
        clean_session=clean_session,
        username=username,
        password=password,
        will=will,
        keepalive=keepalive,
        tls_context=tls_context(tls or TlsFiles()) if secure else None,
        max_inflight_messages=max_inflight_messages,
        timeout=timeout,
    )


async def _wait_for(self: aiomqtt.Client, fut: Awaitable[T], timeout: float | None) -> T:
    """aiomqtt's wait for an acknowledgement (every QoS 1 publish, every subscribe), on
    ``asyncio.timeout``.

    Python 3.11's ``asyncio.wait_for``, which aiomqtt uses, returns the result instead of
    raising when a cancellation arrives in the same loop pass as that result (CPython gh-86296,
    fixed in 3.12). A loop that publishes until cancelled then runs on for ever, and whoever
    cancelled it waits for ever: a billing publisher test hung so, and a gate being stopped
    would have waited for the service manager to kill it.
    """
    if timeout is None:
        timeout = self.timeout
    try:
        async with asyncio.timeout(None if timeout == math.inf else timeout):
            return await fut
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out") from None


if sys.version_info < (3, 12):
    aiomqtt.Client._wait_for = _wait_for  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def session(
    client: aiomqtt.Client, connect_timeout: float | None = None
) -> AsyncIterator[aiomqtt.Client]:
    """``async with client``, with the disconnect on the way out bounded and, given
    ``connect_timeout``, the wait for CONNACK too (instead of the client's reply timeout)."""
    await _enter(client, connect_timeout)
    try:
        yield client
    except BaseException as exc:
        await _leave(client, exc)
        raise
    await _leave(client, None)


async def _enter(client: aiomqtt.Client, connect_timeout: float | None) -> None:
    """Connect, waiting at most ``connect_timeout`` for CONNACK. aiomqtt waits for it as long as
    for any reply (the client's ``timeout``), and paho, which closes a socket that stays silent
    for a keepalive while connecting, does not tell aiomqtt: a CONNECT sent to a frozen broker
    would be waited on for the whole reply timeout (minutes) after the broker resumed."""
    if connect_timeout is None:
        await client.__aenter__()
        return
    reply_timeout = client.timeout
    client.timeout = connect_timeout
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        _abandon(client)
        if str(exc) == "Operation timed out":
            raise aiomqtt.MqttError(
                f"no CONNACK within {connect_timeout:g} s (the broker is not answering)"
            ) from None
        raise
    except BaseException:
        _abandon(client)
        raise
    finally:
        client.timeout = reply_timeout


def _abandon(client: aiomqtt.Client) -> None:
    """Close the socket of a connection that never completed (aiomqtt leaves it open)."""
    paho_client = getattr(client, "_client", None)
    if paho_client is not None:
        with contextlib.suppress(Exception):
            paho_client.disconnect()


async def _leave(client: aiomqtt.Client, exc: BaseException | None) -> None:
    try:
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):  # not wait_for: see _wait_for
            await client.__aexit__(
                type(exc) if exc else None, exc, exc.__traceback__ if exc else None
            )
    except TimeoutError:
        log.warning("event=mqtt_disconnect_timeout seconds=%.0f", DISCONNECT_TIMEOUT_S)


# --- the direct message path -------------------------------------------------------------------


def take_messages_directly(
    client: aiomqtt.Client, handle: Callable[[str, bytes], None], bad_topic: Callable[[], None]
) -> bool:
    """Have paho call ``handle(topic, payload)`` for each message inside the loop's read of the
    socket, rather than going through ``client.messages``, whose Task and ``asyncio.wait`` per
    message cost the loop dearly in a flood of retained states. A topic that is not UTF-8 calls
    ``bad_topic()``. Each read pass is bounded to READ_PACKETS_PER_PASS packets: paho's own
    loop_read reads as many as the client has unacknowledged publishes, and a badge would wait
    behind all of them. (Measurements: BENCHMARKS.md, member sync.)

    False (and the iterator is to be used) if this aiomqtt lacks what the path needs."""
    paho_client = getattr(client, "_client", None)
    if paho_client is None or not isinstance(
        getattr(client, "_disconnected", None), asyncio.Future
    ):
        return False

    def on_message(_client: object, _userdata: object, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            bad_topic()
            return
        payload = message.payload
        handle(topic, payload if isinstance(payload, bytes) else bytes(payload))

    paho_client.on_message = on_message
    packet_read = getattr(paho_client, "_packet_read", None)
    rc_handle = getattr(paho_client, "_loop_rc_handle", None)
    if packet_read is None or rc_handle is None:
        return True

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        """paho's loop_read (the same return codes), a few packets per call."""
        for _ in range(READ_PACKETS_PER_PASS):
            if paho_client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = packet_read()
            if rc > 0:
                return rc_handle(rc)  # type: ignore[no-any-return]
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho_client.loop_read = loop_read
    return True


async def wait_disconnected(client: aiomqtt.Client) -> None:
    """On the direct path: wait until the link ends, then raise MqttError as ``client.messages``
    would."""
    disconnected: asyncio.Future[None] = client._disconnected
    try:
        await asyncio.shield(disconnected)
    except Exception as exc:
        raise aiomqtt.MqttError("Disconnected during message iteration") from exc
    raise aiomqtt.MqttError("Disconnected during message iteration")


async def missing_internals() -> list[str]:
    """The aiomqtt/paho internals this module relies on that the installed versions lack (or
    have with another signature); empty when all is as measured. Async: an aiomqtt client is
    made on a running loop."""
    missing: list[str] = []
    wait_for = getattr(aiomqtt.Client, "_wait_for", None)
    if wait_for is None or list(inspect.signature(wait_for).parameters) != [
        "self",
        "fut",
        "timeout",
    ]:
        missing.append("aiomqtt.Client._wait_for(self, fut, timeout)")
    client = aiomqtt.Client("127.0.0.1", 1)
    if not isinstance(getattr(client, "_client", None), PahoClient):
        missing.append("aiomqtt.Client()._client (a paho Client)")
    if not isinstance(getattr(client, "_disconnected", None), asyncio.Future):
        missing.append("aiomqtt.Client()._disconnected (an asyncio.Future)")
    for name, params in (
        ("_packet_read", ["self"]),
        ("_loop_rc_handle", ["self", "rc"]),
        ("loop_read", ["self", "max_packets"]),
    ):
        method = getattr(PahoClient, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            missing.append(f"paho Client.{name}({', '.join(params)})")
    paho_client = getattr(client, "_client", None)
    if paho_client is not None and not hasattr(paho_client, "_sock"):
        missing.append("paho Client()._sock")
    return missing
