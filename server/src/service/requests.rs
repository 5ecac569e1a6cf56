//! Wire requests -> validated domain requests. Every rule about what a
//! request may contain lives in `validate.rs`; this file says which rule
//! applies to which field.

use credit_proto::v1 as pb;

use super::convert::{from_hold_state, from_timestamp, from_tx_type};
use super::validate::Checker;
use crate::ledger::LedgerError;
use crate::ledger::feed::{Cursor, FeedFilter};
use crate::ledger::model::{
    Actor, Expiry, HistoryFilter, HistoryQuery, HoldQuery, LotCategory, LotQuery, LotTerms,
    NewUser, Operation, Usage, WriteRequest,
};

/// Page size when the caller gives 0 (AIP-158).
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Larger page sizes are served as this many.
pub const MAX_PAGE_SIZE: u64 = 1000;

pub fn create_user(req: pb::CreateUserRequest) -> Result<NewUser, LedgerError> {
    let mut c = Checker::default();
    let id = c.id("user_id", req.user_id);
    let email = c.email("email", req.email);
    let name = c.text("name", req.name).unwrap_or_default();
    c.finish()?;
    Ok(NewUser { id, email, name })
}

/// A request that names only a user.
pub fn user_id(user_id: String) -> Result<String, LedgerError> {
    let mut c = Checker::default();
    let id = c.id("user_id", user_id);
    c.finish()?;
    Ok(id)
}

