//! Low-balance alerts through the real server on every database: parallel
//! spends crossing a threshold record exactly one event; a top-up back
//! above re-arms; events reach the feed right after their transaction; an
//! auto-top-up consumer that uses the event id as its key, killed and
//! restarted mid-way and run twice in parallel, tops up once per crossing;
//! the verifier catches an event that was lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use credit_server::entity::alert_event;
use credit_server::ledger::verify::{ViolationKind as K, verify};
use futures::future::join_all;
use integration_tests::{Client, TestServer, api, ledger_tests};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::{Code, Streaming};

ledger_tests!(
    parallel_spends_cross_once_and_a_top_up_rearms,
    alert_requests_are_idempotent_and_checked,
    events_follow_their_transaction_in_the_feed,
    an_auto_top_up_consumer_tops_up_once_per_crossing,
    a_lost_event_is_caught_by_the_verifier,
);

const PATIENCE: Duration = Duration::from_secs(15);

async fn set_alert(c: &mut Client, user: &str, threshold: i64) -> anyhow::Result<pb::BalanceAlert> {
    c.set_balance_alert(pb::SetBalanceAlertRequest {
        user_id: user.into(),
        threshold,
        idempotency_key: String::new(),
    })
    .await?
    .into_inner()
    .alert
    .context("SetBalanceAlert answers the alert")
}

async fn events(c: &mut Client, user: &str) -> anyhow::Result<Vec<pb::AlertEvent>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_alert_events(pb::ListAlertEventsRequest {
                user_id: user.into(),
                page_size: 2,
                page_token: token,
            })
            .await?
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

async fn alerts_of(c: &mut Client, user: &str) -> anyhow::Result<Vec<pb::BalanceAlert>> {
    Ok(c.get_balance(pb::GetBalanceRequest {
        user_id: user.into(),
    })
    .await?
    .into_inner()
    .alerts)
}

async fn parallel_spends_cross_once_and_a_top_up_rearms(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "alice").await?;
    api::top_up(&mut c, "alice", 1000).await?;
    let alert = set_alert(&mut c, "alice", 500).await?;
    ensure!(alert.armed, "set at 1000 >= 500: armed {alert:?}");

    // 20 spends of 40 at once: 1000 -> 200, crossing 500 once.
    let clients = server.clients(20).await?;
    let spends = clients
        .into_iter()
        .map(|mut c| async move { api::spend(&mut c, "alice", 40).await });
    for r in join_all(spends).await {
        r?;
    }
    let got = events(&mut c, "alice").await?;
    ensure!(got.len() == 1, "one crossing, one event: {got:?}");
    let e = &got[0];
    ensure!(
        e.balance_before >= 500
            && e.balance_after < 500
            && e.balance_before - e.balance_after == 40,
        "{e:?}"
    );
    ensure!(e.alert_id == alert.alert_id && e.threshold == 500);
    let crossing = c
        .get_transaction(pb::GetTransactionRequest {
            user_id: "alice".into(),
            transaction_id: e.transaction_id.clone(),
        })
        .await?
        .into_inner()
        .transaction
        .context("the crossing transaction")?;
    ensure!(crossing.sequence == e.sequence && crossing.running_balance == e.balance_after);
    ensure!(
        !alerts_of(&mut c, "alice").await?[0].armed,
        "fired: disarmed"
    );

    // Back to exactly the threshold re-arms; the next spend fires again.
    api::top_up(&mut c, "alice", 300).await?;
    ensure!(
        alerts_of(&mut c, "alice").await?[0].armed,
        "re-armed at 500"
    );
    api::spend(&mut c, "alice", 1).await?;
    let got = events(&mut c, "alice").await?;
    ensure!(got.len() == 2, "{got:?}");
    ensure!(got[0].sequence > got[1].sequence, "newest first: {got:?}");
    let report = verify(&server.db, Some("alice")).await?;
    ensure!(report.is_clean(), "{report}");
    Ok(())
}

