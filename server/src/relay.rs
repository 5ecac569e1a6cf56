//! `credit-server relay`: publishes the change feed (every committed
//! transaction and alert event, in cursor order) to NATS JetStream.
//!
//! Why JetStream (with the `async-nats` crate, NATS's own client): the
//! stream stores what it acknowledged, and it drops a message whose
//! `Nats-Msg-Id` it has seen within the stream's duplicate window, so an
//! at-least-once publisher gives consumers each message once without a
//! dedup table of their own.
//!
//! **No gap, no duplicate.** The relay reads a page of the feed after its
//! stored cursor, publishes every item with its transaction or event id as
//! `Nats-Msg-Id`, waits for the broker's acknowledgement of each, and only
//! then stores the page's end as its cursor (in the ledger's database).
//! Killed before the store, it publishes the page again on restart: the
//! repeats carry the same ids and the stream drops them (within the
//! duplicate window, two minutes, far longer than a restart). Killed after
//! it, nothing is left to repeat. The feed itself gives every item once, in
//! order, after any cursor (`ledger/feed.rs`).
//!
//! Messages: subject `<prefix>.transactions` or `<prefix>.alerts`, payload a
//! protobuf `credit.v1.WatchTransactionsResponse` (the transaction or the
//! alert event, and its cursor), exactly what `WatchTransactions` sends.

use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use credit_proto::v1 as pb;
use prost::Message;

use crate::ledger::Ledger;
use crate::ledger::feed::{Cursor, FeedFilter, FeedItem};

/// Where to publish, and under which name the relay keeps its cursor.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub name: String,
}

/// Items published per page.
const PAGE: u64 = 500;
/// How long JetStream remembers message ids to drop repeats.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long to wait for new feed items before looking again.
const IDLE: Duration = Duration::from_secs(1);

/// Publishes the feed until the process is stopped.
pub async fn run(ledger: Ledger, config: RelayConfig) -> anyhow::Result<()> {
    let client = async_nats::connect(&config.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot open the JetStream stream {}", config.stream))?;
    let mut cursor = ledger
        .relay_cursor(&config.name)
        .await?
        .unwrap_or(Cursor(0));
    tracing::info!(relay = %config.name, cursor = %cursor.token(), stream = %config.stream, "relay started");
    let everything = FeedFilter::everything();
    let mut head = ledger.feed_signals().head();
    loop {
        let page = ledger.feed_page(&everything, cursor, PAGE).await?;
        let mut acks = Vec::with_capacity(page.entries.len());
        for (at, item) in page.entries {
            let (subject, id, message) = match item {
                FeedItem::Transaction(tx) => (
                    "transactions",
                    tx.id.clone(),
                    pb::WatchTransactionsResponse {
                        transaction: Some(tx.into()),
                        alert_event: None,
                        cursor: at.token(),
                    },
                ),
                FeedItem::AlertEvent(event) => (
                    "alerts",
                    event.event_id.clone(),
                    pb::WatchTransactionsResponse {
                        transaction: None,
                        alert_event: Some(event.into()),
                        cursor: at.token(),
                    },
                ),
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = js
                .publish_with_headers(
                    format!("{}.{subject}", config.subject_prefix),
                    headers,
                    message.encode_to_vec().into(),
                )
                .await
                .context("publish")?;
            acks.push(ack);
        }
        let published = acks.len();
        // The broker has each one (or had it already) before the cursor
        // moves past it.
        for ack in acks {
            ack.await.context("the broker did not confirm a message")?;
        }
        if page.scanned_to > cursor {
            ledger
                .store_relay_cursor(&config.name, page.scanned_to)
                .await?;
            cursor = page.scanned_to;
        }
        if published > 0 {
            tracing::debug!(published, cursor = %cursor.token(), "relayed");
        }
        if !page.more {
            let known = cursor.0;
            let _ = tokio::time::timeout(IDLE, head.wait_for(|h| *h > known)).await;
        }
    }
}
