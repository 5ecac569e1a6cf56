//! Bad input on every RPC gets the right code, a stable reason, the fields
//! to fix, and changes nothing.

use anyhow::ensure;
use credit_proto::v1 as pb;
use integration_tests::{Client, TestServer, api, invariants, ledger_tests};
use prost_types::{Struct, Value, value::Kind};
use tonic::{Code, Status};

ledger_tests!(
    every_rpc_rejects_bad_ids,
    amounts_must_be_positive,
    unknown_users_are_not_found,
    overflow_is_an_error_not_a_wrap,
    users_are_created_once,
    metadata_is_checked,
    history_arguments_are_checked,
);

/// Calls every RPC that takes an existing user's id with `user_id` (and
/// otherwise valid arguments) and returns each result's error.
async fn call_all(c: &mut Client, user_id: &str) -> Vec<(&'static str, Status)> {
    let u = || user_id.to_owned();
    let tx = uuid::Uuid::now_v7().to_string();
    let mut out = Vec::new();
    macro_rules! record {
        ($name:literal, $call:expr) => {
            match $call.await {
                Ok(r) => panic!("{} with user_id {:?} succeeded: {:?}", $name, user_id, r),
                Err(s) => out.push(($name, s)),
            }
        };
    }
    record!("GetUser", c.get_user(pb::GetUserRequest { user_id: u() }));
    record!(
        "GetBalance",
        c.get_balance(pb::GetBalanceRequest { user_id: u() })
    );
    record!(
        "TopUp",
        c.top_up(pb::TopUpRequest {
            user_id: u(),
            amount: 1,
            ..Default::default()
        })
    );
    record!(
        "Spend",
        c.spend(pb::SpendRequest {
            user_id: u(),
            amount: 1,
            ..Default::default()
        })
    );
    record!(
        "Grant",
        c.grant(pb::GrantRequest {
            user_id: u(),
            amount: 1,
            ..Default::default()
        })
    );
    record!(
        "Refund",
        c.refund(pb::RefundRequest {
            user_id: u(),
            transaction_id: tx.clone(),
            ..Default::default()
        })
    );
    record!(
        "GetTransaction",
        c.get_transaction(pb::GetTransactionRequest {
            user_id: u(),
            transaction_id: tx.clone()
        })
    );
    record!(
        "ListTransactions",
        c.list_transactions(pb::ListTransactionsRequest {
            user_id: u(),
            ..Default::default()
        })
    );
    out
}

