//! Checking the ledger's invariants on the server (an admin call).

use credit_proto::v1 as pb;
use serde::Serialize;

use crate::model::proto_json;
use crate::{CreditClient, Error};

/// The outcome of a ledger check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerReport {
    /// True when no invariant is violated.
    pub clean: bool,
    /// How many users were checked.
    #[serde(serialize_with = "proto_json::int64")]
    pub users_checked: i64,
    /// How many transactions were checked.
    #[serde(serialize_with = "proto_json::int64")]
    pub transactions_checked: i64,
    /// The violations found (the server lists at most 10,000).
    pub violations: Vec<LedgerViolation>,
    /// Violations found beyond those listed.
    #[serde(serialize_with = "proto_json::int64")]
    pub violations_omitted: i64,
    /// The report as the server's `verify` command prints it.
    pub report: String,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerViolation {
    /// The user whose ledger is broken.
    pub user_id: String,
    /// The transaction concerned; `None` when it is the balance or the user
    /// as a whole.
    #[serde(serialize_with = "proto_json::optional_int64")]
    pub sequence: Option<i64>,
    /// A stable name of the invariant, e.g. `BALANCE_MISMATCH`.
    pub kind: String,
    /// What was found, for people.
    pub detail: String,
}

impl From<pb::VerifyLedgerResponse> for LedgerReport {
    fn from(r: pb::VerifyLedgerResponse) -> Self {
        Self {
            clean: r.clean,
            users_checked: r.users_checked,
            transactions_checked: r.transactions_checked,
            violations: r
                .violations
                .into_iter()
                .map(|v| LedgerViolation {
                    user_id: v.user_id,
                    sequence: (v.sequence != 0).then_some(v.sequence),
                    kind: v.kind,
                    detail: v.detail,
                })
                .collect(),
            violations_omitted: r.violations_omitted,
            report: r.report,
        }
    }
}

impl CreditClient {
    /// Checks every user's ledger: balances equal the sum of their
    /// transactions, sequences have no gaps, refunds stay within their
    /// originals. Needs an admin key on a server with keys.
    pub async fn verify_ledger(&self) -> Result<LedgerReport, Error> {
        self.verify(String::new()).await
    }

    /// Checks one user's ledger (see [`CreditClient::verify_ledger`]).
    pub async fn verify_user(&self, user_id: impl Into<String>) -> Result<LedgerReport, Error> {
        let user_id = user_id.into();
        if user_id.is_empty() {
            // Empty means "everyone" on the wire; refuse rather than widen.
            return Err(Error::InvalidInput("the user id is empty".to_owned()));
        }
        self.verify(user_id).await
    }

    async fn verify(&self, user_id: String) -> Result<LedgerReport, Error> {
        let message = pb::VerifyLedgerRequest { user_id };
        let response = self
            .call(message, |mut grpc, request| async move {
                grpc.verify_ledger(request).await
            })
            .await?;
        Ok(response.into())
    }
}
