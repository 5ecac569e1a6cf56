//! Lots (paid and promotional credits, their draw order and expiry) through
//! the Rust client, against the real server on every configured database.

use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use credit_client::{
    Allocation, CreditClient, Error, Lot, LotCategory, Transaction, TransactionType,
};
use futures::TryStreamExt;
use integration_tests::{TestServer, ledger_tests};

ledger_tests!(
    a_spend_draws_promotional_credit_before_paid,
    list_lots_pages_in_draw_order,
    include_empty_lists_spent_lots,
    priority_changes_the_draw_order,
    a_grant_can_be_paid_credit,
    unspent_credit_expires_with_an_expiration,
    bad_lot_terms_are_invalid_arguments,
);

async fn client(server: &TestServer) -> anyhow::Result<CreditClient> {
    Ok(CreditClient::connect(server.endpoint()).await?)
}

async fn new_user(client: &CreditClient, user: &str) -> anyhow::Result<()> {
    client
        .create_user(user, format!("{user}@example.com"))
        .await?;
    Ok(())
}

/// The ledger's clock now (a test may move it forward).
fn now(server: &TestServer) -> DateTime<Utc> {
    server.ledger.now()
}

/// Within a second: the server may store times at a coarser precision.
fn about(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() < 1_000
}

fn allocation(lot: &Lot, amount: i64) -> Allocation {
    Allocation {
        lot_id: Some(lot.lot_id.clone()),
        amount,
    }
}

fn lot_of(receipt: &credit_client::Receipt) -> anyhow::Result<Lot> {
    receipt
        .lot
        .clone()
        .with_context(|| format!("a top-up or grant answers its lot: {receipt:?}"))
}

fn ids(lots: &[Lot]) -> Vec<&str> {
    lots.iter().map(|l| l.lot_id.as_str()).collect()
}

/// The worked example: a paid top-up of 100 and a promotional grant of 50
/// expiring tomorrow; a spend of 70 takes the 50 promotional credits first,
/// then 20 paid.
async fn a_spend_draws_promotional_credit_before_paid(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "alice").await?;
    let tomorrow = now(server) + TimeDelta::days(1);

    let topped = c.top_up("alice", 100).idempotency_key("order-1").await?;
    let paid = lot_of(&topped)?;
    ensure!(
        paid.category == LotCategory::Paid && paid.priority == 100,
        "a top-up's defaults: {paid:?}"
    );
    ensure!(
        (paid.granted_amount, paid.remaining, paid.held) == (100, 100, 0),
        "{paid:?}"
    );
    ensure!(
        paid.expire_time.is_none() && paid.user_id == "alice",
        "{paid:?}"
    );
    ensure!(
        paid.source_transaction_id.as_deref() == Some(topped.transaction.transaction_id.as_str()),
        "{paid:?}"
    );
    ensure!(
        topped.transaction.allocations == [allocation(&paid, 100)],
        "{:?}",
        topped.transaction
    );

    let granted = c
        .grant("alice", 50)
        .reason("welcome")
        .expire_time(tomorrow)
        .await?;
    let promo = lot_of(&granted)?;
    ensure!(
        promo.category == LotCategory::Promotional && promo.priority == 50,
        "a grant's defaults: {promo:?}"
    );
    ensure!(
        promo.remaining == 50 && promo.lot_id != paid.lot_id,
        "{promo:?}"
    );
    ensure!(
        promo.expire_time.is_some_and(|t| about(t, tomorrow)),
        "{promo:?} should expire at {tomorrow}"
    );

    let before = c.get_balance("alice").await?;
    ensure!(
        (before.balance, before.paid, before.promotional) == (150, 100, 50),
        "{before:?}"
    );
    ensure!(
        before.next_expire_time.is_some_and(|t| about(t, tomorrow))
            && before.next_expiring_amount == 50,
        "{before:?}"
    );

    let spent = c.spend("alice", 70).await?;
    let want = [allocation(&promo, -50), allocation(&paid, -20)];
    ensure!(
        spent.transaction.allocations == want,
        "the spend's answer: {:?}",
        spent.transaction.allocations
    );
    ensure!(spent.lot.is_none(), "a spend makes no lot: {spent:?}");
    let read = c
        .get_transaction("alice", &spent.transaction.transaction_id)
        .await?;
    ensure!(read.allocations == want, "GetTransaction: {read:?}");
    let read = c
        .get_transaction("alice", &granted.transaction.transaction_id)
        .await?;
    ensure!(read.allocations == [allocation(&promo, 50)], "{read:?}");

    let after = c.get_balance("alice").await?;
    ensure!(
        (after.balance, after.paid, after.promotional) == (80, 80, 0),
        "{after:?}"
    );
    ensure!(
        after.next_expire_time.is_none() && after.next_expiring_amount == 0,
        "nothing left to expire: {after:?}"
    );

    // History pages carry no allocations (GetTransaction does).
    let history: Vec<Transaction> = c.list_transactions("alice").stream().try_collect().await?;
    ensure!(history.len() == 3, "{history:?}");
    ensure!(
        history.iter().all(|t| t.allocations.is_empty()),
        "{history:?}"
    );

    // A retry of the top-up answers its lot as the write left it.
    let again = c.top_up("alice", 100).idempotency_key("order-1").await?;
    ensure!(
        again.lot.as_ref() == Some(&paid),
        "{:?}\nvs {paid:?}",
        again.lot
    );
    let listed: Vec<Lot> = c.list_lots("alice").stream().try_collect().await?;
    ensure!(ids(&listed) == [paid.lot_id.as_str()], "{listed:?}");
    ensure!(listed[0].remaining == 80, "what is left now: {listed:?}");
    Ok(())
}

