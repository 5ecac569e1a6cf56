"""Paid and promotional credits: every top-up and grant makes a lot with a
category, a draw priority and an optional expiry; spends draw from the lots
in order and record which lots paid.

    python examples/lots.py [HOST:PORT] [API_KEY]
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta, timezone

from credit_client import CreditClient, InvalidArgument, pb


def main(target: str, api_key: str | None = None) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    with CreditClient(target, api_key=api_key) as credits:
        credits.create_user(user_id, f"{user_id}@example.com")

        # Purchased credits: a PAID lot, drawn last (priority 100), never expiring.
        paid = credits.top_up(user_id, 100).lot
        # A welcome bonus: a PROMOTIONAL lot (priority 50) that expires in a week.
        week = datetime.now(timezone.utc) + timedelta(days=7)
        promo = credits.grant(user_id, 50, reason="welcome", expire_time=week).lot
        # Credits sold through a reseller: PAID, and spent before everything else.
        resold = credits.grant(
            user_id, 20, reason="reseller", category=pb.CREDIT_CATEGORY_PAID, priority=0
        ).lot

        # A spend draws by priority (lower first), then soonest expiry, then oldest.
        spend = credits.spend(user_id, 60)
        names = {paid.lot_id: "paid", promo.lot_id: "promo", resold.lot_id: "resold"}
        tx = credits.get_transaction(user_id, spend.transaction.transaction_id)
        for part in tx.allocations:
            print(f"  drew {-part.amount} from {names[part.lot_id]}")

        balance = credits.get_balance(user_id)
        print(f"balance {balance.balance}: paid {balance.paid}, promotional {balance.promotional}")
        if balance.HasField("next_expire_time"):
            when = balance.next_expire_time.ToDatetime(tzinfo=timezone.utc)
            print(f"{balance.next_expiring_amount} expire on {when:%Y-%m-%d}")

        # The lots left, in draw order; include_empty=True also lists spent ones.
        for lot in credits.iter_lots(user_id, include_empty=True):
            category = pb.CreditCategory.Name(lot.category).removeprefix("CREDIT_CATEGORY_")
            print(f"  {names[lot.lot_id]}: {lot.remaining} of {lot.granted_amount} {category}")

        try:
            credits.top_up(user_id, 10, priority=101)
        except InvalidArgument as err:
            print(f"refused: {[v.field for v in err.field_violations]}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
