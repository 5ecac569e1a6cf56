//! The ledger verifier (`credit_server::ledger::verify`): a ledger built by real API
//! traffic verifies clean; tables corrupted behind the server's back are
//! reported, each with the right kind, on the right user.

use std::collections::BTreeSet;

use anyhow::{Context, ensure};
use credit_server::entity::{credit_transaction as ctx, user_balance};
use credit_server::ledger::verify::{ViolationKind as K, verify};
use futures::future::join_all;
use integration_tests::{Client, TestServer, api, ledger_tests};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter};

ledger_tests!(real_traffic_verifies_clean, corruptions_are_reported);

async fn real_traffic_verifies_clean(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    // Every kind of write, including the one legitimate negative balance:
    // a refunded top-up whose credits were already spent.
    api::create_user(&mut c, "alice").await?;
    let top_up = tx_id(api::top_up(&mut c, "alice", 100).await?.transaction)?;
    let spend = tx_id(api::spend(&mut c, "alice", 80).await?.transaction)?;
    api::refund(&mut c, "alice", &spend, Some(30)).await?;
    api::refund(&mut c, "alice", &top_up, None).await?;
    ensure!(api::balance(&mut c, "alice").await? == -50);
    api::top_up(&mut c, "alice", 500).await?;
    let grant = tx_id(api::grant(&mut c, "alice", 40).await?.transaction)?;
    api::refund(&mut c, "alice", &grant, Some(15)).await?;
    api::create_user(&mut c, "idle").await?;

    // And concurrent traffic on a few users.
    for u in ["c0", "c1", "c2"] {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 1_000).await?;
    }
    let clients = server.clients(8).await?;
    let workers = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| concurrent_writes(c, i));
    for r in join_all(workers).await {
        r?;
    }

    let report = verify(&server.db, None).await?;
    eprintln!("{report}");
    ensure!(report.is_clean(), "real traffic flagged:\n{report}");
    ensure!(
        report.users_checked == 5,
        "users_checked {}",
        report.users_checked
    );
    ensure!(
        report.transactions_checked > 8 * 10,
        "{}",
        report.transactions_checked
    );
    ensure!(report.to_string().contains("ledger OK"), "{report}");

    let one = verify(&server.db, Some("alice")).await?;
    ensure!(
        one.is_clean() && one.users_checked == 1 && one.transactions_checked == 7,
        "{one:?}"
    );
    let nobody = verify(&server.db, Some("nobody")).await?;
    ensure!(nobody.is_clean() && nobody.users_checked == 0, "{nobody:?}");
    Ok(())
}

async fn concurrent_writes(mut c: Client, i: usize) -> anyhow::Result<()> {
    let user = ["c0", "c1", "c2"][i % 3];
    let mut spends = Vec::new();
    for n in 0..12 {
        match n % 4 {
            0 => {
                api::top_up(&mut c, user, 7).await?;
            }
            1 | 2 => {
                spends.push(tx_id(api::spend(&mut c, user, 9).await?.transaction)?);
            }
            _ => {
                if let Some(s) = spends.pop() {
                    api::refund(&mut c, user, &s, Some(4)).await?;
                }
            }
        }
    }
    Ok(())
}

fn tx_id(tx: Option<credit_proto::v1::Transaction>) -> anyhow::Result<String> {
    Ok(tx
        .context("a write answered without its transaction")?
        .transaction_id)
}