/// Draw order: priority (lower first), then soonest expiry (never last),
/// then oldest; pages of one lot each list every lot once, in that order.
async fn list_lots_pages_in_draw_order(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "bob").await?;
    let day = now(server) + TimeDelta::days(1);
    let two_days = now(server) + TimeDelta::days(2);
    let last = lot_of(&c.top_up("bob", 10).await?)?; // 100, never
    let first = lot_of(&c.top_up("bob", 20).priority(10).await?)?;
    let third = lot_of(&c.grant("bob", 30).expire_time(two_days).await?)?;
    let second = lot_of(&c.grant("bob", 40).expire_time(day).await?)?;
    let fourth = lot_of(&c.grant("bob", 5).await?)?; // 50, never
    let want = [
        first.lot_id.as_str(),
        second.lot_id.as_str(),
        third.lot_id.as_str(),
        fourth.lot_id.as_str(),
        last.lot_id.as_str(),
    ];

    let streamed: Vec<Lot> = c
        .list_lots("bob")
        .page_size(1)
        .stream()
        .try_collect()
        .await?;
    ensure!(
        ids(&streamed) == want,
        "{:?}\nwant {want:?}",
        ids(&streamed)
    );
    ensure!(
        streamed.iter().map(|l| l.remaining).collect::<Vec<_>>() == [20, 40, 30, 5, 10],
        "{streamed:?}"
    );

    // By hand: at most one lot per page (a page may hold none and still
    // have a next one), each lot once.
    let mut seen: Vec<String> = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..20 {
        let mut query = c.list_lots("bob").page_size(1);
        if let Some(token) = token.take() {
            query = query.page_token(token);
        }
        let page = query.page().await?;
        ensure!(page.lots.len() <= 1, "page_size 1: {page:?}");
        seen.extend(page.lots.into_iter().map(|l| l.lot_id));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    ensure!(token.is_none(), "more than 20 pages for 5 lots");
    ensure!(seen == want, "{seen:?}\nwant {want:?}");

    let whole = c.list_lots("bob").page().await?;
    ensure!(
        ids(&whole.lots) == want && whole.next_page_token.is_none(),
        "{whole:?}"
    );
    let err = c
        .list_lots("bob")
        .page_token("not-a-token")
        .page()
        .await
        .expect_err("a made-up token");
    ensure!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    Ok(())
}

async fn include_empty_lists_spent_lots(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "carol").await?;
    let paid = lot_of(&c.top_up("carol", 10).await?)?;
    let promo = lot_of(&c.grant("carol", 5).await?)?;
    c.spend("carol", 5).await?;

    let left = c.list_lots("carol").page().await?;
    ensure!(ids(&left.lots) == [paid.lot_id.as_str()], "{left:?}");
    let all = c.list_lots("carol").include_empty(true).page().await?;
    ensure!(
        ids(&all.lots) == [promo.lot_id.as_str(), paid.lot_id.as_str()],
        "{all:?}"
    );
    ensure!(
        (all.lots[0].granted_amount, all.lots[0].remaining) == (5, 0),
        "{all:?}"
    );
    let streamed: Vec<Lot> = c
        .list_lots("carol")
        .include_empty(true)
        .page_size(1)
        .stream()
        .try_collect()
        .await?;
    ensure!(streamed == all.lots, "{streamed:?}");
    Ok(())
}

async fn priority_changes_the_draw_order(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "dave").await?;
    let paid = lot_of(&c.top_up("dave", 30).priority(0).await?)?;
    ensure!(paid.priority == 0, "{paid:?}");
    let promo = lot_of(&c.grant("dave", 30).await?)?;
    let late = lot_of(&c.grant("dave", 30).priority(100).await?)?;
    ensure!(late.priority == 100, "{late:?}");

    let spent = c.spend("dave", 40).await?;
    ensure!(
        spent.transaction.allocations == [allocation(&paid, -30), allocation(&promo, -10)],
        "priority 0 first: {:?}",
        spent.transaction.allocations
    );
    let b = c.get_balance("dave").await?;
    ensure!((b.balance, b.paid, b.promotional) == (50, 0, 50), "{b:?}");
    let lots: Vec<Lot> = c.list_lots("dave").stream().try_collect().await?;
    ensure!(
        ids(&lots) == [promo.lot_id.as_str(), late.lot_id.as_str()],
        "{lots:?}"
    );
    Ok(())
}

