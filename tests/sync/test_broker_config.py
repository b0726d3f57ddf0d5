"""The broker config we ship (config/mosquitto.conf and mosquitto-acl), run for real: TLS with a
test CA, passwords, ACLs; a gate that trusts the wrong CA is refused with a clear error."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gated.contract import compact_json, member_topic
from tests.gatefixture import GateProcess, write_config
from tests.services import free_port, wait_for_port
from tests.sync.helpers import SITE, HeadOffice, uid_for, wait_until

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"head-office": "hq-secret", "gated-downtown-t1": "t1-secret", "operator": "op-secret"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    crt, pem = folder / "broker.crt", folder / "broker.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@dataclass
class SiteBroker:
    tls_port: int
    plain_port: int
    ca: Path
    wrong_ca: Path


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[SiteBroker]:
    folder = tmp_path / "broker"
    folder.mkdir()
    ca, ca_key, ca_cert = make_ca(folder, "site-ca")
    wrong_ca, _k, _c = make_ca(folder, "other-ca")
    crt, key = make_server_cert(folder, ca_key, ca_cert)
    passwd = folder / "gated.passwd"
    passwd.touch()
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    tls_port, plain_port = free_port(), free_port()
    conf = (REPO / "config" / "mosquitto.conf").read_text()
    for old, new in {
        "/etc/mosquitto/certs/ca.crt": str(ca),
        "/etc/mosquitto/certs/broker.crt": str(crt),
        "/etc/mosquitto/certs/broker.key": str(key),
        "/etc/mosquitto/gated.passwd": str(passwd),
        "/etc/mosquitto/gated-acl": str(REPO / "config" / "mosquitto-acl"),
        "/var/lib/mosquitto/": f"{folder}/",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {plain_port} 127.0.0.1",
        "log_dest syslog": f"log_dest file {folder}/mosquitto.log",
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    (folder / "mosquitto.conf").write_text(conf + "user root\n")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(folder / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(tls_port, proc=proc)
        wait_for_port(plain_port, proc=proc)
        yield SiteBroker(tls_port, plain_port, ca, wrong_ca)
    finally:
        proc.terminate()
        proc.wait(10)


def tls_gate(root: Path, broker: SiteBroker, ca: Path) -> GateProcess:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mqtt.password").write_text(PASSWORDS["gated-downtown-t1"] + "\n")
    mqtt = (
        f'[mqtt]\nurl = "mqtts://127.0.0.1:{broker.tls_port}"\nusername = "gated-downtown-t1"\n'
        f'password_file = "{root / "mqtt.password"}"\nca_file = "{ca}"\nheartbeat_s = 1\n'
    )
    return GateProcess(write_config(root, extra=mqtt), root)


def test_gate_over_tls_with_acls(tmp_path: Path, site_broker: SiteBroker) -> None:
    gate = tls_gate(tmp_path / "gate", site_broker, site_broker.ca)
    hq = HeadOffice(
        gate.root / "keys",
        site_broker.plain_port,
        auth=("head-office", PASSWORDS["head-office"]),
    )
    # The gate's own account, used to try what the ACL must stop.
    intruder = HeadOffice(
        gate.root / "keys",
        site_broker.plain_port,
        client_id="intruder",
        auth=("gated-downtown-t1", PASSWORDS["gated-downtown-t1"]),
    )
    try:
        gate.start()
        hq.publish(hq.state("m_1", 1, cards=[uid_for(1)]))
        wait_until(lambda: gate.request("badge", {"card": uid_for(1)})["allow"], what="over TLS")
        stats = gate.request("status")["sync"]
        assert stats["connected"] and stats["broker"].startswith("mqtts://")

        # A gate account may not write member states: the broker drops it before any gate.
        intruder.raw(
            member_topic(SITE, "m_1"),
            compact_json(
                hq.signer.sign(hq.state("m_1", 2, cards=[uid_for(1)], status="suspended"))
            ),
        )
        hq.publish(hq.state("m_2", 3, cards=[uid_for(2)]))  # a sentinel behind it
        wait_until(lambda: gate.request("badge", {"card": uid_for(2)})["allow"], what="sentinel")
        assert gate.request("badge", {"card": uid_for(1)})["allow"]
        assert gate.request("cache_lookup", {"member": "m_1"})["member"]["version"] == 1
    finally:
        gate.stop()
        hq.close()
        intruder.close()


def test_wrong_ca_is_refused_with_a_clear_error(tmp_path: Path, site_broker: SiteBroker) -> None:
    gate = tls_gate(tmp_path / "gate", site_broker, site_broker.wrong_ca)
    try:
        gate.start()
        error = wait_until(
            lambda: gate.request("status")["sync"]["last_error"], what="a connection error"
        )
        assert "TLS" in error and "does not trust" in error and "ca_file" in error, error
        doctor = gate.gatectl("doctor", "--json")
        assert '"broker"' in doctor.stdout and "does not trust" in doctor.stdout
        assert doctor.returncode == 2
    finally:
        gate.stop()