/// Each user gets one corruption; the verifier must name exactly its kinds.
async fn corruptions_are_reported(server: &TestServer) -> anyhow::Result<()> {
    let db = &server.db;
    let mut c = server.client().await?;
    let mut expected: Vec<(&str, BTreeSet<K>)> = Vec::new();

    // Untouched: must stay clean among the broken ones.
    api::create_user(&mut c, "fine").await?;
    api::top_up(&mut c, "fine", 100).await?;
    api::spend(&mut c, "fine", 30).await?;
    expected.push(("fine", [].into()));

    // A balance changed behind the ledger's back.
    history(&mut c, "balance", &[100, -30]).await?;
    set_balance(db, "balance", 999).await?;
    // The lots no longer explain it either.
    expected.push(("balance", [K::BalanceMismatch, K::LotMismatch].into()));

    // A middle transaction deleted: the gap, the broken link after it, and
    // a balance its log no longer explains.
    history(&mut c, "gap", &[100, -10, -20, -5]).await?;
    ctx::Entity::delete_many()
        .filter(ctx::Column::UserId.eq("gap"))
        .filter(ctx::Column::Sequence.eq(2))
        .exec(db)
        .await?;
    expected.push((
        "gap",
        [
            K::SequenceGap,
            K::RunningBalanceMismatch,
            K::BalanceMismatch,
        ]
        .into(),
    ));

    // A running balance altered: its own link and the next one break.
    history(&mut c, "running", &[100, -30, -20]).await?;
    ctx::Entity::update_many()
        .col_expr(ctx::Column::RunningBalance, Expr::value(75i64))
        .filter(ctx::Column::UserId.eq("running"))
        .filter(ctx::Column::Sequence.eq(2))
        .exec(db)
        .await?;
    expected.push(("running", [K::RunningBalanceMismatch].into()));

    // A refunded_amount bumped past what the refunds add up to.
    history(&mut c, "refunded", &[100]).await?;
    let spend = tx_id(api::spend(&mut c, "refunded", 40).await?.transaction)?;
    api::refund(&mut c, "refunded", &spend, Some(10)).await?;
    ctx::Entity::update_many()
        .col_expr(ctx::Column::RefundedAmount, Expr::value(25i64))
        .filter(ctx::Column::Id.eq(spend.as_str()))
        .exec(db)
        .await?;
    expected.push(("refunded", [K::RefundedAmountMismatch].into()));

    // A second refund inserted on a fully refunded spend, with every other
    // column made consistent: only the excess itself is wrong.
    history(&mut c, "over", &[100]).await?;
    let spend = tx_id(api::spend(&mut c, "over", 40).await?.transaction)?;
    api::refund(&mut c, "over", &spend, None).await?;
    append(db, "over", "REFUND", 30, Some(&spend)).await?;
    ctx::Entity::update_many()
        .col_expr(ctx::Column::RefundedAmount, Expr::value(70i64))
        .filter(ctx::Column::Id.eq(spend.as_str()))
        .exec(db)
        .await?;
    // Written behind the ledger's back: no allocations, lots unchanged.
    expected.push((
        "over",
        [
            K::RefundExceedsOriginal,
            K::AllocationMismatch,
            K::LotMismatch,
        ]
        .into(),
    ));

    // A spend that took the balance below zero.
    history(&mut c, "negative", &[100]).await?;
    append(db, "negative", "USAGE", -150, None).await?;
    expected.push((
        "negative",
        [K::NegativeBalance, K::AllocationMismatch, K::LotMismatch].into(),
    ));

    // Legitimate: credits added while a refunded top-up keeps the balance
    // below zero (they pay the deficit back first).
    history(&mut c, "deficit", &[100, -80]).await?;
    let deficit = api::all_transactions(&mut c, "deficit").await?;
    let paid = deficit.first().context("deficit has a top-up")?;
    api::refund(&mut c, "deficit", &paid.transaction_id, None).await?;
    api::grant(&mut c, "deficit", 20).await?;
    expected.push(("deficit", [].into()));

    // A user whose balance row is gone.
    api::create_user(&mut c, "rowless").await?;
    user_balance::Entity::delete_by_id("rowless".to_owned())
        .exec(db)
        .await?;
    expected.push(("rowless", [K::MissingBalanceRow].into()));

    // A refund of another user's transaction.
    history(&mut c, "owner", &[100]).await?;
    let owners = api::all_transactions(&mut c, "owner").await?;
    let foreign = owners.first().context("owner has a top-up")?;
    history(&mut c, "thief", &[100]).await?;
    append(db, "thief", "REFUND", -10, Some(&foreign.transaction_id)).await?;
    expected.push(("owner", [].into()));
    expected.push((
        "thief",
        [
            K::RefundTargetInvalid,
            K::AllocationMismatch,
            K::LotMismatch,
        ]
        .into(),
    ));

    // last_sequence moved on without a transaction.
    history(&mut c, "sequence", &[100, -1]).await?;
    user_balance::Entity::update_many()
        .col_expr(user_balance::Column::LastSequence, Expr::value(5i64))
        .filter(user_balance::Column::UserId.eq("sequence"))
        .exec(db)
        .await?;
    expected.push(("sequence", [K::LastSequenceMismatch].into()));

    let report = verify(db, None).await?;
    eprintln!("{report}");
    ensure!(!report.is_clean(), "corruption went unnoticed");
    ensure!(report.to_string().contains("ledger BROKEN"), "{report}");
    for (user, kinds) in &expected {
        let found: BTreeSet<K> = report.violations_of(user).map(|v| v.kind).collect();
        ensure!(
            found == *kinds,
            "{user}: expected {kinds:?}, reported {found:?}\n{report}"
        );
        // The single-user check reports the same as the full run.
        let one = verify(db, Some(user)).await?;
        let all: Vec<_> = report.violations_of(user).cloned().collect();
        ensure!(
            one.violations == all,
            "{user}: alone {:?}, in the full run {all:?}",
            one.violations
        );
    }
    // Where it matters, the violation points at the right transaction.
    let at = |user: &str, kind: K| -> Vec<Option<i64>> {
        report
            .violations_of(user)
            .filter(|v| v.kind == kind)
            .map(|v| v.sequence)
            .collect()
    };
    ensure!(at("gap", K::SequenceGap) == [Some(3)], "{report}");
    ensure!(
        at("running", K::RunningBalanceMismatch) == [Some(2), Some(3)],
        "{report}"
    );
    ensure!(at("refunded", K::RefundedAmountMismatch) == [Some(2)]);
    ensure!(at("over", K::RefundExceedsOriginal) == [Some(2)]);
    ensure!(at("negative", K::NegativeBalance) == [Some(2)]);
    ensure!(at("thief", K::RefundTargetInvalid) == [Some(2)]);
    Ok(())
}

