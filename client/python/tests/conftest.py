"""Real credit-servers for the tests, and both clients behind one interface.

Each server runs $CREDIT_SERVER_BIN on a free loopback port with a fresh
SQLite file in a temp dir, and is ready once grpc.health.v1 says SERVING:

- ``server_target``: plain text, no API keys;
- ``keyed_server``: API keys for the reader, service and admin roles;
- ``tls_server``: mutual TLS (a CA made by the tests) plus the same kind of keys.

The ``client_kind`` fixture runs a test twice, with ``CreditClient`` and with
``AsyncCreditClient``; ``make_client`` builds the client of that kind (the
async one behind a small adapter that runs each call on a private event
loop), so one test body checks that both clients behave the same.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import credit_client

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent  # client/python
REPO_ROOT = PACKAGE_ROOT.parent.parent
STARTUP_SECONDS = 30.0


def server_binary() -> Path:
    path = Path(os.environ.get("CREDIT_SERVER_BIN", "target/debug/credit-server"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.exit(f"credit-server binary not found at {path} (cargo build -p credit-server)", 2)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(
    target: str,
    process: subprocess.Popen[bytes],
    deadline: float,
    credentials: grpc.ChannelCredentials | None,
) -> bool:
    # Polled from before the server listens: the channel's reconnect backoff
    # (1 s at first by default) would make every start take a second.
    options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 100)]
    channel = (
        grpc.insecure_channel(target, options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options)
    )
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    return False


@dataclass
class Server:
    """A running credit-server."""

    target: str
    workdir: Path
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)  # role -> API key
    tls: credit_client.TlsConfig | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    workdir: Path,
    *args: str,
    health_credentials: grpc.ChannelCredentials | None = None,
    port: int | None = None,
) -> Server:
    """Starts credit-server with ``args`` on a free port (or ``port``) and the
    SQLite file ``workdir/credits.db``; waits until it serves. The same
    ``workdir`` and ``port`` again restart a stopped server on its data."""
    binary = server_binary()
    log_path = workdir / "server.log"
    # The port is free when picked but another process may take it before the
    # server binds; then the server exits and we try another port.
    for _ in range(3 if port is None else 1):
        target = f"127.0.0.1:{_free_port() if port is None else port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [
                    str(binary),
                    "--listen",
                    target,
                    "--database-url",
                    f"sqlite://{workdir / 'credits.db'}?mode=rwc",
                    # No expiry sweeper: tests that look at expired credit
                    # before any write wrote it down must not race one.
                    "--expiry-sweep-secs",
                    "0",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        if _wait_serving(target, process, time.monotonic() + STARTUP_SECONDS, health_credentials):
            return Server(target, workdir, process)
        process.kill()
        process.wait()
    pytest.exit(f"credit-server did not become SERVING; log:\n{log_path.read_text()}", 2)


def new_keys(workdir: Path, names: dict[str, str]) -> tuple[dict[str, str], str]:
    """Makes one API key per role with ``credit-server new-key``.

    ``names`` maps role -> key name; returns (role -> key, the --api-keys value).
    """
    keys: dict[str, str] = {}
    lines: list[str] = []
    for role, name in names.items():
        out = subprocess.run(
            [str(server_binary()), "new-key", "--name", name, "--role", role],
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("key (") or line.startswith("key:"):
                keys[role] = line.rsplit(":", 1)[1].strip()
            elif line.startswith("keys file line:"):
                lines.append(line.split(":", 1)[1].strip())
        assert role in keys, f"no key in new-key output: {out!r}"
    assert len(lines) == len(names), f"no keys-file lines in new-key output"
    return keys, ",".join(lines)


KEY_NAMES = {"reader": "py-reader", "service": "py-billing", "admin": "py-ops"}


@pytest.fixture(scope="session")
def server_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The "host:port" of a plain-text server without keys."""
    server = start_server(tmp_path_factory.mktemp("plain"))
    try:
        yield server.target
    finally:
        server.stop()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A plain-text server that requires API keys (one per role in ``.keys``)."""
    workdir = tmp_path_factory.mktemp("keyed")
    keys, api_keys = new_keys(workdir, KEY_NAMES)
    server = start_server(workdir, "--api-keys", api_keys)
    server.keys = keys
    try:
        yield server
    finally:
        server.stop()


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Credit Tests"),
            ]
        )

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("credit test CA"))
        .issuer_name(name("credit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common_name: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    files = {name: directory / f"{name}.pem" for name in
             ("ca", "server", "server-key", "client", "client-key", "other-ca")}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue("localhost", server=True)
    files["server"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files["server-key"])
    client_cert, client_key = issue("py-client", server=False)
    files["client"].write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(client_key, files["client-key"])
    # A CA that signed nothing here: trusting only it must fail.
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (
        x509.CertificateBuilder()
        .subject_name(name("unrelated CA"))
        .issuer_name(name("unrelated CA"))
        .public_key(other_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(other_key, hashes.SHA256())
    )
    files["other-ca"].write_bytes(other.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that requires TLS with a client certificate, and API keys."""
    workdir = tmp_path_factory.mktemp("tls")
    files = _make_certificates(workdir)
    keys, api_keys = new_keys(workdir, KEY_NAMES)
    tls = credit_client.TlsConfig.from_files(
        ca_certificate=files["ca"],
        client_certificate=files["client"],
        client_key=files["client-key"],
    )
    server = start_server(
        workdir,
        "--tls-cert",
        str(files["server"]),
        "--tls-key",
        str(files["server-key"]),
        "--tls-client-ca",
        str(files["ca"]),
        "--api-keys",
        api_keys,
        health_credentials=tls.credentials(),
    )
    server.keys = keys
    server.tls = tls
    server.files = files
    try:
        yield server
    finally:
        server.stop()


class AsyncAdapter:
    """An AsyncCreditClient whose methods run to completion on a private loop.

    Coroutines are awaited; async iterators become lazy plain iterators. The
    client is created inside the loop, as grpc.aio requires.
    """

    def __init__(self, make: Callable[[], credit_client.AsyncCreditClient]) -> None:
        self.loop = asyncio.new_event_loop()

        async def create() -> credit_client.AsyncCreditClient:
            return make()

        self.client = self.loop.run_until_complete(create())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return self.loop.run_until_complete(result)
            if isinstance(result, AsyncIterator):
                return self._iterate(result)
            return result

        return call

    def _iterate(self, items: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self.loop.run_until_complete(items.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            # Closing the plain iterator closes the async one (a watch then
            # cancels its call), as leaving ``async for`` early would.
            close = getattr(items, "aclose", None)
            if close is not None and not self.loop.is_closed():
                self.loop.run_until_complete(close())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_client(client_kind: str) -> Iterator[Callable[..., Any]]:
    """``make_client(target, **kwargs)``: a client of this test's kind, closed afterwards."""
    made: list[Any] = []

    def make(target: str, **kwargs: Any) -> Any:
        if client_kind == "sync":
            client: Any = credit_client.CreditClient(target, **kwargs)
        else:
            client = AsyncAdapter(lambda: credit_client.AsyncCreditClient(target, **kwargs))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., Any], server_target: str) -> Any:
    """A client (of this test's kind) of the plain server."""
    return make_client(server_target)
