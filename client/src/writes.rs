//! The balance-changing calls: top-up, spend, grant and refund. They share
//! one builder, [`Write`], for what every write takes (idempotency key and
//! metadata); each operation adds its own setters (a top-up's and a
//! grant's lot terms: expiry, priority, a grant's category).

use std::future::{Future, IntoFuture};

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::future::BoxFuture;
use serde_json::Value as Json;

use crate::metadata::to_struct;
use crate::model::{required, timestamp};
use crate::{CreditClient, Error, LotCategory, Receipt, Usage};

/// A new idempotency key (a random UUID), for callers that want to know the
/// key before sending so they can send the write again themselves later,
/// e.g. after [`Error::Unavailable`] or a restart.
pub fn new_idempotency_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A write to send: built by [`CreditClient::top_up`], [`CreditClient::spend`],
/// [`CreditClient::grant`] or [`CreditClient::refund`], sent by
/// [`Write::send`] or by `.await`ing it.
#[must_use = "a write does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct Write<'a, Op> {
    client: &'a CreditClient,
    user_id: String,
    op: Op,
    idempotency_key: Option<String>,
    metadata: Option<Json>,
}

impl<'a, Op: WriteOp> Write<'a, Op> {
    pub(crate) fn new(client: &'a CreditClient, user_id: String, op: Op) -> Self {
        Self {
            client,
            user_id,
            op,
            idempotency_key: None,
            metadata: None,
        }
    }

    /// The key that makes this write safe to send again (at most 128
    /// characters). Without one the client makes a UUID; either way every
    /// retry of this write carries the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Metadata stored with the transaction and returned as given: a JSON
    /// object of at most 16 KiB. Replaces metadata set before.
    pub fn metadata(mut self, metadata: impl Into<Json>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// Adds one metadata entry (to an object set by [`Write::metadata`], if
    /// any).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        let metadata = self
            .metadata
            .get_or_insert_with(|| Json::Object(Default::default()));
        if let Json::Object(map) = metadata {
            map.insert(key.into(), value.into());
        }
        // Any other value stays as it is and is refused in `send`.
        self
    }

    /// Sends the write, retrying transient failures with the same
    /// idempotency key, and returns the applied transaction.
    ///
    /// When the key was used before for the same request, the answer is the
    /// original transaction and nothing is applied again.
    pub async fn send(self) -> Result<Receipt, Error> {
        let metadata = self.metadata.map(to_struct).transpose()?;
        let parts = Parts {
            user_id: self.user_id,
            idempotency_key: self.idempotency_key.unwrap_or_else(new_idempotency_key),
            metadata,
        };
        let (transaction, balance, lot) = self.op.send(self.client, parts).await?;
        Ok(Receipt {
            transaction: required(transaction, "transaction")?.try_into()?,
            balance,
            lot: lot.map(TryInto::try_into).transpose()?,
        })
    }
}

impl<'a, Op: WriteOp + 'a> IntoFuture for Write<'a, Op> {
    type Output = Result<Receipt, Error>;
    type IntoFuture = BoxFuture<'a, Result<Receipt, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// What every write request carries, ready for the wire.
#[derive(Debug)]
pub struct Parts {
    user_id: String,
    idempotency_key: String,
    metadata: Option<prost_types::Struct>,
}

/// The answer of every write: the transaction, the balance after it, and
/// the lot a top-up or grant made.
type Written = (Option<pb::Transaction>, i64, Option<pb::Lot>);

/// One kind of write: how it becomes a request and which RPC sends it.
/// Sealed: the four operations are the API's.
pub trait WriteOp: sealed::Sealed + Send {
    /// Sends the request (with retries) and returns its answer.
    #[doc(hidden)]
    fn send(
        self,
        client: &CreditClient,
        parts: Parts,
    ) -> impl Future<Output = Result<Written, Error>> + Send;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::TopUp {}
    impl Sealed for super::Spend {}
    impl Sealed for super::Grant {}
    impl Sealed for super::Refund {}
}

/// A top-up: purchased credits added. Built by [`CreditClient::top_up`].
#[derive(Debug)]
pub struct TopUp {
    amount: i64,
    terms: LotTerms,
}

/// A spend: credits taken for metered usage. Built by [`CreditClient::spend`].
#[derive(Debug)]
pub struct Spend {
    amount: i64,
    usage: Usage,
}

/// A grant: credits given without payment. Built by [`CreditClient::grant`].
#[derive(Debug)]
pub struct Grant {
    amount: i64,
    reason: String,
    terms: LotTerms,
    category: Option<LotCategory>,
}

/// The terms of the lot a top-up or grant makes; unset: the server's
/// defaults (never expires; priority 100 for a top-up, 50 for a grant).
#[derive(Debug, Default)]
struct LotTerms {
    expire_time: Option<DateTime<Utc>>,
    priority: Option<i32>,
}

/// A refund of an earlier transaction. Built by [`CreditClient::refund`].
#[derive(Debug)]
pub struct Refund {
    transaction_id: String,
    amount: Option<i64>,
    reason: String,
}

impl WriteOp for TopUp {
    async fn send(self, client: &CreditClient, parts: Parts) -> Result<Written, Error> {
        let message = pb::TopUpRequest {
            user_id: parts.user_id,
            amount: self.amount,
            idempotency_key: parts.idempotency_key,
            metadata: parts.metadata,
            expire_time: self.terms.expire_time.map(timestamp),
            priority: self.terms.priority,
        };
        let r = client
            .call(message, |mut grpc, request| async move {
                grpc.top_up(request).await
            })
            .await?;
        Ok((r.transaction, r.balance, r.lot))
    }
}

