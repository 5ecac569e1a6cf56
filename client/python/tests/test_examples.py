"""The example files (the README's snippets come from them) run as written."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import PACKAGE_ROOT, Server

EXAMPLES = PACKAGE_ROOT / "examples"


def run(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_sync_example(server_target: str) -> None:
    out = run("sync_example.py", server_target)
    assert "refused: INSUFFICIENT_BALANCE, 86 available" in out
    assert "refused: REFUND_EXCEEDS_ORIGINAL, 25 refundable" in out
    assert "watched grant: 3\nresumed at the grant: True\n" in out
    assert "ledger clean: True" in out


def test_sync_example_with_an_admin_key(keyed_server: Server) -> None:
    out = run("sync_example.py", keyed_server.target, keyed_server.keys["admin"])
    assert "ledger clean: True" in out


def test_holds_example(server_target: str) -> None:
    out = run("holds_example.py", server_target)
    assert "charged 37, balance 63" in out
    assert "refused: HOLD_NOT_ACTIVE" in out
    assert "balance 63, held 0, available 63" in out
    assert "captured 37 of 50" in out


def test_lots_example(server_target: str) -> None:
    out = run("lots.py", server_target)
    assert "  drew 20 from resold\n  drew 40 from promo\n" in out
    assert "balance 110: paid 100, promotional 10" in out
    week = (datetime.now(timezone.utc) + timedelta(days=7)).date()
    assert any(f"10 expire on {day:%Y-%m-%d}" in out for day in (week, week - timedelta(days=1)))
    assert (
        "  resold: 0 of 20 PAID\n  promo: 10 of 50 PROMOTIONAL\n  paid: 100 of 100 PAID\n" in out
    )
    assert "refused: ['priority']" in out


def test_async_example(server_target: str) -> None:
    out = run("async_example.py", server_target)
    assert "balances after spends: [70, 80, 90]" in out
    assert "refused: INSUFFICIENT_BALANCE, 70 available" in out
    assert "balance: 70\nwatched: 70\nwatched: 65\n" in out


def test_auto_topup_example(server_target: str) -> None:
    out = run("auto_topup.py", server_target)
    assert out.splitlines() == [
        "alert below 20: armed True",
        "alert events: 2, top-ups for them: 2, balance 115",
        "both consumers got the same top-ups: True",
        "restarted from an older cursor: 1 event again, top-ups for them still 2",
    ]


def test_auto_topup_example_keeps_a_given_user_topped_up(server_target: str, tmp_path: Path) -> None:
    from credit_client import CreditClient

    user_id = f"py-{uuid.uuid4()}"
    cursor_file = tmp_path / "cursor"
    args = ("--user", user_id, "--threshold", "10", "--amount", "50", "--max-events", "1")
    args += ("--cursor-file", str(cursor_file))

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLES / "auto_topup.py"), server_target, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=EXAMPLES,
        )

    def finish(process: subprocess.Popen[str]) -> str:
        try:
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 0, f"auto_topup.py failed:\n{out}\n{err}"
        return out

    with CreditClient(server_target) as credits:
        credits.create_user(user_id, f"{user_id}@example.com")
        credits.top_up(user_id, 30)
        # The first run (no cursor stored yet) watches from now, then sets the alert.
        process = start()
        deadline = time.monotonic() + 30
        while not credits.get_balance(user_id).alerts:
            assert time.monotonic() < deadline and process.poll() is None, "no alert was set"
            time.sleep(0.02)
        credits.spend(user_id, 25)  # 30 -> 5
        assert finish(process).strip() == "30 -> 5 (below 10) at #2: topped up 50 -> 55"
        [event] = credits.list_alert_events(user_id).events
        top_up = next(credits.iter_transactions(user_id, types=["TOP_UP"]))
        assert top_up.idempotency_key == event.event_id
        stored = cursor_file.read_text().strip()
        assert stored

        # A restart goes on after the stored cursor: the next crossing only.
        process = start()
        credits.spend(user_id, 50)  # 55 -> 5 (the top-up re-armed the alert)
        assert finish(process).strip() == "55 -> 5 (below 10) at #4: topped up 50 -> 55"
        assert cursor_file.read_text().strip() != stored
        keys = [t.idempotency_key for t in credits.iter_transactions(user_id, types=["TOP_UP"])]
        assert keys[:2] == [e.event_id for e in credits.list_alert_events(user_id).events]
        assert len(credits.get_balance(user_id).alerts) == 1  # both runs used the same alert


def test_tls_example(tls_server: Server) -> None:
    from credit_client import CreditClient

    user_id = f"py-{uuid.uuid4()}"
    with CreditClient(tls_server.target, tls=tls_server.tls, api_key=tls_server.keys["admin"]) as admin:
        admin.create_user(user_id, f"{user_id}@example.com")
        admin.grant(user_id, 42)
    files = tls_server.files
    out = run(
        "tls_example.py",
        tls_server.target,
        str(files["ca"]),
        str(files["client"]),
        str(files["client-key"]),
        tls_server.keys["reader"],
        user_id,
    )
    assert out.strip() == "balance: 42"


def test_readme_snippets_are_copied_from_the_examples() -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    assert blocks, "no python snippets in README.md"
    # Compared line by line without indentation: a snippet may be dedented.
    def lines(text: str) -> str:
        return "\n".join(line.strip() for line in text.splitlines()) + "\n"

    sources = [lines(path.read_text()) for path in EXAMPLES.glob("*.py")]
    for block in blocks:
        snippet = block.split("```", 1)[0]
        assert any("\n" + lines(snippet) in "\n" + source for source in sources), (
            "README.md snippet not found verbatim in examples/*.py:\n" + snippet
        )
