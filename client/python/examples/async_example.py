"""The same calls with the asyncio client.

    python examples/async_example.py [HOST:PORT] [API_KEY]
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from credit_client import AsyncCreditClient, InsufficientBalance


async def main(target: str, api_key: str | None = None) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    async with AsyncCreditClient(target, api_key=api_key) as credits:
        await credits.create_user(user_id, f"{user_id}@example.com")
        await credits.top_up(user_id, 100)
        # Calls run concurrently on one channel.
        spends = await asyncio.gather(*(credits.spend(user_id, 10) for _ in range(3)))
        print("balances after spends:", sorted(s.balance for s in spends))
        try:
            await credits.spend(user_id, 500)
        except InsufficientBalance as err:
            print(f"refused: {err.reason}, {err.available_balance} available")
        async for tx in credits.iter_transactions(user_id, page_size=2):
            print(f"  #{tx.sequence} {tx.amount:+d} -> {tx.running_balance}")
        print("balance:", (await credits.get_balance(user_id)).balance)
        # A balance watch: the current value first, then one per change.
        balances = credits.watch_balance(user_id)
        print("watched:", (await anext(balances)).available)
        await credits.spend(user_id, 5)
        print("watched:", (await anext(balances)).available)
        await balances.aclose()  # cancels the call


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
            sys.argv[2] if len(sys.argv) > 2 else None,
        )
    )