async fn a_grant_can_be_paid_credit(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "erin").await?;
    let sold = lot_of(
        &c.grant("erin", 25)
            .category(LotCategory::Paid)
            .reason("reseller")
            .await?,
    )?;
    ensure!(
        sold.category == LotCategory::Paid && sold.priority == 50,
        "{sold:?}"
    );
    let promo = lot_of(
        &c.grant("erin", 5)
            .category(LotCategory::Promotional)
            .await?,
    )?;
    ensure!(promo.category == LotCategory::Promotional, "{promo:?}");
    let b = c.get_balance("erin").await?;
    ensure!((b.balance, b.paid, b.promotional) == (30, 25, 5), "{b:?}");
    let listed: Vec<Lot> = c.list_lots("erin").stream().try_collect().await?;
    let categories: Vec<LotCategory> = listed.iter().map(|l| l.category).collect();
    ensure!(
        categories == [LotCategory::Paid, LotCategory::Promotional],
        "the same priority: oldest first: {listed:?}"
    );
    Ok(())
}

/// What is unspent at a lot's expire_time goes, as an EXPIRATION
/// transaction allocated to that lot (the ledger's clock is moved forward
/// rather than waited for).
async fn unspent_credit_expires_with_an_expiration(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "fay").await?;
    let at = now(server) + TimeDelta::hours(1);
    c.top_up("fay", 100).await?;
    let promo = lot_of(&c.grant("fay", 30).expire_time(at).await?)?;
    c.spend("fay", 10).await?;
    server.ledger.advance_clock(Duration::from_secs(3600 + 2));

    let b = c.get_balance("fay").await?;
    ensure!((b.balance, b.paid, b.promotional) == (100, 100, 0), "{b:?}");
    ensure!(b.next_expire_time.is_none(), "{b:?}");
    let listed = c.list_lots("fay").include_empty(true).page().await?;
    let expired = listed
        .lots
        .iter()
        .find(|l| l.lot_id == promo.lot_id)
        .with_context(|| format!("the expired lot is listed: {listed:?}"))?;
    ensure!(expired.remaining == 0, "{expired:?}");

    c.spend("fay", 1).await?; // the next write writes the expiry down
    let expirations: Vec<Transaction> = c
        .list_transactions("fay")
        .kind(TransactionType::Expiration)
        .stream()
        .try_collect()
        .await?;
    ensure!(expirations.len() == 1, "{expirations:?}");
    let expiration = &expirations[0];
    ensure!(
        expiration.kind == TransactionType::Expiration && expiration.amount == -20,
        "{expiration:?}"
    );
    ensure!(about(expiration.created_at, at), "{expiration:?}");
    let read = c.get_transaction("fay", &expiration.transaction_id).await?;
    ensure!(read.allocations == [allocation(&promo, -20)], "{read:?}");
    Ok(())
}

fn names_field(err: &Error, field: &str) -> bool {
    matches!(err, Error::InvalidArgument { violations, .. }
        if violations.iter().any(|v| v.field == field))
}

async fn bad_lot_terms_are_invalid_arguments(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    new_user(&c, "gus").await?;
    let past = now(server) - TimeDelta::minutes(1);

    let err = c
        .top_up("gus", 10)
        .priority(101)
        .await
        .expect_err("priority 101");
    ensure!(names_field(&err, "priority"), "{err:?}");
    let err = c
        .grant("gus", 10)
        .priority(-1)
        .await
        .expect_err("priority -1");
    ensure!(names_field(&err, "priority"), "{err:?}");
    let err = c
        .top_up("gus", 10)
        .expire_time(past)
        .await
        .expect_err("expired already");
    ensure!(names_field(&err, "expire_time"), "{err:?}");
    let err = c
        .grant("gus", 10)
        .expire_time(past)
        .await
        .expect_err("expired already");
    ensure!(names_field(&err, "expire_time"), "{err:?}");
    ensure!(err.reason() == Some("INVALID_ARGUMENT"), "{err:?}");

    // The bounds themselves are fine.
    let low = lot_of(&c.top_up("gus", 1).priority(0).await?)?;
    let high = lot_of(&c.grant("gus", 1).priority(100).await?)?;
    ensure!((low.priority, high.priority) == (0, 100));
    let b = c.get_balance("gus").await?;
    ensure!(
        b.balance == 2 && b.last_sequence == 2,
        "only the good writes: {b:?}"
    );

    let err = c
        .list_lots("nobody")
        .page()
        .await
        .expect_err("no such user");
    ensure!(matches!(err, Error::NotFound { .. }), "{err:?}");
    Ok(())
}
