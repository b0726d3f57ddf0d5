"""A test head office: signs member states with the gate's trusted key and talks to a real broker
through paho (synchronous, so tests read straight down)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gated.contract import (
    Signer,
    card_key,
    compact_json,
    format_time,
    load_credential_key,
    manifest_topic,
    member_topic,
)
from gated.push import build_manifest

T = TypeVar("T")
SITE = "downtown"


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def member(
    member_id: str,
    version: int,
    *,
    cards: Iterable[str] = (),
    key: bytes,
    status: str = "active",
    sites: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "type": "member_state",
        "member_id": member_id,
        "sites": sites or [SITE],
        "version": version,
        "status": status,
        "role": "member",
        "valid_from": None,
        "valid_until": None,
        "plan": "basic",
        "schedule": [],
        "zones": [],
        "credentials": [card_key(key, uid) for uid in cards],
        "qr_key": None,
        "daily_limit": None,
        "issued_at": format_time(time.time()),
    }


def uid_for(n: int) -> str:
    return f"04{n:012X}"


class HeadOffice:
    """Signs with ``keys/head-office.key`` and publishes retained at QoS 1."""

    def __init__(
        self,
        keys: Path,
        port: int,
        client_id: str = "test-hq",
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.signer = Signer.from_pem_file(keys / "head-office.key")
        self.credential_key = load_credential_key(keys / "credential.key")
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.states: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def state(self, member_id: str, version: int, **kw: Any) -> dict[str, Any]:
        return member(member_id, version, key=self.credential_key, **kw)

    def raw(self, topic: str, payload: bytes | str, retain: bool = True) -> None:
        # paho reconnects by itself after a broker restart; wait for it rather than fail.
        wait_until(self.client.is_connected, timeout=20, what="head office connected")
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish(self, *states: dict[str, Any], manifest: bool = True) -> None:
        for s in states:
            signed = self.signer.sign(s)
            self.raw(member_topic(SITE, s["member_id"]), compact_json(signed))
            self.states[s["member_id"]] = s
        if manifest:
            self.publish_manifest()

    def publish_manifest(self) -> dict[str, Any]:
        m = build_manifest(SITE, self.states.values(), self.signer, format_time(time.time()))
        self.raw(manifest_topic(SITE), compact_json(m))
        return m


class EventSink:
    """A persistent-session QoS 1 subscriber to every gate's events, as billing would be."""

    def __init__(self, port: int, client_id: str = "test-sink") -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(f"gated/v1/sites/{SITE}/gates/+/events", qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.events.append(json.loads(msg.payload))

    def unique(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {e["event_id"]: e for e in self.events}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


TOKEN = "gate-t1-token"


class SnapshotServer:
    """``GET /v1/sites/{site}/snapshot`` for a bearer token, serving whatever bytes it is given."""

    def __init__(self) -> None:
        self.body = b""
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                if self.path != f"/v1/sites/{SITE}/snapshot":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/sites/{SITE}/snapshot"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
