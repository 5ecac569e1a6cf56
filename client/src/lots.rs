//! Lots: the credits of one top-up or grant (or a balance from before lots
//! existed), with their category, draw priority and expiry.
//!
//! Every [`CreditClient::top_up`] and [`CreditClient::grant`] makes a lot
//! (see their builders' `expire_time`, `priority` and, for grants,
//! `category`). Spends draw from a user's lots by priority (lower first),
//! then soonest expiry (never-expiring last), then oldest; what each
//! transaction took from which lot is its
//! [`allocations`](crate::Transaction::allocations).
//! [`CreditClient::list_lots`] lists the lots in that order.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::stream::BoxStream;
use serde::{Serialize, Serializer};

use crate::model::{non_empty, proto_json, time};
use crate::{CreditClient, Error};

/// Which kind of credit a lot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LotCategory {
    /// Credits someone paid for (every top-up; a grant when asked for).
    Paid,
    /// Credits given away (a grant's default).
    Promotional,
    /// A category this client does not know yet (a newer server); the wire
    /// value.
    Unknown(i32),
}

impl LotCategory {
    /// The name used by the CLI: `paid`, `promotional`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Promotional => "promotional",
            Self::Unknown(_) => "unknown",
        }
    }

    /// The wire enum value.
    pub fn to_proto(self) -> i32 {
        let known = match self {
            Self::Paid => pb::CreditCategory::Paid,
            Self::Promotional => pb::CreditCategory::Promotional,
            Self::Unknown(value) => return value,
        };
        known.into()
    }

    /// Reads a wire enum value; unrecognised values are kept as `Unknown`.
    pub fn from_proto(value: i32) -> Self {
        match pb::CreditCategory::try_from(value) {
            Ok(pb::CreditCategory::Paid) => Self::Paid,
            Ok(pb::CreditCategory::Promotional) => Self::Promotional,
            Ok(pb::CreditCategory::Unspecified) | Err(_) => Self::Unknown(value),
        }
    }
}

impl fmt::Display for LotCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(value) => write!(f, "unknown({value})"),
            known => f.write_str(known.as_str()),
        }
    }
}

impl Serialize for LotCategory {
    /// The proto enum name (`CREDIT_CATEGORY_PAID`), or the number for a
    /// value this client does not know.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match pb::CreditCategory::try_from(self.to_proto()) {
            Ok(known) if !matches!(self, Self::Unknown(_)) => {
                serializer.serialize_str(known.as_str_name())
            }
            _ => serializer.serialize_i32(self.to_proto()),
        }
    }
}

impl FromStr for LotCategory {
    type Err = Error;

    /// Accepts `paid`, `PAID` and `CREDIT_CATEGORY_PAID` alike (and `promo`
    /// for `promotional`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let normal = s.trim().to_ascii_lowercase();
        let normal = normal.strip_prefix("credit_category_").unwrap_or(&normal);
        match normal {
            "paid" => Ok(Self::Paid),
            "promotional" | "promo" => Ok(Self::Promotional),
            _ => Err(Error::InvalidInput(format!(
                "unknown credit category {s:?} (expected paid or promotional)"
            ))),
        }
    }
}

/// Credits that came in together: what is left of them, and when they
/// expire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lot {
    /// The server-assigned identifier.
    pub lot_id: String,
    /// The user the credits belong to.
    pub user_id: String,
    /// Paid or promotional.
    pub category: LotCategory,
    /// 0-100; lower is drawn first.
    pub priority: i32,
    /// The credits the lot was made with.
    #[serde(serialize_with = "proto_json::int64")]
    pub granted_amount: i64,
    /// Credits left, earmarked ones included; an expired lot keeps only what
    /// active holds earmarked.
    #[serde(serialize_with = "proto_json::int64")]
    pub remaining: i64,
    /// The part of `remaining` earmarked by active holds.
    #[serde(serialize_with = "proto_json::int64")]
    pub held: i64,
    /// When the lot's unspent credits expire; `None`: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "proto_json::optional_timestamp")]
    pub expire_time: Option<DateTime<Utc>>,
    /// The top-up or grant transaction that made the lot; `None` for a
    /// balance from before lots existed.
    #[serde(serialize_with = "proto_json::string")]
    pub source_transaction_id: Option<String>,
    /// When the lot was made.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
}

