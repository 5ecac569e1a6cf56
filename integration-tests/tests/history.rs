//! History pages: newest first, opaque tokens, AIP-158 page sizes, filters.

use anyhow::ensure;
use credit_proto::v1 as pb;
use integration_tests::{TestServer, api, ledger_tests};

ledger_tests!(
    pages_follow_tokens_newest_first,
    filters_narrow_the_history,
    page_sizes_follow_aip_158
);

async fn list(
    c: &mut integration_tests::Client,
    req: pb::ListTransactionsRequest,
) -> anyhow::Result<pb::ListTransactionsResponse> {
    Ok(c.list_transactions(req).await?.into_inner())
}

async fn pages_follow_tokens_newest_first(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    for i in 1..=25 {
        api::top_up(&mut c, "u", i).await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = list(
            &mut c,
            pb::ListTransactionsRequest {
                user_id: "u".into(),
                page_size: 10,
                page_token: token,
                ..Default::default()
            },
        )
        .await?;
        sizes.push(page.transactions.len());
        seen.extend(page.transactions.iter().map(|t| t.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ensure!(sizes == [10, 10, 5], "page sizes {sizes:?}");
    ensure!(
        seen == (1..=25).rev().collect::<Vec<i64>>(),
        "order {seen:?}"
    );
    // An exact multiple of the page size ends with an empty token on the
    // page that holds the last row.
    let page = list(
        &mut c,
        pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: 25,
            ..Default::default()
        },
    )
    .await?;
    ensure!(page.transactions.len() == 25 && page.next_page_token.is_empty());
    Ok(())
}

async fn filters_narrow_the_history(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 1000).await?;
    for (i, graph) in ["g1", "g2", "g1"].iter().enumerate() {
        c.spend(pb::SpendRequest {
            user_id: "u".into(),
            amount: 10 + i as i64,
            usage: Some(pb::UsageDetails {
                graph_exec_id: (*graph).into(),
                node_id: format!("node-{i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    }
    api::grant(&mut c, "u", 5).await?;

    let usage = list(
        &mut c,
        pb::ListTransactionsRequest {
            user_id: "u".into(),
            types: vec![pb::TransactionType::Usage as i32],
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        usage
            .transactions
            .iter()
            .map(|t| t.amount)
            .collect::<Vec<_>>()
            == [-12, -11, -10]
    );
    let usage0 = &usage.transactions[2];
    let details = usage0.usage.clone().unwrap_or_default();
    ensure!(details.graph_exec_id == "g1" && details.node_id == "node-0");

    let g1 = list(
        &mut c,
        pb::ListTransactionsRequest {
            user_id: "u".into(),
            graph_exec_id: "g1".into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(g1.transactions.iter().map(|t| t.amount).collect::<Vec<_>>() == [-12, -10]);

    let two_kinds = pb::ListTransactionsRequest {
        user_id: "u".into(),
        types: vec![
            pb::TransactionType::TopUp as i32,
            pb::TransactionType::Grant as i32,
        ],
        ..Default::default()
    };
    let page = list(&mut c, two_kinds).await?;
    ensure!(
        page.transactions
            .iter()
            .map(|t| t.amount)
            .collect::<Vec<_>>()
            == [5, 1000]
    );

    // Time window: everything is after a minute ago and before a minute on.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let window = |after: i64, before: i64| pb::ListTransactionsRequest {
        user_id: "u".into(),
        created_after: Some(prost_types::Timestamp {
            seconds: after,
            nanos: 0,
        }),
        created_before: Some(prost_types::Timestamp {
            seconds: before,
            nanos: 0,
        }),
        ..Default::default()
    };
    ensure!(
        list(&mut c, window(now - 60, now + 60))
            .await?
            .transactions
            .len()
            == 5
    );
    ensure!(
        list(&mut c, window(now + 60, now + 120))
            .await?
            .transactions
            .is_empty()
    );
    ensure!(
        list(&mut c, window(now - 120, now - 60))
            .await?
            .transactions
            .is_empty()
    );
    Ok(())
}

async fn page_sizes_follow_aip_158(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    for _ in 0..60 {
        api::grant(&mut c, "u", 1).await?;
    }
    let default = list(
        &mut c,
        pb::ListTransactionsRequest {
            user_id: "u".into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        default.transactions.len() == 50 && !default.next_page_token.is_empty(),
        "0 means 50"
    );
    let huge = list(
        &mut c,
        pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: i32::MAX,
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        huge.transactions.len() == 60 && huge.next_page_token.is_empty(),
        "above the max is coerced, not refused"
    );
    let empty_user = {
        api::create_user(&mut c, "quiet").await?;
        list(
            &mut c,
            pb::ListTransactionsRequest {
                user_id: "quiet".into(),
                ..Default::default()
            },
        )
        .await?
    };
    ensure!(empty_user.transactions.is_empty() && empty_user.next_page_token.is_empty());
    Ok(())
}
