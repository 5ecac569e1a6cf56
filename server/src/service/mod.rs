//! The gRPC handlers: validate the wire request, turn it into a domain
//! request, call the ledger, turn the result (or the error, through
//! `From<LedgerError> for Status`) into the wire response.

mod actor;
mod convert;
mod requests;
pub mod status;
mod validate;
mod watch;

use credit_proto::v1::{self as pb, credit_service_server::CreditService};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Role};
use crate::gate::CallInfo;
use crate::ledger::Ledger;
use crate::ledger::model::WriteOutcome;
use crate::telemetry::metrics;

pub use requests::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use status::ERROR_DOMAIN;
pub use validate::{MAX_ID_CHARS, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, MAX_TEXT_CHARS};

/// `credit.v1.CreditService` over a [`Ledger`].
#[derive(Clone)]
pub struct CreditApi {
    ledger: Ledger,
    streams: std::sync::Arc<watch::Streams>,
}

impl CreditApi {
    pub fn new(ledger: Ledger, streams: crate::app::StreamLimits) -> Self {
        Self {
            ledger,
            streams: std::sync::Arc::new(watch::Streams::new(streams)),
        }
    }
}

/// The caller the gate admitted (without the gate: the open caller).
fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::open)
}

/// Tells the gate which user the call concerns (for its access line and
/// the span), before anything else can fail.
fn note<T>(request: &Request<T>, user_id: &str) {
    if let Some(info) = request.extensions().get::<CallInfo>() {
        info.note_user(user_id);
    }
}

/// The parts of every write response.
fn written(outcome: WriteOutcome) -> (Option<pb::Transaction>, i64) {
    (outcome.transaction.map(Into::into), outcome.balance)
}

#[tonic::async_trait]
impl CreditService for CreditApi {
    type WatchTransactionsStream = watch::WatchStream<pb::WatchTransactionsResponse>;
    type WatchBalanceStream = watch::WatchStream<pb::WatchBalanceResponse>;

