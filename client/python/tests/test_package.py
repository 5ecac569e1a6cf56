"""The package as installed: every RPC on both clients, the same signatures,
typed, installed (not imported from the clone), and the generated code in
step with proto/."""

from __future__ import annotations

import asyncio
import filecmp
import inspect
import re
import subprocess
import sys
from pathlib import Path

import credit_client
from credit_client import AsyncCreditClient, CreditClient
from credit_client.v1 import credit_pb2

from conftest import PACKAGE_ROOT, REPO_ROOT


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_rpc_has_a_method_on_both_clients() -> None:
    service = credit_pb2.DESCRIPTOR.services_by_name["CreditService"]
    missing = []
    for method in service.methods:
        name = snake_case(method.name)
        for cls in (CreditClient, AsyncCreditClient):
            if not callable(getattr(cls, name, None)):
                missing.append(f"{cls.__name__}.{name} (for rpc {method.name})")
        async_method = getattr(AsyncCreditClient, name, None)
        if async_method is not None:
            if method.server_streaming:
                # A stream is an async iterator: ``async for m in client.watch_...()``.
                assert inspect.isasyncgenfunction(async_method), (
                    f"AsyncCreditClient.{name} is not an async generator"
                )
                assert inspect.isgeneratorfunction(getattr(CreditClient, name)), name
            else:
                assert inspect.iscoroutinefunction(async_method), (
                    f"AsyncCreditClient.{name} is not async"
                )
    assert not missing, "RPCs without a client method: " + ", ".join(missing)
    assert len(service.methods) >= 21
    # The latest RPCs, so a stale generated module fails here too.
    latest = {"Reserve", "ListHolds", "ListLots", "WatchTransactions", "WatchBalance"}
    latest |= {"SetBalanceAlert", "DeleteBalanceAlert", "ListAlertEvents"}
    assert latest <= set(service.methods_by_name)


def test_both_clients_have_the_same_methods_and_parameters() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    assert public(CreditClient) == public(AsyncCreditClient)
    iterators = (
        "iter_transactions",
        "iter_holds",
        "iter_lots",
        "iter_alert_events",
        "watch_transactions",
        "watch_balance",
    )
    for name in iterators:
        assert inspect.isasyncgenfunction(getattr(AsyncCreditClient, name)), name
    assert "next_page_token" in credit_pb2.ListTransactionsResponse.DESCRIPTOR.fields_by_name


def test_installed_package_is_typed_and_not_the_clone() -> None:
    package_dir = Path(credit_client.__file__).resolve().parent
    assert (package_dir / "py.typed").is_file()
    assert (package_dir / "v1" / "credit_pb2.pyi").is_file()
    # The tests run against the installed copy, never client/python/src.
    assert PACKAGE_ROOT not in package_dir.parents, package_dir
    assert Path(sys.prefix) in package_dir.parents, (sys.prefix, package_dir)


def test_the_package_reads_nothing_from_the_repository(tmp_path: Path) -> None:
    # Imported from an unrelated directory with a bare environment.
    code = (
        "import credit_client, asyncio; "
        "from credit_client.v1 import credit_pb2_grpc; "
        "print(credit_client.pb.DESCRIPTOR.name)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "credit/v1/credit.proto"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    """Fails when proto/ changed without regenerating the committed code."""
    sys.path.insert(0, str(PACKAGE_ROOT))
    try:
        import generate
    finally:
        sys.path.remove(str(PACKAGE_ROOT))
    fresh = tmp_path / "v1"
    generate.generate(fresh, REPO_ROOT / "proto")
    committed = PACKAGE_ROOT / "src" / "credit_client" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names, shallow=False)
    stale = sorted(mismatch + errors)
    assert not stale, (
        f"the generated code in {committed.relative_to(REPO_ROOT)} is out of date with proto/ "
        f"({', '.join(stale)} differ): run `python client/python/generate.py` and commit the result"
    )
