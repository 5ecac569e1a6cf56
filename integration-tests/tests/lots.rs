//! Paid and promotional lots through the real server on every database:
//! the draw order, exact expiry without a job (the EXPIRATION transaction
//! is written by the next write, dated the lot's expire_time), holds that
//! keep earmarked credit past its lot's expiry, refunds back into lots,
//! the deficit of a top-up refund, and bad input. The ledger's clock is
//! moved forward (`advance_clock`) instead of sleeping.

use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use futures::future::join_all;
use integration_tests::{Client, TestServer, api, ledger_tests};
use tonic::Code;

ledger_tests!(
    the_worked_example_draws_promotional_first,
    draw_order_is_priority_then_expiry_then_age,
    a_hold_keeps_earmarked_credit_past_its_lots_expiry,
    refunds_go_back_to_their_lots_and_cannot_resurrect_expired_credit,
    a_top_up_refund_deficit_is_paid_back_by_the_next_credit,
    unspent_promotional_credit_expires_exactly,
    parallel_spends_racing_an_expiry_never_use_expired_credit,
    bad_lot_terms_are_refused_cleanly,
    list_lots_pages_in_draw_order_as_of_now,
    an_expired_hold_frees_its_earmark_of_an_expired_lot_before_any_write,
    credit_refunded_into_a_lot_during_a_deficit_expires_below_zero,
);

const HOUR: Duration = Duration::from_secs(3600);

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// The ledger's clock now (tests move it forward).
fn now(server: &TestServer) -> DateTime<Utc> {
    server.ledger.now()
}

