"""How a client connects: the target, TLS, the API key and the deadline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import grpc

__all__ = ["DEFAULT_DEADLINE", "ChannelOptions", "TlsConfig"]

#: The deadline of each attempt of a call, in seconds, unless the caller sets another.
DEFAULT_DEADLINE = 10.0

#: gRPC channel arguments, e.g. ``[("grpc.max_receive_message_length", 8 << 20)]``.
ChannelOptions = Sequence[tuple[str, Union[str, int]]]


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings for the connection to the server.

    With no CA the server's certificate must chain to the system's public
    roots; with ``ca_certificate`` (PEM) it must chain to that CA instead (a
    private deployment). ``client_certificate`` and ``client_key`` (both PEM)
    are sent to servers that require mutual TLS. ``server_name`` is the name
    the server's certificate must carry when it is not the target's host.
    """

    ca_certificate: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together")

    @classmethod
    def from_files(
        cls,
        *,
        ca_certificate: str | Path | None = None,
        client_certificate: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """TLS settings read from PEM files."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(
            ca_certificate=read(ca_certificate),
            client_certificate=read(client_certificate),
            client_key=read(client_key),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials for these settings."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_certificate,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def options(self) -> list[tuple[str, str | int]]:
        """Channel arguments these settings need."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


@dataclass(frozen=True)
class Connection:
    """A parsed target: where to connect and how (internal)."""

    address: str
    tls: TlsConfig | None
    options: list[tuple[str, str | int]]


def resolve(target: str, tls: TlsConfig | None, options: ChannelOptions) -> Connection:
    """Splits ``http://``/``https://`` off the target and decides on TLS.

    ``host:port`` and ``http://host:port`` are plain text unless ``tls`` is
    given; ``https://host:port`` always uses TLS (the public roots unless
    ``tls`` says otherwise).
    """
    address = target
    if target.startswith("https://"):
        address = target[len("https://") :]
        tls = tls or TlsConfig()
    elif target.startswith("http://"):
        address = target[len("http://") :]
    address = address.rstrip("/")
    if not address:
        raise ValueError(f"invalid target {target!r}: expected host:port")
    extra = tls.options() if tls is not None else []
    return Connection(address, tls, [*options, *extra])


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call: ``authorization: Bearer <key>`` when there is a key."""
    if api_key is None:
        return ()
    if not api_key or any(ord(c) < 0x20 or ord(c) > 0x7E for c in api_key):
        raise ValueError("the API key must be non-empty printable ASCII")
    return (("authorization", f"Bearer {api_key}"),)
