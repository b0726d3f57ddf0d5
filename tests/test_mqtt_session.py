"""The MQTT client seam: one constructor with TLS built once, and the aiomqtt/paho internals the
gate's fast message path relies on still where they were measured."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gated.mqtt_session import BrokerSetupError, TlsFiles, client_for, missing_internals


def test_the_installed_aiomqtt_and_paho_still_have_the_internals_we_use() -> None:
    """gated.mqtt_session reaches into aiomqtt and paho (the direct message path, the bounded
    read, the cancellable wait). An upgrade that moves any of it must fail here, by name, not
    slow every gate down or hang a stopping one."""
    missing = asyncio.run(missing_internals())
    assert not missing, (
        "aiomqtt/paho internals moved (pin aiomqtt/paho-mqtt back in pyproject.toml, or port "
        "gated/mqtt_session.py): " + "; ".join(missing)
    )


def test_a_bad_broker_url_is_one_line() -> None:
    with pytest.raises(BrokerSetupError, match="mqtt://HOST:PORT"):
        client_for("http://127.0.0.1:1883")


@pytest.fixture
def client_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate with its key, as a site's broker and its clients have."""
    from tests.sync.test_broker_config import make_ca, make_server_cert

    ca, ca_key, ca_cert = make_ca(tmp_path, "site-ca")
    crt, key = make_server_cert(tmp_path, ca_key, ca_cert)
    return ca, crt, key


def test_every_client_loads_its_certificate_and_key(
    tmp_path: Path, client_cert: tuple[Path, Path, Path]
) -> None:
    """The gate, `gated members push` and the billing publisher build their TLS in one place, so
    each presents its client certificate (the publisher once ignored cert_file/key_file)."""
    from gated.billing_sync.config import BillingMqttConfig
    from gated.billing_sync.publisher import billing_client
    from gated.config import MqttConfig
    from gated.push import Broker, PushError

    ca, crt, key = client_cert
    not_a_key = tmp_path / "not-a.key"
    not_a_key.write_text("not a key\n")

    async def build() -> None:
        good = billing_client(
            BillingMqttConfig(url="mqtts://127.0.0.1:8883", ca_file=ca, cert_file=crt, key_file=key)
        )
        assert good._client._ssl_context is not None  # the context reached paho
        with pytest.raises(BrokerSetupError, match="mqtt TLS files"):
            billing_client(
                BillingMqttConfig(
                    url="mqtts://127.0.0.1:8883", ca_file=ca, cert_file=crt, key_file=not_a_key
                )
            )
        with pytest.raises(PushError, match="mqtt TLS files"):
            Broker("mqtts://127.0.0.1:8883", ca_file=ca, cert_file=crt, key_file=not_a_key).client()
        gate_mqtt = MqttConfig(
            url="mqtts://127.0.0.1:8883", ca_file=ca, cert_file=crt, key_file=not_a_key
        )
        with pytest.raises(BrokerSetupError, match="mqtt TLS files"):
            client_for(
                gate_mqtt.url,
                tls=TlsFiles(gate_mqtt.ca_file, gate_mqtt.cert_file, gate_mqtt.key_file),
            )
        # plain mqtt:// never opens the TLS files
        plain = client_for("mqtt://127.0.0.1:1883", tls=TlsFiles(cert_file=not_a_key))
        assert plain._client._ssl_context is None

    asyncio.run(build())


def test_the_tls_context_holds_the_client_certificate(client_cert: tuple[Path, Path, Path]) -> None:
    """A context made from the files verifies the broker with the CA and offers our certificate."""
    from gated.mqtt_session import tls_context

    ca, crt, key = client_cert
    context = tls_context(TlsFiles(ca, crt, key))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