async fn top_up(
    c: &mut Client,
    user: &str,
    amount: i64,
    priority: Option<i32>,
    expire: Option<DateTime<Utc>>,
) -> anyhow::Result<pb::TopUpResponse> {
    Ok(c.top_up(pb::TopUpRequest {
        user_id: user.into(),
        amount,
        priority,
        expire_time: expire.map(ts),
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn grant(
    c: &mut Client,
    user: &str,
    amount: i64,
    priority: Option<i32>,
    expire: Option<DateTime<Utc>>,
) -> anyhow::Result<pb::GrantResponse> {
    Ok(c.grant(pb::GrantRequest {
        user_id: user.into(),
        amount,
        priority,
        expire_time: expire.map(ts),
        reason: "promo".into(),
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn spend(c: &mut Client, user: &str, amount: i64) -> anyhow::Result<pb::Transaction> {
    let t = api::spend(c, user, amount)
        .await?
        .transaction
        .context("a spend answers its transaction")?;
    Ok(t)
}

async fn balance(c: &mut Client, user: &str) -> anyhow::Result<pb::GetBalanceResponse> {
    Ok(c.get_balance(pb::GetBalanceRequest {
        user_id: user.into(),
    })
    .await?
    .into_inner())
}

async fn transaction(c: &mut Client, user: &str, id: &str) -> anyhow::Result<pb::Transaction> {
    c.get_transaction(pb::GetTransactionRequest {
        user_id: user.into(),
        transaction_id: id.into(),
    })
    .await?
    .into_inner()
    .transaction
    .context("GetTransaction answers the transaction")
}

/// (lot id, amount) of a transaction's allocations, in order.
fn allocations(t: &pb::Transaction) -> Vec<(String, i64)> {
    t.allocations
        .iter()
        .map(|a| (a.lot_id.clone(), a.amount))
        .collect()
}

fn lot_id(lot: &Option<pb::Lot>) -> String {
    lot.clone().unwrap_or_default().lot_id
}

async fn expirations(c: &mut Client, user: &str) -> anyhow::Result<Vec<pb::Transaction>> {
    Ok(api::all_transactions(c, user)
        .await?
        .into_iter()
        .filter(|t| t.r#type() == pb::TransactionType::Expiration)
        .collect())
}

async fn user(server: &TestServer, id: &str) -> anyhow::Result<Client> {
    let mut c = server.client().await?;
    api::create_user(&mut c, id).await?;
    Ok(c)
}

async fn clean(server: &TestServer) -> anyhow::Result<()> {
    let report = server.ledger.verify(None).await?;
    ensure!(report.is_clean(), "the verifier found:\n{report}");
    Ok(())
}

/// README's example: a paid top-up of 100 and a promotional grant of 50
/// expiring tomorrow; a spend of 70 takes the 50 promotional credits first.
async fn the_worked_example_draws_promotional_first(server: &TestServer) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let tomorrow = now(server) + chrono::TimeDelta::days(1);
    let paid = top_up(&mut c, "u", 100, None, None).await?;
    let promo = grant(&mut c, "u", 50, None, Some(tomorrow)).await?;
    let (paid_lot, promo_lot) = (lot_id(&paid.lot), lot_id(&promo.lot));
    let lot = promo.lot.clone().unwrap_or_default();
    ensure!(
        lot.category() == pb::CreditCategory::Promotional
            && lot.priority == 50
            && lot.remaining == 50,
        "{lot:?}"
    );
    let b = balance(&mut c, "u").await?;
    ensure!(
        (b.balance, b.paid, b.promotional, b.next_expiring_amount) == (150, 100, 50, 50),
        "{b:?}"
    );
    let spent = spend(&mut c, "u", 70).await?;
    let want = vec![(promo_lot.clone(), -50), (paid_lot.clone(), -20)];
    ensure!(allocations(&spent) == want, "{spent:?}");
    let read = transaction(&mut c, "u", &spent.transaction_id).await?;
    ensure!(allocations(&read) == want, "GetTransaction: {read:?}");
    server.ledger.advance_clock(25 * HOUR);
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.paid, b.promotional) == (80, 80, 0), "{b:?}");
    spend(&mut c, "u", 1).await?;
    ensure!(
        expirations(&mut c, "u").await?.is_empty(),
        "nothing was left to expire"
    );
    clean(server).await
}

async fn unspent_promotional_credit_expires_exactly(server: &TestServer) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let at = now(server) + chrono::TimeDelta::hours(1);
    top_up(&mut c, "u", 100, None, None).await?;
    let promo = grant(&mut c, "u", 50, None, Some(at)).await?;
    // Two seconds before (real time passes too), then past the instant.
    server.ledger.advance_clock(HOUR - Duration::from_secs(2));
    ensure!(balance(&mut c, "u").await?.balance == 150, "just before");
    server.ledger.advance_clock(Duration::from_secs(2));
    // At expire_time: gone on the read path before any write noticed.
    let b = balance(&mut c, "u").await?;
    ensure!(
        (b.balance, b.promotional, b.paid) == (100, 0, 100),
        "at: {b:?}"
    );
    ensure!(b.next_expire_time.is_none(), "{b:?}");
    ensure!(
        expirations(&mut c, "u").await?.is_empty(),
        "not written yet"
    );
    // The next write writes it down first, dated the expire_time.
    let spent = spend(&mut c, "u", 10).await?;
    let expired = expirations(&mut c, "u").await?;
    ensure!(expired.len() == 1, "{expired:?}");
    // History pages carry no allocations; GetTransaction does.
    let e = &transaction(&mut c, "u", &expired[0].transaction_id).await?;
    ensure!(e.amount == -50 && e.created_at == Some(ts(at)), "{e:?}");
    ensure!(
        allocations(e) == vec![(lot_id(&promo.lot), -50)],
        "{:?}",
        e.allocations
    );
    ensure!(
        e.sequence + 1 == spent.sequence && spent.running_balance == 90,
        "{spent:?}"
    );
    clean(server).await
}

async fn draw_order_is_priority_then_expiry_then_age(server: &TestServer) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let soon = now(server) + chrono::TimeDelta::hours(1);
    let later = now(server) + chrono::TimeDelta::hours(2);
    let never = top_up(&mut c, "u", 10, Some(50), None).await?;
    let second = grant(&mut c, "u", 10, Some(50), Some(later)).await?;
    let first = grant(&mut c, "u", 10, Some(50), Some(soon)).await?;
    let urgent = top_up(&mut c, "u", 10, Some(0), None).await?;
    let last = grant(&mut c, "u", 10, Some(100), Some(soon)).await?;
    let old = top_up(&mut c, "u", 10, Some(60), None).await?;
    let young = top_up(&mut c, "u", 10, Some(60), None).await?;
    let spent = spend(&mut c, "u", 70).await?;
    let order: Vec<String> = allocations(&spent).into_iter().map(|(l, _)| l).collect();
    let want: Vec<String> = [
        &urgent.lot,
        &first.lot,
        &second.lot,
        &never.lot,
        &old.lot,
        &young.lot,
        &last.lot,
    ]
    .into_iter()
    .map(lot_id)
    .collect();
    ensure!(order == want, "drew {order:?}, want {want:?}");
    clean(server).await
}

async fn a_hold_keeps_earmarked_credit_past_its_lots_expiry(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let at = now(server) + chrono::TimeDelta::hours(1);
    let promo = grant(&mut c, "u", 50, None, Some(at)).await?;
    top_up(&mut c, "u", 20, None, None).await?;
    let hold = c
        .reserve(pb::ReserveRequest {
            user_id: "u".into(),
            amount: 50,
            expiry: Some(pb::reserve_request::Expiry::Ttl(prost_types::Duration {
                seconds: 3 * 3600,
                nanos: 0,
            })),
            ..Default::default()
        })
        .await?
        .into_inner()
        .hold
        .context("a hold")?;
    server.ledger.advance_clock(2 * HOUR);
    // The lot expired, but what the hold earmarked of it did not.
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (70, 50, 20), "{b:?}");
    let captured = c
        .capture(pb::CaptureRequest {
            user_id: "u".into(),
            hold_id: hold.hold_id.clone(),
            amount: 40,
            ..Default::default()
        })
        .await?
        .into_inner();
    let t = captured.transaction.context("a capture of 40 spends")?;
    ensure!(
        allocations(&t) == vec![(lot_id(&promo.lot), -40)],
        "{:?}",
        t.allocations
    );
    // The 10 left of the hold went back to an expired lot: expired at once,
    // dated the capture (they were the hold's until then).
    let expired = expirations(&mut c, "u").await?;
    ensure!(
        expired.len() == 1 && expired[0].amount == -10 && expired[0].created_at == t.created_at,
        "{expired:?} vs the capture {t:?}"
    );
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.promotional) == (20, 0, 0), "{b:?}");
    clean(server).await
}

async fn refunds_go_back_to_their_lots_and_cannot_resurrect_expired_credit(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let at = now(server) + chrono::TimeDelta::hours(1);
    let paid = top_up(&mut c, "u", 100, None, None).await?;
    let promo = grant(&mut c, "u", 50, None, Some(at)).await?;
    let spent = spend(&mut c, "u", 70).await?;
    // A partial refund puts back the last-drawn credits first: paid.
    let r = api::refund(&mut c, "u", &spent.transaction_id, Some(30)).await?;
    let r = r.transaction.context("a refund")?;
    ensure!(
        allocations(&r) == vec![(lot_id(&paid.lot), 20), (lot_id(&promo.lot), 10)],
        "{:?}",
        r.allocations
    );
    server.ledger.advance_clock(2 * HOUR);
    // The rest goes back to the promotional lot, which has expired: it
    // expires again in the same transaction.
    let r = api::refund(&mut c, "u", &spent.transaction_id, None).await?;
    let r = r.transaction.context("a refund")?;
    ensure!(
        allocations(&r) == vec![(lot_id(&promo.lot), 40)],
        "{:?}",
        r.allocations
    );
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.promotional) == (100, 0), "{b:?}");
    let expired: i64 = expirations(&mut c, "u")
        .await?
        .iter()
        .map(|t| t.amount)
        .sum();
    ensure!(expired == -50, "expired {expired}");
    clean(server).await
}

