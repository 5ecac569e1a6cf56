//! Short forms of the calls tests make, and readers of error details.

use credit_proto::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::Client;

/// `message` sent with `authorization: Bearer <key>`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(format!("Bearer {key}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Creates `user_id` with a derived email.
pub async fn create_user(c: &mut Client, user_id: &str) -> Result<pb::User, Status> {
    let res = c
        .create_user(pb::CreateUserRequest {
            user_id: user_id.to_owned(),
            email: format!("{user_id}@example.com"),
            name: format!("Test {user_id}"),
        })
        .await?;
    Ok(res.into_inner().user.unwrap_or_default())
}

pub async fn balance(c: &mut Client, user_id: &str) -> Result<i64, Status> {
    let res = c
        .get_balance(pb::GetBalanceRequest {
            user_id: user_id.to_owned(),
        })
        .await?;
    Ok(res.into_inner().balance)
}

pub async fn top_up(
    c: &mut Client,
    user_id: &str,
    amount: i64,
) -> Result<pb::TopUpResponse, Status> {
    top_up_with_key(c, user_id, amount, "").await
}

pub async fn top_up_with_key(
    c: &mut Client,
    user_id: &str,
    amount: i64,
    key: &str,
) -> Result<pb::TopUpResponse, Status> {
    let res = c
        .top_up(pb::TopUpRequest {
            user_id: user_id.to_owned(),
            amount,
            idempotency_key: key.to_owned(),
            metadata: None,
            ..Default::default()
        })
        .await?;
    Ok(res.into_inner())
}

pub async fn spend(
    c: &mut Client,
    user_id: &str,
    amount: i64,
) -> Result<pb::SpendResponse, Status> {
    spend_with_key(c, user_id, amount, "").await
}

pub async fn spend_with_key(
    c: &mut Client,
    user_id: &str,
    amount: i64,
    key: &str,
) -> Result<pb::SpendResponse, Status> {
    let res = c
        .spend(pb::SpendRequest {
            user_id: user_id.to_owned(),
            amount,
            idempotency_key: key.to_owned(),
            usage: Some(pb::UsageDetails {
                graph_exec_id: "test-graph-exec".to_owned(),
                reason: "test spend".to_owned(),
                ..Default::default()
            }),
            metadata: None,
        })
        .await?;
    Ok(res.into_inner())
}

pub async fn grant(
    c: &mut Client,
    user_id: &str,
    amount: i64,
) -> Result<pb::GrantResponse, Status> {
    let res = c
        .grant(pb::GrantRequest {
            user_id: user_id.to_owned(),
            amount,
            idempotency_key: String::new(),
            reason: "test grant".to_owned(),
            metadata: None,
            ..Default::default()
        })
        .await?;
    Ok(res.into_inner())
}

pub async fn refund(
    c: &mut Client,
    user_id: &str,
    transaction_id: &str,
    amount: Option<i64>,
) -> Result<pb::RefundResponse, Status> {
    let res = c
        .refund(pb::RefundRequest {
            user_id: user_id.to_owned(),
            transaction_id: transaction_id.to_owned(),
            amount,
            idempotency_key: String::new(),
            reason: "test refund".to_owned(),
            metadata: None,
        })
        .await?;
    Ok(res.into_inner())
}

/// Every transaction of the user, oldest first, following page tokens.
pub async fn all_transactions(
    c: &mut Client,
    user_id: &str,
) -> Result<Vec<pb::Transaction>, Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_transactions(pb::ListTransactionsRequest {
                user_id: user_id.to_owned(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        all.extend(page.transactions);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.reverse();
    Ok(all)
}

/// The ErrorInfo reason of a failed call.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// One ErrorInfo metadata value of a failed call.
pub fn info(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The fields named by a failed call's BadRequest violations.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with `code` and ErrorInfo `reason`.
#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason_: &str,
) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}/{reason_}, got success: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "wrong code for {status:?}");
            assert_eq!(
                reason(&status).as_deref(),
                Some(reason_),
                "wrong reason for {status:?}"
            );
            status
        }
    }
}
