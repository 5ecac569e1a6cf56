//! The service side: gRPC channels, the calls of each operation, and seeding
//! users through the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use credit_proto::v1 as pb;
use credit_proto::v1::credit_service_client::CreditServiceClient;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::progress::Progress;
use crate::workload::{
    self, HISTORY_PAGE, Op, RESERVE_AMOUNT, SEED_BALANCE, SPEND_AMOUNT, TOP_UP_AMOUNT,
};

pub type Client = CreditServiceClient<Channel>;

/// `count` HTTP/2 connections to `endpoint`. Each `Channel` is one
/// connection; clients cloned from it multiplex over it.
pub async fn connect(endpoint: &str, count: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("bad server address {endpoint}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        clients.push(CreditServiceClient::new(channel));
    }
    Ok(clients)
}

/// Performs one operation; the error is the gRPC code's name (prefixed
/// with `reserve:` or `capture:` for the step of a pair that failed).
pub async fn call(client: &mut Client, op: Op, user: &str) -> Result<(), String> {
    let user_id = user.to_owned();
    let result = match op {
        Op::ReserveCapture => return reserve_capture(client, user_id).await,
        Op::Spend => client
            .spend(pb::SpendRequest {
                user_id,
                amount: SPEND_AMOUNT,
                idempotency_key: fresh_key(),
                usage: Some(pb::UsageDetails {
                    graph_exec_id: "bench".to_owned(),
                    reason: "bench spend".to_owned(),
                    ..Default::default()
                }),
                metadata: None,
            })
            .await
            .map(drop),
        Op::TopUp => client
            .top_up(pb::TopUpRequest {
                user_id,
                amount: TOP_UP_AMOUNT,
                idempotency_key: fresh_key(),
                metadata: None,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::Read => client
            .get_balance(pb::GetBalanceRequest { user_id })
            .await
            .map(drop),
        Op::History => client
            .list_transactions(pb::ListTransactionsRequest {
                user_id,
                page_size: HISTORY_PAGE,
                ..Default::default()
            })
            .await
            .map(drop),
    };
    result.map_err(|status| code_name(status.code()))
}

/// One Reserve of the estimate, then a Capture of that hold for a random
/// 1..=1.2x of it; each call has its own fresh idempotency key, as a spend
/// does. A failed Capture leaves the hold active: the check after the run
/// then finds `held` above zero.
async fn reserve_capture(client: &mut Client, user_id: String) -> Result<(), String> {
    let amount = workload::capture_amount(&mut rand::rng());
    let reserved = client
        .reserve(pb::ReserveRequest {
            user_id: user_id.clone(),
            amount: RESERVE_AMOUNT,
            idempotency_key: fresh_key(),
            // The server's default TTL: far longer than a pair.
            expiry: None,
            usage: Some(pb::UsageDetails {
                graph_exec_id: "bench".to_owned(),
                reason: "bench reserve".to_owned(),
                ..Default::default()
            }),
            metadata: None,
        })
        .await
        .map_err(|status| format!("reserve:{}", code_name(status.code())))?
        .into_inner();
    let hold_id = reserved
        .hold
        .map(|hold| hold.hold_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| "reserve:NO_HOLD_IN_ANSWER".to_owned())?;
    client
        .capture(pb::CaptureRequest {
            user_id,
            hold_id,
            amount,
            idempotency_key: fresh_key(),
            // The hold's usage.
            usage: None,
            metadata: None,
        })
        .await
        .map(drop)
        .map_err(|status| format!("capture:{}", code_name(status.code())))
}

/// A unique idempotency key: every benchmark call is a new request.
pub fn fresh_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `FailedPrecondition` -> `FAILED_PRECONDITION`, as gRPC spells codes.
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Creates `users` and tops each up with the seed balance, `concurrency`
/// at a time. The top-up's fixed key makes a re-run of the seed harmless.
pub async fn seed_users(
    clients: &[Client],
    users: &[String],
    concurrency: usize,
    progress: &Progress,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let results = futures::stream::iter(0..concurrency.max(1))
        .map(|worker| {
            let mut client = clients[worker % clients.len()].clone();
            let next = next.clone();
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i) else {
                        return anyhow::Ok(());
                    };
                    seed_one(&mut client, user).await?;
                    progress.inc(1);
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

async fn seed_one(client: &mut Client, user: &str) -> anyhow::Result<()> {
    client
        .create_user(pb::CreateUserRequest {
            user_id: user.to_owned(),
            email: format!("{user}@bench.example"),
            name: "bench".to_owned(),
        })
        .await
        .with_context(|| format!("CreateUser {user}"))?;
    client
        .top_up(pb::TopUpRequest {
            user_id: user.to_owned(),
            amount: SEED_BALANCE,
            idempotency_key: "bench-seed".to_owned(),
            metadata: None,
            ..Default::default()
        })
        .await
        .with_context(|| format!("TopUp {user}"))?;
    Ok(())
}

/// Gives each of `users` (seeded already) the lots of `EXTRA_LOTS`, with
/// idempotency keys, so a seed repeated on the same database adds none.
pub async fn seed_lots(client: &Client, users: &[String]) -> anyhow::Result<()> {
    let mut client = client.clone();
    let now = chrono::Utc::now();
    for user in users {
        for (i, (kind, priority, days)) in workload::EXTRA_LOTS.into_iter().enumerate() {
            let expire_time = days.map(|d| {
                let at = now + chrono::TimeDelta::days(d);
                prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }
            });
            let key = format!("bench-lot-{i}");
            match kind {
                workload::LotKind::Grant => client
                    .grant(pb::GrantRequest {
                        user_id: user.clone(),
                        amount: SEED_BALANCE,
                        idempotency_key: key,
                        reason: "bench lot".to_owned(),
                        expire_time,
                        priority: Some(priority),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                workload::LotKind::TopUp => client
                    .top_up(pb::TopUpRequest {
                        user_id: user.clone(),
                        amount: SEED_BALANCE,
                        idempotency_key: key,
                        expire_time,
                        priority: Some(priority),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            }
            .with_context(|| format!("lot {i} of {user}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