async fn a_top_up_refund_deficit_is_paid_back_by_the_next_credit(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let bought = top_up(&mut c, "u", 100, None, None).await?;
    spend(&mut c, "u", 70).await?;
    let bought_id = bought.transaction.context("a top-up")?.transaction_id;
    let r = api::refund(&mut c, "u", &bought_id, None).await?;
    let r = r.transaction.context("a refund")?;
    ensure!(
        allocations(&r) == vec![(lot_id(&bought.lot), -30), (String::new(), -70)],
        "{:?}",
        r.allocations
    );
    ensure!(balance(&mut c, "u").await?.balance == -70);
    let next = top_up(&mut c, "u", 100, None, None).await?;
    let t = next.transaction.clone().context("a top-up")?;
    ensure!(
        allocations(&t) == vec![(String::new(), 70), (lot_id(&next.lot), 30)],
        "{:?}",
        t.allocations
    );
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.paid) == (30, 30), "{b:?}");
    // A credit that goes wholly to the deficit records only that.
    let bought_id = t.transaction_id.clone();
    api::refund(&mut c, "u", &bought_id, None).await?;
    spend(&mut c, "u", 30).await.ok();
    let b = balance(&mut c, "u").await?;
    ensure!(b.balance < 0, "a deficit again: {b:?}");
    let deficit = -b.balance;
    let g = grant(&mut c, "u", deficit, None, None).await?;
    let t = g.transaction.context("a grant")?;
    ensure!(
        allocations(&t) == vec![(String::new(), deficit)],
        "{:?}",
        t.allocations
    );
    ensure!(balance(&mut c, "u").await?.balance == 0);
    clean(server).await
}

