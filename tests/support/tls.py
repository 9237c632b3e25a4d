"""Throwaway TLS material and servers for the transport-security tests.

* ``make_pki``: a CA, a server certificate for 127.0.0.1/localhost signed by it, and a second,
  unrelated CA (the "wrong CA" a client must refuse), made with ``cryptography``.
* ``TlsPostgres``: a PostgreSQL cluster of its own (Debian's binaries, like the stack) in a temp
  folder, ``ssl = on`` with that certificate.
* ``SaslKafka``: a single-node KRaft broker (the stack's Kafka jars) with a SASL_SSL listener
  (PLAIN and SCRAM-SHA-256 users), a PLAINTEXT listener only for itself, on free ports.

Each is started and stopped by pid, never by name.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from paystream import stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server certificate
    cert: Path  # server certificate (127.0.0.1, localhost)
    key: Path  # its private key (PKCS#8, unencrypted)
    wrong_ca: Path  # a CA that signed nothing here


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("paystream test CA")
    _, wrong_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "wrong-ca.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.wrong_ca.write_bytes(wrong_cert.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem))
    pki.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


def _wait(check: object, what: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    def tail() -> str:
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail()}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not up after {timeout}s:\n{tail()}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class TlsPostgres:
    """A throwaway PostgreSQL cluster with ``ssl = on`` (trust auth: TLS is what is tested)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # Under /var/tmp: the `postgres` user must reach it (pytest's temp folders may be private).
        self.data = Path(f"/var/tmp/paystream-tls-pg-{os.getpid()}-{self.port}")
        self.log = self.data.with_suffix(".log")

    def _as_pg(self, cmd: list[str]) -> list[str]:
        user = stack._pg_user()
        return ["runuser", "-u", user, "--", *cmd] if user else cmd

    def start(self) -> None:
        bin_dir = stack._pg_bin()
        self.data.mkdir(parents=True)
        user = stack._pg_user()
        if user:
            shutil.chown(self.data, user, user)
        subprocess.run(self._as_pg([str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                    "-E", "UTF8", "--locale=C"]), check=True, stdout=subprocess.DEVNULL)
        for src, name in ((self.pki.cert, "server.crt"), (self.pki.key, "server.key")):
            shutil.copy(src, self.data / name)
            (self.data / name).chmod(0o600)
            if user:
                shutil.chown(self.data / name, user, user)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.data}'\n"
                    "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self._as_pg([str(bin_dir / "postgres"), "-D", str(self.data)]), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            return subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                                  check=False).returncode == 0

        _wait(ready, "TLS postgres", 60, self.proc, self.log)
        subprocess.run(self._as_pg([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                    "postgres", "paystream"]), check=True)

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/paystream"

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)


PLAIN_USER, PLAIN_PASSWORD = "paystream", "plain-secret-1"
SCRAM_USER, SCRAM_PASSWORD = "paystream-scram", "scram-secret-2"


def kafka_cluster_id() -> str:
    """A random KRaft cluster id that kafka-storage's argument parser takes: one in 64 base64
    ids starts with "-", which it reads as an option ("argument --cluster-id/-t: expected one
    argument": a fresh-clone CI run lost the SASL broker's tests to it). Kafka's own
    ``random-uuid`` skips those ids too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class SaslKafka:
    """A throwaway single-node KRaft broker whose client listener is SASL_SSL only."""

    def __init__(self, pki: Pki, folder: Path) -> None:
        self.pki = pki
        self.folder = folder
        self.port, self.internal_port, self.controller_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        cmd = stack._kafka_java(main, *args)
        # the stack's log4j config, writing server.log into our folder instead of the stack's
        return [f"-Dkafka.logs.dir={self.folder}" if c.startswith("-Dkafka.logs.dir=") else c for c in cmd]

    def start(self) -> None:
        if not (stack.kafka_home() / "libs").exists():
            raise RuntimeError("the stack's Kafka is not installed (paystream stack up)")
        self.folder.mkdir(parents=True, exist_ok=True)
        keystore = self.folder / "broker-keystore.pem"
        keystore.write_text(self.pki.key.read_text() + self.pki.cert.read_text())
        props = self.folder / "server.properties"
        jaas_plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                      f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";')
        props.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=SASL_SSL://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=INTERNAL", "controller.listener.names=CONTROLLER",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas_plain}",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type=PEM", f"ssl.keystore.location={keystore}",
            f"log.dirs={self.folder / 'data'}", "num.partitions=4", "default.replication.factor=1",
            "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4", "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1", "min.insync.replicas=1", "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true", "",
        ]))
        cluster_id = kafka_cluster_id()
        subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                                  str(props), "--add-scram",
                                  f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"),
                       check=True, capture_output=True)
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.folder)
        server_log = self.folder / "server.log"

        def started() -> bool:
            return server_log.exists() and "Kafka Server started" in server_log.read_text(errors="replace")

        _wait(started, "SASL_SSL kafka", 120, self.proc, server_log)

    def stop(self) -> None:
        _stop(self.proc)