    async fn watch_transactions(
        &self,
        request: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<Self::WatchTransactionsStream>, Status> {
        note(&request, &request.get_ref().user_id);
        let caller = caller(&request);
        let query = requests::watch_transactions(request.into_inner())?;
        // The role table lets readers in; every user's feed is more.
        if query.filter.user_id.is_none() && caller.role < Role::Admin {
            return Err(status::permission_denied(format!(
                "WatchTransactions of every user (empty user_id) needs the admin role; this key \
                 ({}) has {}: name a user_id",
                caller.name, caller.role
            )));
        }
        let slot = self.streams.open(&caller.name)?;
        let start = self.ledger.feed_start(query.start_after).await?;
        Ok(Response::new(watch::transactions(
            self.ledger.clone(),
            query.filter,
            start,
            slot,
            self.streams.limits(),
        )))
    }

    async fn watch_balance(
        &self,
        request: Request<pb::WatchBalanceRequest>,
    ) -> Result<Response<Self::WatchBalanceStream>, Status> {
        note(&request, &request.get_ref().user_id);
        let caller = caller(&request);
        let user_id = requests::user_id(request.into_inner().user_id)?;
        let slot = self.streams.open(&caller.name)?;
        // Fails here (NOT_FOUND) for an unknown user, before the stream.
        self.ledger.balance(&user_id).await?;
        Ok(Response::new(watch::balance(
            self.ledger.clone(),
            user_id,
            slot,
            self.streams.limits(),
        )))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let new = requests::create_user(request.into_inner())?;
        let user = self.ledger.create_user(new).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let user_id = requests::user_id(request.into_inner().user_id)?;
        let user = self.ledger.user(&user_id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let user_id = requests::user_id(request.into_inner().user_id)?;
        let b = self.ledger.balance(&user_id).await?;
        Ok(Response::new(b.into()))
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::top_up(request.into_inner(), actor)?;
        let outcome = self.ledger.write(write).await?;
        let lot = outcome.lot.clone().map(Into::into);
        let (transaction, balance) = written(outcome);
        Ok(Response::new(pb::TopUpResponse {
            transaction,
            balance,
            lot,
        }))
    }

    async fn spend(
        &self,
        request: Request<pb::SpendRequest>,
    ) -> Result<Response<pb::SpendResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::spend(request.into_inner(), actor)?;
        let (transaction, balance) = written(self.ledger.write(write).await?);
        Ok(Response::new(pb::SpendResponse {
            transaction,
            balance,
        }))
    }

    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::grant(request.into_inner(), actor)?;
        let outcome = self.ledger.write(write).await?;
        let lot = outcome.lot.clone().map(Into::into);
        let (transaction, balance) = written(outcome);
        Ok(Response::new(pb::GrantResponse {
            transaction,
            balance,
            lot,
        }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        // The gate admitted only services and admins; a service refunds only
        // usage. Without the gate (no keys configured) everyone is admin.
        let usage_only = request
            .extensions()
            .get::<Caller>()
            .is_some_and(|c| c.role < Role::Admin);
        let actor = actor::of(&request);
        let write = requests::refund(request.into_inner(), usage_only, actor)?;
        let (transaction, balance) = written(self.ledger.write(write).await?);
        Ok(Response::new(pb::RefundResponse {
            transaction,
            balance,
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let (user_id, transaction_id) = requests::get_transaction(request.into_inner())?;
        let tx = self.ledger.transaction(&user_id, &transaction_id).await?;
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(tx.into()),
        }))
    }

    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let user_id = request.into_inner().user_id;
        let user_id = match user_id.is_empty() {
            true => None,
            false => Some(requests::user_id(user_id)?),
        };
        let report = self.ledger.verify(user_id.as_deref()).await?;
        ::metrics::counter!(metrics::VERIFICATIONS).increment(1);
        ::metrics::gauge!(metrics::VIOLATIONS).set(report.violation_count() as f64);
        Ok(Response::new(pb::VerifyLedgerResponse {
            clean: report.is_clean(),
            users_checked: report.users_checked as i64,
            transactions_checked: report.transactions_checked as i64,
            violations_omitted: report.violations_omitted as i64,
            report: report.to_string(),
            violations: report
                .violations
                .into_iter()
                .map(|v| pb::LedgerViolation {
                    user_id: v.user_id,
                    sequence: v.sequence.unwrap_or_default(),
                    kind: v.kind.as_str().to_owned(),
                    detail: v.detail,
                })
                .collect(),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let query = requests::list_transactions(request.into_inner())?;
        let page = self.ledger.history(query).await?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: page.transactions.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::reserve(request.into_inner(), actor)?;
        let outcome = self.ledger.write(write).await?;
        Ok(Response::new(pb::ReserveResponse {
            hold: outcome.hold.map(Into::into),
            balance: outcome.balance,
            available: outcome.available,
        }))
    }

    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CaptureResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::capture(request.into_inner(), actor)?;
        let outcome = self.ledger.write(write).await?;
        Ok(Response::new(pb::CaptureResponse {
            transaction: outcome.transaction.map(Into::into),
            hold: outcome.hold.map(Into::into),
            balance: outcome.balance,
            available: outcome.available,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let actor = actor::of(&request);
        let write = requests::release(request.into_inner(), actor)?;
        let outcome = self.ledger.write(write).await?;
        Ok(Response::new(pb::ReleaseResponse {
            hold: outcome.hold.map(Into::into),
            balance: outcome.balance,
            available: outcome.available,
        }))
    }

    async fn get_hold(
        &self,
        request: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::GetHoldResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let (user_id, hold_id) = requests::get_hold(request.into_inner())?;
        let hold = self.ledger.hold(&user_id, &hold_id).await?;
        Ok(Response::new(pb::GetHoldResponse {
            hold: Some(hold.into()),
        }))
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let query = requests::list_holds(request.into_inner())?;
        let page = self.ledger.holds(query).await?;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: page.holds.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn set_balance_alert(
        &self,
        request: Request<pb::SetBalanceAlertRequest>,
    ) -> Result<Response<pb::SetBalanceAlertResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let req = requests::set_balance_alert(request.into_inner())?;
        let alert = self
            .ledger
            .set_alert(&req.user_id, req.threshold, req.idempotency_key)
            .await?;
        Ok(Response::new(pb::SetBalanceAlertResponse {
            alert: Some(alert.into()),
        }))
    }

    async fn delete_balance_alert(
        &self,
        request: Request<pb::DeleteBalanceAlertRequest>,
    ) -> Result<Response<pb::DeleteBalanceAlertResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let (user_id, alert_id) = requests::delete_balance_alert(request.into_inner())?;
        let alert = self.ledger.delete_alert(&user_id, &alert_id).await?;
        Ok(Response::new(pb::DeleteBalanceAlertResponse {
            alert: Some(alert.into()),
        }))
    }

    async fn list_alert_events(
        &self,
        request: Request<pb::ListAlertEventsRequest>,
    ) -> Result<Response<pb::ListAlertEventsResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let (user_id, page_size, page_token) = requests::list_alert_events(request.into_inner())?;
        let page = self
            .ledger
            .alert_events(&user_id, page_size, page_token.as_deref())
            .await?;
        Ok(Response::new(pb::ListAlertEventsResponse {
            events: page.events.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_lots(
        &self,
        request: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        note(&request, &request.get_ref().user_id);
        let query = requests::list_lots(request.into_inner())?;
        let page = self.ledger.lots(query).await?;
        Ok(Response::new(pb::ListLotsResponse {
            lots: page.lots.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