/// Creates `user` and applies `amounts` in order (positive: top-up,
/// negative: spend).
async fn history(c: &mut Client, user: &str, amounts: &[i64]) -> anyhow::Result<()> {
    api::create_user(c, user).await?;
    for &amount in amounts {
        if amount > 0 {
            api::top_up(c, user, amount).await?;
        } else {
            api::spend(c, user, -amount).await?;
        }
    }
    Ok(())
}

async fn set_balance(db: &DatabaseConnection, user: &str, balance: i64) -> anyhow::Result<()> {
    user_balance::Entity::update_many()
        .col_expr(user_balance::Column::Balance, Expr::value(balance))
        .filter(user_balance::Column::UserId.eq(user))
        .exec(db)
        .await?;
    Ok(())
}

/// Writes a transaction straight into the tables, as a buggy writer would:
/// the next sequence, a chained running balance, the balance row updated to
/// match. Only what the row itself means is left to be wrong.
async fn append(
    db: &DatabaseConnection,
    user: &str,
    kind: &str,
    amount: i64,
    refunds: Option<&str>,
) -> anyhow::Result<()> {
    let account = user_balance::Entity::find_by_id(user.to_owned())
        .one(db)
        .await?
        .context("balance row")?;
    let sequence = account.last_sequence + 1;
    let balance = account.balance + amount;
    let row = ctx::Model {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user.to_owned(),
        sequence,
        r#type: kind.to_owned(),
        amount,
        running_balance: balance,
        idempotency_key: format!("corrupt-{sequence}"),
        fingerprint: "corrupt".to_owned(),
        refunded_transaction_id: refunds.map(str::to_owned),
        refunded_amount: 0,
        graph_exec_id: None,
        graph_id: None,
        node_id: None,
        node_exec_id: None,
        block_id: None,
        reason: None,
        metadata: None,
        created_at: chrono::Utc::now(),
        created_by: None,
        created_by_subject: None,
        hold_id: None,
        feed_position: None,
    };
    ctx::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await?;
    user_balance::Entity::update_many()
        .col_expr(user_balance::Column::Balance, Expr::value(balance))
        .col_expr(user_balance::Column::LastSequence, Expr::value(sequence))
        .filter(user_balance::Column::UserId.eq(user))
        .exec(db)
        .await?;
    Ok(())
}