impl TryFrom<pb::Lot> for Lot {
    type Error = Error;

    fn try_from(l: pb::Lot) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(l.created_at, "lot.created_at")?,
            expire_time: l
                .expire_time
                .map(|t| time(Some(t), "lot.expire_time"))
                .transpose()?,
            category: LotCategory::from_proto(l.category),
            lot_id: l.lot_id,
            user_id: l.user_id,
            priority: l.priority,
            granted_amount: l.granted_amount,
            remaining: l.remaining,
            held: l.held,
            source_transaction_id: non_empty(l.source_transaction_id),
        })
    }
}

/// One page of lots (in JSON: `{"lots": [...], "nextPageToken": ""}`).
///
/// A page may hold fewer lots than asked for (even none) and still have a
/// next page: follow `next_page_token` until it is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LotPage {
    /// The lots, in draw order.
    pub lots: Vec<Lot>,
    /// The token for the next page; `None` on the last page.
    #[serde(serialize_with = "proto_json::string")]
    pub next_page_token: Option<String>,
}

/// A query over a user's lots: built by [`CreditClient::list_lots`], run
/// by [`ListLots::page`] or [`ListLots::stream`].
#[must_use = "a query does nothing until a page or the stream is read"]
#[derive(Debug, Clone)]
pub struct ListLots<'a> {
    client: &'a CreditClient,
    message: pb::ListLotsRequest,
}

impl ListLots<'_> {
    /// Also list lots with nothing left (spent, refunded or expired, as of
    /// now); by default only lots with credits left are listed.
    pub fn include_empty(mut self, include: bool) -> Self {
        self.message.include_empty = include;
        self
    }

    /// Lots per page: the server's default (50) when unset, at most 1000.
    pub fn page_size(mut self, size: u32) -> Self {
        self.message.page_size = i32::try_from(size.min(1000)).unwrap_or(1000);
        self
    }

    /// Start at this page (a `next_page_token` of the same query).
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.message.page_token = token.into();
        self
    }

    /// Fetches one page.
    pub async fn page(self) -> Result<LotPage, Error> {
        fetch(self.client, self.message).await
    }

    /// Every matching lot, in draw order, fetching pages as the stream is
    /// read. The stream ends after the last page, or with the first error.
    pub fn stream(self) -> BoxStream<'static, Result<Lot, Error>> {
        let client = self.client.clone();
        crate::paging::stream(
            self.message,
            |m| m.page_token.as_str(),
            |m, page_token| pb::ListLotsRequest { page_token, ..m },
            move |message| {
                let client = client.clone();
                async move {
                    let page = fetch(&client, message).await?;
                    Ok((page.lots, page.next_page_token))
                }
            },
        )
    }
}

async fn fetch(client: &CreditClient, message: pb::ListLotsRequest) -> Result<LotPage, Error> {
    let response = client
        .call(message, |mut grpc, request| async move {
            grpc.list_lots(request).await
        })
        .await?;
    Ok(LotPage {
        lots: response
            .lots
            .into_iter()
            .map(Lot::try_from)
            .collect::<Result<_, _>>()?,
        next_page_token: non_empty(response.next_page_token),
    })
}

impl CreditClient {
    /// A query over a user's lots with credits left, in the order spends
    /// draw from them; [`ListLots::include_empty`] adds the empty ones.
    pub fn list_lots(&self, user_id: impl Into<String>) -> ListLots<'_> {
        ListLots {
            client: self,
            message: pb::ListLotsRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_parse_in_every_spelling() -> Result<(), Error> {
        for s in ["paid", "PAID", "CREDIT_CATEGORY_PAID"] {
            assert_eq!(s.parse::<LotCategory>()?, LotCategory::Paid);
        }
        assert_eq!("promo".parse::<LotCategory>()?, LotCategory::Promotional);
        assert!("free".parse::<LotCategory>().is_err());
        assert_eq!(LotCategory::from_proto(0), LotCategory::Unknown(0));
        assert_eq!(LotCategory::Unknown(9).to_proto(), 9);
        assert_eq!(
            serde_json::to_value(LotCategory::Promotional).ok(),
            Some(serde_json::json!("CREDIT_CATEGORY_PROMOTIONAL"))
        );
        Ok(())
    }
}