pub fn top_up(req: pb::TopUpRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::TopUp {
            amount: c.amount("amount", req.amount),
            lot: lot_terms(&mut c, req.expire_time, req.priority, None),
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

/// What a TopUp or Grant says about its lot. Whether `expire_time` is in
/// the future is the ledger's to say (its clock decides).
fn lot_terms(
    c: &mut Checker,
    expire_time: Option<prost_types::Timestamp>,
    priority: Option<i32>,
    category: Option<i32>,
) -> LotTerms {
    let expire_time = expire_time.and_then(|t| match from_timestamp(&t) {
        Ok(t) => Some(t),
        Err(why) => {
            c.require(false, "expire_time", why);
            None
        }
    });
    if let Some(p) = priority {
        c.require(
            (0..=100).contains(&p),
            "priority",
            "must be 0-100 (lower is spent first)",
        );
    }
    let category = match category.map(pb::CreditCategory::try_from) {
        None | Some(Ok(pb::CreditCategory::Unspecified)) => None,
        Some(Ok(pb::CreditCategory::Paid)) => Some(LotCategory::Paid),
        Some(Ok(pb::CreditCategory::Promotional)) => Some(LotCategory::Promotional),
        Some(Err(_)) => {
            c.require(false, "category", "must be PAID or PROMOTIONAL");
            None
        }
    };
    LotTerms {
        category,
        priority,
        expire_time,
    }
}

/// The usage details of a request (every part optional free text).
fn usage(c: &mut Checker, usage: Option<pb::UsageDetails>) -> Usage {
    let usage = usage.unwrap_or_default();
    Usage {
        graph_exec_id: c.text("usage.graph_exec_id", usage.graph_exec_id),
        graph_id: c.text("usage.graph_id", usage.graph_id),
        node_id: c.text("usage.node_id", usage.node_id),
        node_exec_id: c.text("usage.node_exec_id", usage.node_exec_id),
        block_id: c.text("usage.block_id", usage.block_id),
        reason: c.text("usage.reason", usage.reason),
    }
}

pub fn spend(req: pb::SpendRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    let usage = usage(&mut c, req.usage);
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Spend {
            amount: c.amount("amount", req.amount),
            usage,
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

pub fn grant(req: pb::GrantRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Grant {
            amount: c.amount("amount", req.amount),
            reason: c.text("reason", req.reason),
            lot: lot_terms(&mut c, req.expire_time, req.priority, Some(req.category)),
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

/// `usage_only`: the caller may refund only USAGE transactions.
pub fn refund(
    req: pb::RefundRequest,
    usage_only: bool,
    actor: Actor,
) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Refund {
            transaction_id: c.transaction_id("transaction_id", req.transaction_id),
            amount: req.amount.map(|a| c.amount("amount", a)),
            reason: c.text("reason", req.reason),
            usage_only,
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

pub fn get_transaction(req: pb::GetTransactionRequest) -> Result<(String, String), LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let transaction_id = c.transaction_id("transaction_id", req.transaction_id);
    c.finish()?;
    Ok((user_id, transaction_id))
}

pub fn list_transactions(req: pb::ListTransactionsRequest) -> Result<HistoryQuery, LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let page_size = page_size(&mut c, req.page_size);
    let mut kinds = Vec::new();
    for (i, value) in req.types.iter().enumerate() {
        match from_tx_type(*value) {
            Some(kind) => kinds.push(kind),
            None => c.require(
                false,
                &format!("types[{i}]"),
                "must be a known transaction type other than TRANSACTION_TYPE_UNSPECIFIED",
            ),
        }
    }
    let mut time = |field: &str, t: Option<prost_types::Timestamp>| {
        t.and_then(|t| match from_timestamp(&t) {
            Ok(t) => Some(t),
            Err(why) => {
                c.require(false, field, why);
                None
            }
        })
    };
    let created_after = time("created_after", req.created_after);
    let created_before = time("created_before", req.created_before);
    if let (Some(a), Some(b)) = (created_after, created_before) {
        c.require(a < b, "created_before", "must be later than created_after");
    }
    let filter = HistoryFilter {
        kinds,
        created_after,
        created_before,
        graph_exec_id: c.text("graph_exec_id", req.graph_exec_id),
        created_by: c.text("created_by", req.created_by),
    };
    let page_token = (!req.page_token.is_empty()).then_some(req.page_token);
    c.finish()?;
    Ok(HistoryQuery {
        user_id,
        page_size,
        page_token,
        filter,
    })
}

pub fn reserve(req: pb::ReserveRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    use pb::reserve_request::Expiry as Wire;
    let mut c = Checker::default();
    let expiry = match req.expiry {
        None => Expiry::Default,
        Some(Wire::Ttl(ttl)) => {
            match chrono::TimeDelta::new(ttl.seconds, ttl.nanos.max(0) as u32) {
                Some(ttl) if ttl > chrono::TimeDelta::zero() && ttl.subsec_nanos() >= 0 => {
                    Expiry::Ttl(ttl)
                }
                _ => {
                    c.require(false, "ttl", "must be a positive duration");
                    Expiry::Default
                }
            }
        }
        Some(Wire::ExpireTime(t)) => match from_timestamp(&t) {
            Ok(t) => Expiry::At(t),
            Err(why) => {
                c.require(false, "expire_time", why);
                Expiry::Default
            }
        },
    };
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Reserve {
            amount: c.amount("amount", req.amount),
            expiry,
            usage: usage(&mut c, req.usage),
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

pub fn capture(req: pb::CaptureRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    c.require(
        req.amount >= 0,
        "amount",
        "must be 0 (release) or more (the real cost)",
    );
    let given = req.usage.is_some();
    let usage = usage(&mut c, req.usage);
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Capture {
            hold_id: c.uuid("hold_id", req.hold_id, "a hold id returned by Reserve"),
            amount: req.amount,
            usage: given.then_some(usage),
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: c.metadata("metadata", req.metadata),
        actor,
    };
    c.finish()?;
    Ok(write)
}

pub fn release(req: pb::ReleaseRequest, actor: Actor) -> Result<WriteRequest, LedgerError> {
    let mut c = Checker::default();
    let write = WriteRequest {
        user_id: c.id("user_id", req.user_id),
        operation: Operation::Release {
            hold_id: c.uuid("hold_id", req.hold_id, "a hold id returned by Reserve"),
            reason: c.text("reason", req.reason),
        },
        idempotency_key: c.optional_id("idempotency_key", req.idempotency_key),
        metadata: None,
        actor,
    };
    c.finish()?;
    Ok(write)
}

pub fn get_hold(req: pb::GetHoldRequest) -> Result<(String, String), LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let hold_id = c.uuid("hold_id", req.hold_id, "a hold id returned by Reserve");
    c.finish()?;
    Ok((user_id, hold_id))
}

pub fn list_holds(req: pb::ListHoldsRequest) -> Result<HoldQuery, LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let page_size = page_size(&mut c, req.page_size);
    let mut states = Vec::new();
    for (i, value) in req.states.iter().enumerate() {
        match from_hold_state(*value) {
            Some(state) => states.push(state),
            None => c.require(
                false,
                &format!("states[{i}]"),
                "must be a known hold state other than HOLD_STATE_UNSPECIFIED",
            ),
        }
    }
    let page_token = (!req.page_token.is_empty()).then_some(req.page_token);
    c.finish()?;
    Ok(HoldQuery {
        user_id,
        states,
        page_size,
        page_token,
    })
}

pub fn list_lots(req: pb::ListLotsRequest) -> Result<LotQuery, LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let page_size = page_size(&mut c, req.page_size);
    let page_token = (!req.page_token.is_empty()).then_some(req.page_token);
    c.finish()?;
    Ok(LotQuery {
        user_id,
        include_empty: req.include_empty,
        page_size,
        page_token,
    })
}

/// AIP-158 page sizes: 0 is the default, above the maximum is the maximum.
fn page_size(c: &mut Checker, size: i32) -> u64 {
    c.require(
        size >= 0,
        "page_size",
        "must not be negative (0 means the default of 50)",
    );
    match size {
        0 => DEFAULT_PAGE_SIZE,
        n => (n.max(0) as u64).min(MAX_PAGE_SIZE),
    }
}

/// A validated WatchTransactions request.
pub struct WatchQuery {
    pub filter: FeedFilter,
    pub start_after: Option<Cursor>,
}

pub fn watch_transactions(req: pb::WatchTransactionsRequest) -> Result<WatchQuery, LedgerError> {
    let mut c = Checker::default();
    // Empty is every user (the handler checks the role for that).
    let user_id = c.optional_id("user_id", req.user_id);
    let mut kinds = Vec::new();
    for (i, value) in req.types.iter().enumerate() {
        match from_tx_type(*value) {
            Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
            Some(_) => {}
            None => c.require(
                false,
                &format!("types[{i}]"),
                "must be a known transaction type other than TRANSACTION_TYPE_UNSPECIFIED",
            ),
        }
    }
    let start_after = match req.start_after.as_str() {
        "" => None,
        token => {
            let cursor = Cursor::parse(token);
            c.require(
                cursor.is_some(),
                "start_after",
                "must be a cursor this feed sent (a message's `cursor`), or empty to start now",
            );
            cursor
        }
    };
    let content = pb::FeedContent::try_from(req.content);
    c.require(
        content.is_ok(),
        "content",
        "must be FEED_CONTENT_UNSPECIFIED (transactions), \
         FEED_CONTENT_TRANSACTIONS_AND_ALERT_EVENTS or FEED_CONTENT_ALERT_EVENTS",
    );
    let (transactions, alert_events) = match content {
        Ok(pb::FeedContent::TransactionsAndAlertEvents) => (true, true),
        Ok(pb::FeedContent::AlertEvents) => (false, true),
        _ => (true, false),
    };
    c.finish()?;
    Ok(WatchQuery {
        filter: FeedFilter {
            user_id,
            kinds,
            transactions,
            alert_events,
        },
        start_after,
    })
}

/// A validated SetBalanceAlert request.
pub struct AlertRequest {
    pub user_id: String,
    pub threshold: i64,
    pub idempotency_key: Option<String>,
}

pub fn set_balance_alert(req: pb::SetBalanceAlertRequest) -> Result<AlertRequest, LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    c.require(
        req.threshold >= 0,
        "threshold",
        "must be 0 or more (an event is recorded when the balance goes below it)",
    );
    let idempotency_key = c.optional_id("idempotency_key", req.idempotency_key);
    c.finish()?;
    Ok(AlertRequest {
        user_id,
        threshold: req.threshold,
        idempotency_key,
    })
}

pub fn delete_balance_alert(
    req: pb::DeleteBalanceAlertRequest,
) -> Result<(String, String), LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let alert_id = c.id("alert_id", req.alert_id);
    c.finish()?;
    Ok((user_id, alert_id))
}

/// A validated ListAlertEvents request: user, page size, page token.
pub fn list_alert_events(
    req: pb::ListAlertEventsRequest,
) -> Result<(String, u64, Option<String>), LedgerError> {
    let mut c = Checker::default();
    let user_id = c.id("user_id", req.user_id);
    let page_size = page_size(&mut c, req.page_size);
    let page_token = (!req.page_token.is_empty()).then_some(req.page_token);
    c.finish()?;
    Ok((user_id, page_size, page_token))
}
