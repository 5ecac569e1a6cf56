//! Auto top-up: keeps a user's balance from running out, driven by the
//! ledger's low-balance alert events instead of polling.
//!
//! ```sh
//! cargo run -p credit-client --example auto_topup -- \
//!     --server http://127.0.0.1:50051 --user alice --threshold 100 --amount 500 \
//!     --cursor-file /var/lib/auto-topup/alice.cursor
//! ```
//!
//! Why it tops up exactly once per crossing, even when it crashes, retries
//! or runs twice: the ledger records one event per downward crossing, in
//! the transaction of the write that crossed; this consumer tops up with
//! the event's id as the idempotency key, so a second top-up for the same
//! event (a retry, a replay after a restart from an older cursor, a second
//! copy of this program) is answered with the first one and charges
//! nothing. The cursor is stored only after the top-up, so a crash replays
//! an event, never skips one. (A real consumer charges the payment method
//! first, with the event id as the payment's idempotency key too.)

use std::path::PathBuf;

use credit_client::{CreditClient, FeedContent, RetryPolicy};
use futures::TryStreamExt;

struct Args {
    server: String,
    user: String,
    threshold: i64,
    amount: i64,
    cursor_file: Option<PathBuf>,
    /// Stop after this many events (for demos and tests).
    max_events: Option<usize>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        server: "http://127.0.0.1:50051".into(),
        user: String::new(),
        threshold: 100,
        amount: 500,
        cursor_file: None,
        max_events: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<i64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--server" => args.server = value()?,
            "--user" => args.user = value()?,
            "--threshold" => args.threshold = number(value()?)?,
            "--amount" => args.amount = number(value()?)?,
            "--cursor-file" => args.cursor_file = Some(value()?.into()),
            "--max-events" => {
                args.max_events = Some(number(value()?)?.try_into().map_err(|_| "--max-events")?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.user.is_empty() {
        return Err("--user is required".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // Patient retries: a watch outlives server restarts.
    let client = CreditClient::builder(args.server.clone())
        .retry_policy(RetryPolicy {
            max_attempts: 60,
            ..RetryPolicy::default()
        })
        .connect()
        .await?;
    let alert = client.set_balance_alert(&args.user, args.threshold).await?;
    eprintln!(
        "alert {} below {} ({})",
        alert.alert_id,
        alert.threshold,
        if alert.armed {
            "armed"
        } else {
            "not armed: the balance is below it"
        }
    );
    let stored = match &args.cursor_file {
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => String::new(),
    };
    let mut feed = client
        .watch_transactions(&args.user)
        .content(FeedContent::AlertEvents)
        .start_after(stored.trim())
        .stream();
    let mut handled = 0;
    while let Some(message) = feed.try_next().await? {
        if let Some(event) = &message.alert_event
            && event.alert_id == alert.alert_id
        {
            let receipt = client
                .top_up(&event.user_id, args.amount)
                .idempotency_key(event.event_id.clone())
                .await?;
            // A repeat of the same event gets the same transaction back.
            println!(
                "event {}: balance {} -> {}; top-up {} of {}, balance now {}",
                event.event_id,
                event.balance_before,
                event.balance_after,
                receipt.transaction.transaction_id,
                args.amount,
                receipt.balance
            );
            handled += 1;
        }
        if let Some(path) = &args.cursor_file {
            std::fs::write(path, &message.cursor)?;
        }
        if args.max_events.is_some_and(|max| handled >= max) {
            break;
        }
    }
    Ok(())
}