async fn alert_requests_are_idempotent_and_checked(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "bob").await?;
    let low = set_alert(&mut c, "bob", 100).await?;
    ensure!(!low.armed, "set at 0 < 100: not armed");
    ensure!(set_alert(&mut c, "bob", 100).await?.alert_id == low.alert_id);

    let keyed = |threshold: i64| pb::SetBalanceAlertRequest {
        user_id: "bob".into(),
        threshold,
        idempotency_key: "k1".into(),
    };
    let first = c.set_balance_alert(keyed(50)).await?.into_inner().alert;
    let again = c.set_balance_alert(keyed(50)).await?.into_inner().alert;
    ensure!(first == again, "{first:?} {again:?}");
    let reused = c
        .set_balance_alert(keyed(60))
        .await
        .expect_err("reused key");
    ensure!(
        reused.code() == Code::AlreadyExists
            && api::reason(&reused).as_deref() == Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused:?}"
    );
    let negative = c
        .set_balance_alert(pb::SetBalanceAlertRequest {
            user_id: "bob".into(),
            threshold: -1,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("negative");
    ensure!(
        negative.code() == Code::InvalidArgument && api::bad_fields(&negative) == ["threshold"],
        "{negative:?}"
    );
    let base = c.clone();
    let refused = |user: &str, threshold: i64| {
        let mut c = base.clone();
        let user = user.to_owned();
        async move {
            c.set_balance_alert(pb::SetBalanceAlertRequest {
                user_id: user,
                threshold,
                idempotency_key: String::new(),
            })
            .await
            .expect_err("refused")
        }
    };
    let unknown = refused("nobody", 1).await;
    ensure!(
        unknown.code() == Code::NotFound
            && api::reason(&unknown).as_deref() == Some("USER_NOT_FOUND"),
        "{unknown:?}"
    );
    for t in 200..218 {
        set_alert(&mut c, "bob", t).await?;
    }
    let full = refused("bob", 999).await;
    ensure!(
        full.code() == Code::FailedPrecondition
            && api::reason(&full).as_deref() == Some("TOO_MANY_ALERTS")
            && api::info(&full, "limit").as_deref() == Some("20"),
        "{full:?}"
    );

    let delete = |alert_id: &str| pb::DeleteBalanceAlertRequest {
        user_id: "bob".into(),
        alert_id: alert_id.into(),
    };
    let gone = c
        .delete_balance_alert(delete(&low.alert_id))
        .await?
        .into_inner()
        .alert;
    let gone_again = c
        .delete_balance_alert(delete(&low.alert_id))
        .await?
        .into_inner()
        .alert;
    ensure!(
        gone.as_ref().is_some_and(|a| a.deleted_at.is_some()),
        "{gone:?}"
    );
    ensure!(gone == gone_again, "{gone:?} {gone_again:?}");
    let missing = c
        .delete_balance_alert(delete("0190a000-0000-7000-8000-000000000000"))
        .await
        .expect_err("unknown alert");
    ensure!(
        missing.code() == Code::NotFound
            && api::reason(&missing).as_deref() == Some("ALERT_NOT_FOUND"),
        "{missing:?}"
    );
    let listed = alerts_of(&mut c, "bob").await?;
    ensure!(listed.len() == 19, "{}", listed.len());
    ensure!(
        listed.windows(2).all(|w| w[0].threshold <= w[1].threshold),
        "lowest first"
    );
    // The removed alert (100) fires no more; the keyed one (50) does.
    api::top_up(&mut c, "bob", 150).await?;
    api::spend(&mut c, "bob", 120).await?;
    let got = events(&mut c, "bob").await?;
    // 150 re-arms 50 (not the removed 100, not 200..218); 30 fires it.
    let fired: HashSet<i64> = got.iter().map(|e| e.threshold).collect();
    ensure!(fired == HashSet::from([50]), "{got:?}");
    let report = verify(&server.db, Some("bob")).await?;
    ensure!(report.is_clean(), "{report}");
    Ok(())
}

async fn watch(
    c: &mut Client,
    user: &str,
    start_after: &str,
    content: pb::FeedContent,
) -> anyhow::Result<Streaming<pb::WatchTransactionsResponse>> {
    Ok(c.watch_transactions(pb::WatchTransactionsRequest {
        user_id: user.into(),
        start_after: start_after.into(),
        types: vec![],
        content: content as i32,
    })
    .await?
    .into_inner())
}

async fn next(
    stream: &mut Streaming<pb::WatchTransactionsResponse>,
) -> anyhow::Result<pb::WatchTransactionsResponse> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Err(_) => bail!("no message within {PATIENCE:?}"),
        Ok(Err(status)) => bail!("the stream ended with {status:?}"),
        Ok(Ok(None)) => bail!("the stream ended"),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

async fn events_follow_their_transaction_in_the_feed(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "carol").await?;
    api::top_up(&mut c, "carol", 100).await?;
    set_alert(&mut c, "carol", 50).await?;
    let mut both = watch(
        &mut c,
        "carol",
        "",
        pb::FeedContent::TransactionsAndAlertEvents,
    )
    .await?;
    let mut only = watch(&mut c, "carol", "", pb::FeedContent::AlertEvents).await?;
    next(&mut both).await?;
    next(&mut only).await?;
    api::spend(&mut c, "carol", 30).await?;
    api::spend(&mut c, "carol", 30).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = next(&mut both).await?;
        if let Some(t) = m.transaction {
            seen.push(format!("tx {}", t.sequence));
        } else if let Some(e) = m.alert_event {
            seen.push(format!("event {}", e.sequence));
        }
    }
    ensure!(seen == ["tx 2", "tx 3", "event 3"], "{seen:?}");
    let event = loop {
        let m = next(&mut only).await?;
        ensure!(
            m.transaction.is_none(),
            "ALERT_EVENTS carries no transactions"
        );
        if let Some(e) = m.alert_event {
            break e;
        }
    };
    ensure!(events(&mut c, "carol").await? == vec![event]);
    let bad = c
        .watch_transactions(pb::WatchTransactionsRequest {
            user_id: "carol".into(),
            content: 9,
            ..Default::default()
        })
        .await
        .expect_err("unknown content");
    ensure!(api::bad_fields(&bad) == ["content"], "{bad:?}");
    Ok(())
}

