//! After every run, the ledger's invariants for every user the run touched.
//! A benchmark that corrupted the ledger has failed, however fast it was.
//!
//! In SQL (when the tool can reach the database), per user:
//! - balance == opening_balance + SUM(amount);
//! - COUNT(*) == MAX(sequence) == last_sequence (with the unique
//!   (user_id, sequence) index: sequences are exactly 1..n);
//! - each running_balance == the previous one (opening_balance for the
//!   first) + amount, and never below zero (the benchmark never refunds a
//!   top-up, the one case allowed to go negative);
//! - balance >= 0;
//! - after reserve-capture, where every pair captured its hold: held == 0,
//!   no hold in a state other than CAPTURED, and hold_count == the captured
//!   holds == the transactions that name a hold (one USAGE row per capture).
//!
//! Without the database (an existing server and no --database-url), the
//! same through the API, except the opening balance, which it does not show.

use anyhow::Context;
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};

use crate::grpc::Client;
use credit_proto::v1 as pb;

/// Users the server's own verifier checks after each run (all of them when
/// a run has fewer).
const VERIFIED_USERS: usize = 64;

/// The server's own verifier (`Ledger::verify`'s code, the same as
/// `credit-server verify`) on up to `VERIFIED_USERS` of the run's users,
/// spread over them: every rule, holds included. The set-level SQL of
/// [`check_sql`] covers every user of a 10,000-user run in a few statements;
/// this covers every rule without a second copy of them.
pub async fn verify_sample(
    db: &DatabaseConnection,
    users: &[String],
) -> anyhow::Result<Vec<String>> {
    let step = users.len().div_ceil(VERIFIED_USERS).max(1);
    let mut violations = Vec::new();
    for user in users.iter().step_by(step) {
        let report = credit_server::ledger::verify::verify(db, Some(user))
            .await
            .with_context(|| format!("cannot verify {user}"))?;
        violations.extend(
            report
                .violations
                .iter()
                .take(SHOWN as usize)
                .map(|v| format!("verifier: {} {}: {}", v.user_id, v.kind, v.detail)),
        );
    }
    Ok(violations)
}

/// Most violations listed per check.
const SHOWN: u64 = 20;

/// The outcome for one target's users.
pub struct Report {
    pub users_checked: u64,
    pub violations: Vec<String>,
}

/// Checks every user whose id starts with `prefix` (there are `expected`);
/// with `holds`, also that every hold was captured.
pub async fn check_sql(
    db: &DatabaseConnection,
    prefix: &str,
    expected: usize,
    holds: bool,
) -> anyhow::Result<Report> {
    let backend = db.get_database_backend();
    let like = Value::from(format!("{prefix}%"));
    let int = match backend {
        DbBackend::MySql => "SIGNED",
        _ => "BIGINT",
    };
    let totals = format!(
        "SELECT b.user_id, b.balance, b.opening_balance, b.last_sequence,
                CAST(COALESCE(SUM(t.amount), 0) AS {int}) AS total,
                CAST(COUNT(t.id) AS {int}) AS n,
                CAST(COALESCE(MAX(t.sequence), 0) AS {int}) AS max_seq
           FROM user_balance b LEFT JOIN credit_transaction t ON t.user_id = b.user_id
          WHERE b.user_id LIKE {p}
          GROUP BY b.user_id, b.balance, b.opening_balance, b.last_sequence
         HAVING b.balance <> b.opening_balance + COALESCE(SUM(t.amount), 0)
             OR COUNT(t.id) <> b.last_sequence
             OR COALESCE(MAX(t.sequence), 0) <> b.last_sequence
             OR b.balance < 0
          LIMIT {SHOWN}",
        p = placeholder(backend),
    );
    let chain = format!(
        "SELECT x.user_id, x.sequence, x.amount, x.running_balance, x.prev FROM (
             SELECT t.user_id, t.sequence, t.amount, t.running_balance,
                    COALESCE(LAG(t.running_balance) OVER (PARTITION BY t.user_id ORDER BY t.sequence),
                             b.opening_balance) AS prev
               FROM credit_transaction t JOIN user_balance b ON b.user_id = t.user_id
              WHERE t.user_id LIKE {p}) x
          WHERE x.running_balance <> x.prev + x.amount OR x.running_balance < 0
          LIMIT {SHOWN}",
        p = placeholder(backend),
    );
    let count = format!(
        "SELECT CAST(COUNT(*) AS {int}) AS n FROM user_balance WHERE user_id LIKE {p}",
        p = placeholder(backend),
    );

    let mut violations = Vec::new();
    let users_checked: i64 = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            count,
            [like.clone()],
        ))
        .await?
        .context("COUNT returned no row")?
        .try_get("", "n")?;
    if users_checked != expected as i64 {
        violations.push(format!(
            "{users_checked} balance rows for {prefix}*, expected {expected}"
        ));
    }
    for row in db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            totals,
            [like.clone()],
        ))
        .await
        .context("invariant query (totals) failed")?
    {
        let user: String = row.try_get("", "user_id")?;
        let get = |col: &str| row.try_get::<i64>("", col);
        violations.push(format!(
            "{user}: balance {} (opening {}), sum of amounts {}, last_sequence {}, {} rows, max sequence {}",
            get("balance")?,
            get("opening_balance")?,
            get("total")?,
            get("last_sequence")?,
            get("n")?,
            get("max_seq")?,
        ));
    }
    for row in db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            chain,
            [like.clone()],
        ))
        .await
        .context("invariant query (running balances) failed")?
    {
        let user: String = row.try_get("", "user_id")?;
        let get = |col: &str| row.try_get::<i64>("", col);
        violations.push(format!(
            "{user}: sequence {} has running balance {}, previous {} + amount {}",
            get("sequence")?,
            get("running_balance")?,
            get("prev")?,
            get("amount")?,
        ));
    }
    if holds {
        violations.extend(check_holds_sql(db, like).await?);
    }
    Ok(Report {
        users_checked: users_checked.max(0) as u64,
        violations,
    })
}

