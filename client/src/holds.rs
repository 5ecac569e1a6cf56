//! Holds: credits earmarked for one piece of work whose cost is known only
//! afterwards. [`CreditClient::reserve`] places one, [`CreditClient::capture`]
//! settles it with the real cost, [`CreditClient::release`] gives it back,
//! and a hold nobody settles expires at its `expire_time` on its own.
//!
//! The three writes take an idempotency key like every other write (a fresh
//! UUID unless you give one) and retry transient failures with that same
//! key, so a retry never reserves or charges twice.

use std::fmt;
use std::future::IntoFuture;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

use crate::metadata::{Metadata, from_struct, to_struct};
use crate::model::{non_empty, proto_json, required, time, timestamp};
use crate::writes::new_idempotency_key;
use crate::{CreditClient, Error, Transaction, Usage};

/// The state of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    /// Credits are earmarked; the hold may be captured or released.
    Active,
    /// Settled by a capture.
    Captured,
    /// Given back by a release (or a capture of 0).
    Released,
    /// Its expire time passed before it was captured or released.
    Expired,
    /// A state this client does not know yet (a newer server); the wire value.
    Unknown(i32),
}

impl HoldState {
    /// The name used by the CLI: `active`, `captured`, `released`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Captured => "captured",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Unknown(_) => "unknown",
        }
    }

    /// The wire enum value.
    pub fn to_proto(self) -> i32 {
        let known = match self {
            Self::Active => pb::HoldState::Active,
            Self::Captured => pb::HoldState::Captured,
            Self::Released => pb::HoldState::Released,
            Self::Expired => pb::HoldState::Expired,
            Self::Unknown(value) => return value,
        };
        known.into()
    }

    /// Reads a wire enum value; unrecognised values are kept as `Unknown`.
    pub fn from_proto(value: i32) -> Self {
        match pb::HoldState::try_from(value) {
            Ok(pb::HoldState::Active) => Self::Active,
            Ok(pb::HoldState::Captured) => Self::Captured,
            Ok(pb::HoldState::Released) => Self::Released,
            Ok(pb::HoldState::Expired) => Self::Expired,
            Ok(pb::HoldState::Unspecified) | Err(_) => Self::Unknown(value),
        }
    }
}

impl fmt::Display for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(value) => write!(f, "unknown({value})"),
            known => f.write_str(known.as_str()),
        }
    }
}

impl Serialize for HoldState {
    /// The proto enum name (`HOLD_STATE_ACTIVE`), or the number for a value
    /// this client does not know.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match pb::HoldState::try_from(self.to_proto()) {
            Ok(known) if !matches!(self, Self::Unknown(_)) => {
                serializer.serialize_str(known.as_str_name())
            }
            _ => serializer.serialize_i32(self.to_proto()),
        }
    }
}

impl FromStr for HoldState {
    type Err = Error;

    /// Accepts `active`, `ACTIVE` and `HOLD_STATE_ACTIVE` alike (the server
    /// names states the second way in error metadata).
    fn from_str(s: &str) -> Result<Self, Error> {
        let normal = s.trim().to_ascii_lowercase();
        let normal = normal.strip_prefix("hold_state_").unwrap_or(&normal);
        match normal {
            "active" => Ok(Self::Active),
            "captured" => Ok(Self::Captured),
            "released" => Ok(Self::Released),
            "expired" => Ok(Self::Expired),
            _ => Err(Error::InvalidInput(format!(
                "unknown hold state {s:?} (expected active, captured, released or expired)"
            ))),
        }
    }
}

/// Credits earmarked for one piece of work.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// The server-assigned identifier.
    pub hold_id: String,
    /// The user whose credits are held.
    pub user_id: String,
    /// The credits held.
    #[serde(serialize_with = "proto_json::int64")]
    pub amount: i64,
    /// What a capture charged (0 unless captured).
    #[serde(serialize_with = "proto_json::int64")]
    pub captured_amount: i64,
    /// The state as of the answer (an active hold past its expire time is
    /// [`HoldState::Expired`]).
    pub state: HoldState,
    /// What the work is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Caller metadata given to reserve, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// When the hold was placed.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
    /// When the hold stops counting (if still active).
    #[serde(serialize_with = "proto_json::timestamp")]
    pub expire_time: DateTime<Utc>,
    /// When it was captured or released, or its expire time if it expired;
    /// `None` while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "proto_json::optional_timestamp")]
    pub closed_at: Option<DateTime<Utc>>,
    /// The usage transaction a capture wrote.
    #[serde(serialize_with = "proto_json::string")]
    pub capture_transaction_id: Option<String>,
    /// The idempotency key the hold was reserved with.
    pub idempotency_key: String,
    /// The reason given to release.
    #[serde(serialize_with = "proto_json::string")]
    pub release_reason: Option<String>,
}