async fn parallel_spends_racing_an_expiry_never_use_expired_credit(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let at = now(server) + chrono::TimeDelta::seconds(30);
    top_up(&mut c, "u", 100, None, None).await?;
    let promo = grant(&mut c, "u", 100, None, Some(at)).await?;
    let promo_lot = lot_id(&promo.lot);
    let clients = server.clients(20).await?;
    let ledger = server.ledger.clone();
    let spends = clients.into_iter().enumerate().map(|(i, mut c)| {
        let ledger = ledger.clone();
        async move {
            if i == 10 {
                // Half-way, the promotional lot expires.
                ledger.advance_clock(Duration::from_secs(30));
            }
            api::spend(&mut c, "u", 10).await
        }
    });
    let results = join_all(spends).await;
    let ok: Vec<pb::Transaction> = results
        .into_iter()
        .filter_map(|r| r.ok().and_then(|s| s.transaction))
        .collect();
    for t in &ok {
        let created = t.created_at.unwrap_or_default();
        let after = created.seconds > ts(at).seconds
            || (created.seconds == ts(at).seconds && created.nanos >= ts(at).nanos);
        if after {
            ensure!(
                t.allocations.iter().all(|a| a.lot_id != promo_lot),
                "a spend at {created:?} used the expired lot: {t:?}"
            );
        }
    }
    let b = balance(&mut c, "u").await?;
    let spent = 10 * ok.len() as i64;
    let expired: i64 = expirations(&mut c, "u")
        .await?
        .iter()
        .map(|t| t.amount)
        .sum();
    ensure!(
        b.balance == 200 - spent + expired,
        "{b:?} {spent} {expired}"
    );
    clean(server).await
}

