//! Reading a user's history: one page at a time, or as a stream that
//! follows `next_page_token` until the last page.

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::model::{proto_json, timestamp};
use crate::{CreditClient, Error, Transaction, TransactionType};

/// One page of history (in JSON: `{"transactions": [...],
/// "nextPageToken": ""}`, the token empty on the last page).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The transactions, newest first.
    pub transactions: Vec<Transaction>,
    /// The token for the next page; `None` on the last page.
    #[serde(serialize_with = "proto_json::string")]
    pub next_page_token: Option<String>,
}

/// A history query: built by [`CreditClient::list_transactions`], run by
/// [`ListTransactions::page`] or [`ListTransactions::stream`].
#[must_use = "a query does nothing until a page or the stream is read"]
#[derive(Debug, Clone)]
pub struct ListTransactions<'a> {
    client: &'a CreditClient,
    message: pb::ListTransactionsRequest,
}

impl ListTransactions<'_> {
    /// Only transactions of this type (call again to allow more types).
    pub fn kind(mut self, kind: TransactionType) -> Self {
        self.message.types.push(kind.to_proto());
        self
    }

    /// Only transactions of these types.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = TransactionType>) -> Self {
        self.message.types = kinds.into_iter().map(TransactionType::to_proto).collect();
        self
    }

    /// Only transactions created at or after `time`.
    pub fn created_after(mut self, time: DateTime<Utc>) -> Self {
        self.message.created_after = Some(timestamp(time));
        self
    }

    /// Only transactions created before `time`.
    pub fn created_before(mut self, time: DateTime<Utc>) -> Self {
        self.message.created_before = Some(timestamp(time));
        self
    }

    /// Only usage transactions of this graph execution.
    pub fn graph_exec_id(mut self, id: impl Into<String>) -> Self {
        self.message.graph_exec_id = id.into();
        self
    }

    /// Only transactions written with this API key name.
    pub fn created_by(mut self, key_name: impl Into<String>) -> Self {
        self.message.created_by = key_name.into();
        self
    }

    /// Transactions per page: the server's default (50) when unset, at most
    /// 1000.
    pub fn page_size(mut self, size: u32) -> Self {
        // The server serves anything above 1000 as 1000, so clamping here
        // changes nothing but keeps the value inside the wire's i32.
        self.message.page_size = i32::try_from(size.min(1000)).unwrap_or(1000);
        self
    }

    /// Start at this page (a `next_page_token` from an earlier page of the
    /// same query).
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.message.page_token = token.into();
        self
    }

    /// Fetches one page.
    pub async fn page(self) -> Result<Page, Error> {
        fetch(self.client, self.message).await
    }

    /// Every matching transaction, newest first, fetching pages as the
    /// stream is read. The stream ends after the last page, or with the
    /// first error.
    pub fn stream(self) -> BoxStream<'static, Result<Transaction, Error>> {
        let client = self.client.clone();
        crate::paging::stream(
            self.message,
            |m| m.page_token.as_str(),
            |m, page_token| pb::ListTransactionsRequest { page_token, ..m },
            move |message| {
                let client = client.clone();
                async move {
                    let page = fetch(&client, message).await?;
                    Ok((page.transactions, page.next_page_token))
                }
            },
        )
    }
}

async fn fetch(client: &CreditClient, message: pb::ListTransactionsRequest) -> Result<Page, Error> {
    let response = client
        .call(message, |mut grpc, request| async move {
            grpc.list_transactions(request).await
        })
        .await?;
    Ok(Page {
        transactions: response
            .transactions
            .into_iter()
            .map(Transaction::try_from)
            .collect::<Result<_, _>>()?,
        next_page_token: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
    })
}

impl CreditClient {
    /// A query over a user's transactions, newest first; narrow it with the
    /// builder's methods.
    pub fn list_transactions(&self, user_id: impl Into<String>) -> ListTransactions<'_> {
        ListTransactions {
            client: self,
            message: pb::ListTransactionsRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
        }
    }
}
