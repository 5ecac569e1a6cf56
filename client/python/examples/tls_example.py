"""Connects over mutual TLS with an API key, as a production caller would.

    python examples/tls_example.py HOST:PORT CA.pem CLIENT.pem CLIENT-KEY.pem API_KEY USER_ID
"""

from __future__ import annotations

import sys

from credit_client import CreditClient, TlsConfig


def main(target: str, ca: str, cert: str, key: str, api_key: str, user_id: str) -> None:
    tls = TlsConfig.from_files(ca_certificate=ca, client_certificate=cert, client_key=key)
    with CreditClient(target, tls=tls, api_key=api_key) as credits:
        print("balance:", credits.get_balance(user_id).balance)


if __name__ == "__main__":
    main(*sys.argv[1:7])