impl TryFrom<pb::Hold> for Hold {
    type Error = Error;

    fn try_from(h: pb::Hold) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(h.created_at, "hold.created_at")?,
            expire_time: time(h.expire_time, "hold.expire_time")?,
            closed_at: h
                .closed_at
                .map(|t| time(Some(t), "hold.closed_at"))
                .transpose()?,
            state: HoldState::from_proto(h.state),
            hold_id: h.hold_id,
            user_id: h.user_id,
            amount: h.amount,
            captured_amount: h.captured_amount,
            usage: h.usage.map(Usage::from),
            metadata: h.metadata.map(from_struct),
            capture_transaction_id: non_empty(h.capture_transaction_id),
            idempotency_key: h.idempotency_key,
            release_reason: non_empty(h.release_reason),
        })
    }
}

/// The answer to [`CreditClient::reserve`], [`CreditClient::capture`] and
/// [`CreditClient::release`]: the hold as it is now, the usage transaction
/// a capture wrote, and the balances right after.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldReceipt {
    /// The usage transaction a capture of more than 0 wrote; `None`
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Transaction>,
    /// The hold (as placed, captured or released; the original when a retry
    /// or a repeated key was answered from the server's record).
    pub hold: Hold,
    /// The balance right after (a reserve or release does not change it).
    #[serde(serialize_with = "proto_json::int64")]
    pub balance: i64,
    /// The available balance right after: balance minus active holds.
    #[serde(serialize_with = "proto_json::int64")]
    pub available: i64,
}

impl HoldReceipt {
    fn new(
        transaction: Option<pb::Transaction>,
        hold: Option<pb::Hold>,
        balance: i64,
        available: i64,
    ) -> Result<Self, Error> {
        Ok(Self {
            transaction: transaction.map(Transaction::try_from).transpose()?,
            hold: required(hold, "hold")?.try_into()?,
            balance,
            available,
        })
    }
}

/// A JSON object as a `Struct`, or `None` when no metadata was set.
fn metadata(value: Option<Json>) -> Result<Option<prost_types::Struct>, Error> {
    value.map(to_struct).transpose()
}

/// Adds one entry to a metadata object, making it when there is none.
fn add_meta(metadata: &mut Option<Json>, key: String, value: Json) {
    let metadata = metadata.get_or_insert_with(|| Json::Object(Default::default()));
    if let Json::Object(map) = metadata {
        map.insert(key, value);
    }
    // Any other value stays as it is and is refused when sent.
}

/// When a hold ends: after a time from now, or at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Ttl(Duration),
    At(DateTime<Utc>),
}

/// A reserve to send: built by [`CreditClient::reserve`], sent by `.await`
/// or [`Reserve::send`].
#[must_use = "a reserve does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct Reserve<'a> {
    client: &'a CreditClient,
    user_id: String,
    amount: i64,
    expiry: Option<Expiry>,
    idempotency_key: Option<String>,
    usage: Option<Usage>,
    metadata: Option<Json>,
}

impl Reserve<'_> {
    /// How long the hold lasts from when the server places it (at most the
    /// server's maximum TTL). Replaces an [`Reserve::expire_time`]. Without
    /// either, the server's default TTL applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.expiry = Some(Expiry::Ttl(ttl));
        self
    }

    /// When the hold ends (in the future, within the server's maximum TTL).
    /// Replaces a [`Reserve::ttl`].
    pub fn expire_time(mut self, at: DateTime<Utc>) -> Self {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// The key that makes this reserve safe to send again (at most 128
    /// characters). Without one the client makes a UUID; either way every
    /// retry carries the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// What the credits are held for (also the capture's usage, unless the
    /// capture gives its own).
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Metadata stored with the hold: a JSON object of at most 16 KiB.
    /// Replaces metadata set before.
    pub fn metadata(mut self, metadata: impl Into<Json>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// Adds one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        add_meta(&mut self.metadata, key.into(), value.into());
        self
    }

    /// Sends the reserve, retrying transient failures with the same key.
    pub async fn send(self) -> Result<HoldReceipt, Error> {
        let expiry = match self.expiry {
            None => None,
            Some(Expiry::Ttl(ttl)) => Some(pb::reserve_request::Expiry::Ttl(
                prost_types::Duration::try_from(ttl).map_err(|_| {
                    Error::InvalidInput(format!("the TTL {ttl:?} is too long to send"))
                })?,
            )),
            Some(Expiry::At(at)) => Some(pb::reserve_request::Expiry::ExpireTime(timestamp(at))),
        };
        let message = pb::ReserveRequest {
            user_id: self.user_id,
            amount: self.amount,
            idempotency_key: self.idempotency_key.unwrap_or_else(new_idempotency_key),
            expiry,
            usage: self.usage.map(Into::into),
            metadata: metadata(self.metadata)?,
        };
        let r = self
            .client
            .call(message, |mut grpc, request| async move {
                grpc.reserve(request).await
            })
            .await?;
        HoldReceipt::new(None, r.hold, r.balance, r.available)
    }
}