async fn every_rpc_rejects_bad_ids(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for bad in [
        String::new(),
        "x".repeat(129),
        "tab\there".into(),
        " padded".into(),
        "x".repeat(10_000),
    ] {
        let create = c
            .create_user(pb::CreateUserRequest {
                user_id: bad.clone(),
                email: "x@example.com".into(),
                name: String::new(),
            })
            .await;
        let status = api::assert_error(create, Code::InvalidArgument, "INVALID_ARGUMENT");
        ensure!(api::bad_fields(&status) == ["user_id"]);
        for (rpc, status) in call_all(&mut c, &bad).await {
            ensure!(
                status.code() == Code::InvalidArgument,
                "{rpc}({bad:?}): {status:?}"
            );
            ensure!(api::reason(&status).as_deref() == Some("INVALID_ARGUMENT"));
            ensure!(
                api::bad_fields(&status) == ["user_id"],
                "{rpc}: fields {:?}",
                api::bad_fields(&status)
            );
        }
    }
    api::create_user(&mut c, "u").await?;
    for (rpc, bad_tx) in [
        ("GetTransaction", ""),
        ("GetTransaction", "not-a-uuid"),
        ("Refund", "12345"),
    ] {
        let status = if rpc == "Refund" {
            c.refund(pb::RefundRequest {
                user_id: "u".into(),
                transaction_id: bad_tx.into(),
                ..Default::default()
            })
            .await
            .err()
        } else {
            c.get_transaction(pb::GetTransactionRequest {
                user_id: "u".into(),
                transaction_id: bad_tx.into(),
            })
            .await
            .err()
        };
        let status = status.ok_or_else(|| anyhow::anyhow!("{rpc} accepted {bad_tx:?}"))?;
        ensure!(
            status.code() == Code::InvalidArgument
                && api::bad_fields(&status) == ["transaction_id"],
            "{status:?}"
        );
    }
    let long_key = c
        .top_up(pb::TopUpRequest {
            user_id: "u".into(),
            amount: 1,
            idempotency_key: "k".repeat(129),
            metadata: None,
            ..Default::default()
        })
        .await;
    let status = api::assert_error(long_key, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(api::bad_fields(&status) == ["idempotency_key"]);
    ensure!(invariants::check_user(server, "u").await?.is_empty());
    Ok(())
}

async fn amounts_must_be_positive(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 100).await?;
    let spend_tx = api::spend(&mut c, "u", 10)
        .await?
        .transaction
        .unwrap_or_default();
    for amount in [0, -1, i64::MIN] {
        for status in [
            api::top_up(&mut c, "u", amount).await.err(),
            api::spend(&mut c, "u", amount).await.err(),
            api::grant(&mut c, "u", amount).await.err(),
            api::refund(&mut c, "u", &spend_tx.transaction_id, Some(amount))
                .await
                .err(),
        ] {
            let status = status.ok_or_else(|| anyhow::anyhow!("amount {amount} accepted"))?;
            ensure!(status.code() == Code::InvalidArgument, "{status:?}");
            ensure!(api::bad_fields(&status) == ["amount"]);
            ensure!(
                status.message().contains("greater than 0"),
                "message says what to fix: {}",
                status.message()
            );
        }
    }
    // Every violation of a request is reported at once.
    let both = c
        .spend(pb::SpendRequest {
            user_id: String::new(),
            amount: 0,
            ..Default::default()
        })
        .await;
    let status = api::assert_error(both, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(api::bad_fields(&status) == ["user_id", "amount"]);
    ensure!(api::balance(&mut c, "u").await? == 90);
    ensure!(invariants::check_user(server, "u").await?.len() == 2);
    Ok(())
}

async fn unknown_users_are_not_found(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for (rpc, status) in call_all(&mut c, "nobody").await {
        ensure!(status.code() == Code::NotFound, "{rpc}: {status:?}");
        ensure!(
            api::reason(&status).as_deref() == Some("USER_NOT_FOUND"),
            "{rpc}: {status:?}"
        );
        ensure!(api::info(&status, "userId").as_deref() == Some("nobody"));
    }
    Ok(())
}

async fn overflow_is_an_error_not_a_wrap(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", i64::MAX - 10).await?;
    let over = api::top_up(&mut c, "u", 11).await;
    api::assert_error(over, Code::InvalidArgument, "BALANCE_OVERFLOW");
    let over = api::grant(&mut c, "u", i64::MAX).await;
    api::assert_error(over, Code::InvalidArgument, "BALANCE_OVERFLOW");
    api::top_up(&mut c, "u", 10).await?;
    ensure!(api::balance(&mut c, "u").await? == i64::MAX);
    api::spend(&mut c, "u", i64::MAX).await?;
    ensure!(api::balance(&mut c, "u").await? == 0);
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn users_are_created_once(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let create = |id: &str, email: &str| pb::CreateUserRequest {
        user_id: id.into(),
        email: email.into(),
        name: "N".into(),
    };
    let first = c
        .create_user(create("alice", "Alice@Example.com"))
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
    ensure!(
        first.email == "alice@example.com",
        "emails are stored lower-case"
    );
    let again = c
        .create_user(create("alice", "alice@example.com"))
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
    ensure!(
        again == first,
        "creating the same user again returns the existing one"
    );
    let other_email = c.create_user(create("alice", "other@example.com")).await;
    api::assert_error(other_email, Code::AlreadyExists, "USER_ALREADY_EXISTS");
    let taken = c.create_user(create("bob", "ALICE@example.com")).await;
    api::assert_error(taken, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS");
    for bad in ["", "no-at-sign", "a@", "@b", "two@@x", "sp ace@x.com"] {
        let r = c.create_user(create("carol", bad)).await;
        let status = api::assert_error(r, Code::InvalidArgument, "INVALID_ARGUMENT");
        ensure!(api::bad_fields(&status) == ["email"], "{bad:?}: {status:?}");
    }
    let long_name = c
        .create_user(pb::CreateUserRequest {
            user_id: "carol".into(),
            email: "c@x.com".into(),
            name: "n".repeat(257),
        })
        .await;
    api::assert_error(long_name, Code::InvalidArgument, "INVALID_ARGUMENT");
    let got = c
        .get_user(pb::GetUserRequest {
            user_id: "alice".into(),
        })
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
    ensure!(got == first);
    let missing = c
        .get_user(pb::GetUserRequest {
            user_id: "bob".into(),
        })
        .await;
    api::assert_error(missing, Code::NotFound, "USER_NOT_FOUND");
    ensure!(
        api::balance(&mut c, "alice").await? == 0,
        "a new user has a zero balance"
    );
    Ok(())
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

async fn metadata_is_checked(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let with_meta = |fields: Vec<(&str, Value)>| pb::TopUpRequest {
        user_id: "u".into(),
        amount: 1,
        idempotency_key: String::new(),
        metadata: Some(Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }),
        ..Default::default()
    };
    let huge = c
        .top_up(with_meta(vec![(
            "blob",
            string_value(&"x".repeat(17 * 1024)),
        )]))
        .await;
    let status = api::assert_error(huge, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(api::bad_fields(&status) == ["metadata"]);
    let nan = c
        .top_up(with_meta(vec![(
            "n",
            Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        )]))
        .await;
    let status = api::assert_error(nan, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(api::bad_fields(&status) == ["metadata.n"]);
    let kindless = c.top_up(with_meta(vec![("k", Value { kind: None })])).await;
    api::assert_error(kindless, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(invariants::check_user(server, "u").await?.is_empty());

    // What is accepted comes back exactly.
    let nested = Struct {
        fields: [
            (
                "quote".to_owned(),
                string_value("she said \"hi\" \\ ünïcödé ✓ 🚀"),
            ),
            (
                "n".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(1.5e300)),
                },
            ),
            (
                "neg".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(-0.125)),
                },
            ),
            (
                "null".to_owned(),
                Value {
                    kind: Some(Kind::NullValue(0)),
                },
            ),
            (
                "list".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(prost_types::ListValue {
                        values: vec![
                            string_value("a"),
                            Value {
                                kind: Some(Kind::BoolValue(true)),
                            },
                        ],
                    })),
                },
            ),
            (
                "obj".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("deep".to_owned(), string_value("日本"))].into(),
                    })),
                },
            ),
        ]
        .into(),
    };
    let tx = c
        .top_up(pb::TopUpRequest {
            user_id: "u".into(),
            amount: 1,
            idempotency_key: String::new(),
            metadata: Some(nested.clone()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(tx.metadata.as_ref() == Some(&nested));
    let read = c
        .get_transaction(pb::GetTransactionRequest {
            user_id: "u".into(),
            transaction_id: tx.transaction_id,
        })
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(
        read.metadata == Some(nested),
        "metadata changed on the way through the database"
    );
    Ok(())
}

async fn history_arguments_are_checked(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::create_user(&mut c, "v").await?;
    for _ in 0..3 {
        api::top_up(&mut c, "u", 1).await?;
        api::top_up(&mut c, "v", 1).await?;
    }
    let list = |user: &str, f: &dyn Fn(&mut pb::ListTransactionsRequest)| {
        let mut r = pb::ListTransactionsRequest {
            user_id: user.into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let cases: Vec<(pb::ListTransactionsRequest, &str)> = vec![
        (list("u", &|r| r.page_size = -1), "page_size"),
        (
            list("u", &|r| r.page_token = "garbage!".into()),
            "page_token",
        ),
        (list("u", &|r| r.types = vec![99]), "types[0]"),
        (list("u", &|r| r.types = vec![0]), "types[0]"),
        (
            list("u", &|r| {
                r.created_after = Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                })
            }),
            "",
        ),
        (
            list("u", &|r| {
                r.created_before = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                })
            }),
            "created_before",
        ),
    ];
    for (req, field) in cases {
        let r = c.list_transactions(req.clone()).await;
        if field.is_empty() {
            ensure!(r.is_ok(), "{req:?} was refused");
            continue;
        }
        let status = api::assert_error(r, Code::InvalidArgument, "INVALID_ARGUMENT");
        ensure!(api::bad_fields(&status) == [field], "{req:?}: {status:?}");
    }
    // A token of another user, or of other filters, is refused.
    let page = c
        .list_transactions(list("v", &|r| r.page_size = 1))
        .await?
        .into_inner();
    ensure!(!page.next_page_token.is_empty());
    let foreign = c
        .list_transactions(list("u", &|r| r.page_token = page.next_page_token.clone()))
        .await;
    api::assert_error(foreign, Code::InvalidArgument, "INVALID_ARGUMENT");
    let refiltered = c
        .list_transactions(list("v", &|r| {
            r.page_token = page.next_page_token.clone();
            r.types = vec![pb::TransactionType::Usage as i32];
        }))
        .await;
    api::assert_error(refiltered, Code::InvalidArgument, "INVALID_ARGUMENT");
    Ok(())
}
