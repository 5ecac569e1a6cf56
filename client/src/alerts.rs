//! Low-balance alerts: [`CreditClient::set_balance_alert`],
//! [`CreditClient::delete_balance_alert`], [`CreditClient::list_alert_events`],
//! and their events in the change feed
//! ([`WatchTransactions::content`](crate::WatchTransactions::content)).

use std::future::IntoFuture;

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::model::{non_empty, proto_json, required, time};
use crate::{CreditClient, Error, new_idempotency_key};

/// A low-balance alert: when a write takes the balance from at least
/// `threshold` to below it, the ledger records one [`AlertEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceAlert {
    /// The server-assigned id.
    pub alert_id: String,
    /// The user it watches.
    pub user_id: String,
    /// The balance below which an event is recorded.
    #[serde(serialize_with = "proto_json::int64")]
    pub threshold: i64,
    /// Whether the next downward crossing records an event (the balance has
    /// been at or above the threshold since the last event or since the
    /// alert was set).
    pub armed: bool,
    /// When it was set.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
    /// When it was removed; `None` while in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "proto_json::optional_timestamp")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl TryFrom<pb::BalanceAlert> for BalanceAlert {
    type Error = Error;

    fn try_from(a: pb::BalanceAlert) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(a.created_at, "created_at")?,
            deleted_at: a
                .deleted_at
                .map(|t| time(Some(t), "deleted_at"))
                .transpose()?,
            alert_id: a.alert_id,
            user_id: a.user_id,
            threshold: a.threshold,
            armed: a.armed,
        })
    }
}

/// One downward crossing of an alert's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEvent {
    /// Stable: use it as the idempotency key of the top-up the event leads
    /// to, so a consumer that retries, restarts or runs twice tops up once.
    pub event_id: String,
    /// The alert that fired.
    pub alert_id: String,
    /// The user.
    pub user_id: String,
    /// The alert's threshold.
    #[serde(serialize_with = "proto_json::int64")]
    pub threshold: i64,
    /// The balance before the crossing transaction.
    #[serde(serialize_with = "proto_json::int64")]
    pub balance_before: i64,
    /// The balance after it.
    #[serde(serialize_with = "proto_json::int64")]
    pub balance_after: i64,
    /// The transaction that crossed the threshold.
    pub transaction_id: String,
    /// Its sequence.
    #[serde(serialize_with = "proto_json::int64")]
    pub sequence: i64,
    /// When it was recorded.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
}

impl TryFrom<pb::AlertEvent> for AlertEvent {
    type Error = Error;

    fn try_from(e: pb::AlertEvent) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(e.created_at, "created_at")?,
            event_id: e.event_id,
            alert_id: e.alert_id,
            user_id: e.user_id,
            threshold: e.threshold,
            balance_before: e.balance_before,
            balance_after: e.balance_after,
            transaction_id: e.transaction_id,
            sequence: e.sequence,
        })
    }
}

/// One page of alert events (in JSON: `{"events": [...], "nextPageToken": ""}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEventPage {
    /// Newest first.
    pub events: Vec<AlertEvent>,
    /// The token for the next page; `None` on the last page.
    #[serde(serialize_with = "proto_json::string")]
    pub next_page_token: Option<String>,
}

/// A SetBalanceAlert to send (`.await` it).
#[must_use = "the alert is set only when awaited"]
pub struct SetBalanceAlert<'a> {
    client: &'a CreditClient,
    message: pb::SetBalanceAlertRequest,
}

impl SetBalanceAlert<'_> {
    /// The key that makes this call safe to send again (the same key always
    /// answers the same alert). Without one the client makes a UUID; either
    /// way every retry carries the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.message.idempotency_key = key.into();
        self
    }

    /// Sends it, retrying transient failures with the same key.
    pub async fn send(mut self) -> Result<BalanceAlert, Error> {
        if self.message.idempotency_key.is_empty() {
            self.message.idempotency_key = new_idempotency_key();
        }
        let r = self
            .client
            .call(self.message, |mut grpc, request| async move {
                grpc.set_balance_alert(request).await
            })
            .await?;
        required(r.alert, "alert")?.try_into()
    }
}

impl<'a> IntoFuture for SetBalanceAlert<'a> {
    type Output = Result<BalanceAlert, Error>;
    type IntoFuture = BoxFuture<'a, Result<BalanceAlert, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A query over a user's alert events: built by
/// [`CreditClient::list_alert_events`], run with [`page`](Self::page) or
/// [`stream`](Self::stream).
#[derive(Clone)]
pub struct ListAlertEvents<'a> {
    client: &'a CreditClient,
    message: pb::ListAlertEventsRequest,
}

impl ListAlertEvents<'_> {
    /// At most this many events per page (0: the server's default of 50).
    pub fn page_size(mut self, size: u32) -> Self {
        self.message.page_size = i32::try_from(size).unwrap_or(i32::MAX);
        self
    }

    /// Start at this page (a `next_page_token` of the same user).
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.message.page_token = token.into();
        self
    }

    /// Fetches one page.
    pub async fn page(self) -> Result<AlertEventPage, Error> {
        fetch(self.client, self.message).await
    }

    /// Every event, newest first, fetching pages as the stream is read.
    pub fn stream(self) -> BoxStream<'static, Result<AlertEvent, Error>> {
        let client = self.client.clone();
        crate::paging::stream(
            self.message,
            |m| m.page_token.as_str(),
            |m, page_token| pb::ListAlertEventsRequest { page_token, ..m },
            move |message| {
                let client = client.clone();
                async move {
                    let page = fetch(&client, message).await?;
                    Ok((page.events, page.next_page_token))
                }
            },
        )
    }
}

async fn fetch(
    client: &CreditClient,
    message: pb::ListAlertEventsRequest,
) -> Result<AlertEventPage, Error> {
    let r = client
        .call(message, |mut grpc, request| async move {
            grpc.list_alert_events(request).await
        })
        .await?;
    Ok(AlertEventPage {
        events: r
            .events
            .into_iter()
            .map(AlertEvent::try_from)
            .collect::<Result<_, _>>()?,
        next_page_token: non_empty(r.next_page_token),
    })
}

impl CreditClient {
    /// Sets a low-balance alert on `user_id` at `threshold` (0 or more).
    /// Setting the same threshold again returns the alert in force.
    pub fn set_balance_alert(
        &self,
        user_id: impl Into<String>,
        threshold: i64,
    ) -> SetBalanceAlert<'_> {
        SetBalanceAlert {
            client: self,
            message: pb::SetBalanceAlertRequest {
                user_id: user_id.into(),
                threshold,
                idempotency_key: String::new(),
            },
        }
    }

    /// Removes an alert; removing it again returns it as removed.
    pub async fn delete_balance_alert(
        &self,
        user_id: impl Into<String>,
        alert_id: impl Into<String>,
    ) -> Result<BalanceAlert, Error> {
        let message = pb::DeleteBalanceAlertRequest {
            user_id: user_id.into(),
            alert_id: alert_id.into(),
        };
        let r = self
            .call(message, |mut grpc, request| async move {
                grpc.delete_balance_alert(request).await
            })
            .await?;
        required(r.alert, "alert")?.try_into()
    }

    /// A query over a user's alert events, newest first.
    pub fn list_alert_events(&self, user_id: impl Into<String>) -> ListAlertEvents<'_> {
        ListAlertEvents {
            client: self,
            message: pb::ListAlertEventsRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
        }
    }
}