impl<'a> IntoFuture for Reserve<'a> {
    type Output = Result<HoldReceipt, Error>;
    type IntoFuture = BoxFuture<'a, Result<HoldReceipt, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A capture to send: built by [`CreditClient::capture`], sent by `.await`
/// or [`Capture::send`].
#[must_use = "a capture does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct Capture<'a> {
    client: &'a CreditClient,
    user_id: String,
    hold_id: String,
    amount: i64,
    idempotency_key: Option<String>,
    usage: Option<Usage>,
    metadata: Option<Json>,
}

impl Capture<'_> {
    /// The key that makes this capture safe to send again. Without one the
    /// client makes a UUID; either way every retry carries the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// What the credits paid for; without it, the hold's usage.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Metadata stored with the usage transaction. Replaces metadata set
    /// before.
    pub fn metadata(mut self, metadata: impl Into<Json>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// Adds one metadata entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        add_meta(&mut self.metadata, key.into(), value.into());
        self
    }

    /// Sends the capture, retrying transient failures with the same key.
    pub async fn send(self) -> Result<HoldReceipt, Error> {
        let message = pb::CaptureRequest {
            user_id: self.user_id,
            hold_id: self.hold_id,
            amount: self.amount,
            idempotency_key: self.idempotency_key.unwrap_or_else(new_idempotency_key),
            usage: self.usage.map(Into::into),
            metadata: metadata(self.metadata)?,
        };
        let r = self
            .client
            .call(message, |mut grpc, request| async move {
                grpc.capture(request).await
            })
            .await?;
        HoldReceipt::new(r.transaction, r.hold, r.balance, r.available)
    }
}

impl<'a> IntoFuture for Capture<'a> {
    type Output = Result<HoldReceipt, Error>;
    type IntoFuture = BoxFuture<'a, Result<HoldReceipt, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A release to send: built by [`CreditClient::release`], sent by `.await`
/// or [`Release::send`].
#[must_use = "a release does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct Release<'a> {
    client: &'a CreditClient,
    user_id: String,
    hold_id: String,
    idempotency_key: Option<String>,
    reason: String,
}

impl Release<'_> {
    /// The key that makes this release safe to send again. Without one the
    /// client makes a UUID; either way every retry carries the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Why the hold was released (at most 256 characters).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Sends the release, retrying transient failures with the same key.
    pub async fn send(self) -> Result<HoldReceipt, Error> {
        let message = pb::ReleaseRequest {
            user_id: self.user_id,
            hold_id: self.hold_id,
            idempotency_key: self.idempotency_key.unwrap_or_else(new_idempotency_key),
            reason: self.reason,
        };
        let r = self
            .client
            .call(message, |mut grpc, request| async move {
                grpc.release(request).await
            })
            .await?;
        HoldReceipt::new(None, r.hold, r.balance, r.available)
    }
}

impl<'a> IntoFuture for Release<'a> {
    type Output = Result<HoldReceipt, Error>;
    type IntoFuture = BoxFuture<'a, Result<HoldReceipt, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// One page of holds (in JSON: `{"holds": [...], "nextPageToken": ""}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldPage {
    /// The holds, newest first.
    pub holds: Vec<Hold>,
    /// The token for the next page; `None` on the last page.
    #[serde(serialize_with = "proto_json::string")]
    pub next_page_token: Option<String>,
}

/// A query over a user's holds: built by [`CreditClient::list_holds`], run
/// by [`ListHolds::page`] or [`ListHolds::stream`].
#[must_use = "a query does nothing until a page or the stream is read"]
#[derive(Debug, Clone)]
pub struct ListHolds<'a> {
    client: &'a CreditClient,
    message: pb::ListHoldsRequest,
}

