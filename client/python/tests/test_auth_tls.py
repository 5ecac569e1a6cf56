"""API keys (authorization: Bearer) and mutual TLS, with both clients."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from conftest import KEY_NAMES, Server
from credit_client import (
    CreditError,
    PermissionDenied,
    RetryPolicy,
    TlsConfig,
    Unauthenticated,
    Unavailable,
)


def _new_user(admin: Any) -> str:
    user_id = f"py-{uuid.uuid4()}"
    admin.create_user(user_id, f"{user_id}@example.com")
    return user_id


def test_bearer_key_roles_and_created_by(make_client: Any, keyed_server: Server) -> None:
    target, keys = keyed_server.target, keyed_server.keys
    admin = make_client(target, api_key=keys["admin"])
    service = make_client(target, api_key=keys["service"])
    reader = make_client(target, api_key=keys["reader"])

    user_id = _new_user(admin)
    written = service.top_up(user_id, 50).transaction
    # The server records which key wrote each transaction.
    assert written.created_by == KEY_NAMES["service"]
    assert written.created_by_certificate_subject == ""
    assert admin.grant(user_id, 5).transaction.created_by == KEY_NAMES["admin"]

    assert reader.get_balance(user_id).balance == 55
    by_service = [t.amount for t in reader.iter_transactions(user_id, created_by=KEY_NAMES["service"])]
    assert by_service == [50]

    with pytest.raises(PermissionDenied) as denied:
        reader.spend(user_id, 1)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert not denied.value.retryable
    with pytest.raises(PermissionDenied):
        service.verify_ledger()
    assert admin.verify_ledger(user_id).clean


@pytest.mark.parametrize("api_key", [None, "ck_not-a-real-key"])
def test_missing_or_unknown_key_is_unauthenticated(
    make_client: Any, keyed_server: Server, api_key: str | None
) -> None:
    credits = make_client(keyed_server.target, api_key=api_key)
    with pytest.raises(Unauthenticated) as caught:
        credits.get_balance("anyone")
    # Whether or not the server attaches an ErrorInfo, the code picks the class.
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(caught.value, CreditError)


def test_mutual_tls_with_key(make_client: Any, tls_server: Server) -> None:
    admin = make_client(tls_server.target, tls=tls_server.tls, api_key=tls_server.keys["admin"])
    service = make_client(
        tls_server.target, tls=tls_server.tls, api_key=tls_server.keys["service"]
    )
    user_id = _new_user(admin)
    tx = service.top_up(user_id, 10).transaction
    assert tx.created_by == KEY_NAMES["service"]
    # The subject of the client certificate the writer presented.
    assert "CN=py-client" in tx.created_by_certificate_subject
    assert service.get_balance(user_id).balance == 10

    # The certificate names localhost too: connect by name, or check that
    # name while connecting by address (server_name).
    port = tls_server.target.rsplit(":", 1)[1]
    assert tls_server.tls is not None
    by_name = make_client(f"localhost:{port}", tls=tls_server.tls, api_key=tls_server.keys["reader"])
    assert by_name.get_balance(user_id).balance == 10
    checked = TlsConfig(
        ca_certificate=tls_server.tls.ca_certificate,
        client_certificate=tls_server.tls.client_certificate,
        client_key=tls_server.tls.client_key,
        server_name="localhost",
    )
    by_address = make_client(tls_server.target, tls=checked, api_key=tls_server.keys["reader"])
    assert by_address.get_balance(user_id).balance == 10


def test_tls_failures_are_unavailable(make_client: Any, tls_server: Server) -> None:
    files = tls_server.files
    once = RetryPolicy.none()
    key = tls_server.keys["reader"]
    no_client_cert = make_client(
        tls_server.target, tls=TlsConfig.from_files(ca_certificate=files["ca"]), api_key=key, retry=once
    )
    wrong_ca = make_client(
        tls_server.target,
        tls=TlsConfig.from_files(
            ca_certificate=files["other-ca"],
            client_certificate=files["client"],
            client_key=files["client-key"],
        ),
        api_key=key,
        retry=once,
    )
    plaintext = make_client(tls_server.target, api_key=key, retry=once)
    for credits in (no_client_cert, wrong_ca, plaintext):
        with pytest.raises(Unavailable):
            credits.get_balance("anyone")


def test_tls_config_validation() -> None:
    with pytest.raises(ValueError):
        TlsConfig(client_certificate=b"cert only")
    assert "client_key" not in repr(TlsConfig(client_certificate=b"c", client_key=b"secret"))
    assert "secret" not in repr(TlsConfig(client_certificate=b"c", client_key=b"secret"))