/// After reserve-capture: nothing held, every hold CAPTURED, and exactly one
/// transaction naming a hold per captured hold.
async fn check_holds_sql(db: &DatabaseConnection, like: Value) -> anyhow::Result<Vec<String>> {
    let backend = db.get_database_backend();
    let int = match backend {
        DbBackend::MySql => "SIGNED",
        _ => "BIGINT",
    };
    let sql = format!(
        "SELECT b.user_id, b.held, b.hold_count,
                CAST((SELECT COUNT(*) FROM credit_hold h
                       WHERE h.user_id = b.user_id AND h.state = 'CAPTURED') AS {int}) AS captured,
                CAST((SELECT COUNT(*) FROM credit_hold h
                       WHERE h.user_id = b.user_id AND h.state <> 'CAPTURED') AS {int}) AS other,
                CAST((SELECT COUNT(*) FROM credit_transaction t
                       WHERE t.user_id = b.user_id AND t.hold_id IS NOT NULL) AS {int}) AS linked
           FROM user_balance b
          WHERE b.user_id LIKE {p}",
        p = placeholder(backend),
    );
    let mut violations = Vec::new();
    for row in db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [like]))
        .await
        .context("invariant query (holds) failed")?
    {
        let user: String = row.try_get("", "user_id")?;
        let get = |col: &str| row.try_get::<i64>("", col);
        let (held, count) = (get("held")?, get("hold_count")?);
        let (captured, other, linked) = (get("captured")?, get("other")?, get("linked")?);
        if held != 0 || other != 0 || count != captured || linked != captured {
            violations.push(format!(
                "{user}: after every pair completed, held {held} (expected 0), {other} holds not \
                 CAPTURED, hold_count {count}, {captured} captured holds, {linked} transactions \
                 naming a hold"
            ));
        }
        if violations.len() as u64 >= SHOWN {
            break;
        }
    }
    Ok(violations)
}

fn placeholder(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "$1",
        _ => "?",
    }
}

/// The same checks through the API, for `users`, 16 at a time; with
/// `holds`, also that nothing is held (GetBalance's `held`).
pub async fn check_api(client: &Client, users: &[String], holds: bool) -> anyhow::Result<Report> {
    let results = futures::stream::iter(users)
        .map(|user| {
            let mut client = client.clone();
            async move { check_user(&mut client, user, holds).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut violations = Vec::new();
    for result in results {
        violations.extend(result?);
    }
    Ok(Report {
        users_checked: users.len() as u64,
        violations,
    })
}

async fn check_user(
    client: &mut Client,
    user: &str,
    holds: bool,
) -> anyhow::Result<Option<String>> {
    let balance = client
        .get_balance(pb::GetBalanceRequest {
            user_id: user.to_owned(),
        })
        .await
        .with_context(|| format!("GetBalance {user}"))?
        .into_inner();
    // Newest first; walk back and check each row against the one after it.
    let mut expected_seq = balance.last_sequence;
    let mut expected_running = balance.balance;
    let mut page_token = String::new();
    if balance.balance < 0 {
        return Ok(Some(format!("{user}: balance {} < 0", balance.balance)));
    }
    if holds && balance.held != 0 {
        return Ok(Some(format!(
            "{user}: held {} after every pair completed (expected 0; available {})",
            balance.held, balance.available
        )));
    }
    loop {
        let page = client
            .list_transactions(pb::ListTransactionsRequest {
                user_id: user.to_owned(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .with_context(|| format!("ListTransactions {user}"))?
            .into_inner();
        for tx in page.transactions {
            if tx.sequence != expected_seq || tx.running_balance != expected_running {
                return Ok(Some(format!(
                    "{user}: expected sequence {expected_seq} with running balance \
                     {expected_running}, found {} with {}",
                    tx.sequence, tx.running_balance
                )));
            }
            if tx.running_balance < 0 {
                return Ok(Some(format!(
                    "{user}: sequence {} ran the balance to {}",
                    tx.sequence, tx.running_balance
                )));
            }
            expected_seq -= 1;
            expected_running -= tx.amount;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok((expected_seq != 0).then(|| {
        format!(
            "{user}: history ends at sequence {}, not 1",
            expected_seq + 1
        )
    }))
}