/// What the auto-top-up consumers share: the cursor they stored.
#[derive(Default)]
struct Store {
    cursor: Mutex<String>,
}

/// Tops up 500 for every event of the all-users feed, with the event id as
/// the key, storing its cursor after each message; ends after `stop_after`
/// messages (a crash) or when `done` says so.
async fn consumer(
    mut c: Client,
    store: Arc<Store>,
    stop_after: Option<usize>,
    done: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<usize> {
    let start = store
        .cursor
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut stream = watch(&mut c, "", &start, pb::FeedContent::AlertEvents).await?;
    let mut handled = 0;
    loop {
        if *done.borrow() {
            return Ok(handled);
        }
        let m = match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => continue,
            Ok(m) => m?.context("the feed ended")?,
        };
        if let Some(e) = m.alert_event {
            api::top_up_with_key(&mut c, &e.user_id, 500, &e.event_id).await?;
            handled += 1;
        }
        *store
            .cursor
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = m.cursor;
        if stop_after.is_some_and(|n| handled >= n) {
            return Ok(handled);
        }
    }
}

async fn an_auto_top_up_consumer_tops_up_once_per_crossing(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let users = ["u0", "u1", "u2"];
    for u in users {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 600).await?;
        set_alert(&mut c, u, 300).await?;
    }
    // Start from now, with a cursor both consumers share.
    let store = Arc::new(Store::default());
    let mut probe = watch(&mut c, "", "", pb::FeedContent::AlertEvents).await?;
    *store
        .cursor
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))? = next(&mut probe).await?.cursor;
    drop(probe);

    let (done_tx, done) = tokio::sync::watch::channel(false);
    // Consumer A crashes after 2 events and restarts from the stored cursor;
    // consumer B runs all along on the same cursor store (a second replica).
    let a = {
        let (c, store, done) = (server.client().await?, store.clone(), done.clone());
        tokio::spawn(async move {
            let first = consumer(c.clone(), store.clone(), Some(2), done.clone()).await?;
            let rest = consumer(c, store, None, done).await?;
            anyhow::Ok(first + rest)
        })
    };
    let b = {
        let (c, store, done) = (server.client().await?, store.clone(), done.clone());
        tokio::spawn(async move { consumer(c, store, None, done).await })
    };
    // Writers: spend 100 at a time; each crossing of 300 is topped up by
    // the consumers, so the users keep crossing.
    let writers = users.iter().map(|u| {
        let server_client = server.client();
        let u = (*u).to_owned();
        async move {
            let mut c = server_client.await?;
            for _ in 0..12 {
                match api::spend(&mut c, &u, 100).await {
                    Ok(_) => {}
                    Err(s) if api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE") => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(s) => return Err(s.into()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        }
    });
    for r in join_all(writers).await {
        r?;
    }
    // Every event topped up: wait until each has its top-up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (all_events, top_ups) = loop {
        let mut all_events = Vec::new();
        let mut top_ups: BTreeMap<String, usize> = BTreeMap::new();
        for u in users {
            all_events.extend(events(&mut c, u).await?);
            for t in api::all_transactions(&mut c, u).await? {
                if t.r#type == pb::TransactionType::TopUp as i32 {
                    *top_ups.entry(t.idempotency_key).or_default() += 1;
                }
            }
        }
        let covered = all_events.iter().all(|e| top_ups.contains_key(&e.event_id));
        if covered || tokio::time::Instant::now() > deadline {
            break (all_events, top_ups);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    done_tx.send_replace(true);
    let handled = a.await?? + b.await??;
    ensure!(
        all_events.len() >= 3,
        "every user crossed at least once: {all_events:?}"
    );
    for e in &all_events {
        ensure!(
            top_ups.get(&e.event_id) == Some(&1),
            "event {} topped up {:?} times",
            e.event_id,
            top_ups.get(&e.event_id)
        );
    }
    // The seed top-ups and one per event; nothing else.
    let total: usize = top_ups.values().sum();
    ensure!(
        total == users.len() + all_events.len(),
        "{total} top-ups for {} events",
        all_events.len()
    );
    // Two consumers (and a restarted one) handled events more than once:
    // the keys made the repeats replays.
    eprintln!(
        "{} events, {handled} handled by the consumers",
        all_events.len()
    );
    ensure!(handled >= all_events.len());
    let report = verify(&server.db, None).await?;
    ensure!(report.is_clean(), "{report}");
    Ok(())
}

async fn a_lost_event_is_caught_by_the_verifier(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "dave").await?;
    api::top_up(&mut c, "dave", 100).await?;
    set_alert(&mut c, "dave", 50).await?;
    api::spend(&mut c, "dave", 60).await?;
    ensure!(verify(&server.db, Some("dave")).await?.is_clean());
    alert_event::Entity::delete_many()
        .filter(alert_event::Column::UserId.eq("dave"))
        .exec(&server.db)
        .await?;
    let report = verify(&server.db, Some("dave")).await?;
    let kinds: HashSet<K> = report.violations.iter().map(|v| v.kind).collect();
    ensure!(kinds == HashSet::from([K::AlertMismatch]), "{report}");
    Ok(())
}