impl WriteOp for Spend {
    async fn send(self, client: &CreditClient, parts: Parts) -> Result<Written, Error> {
        let message = pb::SpendRequest {
            user_id: parts.user_id,
            amount: self.amount,
            idempotency_key: parts.idempotency_key,
            usage: Some(self.usage.into()),
            metadata: parts.metadata,
        };
        let r = client
            .call(message, |mut grpc, request| async move {
                grpc.spend(request).await
            })
            .await?;
        Ok((r.transaction, r.balance, None))
    }
}

impl WriteOp for Grant {
    async fn send(self, client: &CreditClient, parts: Parts) -> Result<Written, Error> {
        let message = pb::GrantRequest {
            user_id: parts.user_id,
            amount: self.amount,
            idempotency_key: parts.idempotency_key,
            reason: self.reason,
            metadata: parts.metadata,
            expire_time: self.terms.expire_time.map(timestamp),
            priority: self.terms.priority,
            category: self.category.map_or(0, LotCategory::to_proto),
        };
        let r = client
            .call(message, |mut grpc, request| async move {
                grpc.grant(request).await
            })
            .await?;
        Ok((r.transaction, r.balance, r.lot))
    }
}

impl WriteOp for Refund {
    async fn send(self, client: &CreditClient, parts: Parts) -> Result<Written, Error> {
        let message = pb::RefundRequest {
            user_id: parts.user_id,
            transaction_id: self.transaction_id,
            amount: self.amount,
            idempotency_key: parts.idempotency_key,
            reason: self.reason,
            metadata: parts.metadata,
        };
        let r = client
            .call(message, |mut grpc, request| async move {
                grpc.refund(request).await
            })
            .await?;
        Ok((r.transaction, r.balance, None))
    }
}

impl Write<'_, Spend> {
    /// What the credits paid for.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.op.usage = usage;
        self
    }
}

impl Write<'_, TopUp> {
    /// When the credits expire (in the future); without it, never. What is
    /// unspent then is taken by an EXPIRATION transaction.
    pub fn expire_time(mut self, at: DateTime<Utc>) -> Self {
        self.op.terms.expire_time = Some(at);
        self
    }

    /// Draw priority 0-100, lower spent first; without it, 100 (after
    /// grants, which default to 50).
    pub fn priority(mut self, priority: i32) -> Self {
        self.op.terms.priority = Some(priority);
        self
    }
}

impl Write<'_, Grant> {
    /// Why the credits were given (at most 256 characters).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.op.reason = reason.into();
        self
    }

    /// When the credits expire (in the future); without it, never. What is
    /// unspent then is taken by an EXPIRATION transaction.
    pub fn expire_time(mut self, at: DateTime<Utc>) -> Self {
        self.op.terms.expire_time = Some(at);
        self
    }

    /// Draw priority 0-100, lower spent first; without it, 50 (before
    /// top-ups, which default to 100).
    pub fn priority(mut self, priority: i32) -> Self {
        self.op.terms.priority = Some(priority);
        self
    }

    /// [`LotCategory::Promotional`] (the default) or [`LotCategory::Paid`],
    /// for credits sold through another channel.
    pub fn category(mut self, category: LotCategory) -> Self {
        self.op.category = Some(category);
        self
    }
}

impl Write<'_, Refund> {
    /// Refund only this many credits (> 0); without it, everything not yet
    /// refunded.
    pub fn amount(mut self, amount: i64) -> Self {
        self.op.amount = Some(amount);
        self
    }

    /// Why the refund was made (at most 256 characters).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.op.reason = reason.into();
        self
    }
}

impl CreditClient {
    /// Adds `amount` purchased credits (> 0) to a user's balance, in a new
    /// paid lot ([`Receipt::lot`]).
    pub fn top_up(&self, user_id: impl Into<String>, amount: i64) -> Write<'_, TopUp> {
        let op = TopUp {
            amount,
            terms: LotTerms::default(),
        };
        Write::new(self, user_id.into(), op)
    }

    /// Takes `amount` credits (> 0) for metered usage. Fails with
    /// [`Error::InsufficientBalance`] when the balance is smaller.
    pub fn spend(&self, user_id: impl Into<String>, amount: i64) -> Write<'_, Spend> {
        let op = Spend {
            amount,
            usage: Usage::default(),
        };
        Write::new(self, user_id.into(), op)
    }

    /// Gives `amount` credits (> 0) that were not paid for, in a new lot
    /// (promotional unless [`Write::category`] says paid).
    pub fn grant(&self, user_id: impl Into<String>, amount: i64) -> Write<'_, Grant> {
        let op = Grant {
            amount,
            reason: String::new(),
            terms: LotTerms::default(),
            category: None,
        };
        Write::new(self, user_id.into(), op)
    }

    /// Reverses an earlier top-up, spend or grant of the same user: all of
    /// what is left of it, or [`Write::amount`] credits.
    pub fn refund(
        &self,
        user_id: impl Into<String>,
        transaction_id: impl Into<String>,
    ) -> Write<'_, Refund> {
        let op = Refund {
            transaction_id: transaction_id.into(),
            amount: None,
            reason: String::new(),
        };
        Write::new(self, user_id.into(), op)
    }
}