async fn bad_lot_terms_are_refused_cleanly(server: &TestServer) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let cases = [
        (
            pb::TopUpRequest {
                user_id: "u".into(),
                amount: 1,
                priority: Some(101),
                ..Default::default()
            },
            "priority",
        ),
        (
            pb::TopUpRequest {
                user_id: "u".into(),
                amount: 1,
                expire_time: Some(ts(now(server) - chrono::TimeDelta::seconds(1))),
                ..Default::default()
            },
            "expire_time",
        ),
    ];
    for (req, field) in cases {
        let s = c.top_up(req).await.expect_err("refused");
        ensure!(s.code() == Code::InvalidArgument, "{s:?}");
        ensure!(
            api::bad_fields(&s).iter().any(|f| f == field),
            "{field}: {s:?}"
        );
    }
    let s = c
        .grant(pb::GrantRequest {
            user_id: "u".into(),
            amount: 1,
            category: 9,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    ensure!(
        s.code() == Code::InvalidArgument && api::bad_fields(&s).iter().any(|f| f == "category"),
        "{s:?}"
    );
    ensure!(balance(&mut c, "u").await?.balance == 0, "nothing applied");
    clean(server).await
}

/// Every lot listed by ListLots, page by page (`page_size` each).
async fn list_all(
    c: &mut Client,
    user: &str,
    include_empty: bool,
    page_size: i32,
) -> anyhow::Result<(Vec<pb::Lot>, usize)> {
    let (mut lots, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = c
            .list_lots(pb::ListLotsRequest {
                user_id: user.into(),
                include_empty,
                page_size,
                page_token: token,
            })
            .await?
            .into_inner();
        pages += 1;
        let most = if page_size == 0 {
            50
        } else {
            page_size as usize
        };
        ensure!(
            page.lots.len() <= most,
            "a page of {} lots for page_size {page_size}",
            page.lots.len()
        );
        lots.extend(page.lots);
        if page.next_page_token.is_empty() {
            return Ok((lots, pages));
        }
        ensure!(pages < 100, "paging does not end");
        token = page.next_page_token;
    }
}

fn ids(lots: &[pb::Lot]) -> Vec<String> {
    lots.iter().map(|l| l.lot_id.clone()).collect()
}

/// ListLots answers the lots in the order a spend draws them, pages that
/// order exactly, leaves out lots with nothing left as of now (spent, or
/// past their expire_time before any write noticed) unless asked, and
/// binds its page tokens to the user and the filter.
async fn list_lots_pages_in_draw_order_as_of_now(server: &TestServer) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    api::create_user(&mut c, "other").await?;
    let soon = now(server) + chrono::TimeDelta::hours(1);
    let later = now(server) + chrono::TimeDelta::hours(2);
    let never = top_up(&mut c, "u", 10, Some(50), None).await?;
    let second = grant(&mut c, "u", 10, Some(50), Some(later)).await?;
    let first = grant(&mut c, "u", 10, Some(50), Some(soon)).await?;
    let urgent = top_up(&mut c, "u", 10, Some(0), None).await?;
    let last = grant(&mut c, "u", 10, Some(100), Some(soon)).await?;
    let old = top_up(&mut c, "u", 10, Some(60), None).await?;
    let young = top_up(&mut c, "u", 10, Some(60), None).await?;
    let draw_order: Vec<String> = [
        &urgent.lot,
        &first.lot,
        &second.lot,
        &never.lot,
        &old.lot,
        &young.lot,
        &last.lot,
    ]
    .into_iter()
    .map(lot_id)
    .collect();
    for page_size in [1, 3, 0] {
        let (lots, pages) = list_all(&mut c, "u", false, page_size).await?;
        ensure!(
            ids(&lots) == draw_order,
            "page_size {page_size}: {:?}, want {draw_order:?}",
            ids(&lots)
        );
        let want_pages = match page_size {
            1 => 7,
            3 => 3,
            _ => 1,
        };
        ensure!(pages == want_pages, "page_size {page_size}: {pages} pages");
    }
    let (lots, _) = list_all(&mut c, "u", false, 0).await?;
    let listed = &lots[1];
    ensure!(
        listed.user_id == "u"
            && listed.category() == pb::CreditCategory::Promotional
            && (
                listed.priority,
                listed.granted_amount,
                listed.remaining,
                listed.held
            ) == (50, 10, 10, 0)
            && listed.expire_time == Some(ts(soon))
            && listed.source_transaction_id
                == first.transaction.clone().unwrap_or_default().transaction_id,
        "{listed:?}"
    );

    // Spend the urgent lot whole and half of the next: the first is empty.
    spend(&mut c, "u", 15).await?;
    let (lots, _) = list_all(&mut c, "u", false, 2).await?;
    ensure!(ids(&lots) == draw_order[1..], "{:?}", ids(&lots));
    ensure!(lots[0].remaining == 5, "{:?}", lots[0]);
    let (all, _) = list_all(&mut c, "u", true, 2).await?;
    ensure!(ids(&all) == draw_order, "include_empty: {:?}", ids(&all));
    ensure!(all[0].remaining == 0, "{:?}", all[0]);

    // Past `soon`, before any write: two lots expired, and are empty now.
    server.ledger.advance_clock(HOUR + Duration::from_secs(1));
    let (lots, _) = list_all(&mut c, "u", false, 1).await?;
    let want: Vec<String> = [&second.lot, &never.lot, &old.lot, &young.lot]
        .into_iter()
        .map(lot_id)
        .collect();
    ensure!(ids(&lots) == want, "after expiry: {:?}", ids(&lots));
    let (all, _) = list_all(&mut c, "u", true, 1).await?;
    ensure!(ids(&all) == draw_order, "include_empty: {:?}", ids(&all));
    ensure!(
        all.iter().filter(|l| l.remaining == 0).count() == 3,
        "{all:?}"
    );
    let total: i64 = lots.iter().map(|l| l.remaining).sum();
    ensure!(balance(&mut c, "u").await?.balance == total, "{lots:?}");

    // A token belongs to its user and its filter.
    let page = c
        .list_lots(pb::ListLotsRequest {
            user_id: "u".into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(!page.next_page_token.is_empty(), "{page:?}");
    for (user, include_empty) in [("other", false), ("u", true)] {
        let s = c
            .list_lots(pb::ListLotsRequest {
                user_id: user.into(),
                include_empty,
                page_size: 1,
                page_token: page.next_page_token.clone(),
            })
            .await
            .expect_err("a foreign token is refused");
        ensure!(
            s.code() == Code::InvalidArgument
                && api::bad_fields(&s).iter().any(|f| f == "page_token"),
            "{user} {include_empty}: {s:?}"
        );
    }
    let s = c
        .list_lots(pb::ListLotsRequest {
            user_id: "u".into(),
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("a negative page size is refused");
    ensure!(
        s.code() == Code::InvalidArgument && api::bad_fields(&s).iter().any(|f| f == "page_size"),
        "{s:?}"
    );
    let s = c
        .list_lots(pb::ListLotsRequest {
            user_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown user");
    ensure!(s.code() == Code::NotFound, "{s:?}");
    let (none, _) = list_all(&mut c, "other", true, 0).await?;
    ensure!(none.is_empty(), "{none:?}");
    clean(server).await
}

/// A hold that expires before its lot does gives its earmark back to the
/// lot at its expire_time; when the lot has expired too by the time anyone
/// reads, those credits are gone on the read path already, before a write
/// writes either expiry down.
async fn an_expired_hold_frees_its_earmark_of_an_expired_lot_before_any_write(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let lot_expiry = now(server) + chrono::TimeDelta::hours(2);
    let promo = grant(&mut c, "u", 50, None, Some(lot_expiry)).await?;
    top_up(&mut c, "u", 20, None, None).await?;
    c.reserve(pb::ReserveRequest {
        user_id: "u".into(),
        amount: 50,
        expiry: Some(pb::reserve_request::Expiry::Ttl(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        })),
        ..Default::default()
    })
    .await?;
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (70, 50, 20), "{b:?}");
    // The hold expired (its 50 are the lot's again), the lot did not.
    server.ledger.advance_clock(HOUR + Duration::from_secs(1));
    let b = balance(&mut c, "u").await?;
    ensure!(
        (
            b.balance,
            b.held,
            b.available,
            b.promotional,
            b.next_expiring_amount
        ) == (70, 0, 70, 50, 50),
        "hold expired: {b:?}"
    );
    let (lots, _) = list_all(&mut c, "u", false, 0).await?;
    ensure!(
        lots.iter()
            .any(|l| l.lot_id == lot_id(&promo.lot) && (l.remaining, l.held) == (50, 0)),
        "{lots:?}"
    );
    // Now the lot expired too: its 50 are gone, though nothing was written.
    server.ledger.advance_clock(HOUR);
    let b = balance(&mut c, "u").await?;
    ensure!(
        (b.balance, b.held, b.available, b.promotional) == (20, 0, 20, 0),
        "both expired: {b:?}"
    );
    let (lots, _) = list_all(&mut c, "u", false, 0).await?;
    ensure!(
        !lots.iter().any(|l| l.lot_id == lot_id(&promo.lot)),
        "{lots:?}"
    );
    ensure!(
        expirations(&mut c, "u").await?.is_empty(),
        "not written yet"
    );
    // The next write writes the expiry down, and agrees with the read.
    let spent = spend(&mut c, "u", 5).await?;
    ensure!(spent.running_balance == 15, "{spent:?}");
    let expired = expirations(&mut c, "u").await?;
    ensure!(
        expired.len() == 1 && expired[0].amount == -50,
        "{expired:?}"
    );
    clean(server).await
}

/// Found by the model-based test: a top-up refund leaves a deficit, a
/// usage refund then puts credit back into the spend's lot (refunds go back
/// to their lots; only a new credit pays the deficit), and that lot
/// expires. The EXPIRATION takes the balance further below zero, as far as
/// the deficit explains, and the verifier accepts it.
async fn credit_refunded_into_a_lot_during_a_deficit_expires_below_zero(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = user(server, "u").await?;
    let at = now(server) + chrono::TimeDelta::hours(1);
    let bought = top_up(&mut c, "u", 100, None, Some(at)).await?;
    let bought_id = bought.transaction.context("a top-up")?.transaction_id;
    let spent = spend(&mut c, "u", 10).await?;
    api::refund(&mut c, "u", &bought_id, None).await?;
    api::refund(&mut c, "u", &spent.transaction_id, Some(1)).await?;
    ensure!(balance(&mut c, "u").await?.balance == -9);
    server.ledger.advance_clock(2 * HOUR);
    ensure!(balance(&mut c, "u").await?.balance == -10);
    let s = api::spend(&mut c, "u", 1)
        .await
        .expect_err("nothing to spend");
    ensure!(
        api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE"),
        "{s:?}"
    );
    let expired = expirations(&mut c, "u").await?;
    ensure!(
        expired.len() == 1 && (expired[0].amount, expired[0].running_balance) == (-1, -10),
        "{expired:?}"
    );
    clean(server).await
}
