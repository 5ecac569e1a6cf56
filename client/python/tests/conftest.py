"""Starts one real credit-server for the test session: free loopback port,
fresh SQLite file in a temp dir, ready once grpc.health.v1 says SERVING."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent))  # credit_client, generate_stubs

STARTUP_SECONDS = 30.0


def _server_binary() -> Path:
    path = Path(os.environ.get("CREDIT_SERVER_BIN", "target/debug/credit-server"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.exit(f"credit-server binary not found at {path} (cargo build -p credit-server)", 2)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_serving(target: str, process: subprocess.Popen, deadline: float) -> bool:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def server_target(tmp_path_factory: pytest.TempPathFactory):
    """The "host:port" of a running server, stopped after the session."""
    binary = _server_binary()
    workdir = tmp_path_factory.mktemp("credit-server")
    log_path = workdir / "server.log"
    # The port is free when picked but another process may take it before the
    # server binds; then the server exits and we try another port.
    for _ in range(3):
        port = _free_port()
        target = f"127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [
                    str(binary),
                    "--listen",
                    target,
                    "--database-url",
                    f"sqlite://{workdir / 'credits.db'}?mode=rwc",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        if _wait_serving(target, process, time.monotonic() + STARTUP_SECONDS):
            break
        process.kill()
        process.wait()
    else:
        pytest.exit(f"credit-server did not become SERVING; log:\n{log_path.read_text()}", 2)
    try:
        yield target
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