impl ListHolds<'_> {
    /// Only holds in this state, as of now (call again to allow more).
    pub fn state(mut self, state: HoldState) -> Self {
        self.message.states.push(state.to_proto());
        self
    }

    /// Only holds in these states.
    pub fn states(mut self, states: impl IntoIterator<Item = HoldState>) -> Self {
        self.message.states = states.into_iter().map(HoldState::to_proto).collect();
        self
    }

    /// Holds per page: the server's default (50) when unset, at most 1000.
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
    pub async fn page(self) -> Result<HoldPage, Error> {
        fetch(self.client, self.message).await
    }

    /// Every matching hold, newest first, fetching pages as the stream is
    /// read. The stream ends after the last page, or with the first error.
    pub fn stream(self) -> BoxStream<'static, Result<Hold, Error>> {
        let client = self.client.clone();
        crate::paging::stream(
            self.message,
            |m| m.page_token.as_str(),
            |m, page_token| pb::ListHoldsRequest { page_token, ..m },
            move |message| {
                let client = client.clone();
                async move {
                    let page = fetch(&client, message).await?;
                    Ok((page.holds, page.next_page_token))
                }
            },
        )
    }
}

async fn fetch(client: &CreditClient, message: pb::ListHoldsRequest) -> Result<HoldPage, Error> {
    let response = client
        .call(message, |mut grpc, request| async move {
            grpc.list_holds(request).await
        })
        .await?;
    Ok(HoldPage {
        holds: response
            .holds
            .into_iter()
            .map(Hold::try_from)
            .collect::<Result<_, _>>()?,
        next_page_token: non_empty(response.next_page_token),
    })
}

impl CreditClient {
    /// Earmarks `amount` credits (> 0, at most the available balance) for
    /// work whose cost is known only afterwards. Fails with
    /// [`Error::InsufficientBalance`] when too little is available. The
    /// hold lasts the server's default TTL unless [`Reserve::ttl`] or
    /// [`Reserve::expire_time`] says otherwise.
    pub fn reserve(&self, user_id: impl Into<String>, amount: i64) -> Reserve<'_> {
        Reserve {
            client: self,
            user_id: user_id.into(),
            amount,
            expiry: None,
            idempotency_key: None,
            usage: None,
            metadata: None,
        }
    }

    /// Settles an active hold with the real cost `amount` (>= 0): one usage
    /// transaction; what was held and not used is released; 0 releases the
    /// hold. Fails with [`Error::HoldNotFound`], [`Error::HoldNotActive`] or
    /// [`Error::HoldExpired`].
    pub fn capture(
        &self,
        user_id: impl Into<String>,
        hold_id: impl Into<String>,
        amount: i64,
    ) -> Capture<'_> {
        Capture {
            client: self,
            user_id: user_id.into(),
            hold_id: hold_id.into(),
            amount,
            idempotency_key: None,
            usage: None,
            metadata: None,
        }
    }

    /// Gives all of an active hold back.
    pub fn release(&self, user_id: impl Into<String>, hold_id: impl Into<String>) -> Release<'_> {
        Release {
            client: self,
            user_id: user_id.into(),
            hold_id: hold_id.into(),
            idempotency_key: None,
            reason: String::new(),
        }
    }

    /// Returns one hold of a user.
    pub async fn get_hold(
        &self,
        user_id: impl Into<String>,
        hold_id: impl Into<String>,
    ) -> Result<Hold, Error> {
        let message = pb::GetHoldRequest {
            user_id: user_id.into(),
            hold_id: hold_id.into(),
        };
        let response = self
            .call(message, |mut grpc, request| async move {
                grpc.get_hold(request).await
            })
            .await?;
        required(response.hold, "hold")?.try_into()
    }

    /// A query over a user's holds, newest first; narrow it with
    /// [`ListHolds::state`].
    pub fn list_holds(&self, user_id: impl Into<String>) -> ListHolds<'_> {
        ListHolds {
            client: self,
            message: pb::ListHoldsRequest {
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
    fn hold_states_parse_in_every_spelling() -> Result<(), Error> {
        for s in ["captured", "CAPTURED", "HOLD_STATE_CAPTURED"] {
            assert_eq!(s.parse::<HoldState>()?, HoldState::Captured);
        }
        assert!("bogus".parse::<HoldState>().is_err());
        assert_eq!(HoldState::from_proto(42), HoldState::Unknown(42));
        Ok(())
    }
}
