//! Bad input, tried systematically: proptest makes garbage for every field of
//! every RPC (ids that are empty, 10 KB long, full of control characters,
//! NULs, odd unicode or padding; arbitrary amounts, enum values, page
//! tokens, metadata and timestamps) and sends it to the real server
//! (loopback port, real generated client).
//!
//! Every case gets a fresh user with a small known history, sends one
//! generated call, and checks:
//! - the answer is a success or INVALID_ARGUMENT / NOT_FOUND /
//!   ALREADY_EXISTS / FAILED_PRECONDITION, never INTERNAL, UNKNOWN or
//!   anything else, with exactly the ErrorInfo (domain `credit.v1`) and, for
//!   invalid input, a BadRequest naming exactly the fields an oracle of the
//!   documented field rules says are bad;
//! - the answer is the one the ledger's rules give (the oracle below), and
//!   what was accepted comes back exactly as sent;
//! - a refused call changed nothing (balance and full history), an
//!   accepted write changed exactly what it says;
//! - the server is still healthy afterwards (its reads work).
//!
//! `PROPTEST_CASES` sets the number of cases (default 128). Inputs the
//! server is known to mishandle are kept out of the generators and pinned
//! by the `#[ignore]`d tests at the end, each with the bug it shows.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use integration_tests::{Backend, Client, TestServer, api};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const CASE_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn fuzz_sqlite() {
    run_backend(Backend::Sqlite);
}

#[test]
fn fuzz_postgres() {
    run_backend(Backend::Postgres);
}

#[test]
fn fuzz_mysql() {
    run_backend(Backend::MySql);
}

// ---------------------------------------------------------------------------
// Generated arguments. Arguments that name something of the case's user are
// symbolic and resolved against the case's seed at run time.

/// A user id: the case's user, or garbage.
#[derive(Debug, Clone)]
enum UserArg {
    Real,
    Garbage(String),
}

#[derive(Debug, Clone)]
enum EmailArg {
    /// The case user's email, in another case and padded.
    Real {
        upper: bool,
        padded: bool,
    },
    /// A new, valid address.
    Fresh(String),
    Garbage(String),
}

#[derive(Debug, Clone)]
enum KeyArg {
    /// The key of one of the seed writes.
    Seed(usize),
    Garbage(String),
}

#[derive(Debug, Clone)]
enum TxArg {
    /// One of the user's transactions, as issued.
    Own(Index),
    /// One of the user's transactions in another UUID spelling.
    Respelled(Index, Spelling),
    /// A UUID nobody has.
    Random,
    Garbage(String),
}

#[derive(Debug, Clone, Copy)]
enum Spelling {
    Upper,
    Simple,
    Braced,
    Urn,
}

#[derive(Debug, Clone)]
enum TokenArg {
    /// The token of the first one-item page without filters.
    Real,
    /// That token with another position in it.
    RealAt(i64),
    Garbage(String),
    /// Random bytes, base64-encoded as the server's tokens are.
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum TimeArg {
    Raw(Timestamp),
    /// Near one of the user's transactions (nanoseconds away).
    NearTx(Index, i64),
}

#[derive(Debug, Clone)]
enum Call {
    CreateUser {
        user: UserArg,
        email: EmailArg,
        name: String,
    },
    GetUser {
        user: UserArg,
    },
    GetBalance {
        user: UserArg,
    },
    TopUp {
        user: UserArg,
        amount: i64,
        key: KeyArg,
        metadata: Option<Struct>,
    },
    Spend {
        user: UserArg,
        amount: i64,
        key: KeyArg,
        usage: Option<pb::UsageDetails>,
        metadata: Option<Struct>,
    },
    Grant {
        user: UserArg,
        amount: i64,
        key: KeyArg,
        reason: String,
        metadata: Option<Struct>,
    },
    Refund {
        user: UserArg,
        target: TxArg,
        amount: Option<i64>,
        key: KeyArg,
        reason: String,
        metadata: Option<Struct>,
    },
    GetTransaction {
        user: UserArg,
        target: TxArg,
    },
    List {
        user: UserArg,
        page_size: i32,
        token: Option<TokenArg>,
        types: Vec<i32>,
        after: Option<TimeArg>,
        before: Option<TimeArg>,
        graph_exec_id: String,
    },
}

/// Strings that break naive handling of ids and text.
fn garbage() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        // Any characters at all, control characters included.
        any::<String>(),
        "\\PC{1,40}",
        "[a-z]{0,8}\\x00[a-z]{0,8}",
        "[\\x01-\\x1f\\x7f]{1,4}",
        // Leading or trailing whitespace, ASCII and not.
        "[ \\t\\n\\x{a0}\\x{3000}][a-z]{1,8}",
        "[a-z]{1,8}[ \\t\\n\\x{a0}\\x{2028}]",
        // What a lossy decoder makes of bytes that are not UTF-8.
        "[a-z]{0,4}\\x{fffd}{1,4}[a-z]{0,4}",
        "[\\x{80}-\\x{10ffff}]{1,12}",
        prop::sample::select(vec![
            "\u{200b}",
            "a\u{200b}b",
            "\u{202e}olleh",
            "e\u{301}",
            "\u{feff}bom",
            "🚀💥",
            "'; DROP TABLE user; --",
            "%s%n%x",
            "\\",
            "\"",
            "null",
        ])
        .prop_map(str::to_owned),
        // Length limits: 128 / 129 / 256 / 257 characters, some of them
        // several bytes each, and 10 KB.
        prop::sample::select(vec![127usize, 128, 129, 255, 256, 257, 321, 10 * 1024])
            .prop_flat_map(|n| prop::sample::select(vec!['a', 'é', '😀'])
                .prop_map(move |c| std::iter::repeat_n(c, n).collect())),
    ]
    .boxed()
}

fn user() -> impl Strategy<Value = UserArg> {
    prop_oneof![
        4 => Just(UserArg::Real),
        3 => garbage().prop_map(UserArg::Garbage),
    ]
}

fn key() -> impl Strategy<Value = KeyArg> {
    prop_oneof![
        2 => Just(KeyArg::Garbage(String::new())),
        1 => (0..SEED_KEYS.len()).prop_map(KeyArg::Seed),
        3 => garbage().prop_map(KeyArg::Garbage),
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            10,
            50,
            90,
            91,
            100,
            960,
            961,
            1000,
            i64::MAX - 960,
            i64::MAX - 959,
            i64::MAX,
        ]),
    ]
}

/// Free text. `nul`: whether it may hold NUL characters (not on
/// PostgreSQL: see `nul_in_text`).
fn text(nul: bool) -> impl Strategy<Value = String> {
    let garbage = garbage().prop_map(move |s| if nul { s } else { s.replace('\0', "") });
    prop_oneof![3 => Just(String::new()), 2 => garbage]
}

fn tx() -> impl Strategy<Value = TxArg> {
    let spelling = prop::sample::select(vec![
        Spelling::Upper,
        Spelling::Simple,
        Spelling::Braced,
        Spelling::Urn,
    ]);
    prop_oneof![
        4 => any::<Index>().prop_map(TxArg::Own),
        1 => (any::<Index>(), spelling).prop_map(|(i, s)| TxArg::Respelled(i, s)),
        1 => Just(TxArg::Random),
        2 => garbage().prop_map(TxArg::Garbage),
    ]
}

/// Timestamps in and far out of every range: nanos outside 0..1e9, seconds
/// outside what chrono and the databases hold, and near the user's data.
fn time() -> impl Strategy<Value = TimeArg> {
    let seconds = prop_oneof![
        any::<i64>(),
        // Years 2000 to 2037.
        946_684_800i64..2_145_916_800,
        prop::sample::select(vec![0i64, -1, 1_700_000_000, 4_102_444_800]),
    ];
    let nanos = prop_oneof![
        4 => 0..1_000_000_000i32,
        1 => any::<i32>(),
        1 => prop::sample::select(vec![-1, 1_000_000_000, i32::MIN, i32::MAX]),
    ];
    prop_oneof![
        1 => (seconds, nanos).prop_map(|(seconds, nanos)| TimeArg::Raw(Timestamp { seconds, nanos })),
        2 => (any::<Index>(), -3_000i64..3_000)
            .prop_map(|(i, d)| TimeArg::NearTx(i, d)),
    ]
    .prop_filter("a time the databases can store", |t| match t {
        TimeArg::Raw(t) => !outside_2000_to_2037(t),
        TimeArg::NearTx(..) => true,
    })
}

/// Valid times outside years 2000 to 2037, which some backends filter
/// wrongly or fail on (see `far_time_filters`). Invalid times (nanos out of
/// range, beyond chrono) stay in: they are refused before any database.
fn outside_2000_to_2037(t: &Timestamp) -> bool {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .is_some_and(|d| !(2000..=2037).contains(&chrono::Datelike::year(&d)))
        && (0..1_000_000_000).contains(&t.nanos)
}

/// Metadata field names: garbage, but short. A refusal names the path of
/// the bad value, and a long one breaks the answer (see
/// `long_metadata_path_gives_a_readable_error`).
fn field_name() -> impl Strategy<Value = String> {
    garbage().prop_map(|s| s.chars().take(64).collect())
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::ANY,
        prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            0.1,
            1e21,
        ]),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<i32>().prop_map(Kind::NullValue),
        any::<bool>().prop_map(Kind::BoolValue),
        number().prop_map(Kind::NumberValue),
        garbage().prop_map(Kind::StringValue),
    ]
    .prop_map(|k| Value { kind: Some(k) });
    let leaf = prop_oneof![9 => leaf, 1 => Just(Value { kind: None })];
    // Nesting within what the protobuf decoder takes (see
    // `deep_metadata_is_invalid_argument`).
    leaf.prop_recursive(8, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|values| Kind::ListValue(ListValue { values })),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|fields| Kind::StructValue(Struct { fields })),
        ]
        .prop_map(|k| Value { kind: Some(k) })
    })
}

fn metadata() -> impl Strategy<Value = Option<Struct>> {
    let blob = |n: usize| Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(n))),
            },
        )]
        .into(),
    };
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Struct::default())),
        4 => prop::collection::btree_map(field_name(), value(), 0..6)
            .prop_map(|fields| Some(Struct { fields })),
        // Around the 16 KiB limit (`{"blob":"..."}` is 11 bytes more), and
        // far over it.
        1 => prop_oneof![16_360usize..16_390, Just(200_000)].prop_map(move |n| Some(blob(n))),
    ]
}

fn usage(nul: bool) -> impl Strategy<Value = Option<pb::UsageDetails>> {
    let text = || text(nul);
    prop::option::of((text(), text(), text(), text(), text(), text()).prop_map(
        |(a, b, c, d, e, f)| pb::UsageDetails {
            graph_exec_id: a,
            graph_id: b,
            node_id: c,
            node_exec_id: d,
            block_id: e,
            reason: f,
        },
    ))
}

fn token() -> impl Strategy<Value = Option<TokenArg>> {
    prop::option::weighted(
        0.6,
        prop_oneof![
            Just(TokenArg::Real),
            prop_oneof![any::<i64>(), -2i64..6].prop_map(TokenArg::RealAt),
            garbage().prop_map(TokenArg::Garbage),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(TokenArg::Bytes),
        ],
    )
}

/// One call of any RPC. `nul`: whether text fields may hold NUL.
fn call(nul: bool) -> impl Strategy<Value = Call> {
    let text = || text(nul);
    let email = prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(upper, padded)| EmailArg::Real { upper, padded }),
        "[a-z0-9.+_-]{1,20}@[a-z0-9.-]{1,20}".prop_map(EmailArg::Fresh),
        garbage().prop_map(EmailArg::Garbage),
    ];
    prop_oneof![
        1 => (user(), email, text()).prop_map(|(user, email, name)| Call::CreateUser {
            user,
            email,
            name
        }),
        1 => user().prop_map(|user| Call::GetUser { user }),
        1 => user().prop_map(|user| Call::GetBalance { user }),
        1 => (user(), amount(), key(), metadata()).prop_map(|(user, amount, key, metadata)| {
            Call::TopUp {
                user,
                amount,
                key,
                metadata,
            }
        }),
        1 => (user(), amount(), key(), usage(nul), metadata()).prop_map(
            |(user, amount, key, usage, metadata)| Call::Spend {
                user,
                amount,
                key,
                usage,
                metadata,
            }
        ),
        1 => (user(), amount(), key(), text(), metadata()).prop_map(
            |(user, amount, key, reason, metadata)| Call::Grant {
                user,
                amount,
                key,
                reason,
                metadata,
            }
        ),
        1 => (
            user(),
            tx(),
            prop::option::of(amount()),
            key(),
            text(),
            metadata()
        )
            .prop_map(
                |(user, target, amount, key, reason, metadata)| Call::Refund {
                    user,
                    target,
                    amount,
                    key,
                    reason,
                    metadata,
                }
            ),
        1 => (user(), tx()).prop_map(|(user, target)| Call::GetTransaction { user, target }),
        3 => (
            user(),
            prop_oneof![any::<i32>(), -2i32..5, 999i32..1002],
            token(),
            prop::collection::vec(prop_oneof![3 => 0i32..7, 1 => any::<i32>()], 0..4),
            prop::option::weighted(0.4, time()),
            prop::option::weighted(0.4, time()),
            prop_oneof![3 => Just(String::new()), 1 => Just("g-1".to_owned()), 1 => text()],
        )
            .prop_map(
                |(user, page_size, token, types, after, before, graph_exec_id)| Call::List {
                    user,
                    page_size,
                    token,
                    types,
                    after,
                    before,
                    graph_exec_id,
                }
            ),
    ]
}

// ---------------------------------------------------------------------------
// The case's seed: a user with one transaction of each kind.

/// The seed writes' keys: a top-up, a spend, a grant and a refund.
const SEED_KEYS: [&str; 4] = ["seed-top-up", "seed-spend", "seed-grant", "seed-refund"];
/// Balance after the seed: 1000 - 100 + 50 + 10.
const SEED_BALANCE: i64 = 960;

struct Seed {
    /// Unique to the case.
    ns: String,
    user_id: String,
    email: String,
    name: String,
    /// Oldest first.
    history: Vec<pb::Transaction>,
    /// The `next_page_token` of a one-item first page without filters.
    token: String,
}

async fn seed(c: &mut Client, ns: &str) -> anyhow::Result<Seed> {
    let user_id = format!("{ns}-user");
    let email = format!("{ns}-user@example.com");
    let name = "Seed User".to_owned();
    c.create_user(pb::CreateUserRequest {
        user_id: user_id.clone(),
        email: email.clone(),
        name: name.clone(),
    })
    .await?;
    let u = || user_id.clone();
    let k = |i: usize| SEED_KEYS[i].to_owned();
    c.top_up(pb::TopUpRequest {
        user_id: u(),
        amount: 1000,
        idempotency_key: k(0),
        metadata: None,
        ..Default::default()
    })
    .await?;
    let spend = c
        .spend(pb::SpendRequest {
            user_id: u(),
            amount: 100,
            idempotency_key: k(1),
            usage: Some(seed_usage()),
            metadata: None,
        })
        .await?
        .into_inner()
        .transaction
        .context("no transaction")?;
    c.grant(pb::GrantRequest {
        user_id: u(),
        amount: 50,
        idempotency_key: k(2),
        reason: "r".into(),
        metadata: None,
        ..Default::default()
    })
    .await?;
    c.refund(pb::RefundRequest {
        user_id: u(),
        transaction_id: spend.transaction_id,
        amount: Some(10),
        idempotency_key: k(3),
        reason: "r".into(),
        metadata: None,
    })
    .await?;
    let token = c
        .list_transactions(pb::ListTransactionsRequest {
            user_id: u(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .next_page_token;
    let history = api::all_transactions(c, &user_id).await?;
    ensure!(history.len() == 4 && !token.is_empty(), "seed failed");
    Ok(Seed {
        ns: ns.to_owned(),
        user_id,
        email,
        name,
        history,
        token,
    })
}

fn seed_usage() -> pb::UsageDetails {
    pb::UsageDetails {
        graph_exec_id: "g-1".into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Running a case.

fn run_backend(backend: Backend) {
    let Some(live) = common::start("fuzz_inputs", backend) else {
        return;
    };
    let (rt, client) = (&live.rt, &live.client);
    let config = common::config(128);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let answers = RefCell::new(BTreeMap::new());
    let started = Instant::now();
    let result = runner.run(&call(backend != Backend::Postgres), |call| {
        let ns = format!("f{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut client = client.clone();
        let case = rt.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, run_case(&mut client, &ns, &call)).await
        });
        match case {
            Ok(Ok(answer)) => {
                *answers.borrow_mut().entry(answer).or_insert(0) += 1;
                Ok(())
            }
            Ok(Err(err)) => Err(TestCaseError::fail(format!("{err:#}"))),
            Err(_) => Err(TestCaseError::fail("the case timed out")),
        }
    });
    eprintln!(
        "fuzz_inputs on {backend:?}: {cases} cases in {:.1?}; answers {:?}",
        started.elapsed(),
        answers.borrow()
    );
    live.finish("fuzz_inputs", result);
}

/// What one call answered, for the run's summary.
type Answer = String;

async fn run_case(c: &mut Client, ns: &str, call: &Call) -> anyhow::Result<Answer> {
    let seed = seed(c, ns).await.context("seed")?;
    let expected = expect(&seed, call);
    let got = send(c, &seed, call).await;
    let answer = match &got {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}/{}", s.code(), api::reason(s).unwrap_or_default()),
    };
    if let Err(status) = &got {
        well_formed(status).with_context(|| format!("{call:#?}"))?;
    }
    // The server still answers, and the state is what the call says.
    let after = api::all_transactions(c, &seed.user_id)
        .await
        .context("history after the call")?;
    let balance = api::balance(c, &seed.user_id)
        .await
        .context("balance after the call")?;
    check(&seed, call, expected, got, &after, balance).with_context(|| format!("{call:#?}"))?;
    Ok(answer)
}

/// A refusal carries exactly one ErrorInfo in domain credit.v1 with a
/// reason that belongs to its code, and BadRequest when it is about fields.
fn well_formed(status: &Status) -> anyhow::Result<()> {
    let reasons: &[&str] = match status.code() {
        Code::InvalidArgument => &["INVALID_ARGUMENT", "BALANCE_OVERFLOW"],
        Code::NotFound => &["USER_NOT_FOUND", "TRANSACTION_NOT_FOUND"],
        Code::AlreadyExists => &[
            "USER_ALREADY_EXISTS",
            "EMAIL_ALREADY_EXISTS",
            "IDEMPOTENCY_KEY_REUSED",
        ],
        Code::FailedPrecondition => &[
            "INSUFFICIENT_BALANCE",
            "REFUND_EXCEEDS_ORIGINAL",
            "NOT_REFUNDABLE",
        ],
        other => bail!("a refusal with code {other:?}: {status:?}"),
    };
    let details = status.get_error_details_vec();
    let infos = details
        .iter()
        .filter(|d| matches!(d, tonic_types::ErrorDetail::ErrorInfo(_)))
        .count();
    ensure!(infos == 1, "{infos} ErrorInfo in {status:?}");
    let info = status.get_details_error_info().context("no ErrorInfo")?;
    ensure!(
        info.domain == "credit.v1" && reasons.contains(&info.reason.as_str()),
        "ErrorInfo {info:?} for {:?}",
        status.code()
    );
    if info.reason == "INVALID_ARGUMENT" {
        ensure!(
            !api::bad_fields(status).is_empty(),
            "INVALID_ARGUMENT without field violations: {status:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Resolving the symbolic arguments.

/// Ids that the server would accept are made the case's own (the first
/// characters replaced by the case's namespace, the length kept), so that a
/// user one case creates is never met by another.
fn user_id(seed: &Seed, user: &UserArg) -> String {
    match user {
        UserArg::Real => seed.user_id.clone(),
        UserArg::Garbage(s) if !s.is_empty() && id_shape(s) => seed
            .ns
            .chars()
            .chain(s.chars().skip(seed.ns.chars().count()))
            .collect(),
        UserArg::Garbage(s) => s.clone(),
    }
}

fn key_str(key: &KeyArg) -> String {
    match key {
        KeyArg::Seed(i) => SEED_KEYS[*i].to_owned(),
        KeyArg::Garbage(s) => s.clone(),
    }
}

fn email_str(seed: &Seed, email: &EmailArg) -> String {
    match email {
        EmailArg::Real { upper, padded } => {
            let e = if *upper {
                seed.email.to_uppercase()
            } else {
                seed.email.clone()
            };
            if *padded { format!("\t{e} ") } else { e }
        }
        // Valid addresses are made the case's own, like user ids.
        EmailArg::Fresh(s) | EmailArg::Garbage(s) if email_ok(s).is_some() => {
            let rest = s.trim_start();
            format!("{}{}.{rest}", &s[..s.len() - rest.len()], seed.ns)
        }
        EmailArg::Fresh(s) | EmailArg::Garbage(s) => s.clone(),
    }
}

fn tx_str(seed: &Seed, target: &TxArg) -> String {
    match target {
        TxArg::Own(i) => i.get(&seed.history).transaction_id.clone(),
        TxArg::Respelled(i, spelling) => {
            let id = &i.get(&seed.history).transaction_id;
            let uuid = uuid::Uuid::parse_str(id).unwrap_or_default();
            match spelling {
                Spelling::Upper => id.to_uppercase(),
                Spelling::Simple => uuid.simple().to_string(),
                Spelling::Braced => uuid.braced().to_string(),
                Spelling::Urn => uuid.urn().to_string(),
            }
        }
        TxArg::Random => uuid::Uuid::new_v4().to_string(),
        TxArg::Garbage(s) => s.clone(),
    }
}

fn token_str(seed: &Seed, token: &Option<TokenArg>) -> String {
    match token {
        None => String::new(),
        Some(TokenArg::Real) => seed.token.clone(),
        Some(TokenArg::RealAt(s)) => {
            let mut json: serde_json::Value =
                serde_json::from_slice(&base64_decode(&seed.token)).unwrap_or_default();
            json["s"] = (*s).into();
            base64_encode(json.to_string().as_bytes())
        }
        Some(TokenArg::Garbage(s)) => s.clone(),
        Some(TokenArg::Bytes(b)) => base64_encode(b),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// URL-safe base64 without padding, the page tokens' encoding (written out
/// here: the tests need only these few lines of it).
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let sextets: Vec<u32> = text
        .bytes()
        .filter_map(|c| BASE64.iter().position(|&b| b == c).map(|p| p as u32))
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, s)| n | s << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn time_value(seed: &Seed, t: &TimeArg) -> Timestamp {
    match t {
        TimeArg::Raw(t) => *t,
        TimeArg::NearTx(i, delta) => {
            let at = i.get(&seed.history).created_at.unwrap_or_default();
            let nanos = at.seconds as i128 * 1_000_000_000 + at.nanos as i128 + *delta as i128;
            Timestamp {
                seconds: nanos.div_euclid(1_000_000_000) as i64,
                nanos: nanos.rem_euclid(1_000_000_000) as i32,
            }
        }
    }
}

/// Sends the call; a success is reduced to what `check` compares.
async fn send(c: &mut Client, seed: &Seed, call: &Call) -> Result<Reply, Status> {
    // Allocations (which lots a transaction used) are checked by
    // `lots.rs`; history pages do not carry them, so they are left out here.
    let wrote = |t: Option<pb::Transaction>, balance| {
        let t = pb::Transaction {
            allocations: Vec::new(),
            ..t.unwrap_or_default()
        };
        Reply::Written(Box::new(t), balance)
    };
    Ok(match call {
        Call::CreateUser { user, email, name } => Reply::User(
            c.create_user(pb::CreateUserRequest {
                user_id: user_id(seed, user),
                email: email_str(seed, email),
                name: name.clone(),
            })
            .await?
            .into_inner()
            .user
            .unwrap_or_default(),
        ),
        Call::GetUser { user } => Reply::User(
            c.get_user(pb::GetUserRequest {
                user_id: user_id(seed, user),
            })
            .await?
            .into_inner()
            .user
            .unwrap_or_default(),
        ),
        Call::GetBalance { user } => {
            let r = c
                .get_balance(pb::GetBalanceRequest {
                    user_id: user_id(seed, user),
                })
                .await?
                .into_inner();
            Reply::Balance(r.balance, r.last_sequence)
        }
        Call::TopUp {
            user,
            amount,
            key,
            metadata,
        } => {
            let r = c
                .top_up(pb::TopUpRequest {
                    user_id: user_id(seed, user),
                    amount: *amount,
                    idempotency_key: key_str(key),
                    metadata: metadata.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            wrote(r.transaction, r.balance)
        }
        Call::Spend {
            user,
            amount,
            key,
            usage,
            metadata,
        } => {
            let r = c
                .spend(pb::SpendRequest {
                    user_id: user_id(seed, user),
                    amount: *amount,
                    idempotency_key: key_str(key),
                    usage: usage.clone(),
                    metadata: metadata.clone(),
                })
                .await?
                .into_inner();
            wrote(r.transaction, r.balance)
        }
        Call::Grant {
            user,
            amount,
            key,
            reason,
            metadata,
        } => {
            let r = c
                .grant(pb::GrantRequest {
                    user_id: user_id(seed, user),
                    amount: *amount,
                    idempotency_key: key_str(key),
                    reason: reason.clone(),
                    metadata: metadata.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            wrote(r.transaction, r.balance)
        }
        Call::Refund {
            user,
            target,
            amount,
            key,
            reason,
            metadata,
        } => {
            let r = c
                .refund(pb::RefundRequest {
                    user_id: user_id(seed, user),
                    transaction_id: tx_str(seed, target),
                    amount: *amount,
                    idempotency_key: key_str(key),
                    reason: reason.clone(),
                    metadata: metadata.clone(),
                })
                .await?
                .into_inner();
            wrote(r.transaction, r.balance)
        }
        Call::GetTransaction { user, target } => Reply::Transactions(
            c.get_transaction(pb::GetTransactionRequest {
                user_id: user_id(seed, user),
                transaction_id: tx_str(seed, target),
            })
            .await?
            .into_inner()
            .transaction
            .into_iter()
            .map(|t| pb::Transaction {
                allocations: Vec::new(),
                ..t
            })
            .collect(),
            String::new(),
        ),
        Call::List {
            user,
            page_size,
            token,
            types,
            after,
            before,
            graph_exec_id,
        } => {
            let r = c
                .list_transactions(pb::ListTransactionsRequest {
                    user_id: user_id(seed, user),
                    page_size: *page_size,
                    page_token: token_str(seed, token),
                    types: types.clone(),
                    created_after: after.as_ref().map(|t| time_value(seed, t)),
                    created_before: before.as_ref().map(|t| time_value(seed, t)),
                    graph_exec_id: graph_exec_id.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Reply::Transactions(r.transactions, r.next_page_token)
        }
    })
}

#[derive(Debug)]
enum Reply {
    User(pb::User),
    Balance(i64, i64),
    Written(Box<pb::Transaction>, i64),
    /// Transactions and the next page token.
    Transactions(Vec<pb::Transaction>, String),
}

// ---------------------------------------------------------------------------
// The oracle: the documented field rules (README, proto comments,
// `service/validate.rs`) and the ledger's rules, for a user whose state is
// the seed's.

#[derive(Debug)]
enum Expected {
    /// INVALID_ARGUMENT naming exactly these fields (sorted).
    Invalid(Vec<String>),
    Error(Code, &'static str),
    /// CreateUser of a new user.
    Created {
        user_id: String,
        email: String,
    },
    /// The seed user (GetUser, or CreateUser of the same id and email).
    SeedUser,
    Balance,
    /// A new transaction of `kind`, changing the balance by `delta`;
    /// `refund_of` gains `refunded` on its refunded total.
    Applied {
        kind: pb::TransactionType,
        delta: i64,
        refund_of: Option<(usize, i64)>,
    },
    /// The seed transaction at this index, answered again.
    Replayed(usize),
    /// GetTransaction of this seed transaction, or nothing for NOT_FOUND
    /// when the id is another spelling of it (see `check`).
    Transaction(usize, bool),
    /// A page of the history: these seed transactions (newest first) and
    /// whether another page follows; bounds within a microsecond of a
    /// transaction's time may go either way (see `check`).
    Page(Vec<usize>, bool, Vec<usize>),
}

/// Field checks, as `service/validate.rs` documents them.
#[derive(Default)]
struct Fields(Vec<String>);

impl Fields {
    fn bad(&mut self, field: &str, bad: bool) {
        if bad {
            self.0.push(field.to_owned());
        }
    }
    fn id(&mut self, field: &str, v: &str) {
        self.bad(field, v.is_empty() || !id_shape(v));
    }
    fn optional_id(&mut self, field: &str, v: &str) {
        self.bad(field, !v.is_empty() && !id_shape(v));
    }
    fn text(&mut self, field: &str, v: &str) {
        self.bad(field, v.chars().count() > 256 || v.contains('\0'));
    }
    fn amount(&mut self, v: i64) {
        self.bad("amount", v <= 0);
    }
    fn tx_id(&mut self, v: &str) {
        self.bad(
            "transaction_id",
            v.is_empty() || uuid::Uuid::try_parse(v).is_err(),
        );
    }
    fn metadata(&mut self, m: &Option<Struct>) {
        let Some(m) = m else { return };
        match json_object(m) {
            Err(path) => self.0.push(format!("metadata.{path}")),
            Ok(json) => self.bad("metadata", json.len() > 16 * 1024),
        }
    }
    fn into_expected(mut self) -> Option<Expected> {
        self.0.sort();
        (!self.0.is_empty()).then_some(Expected::Invalid(self.0))
    }
}

/// 1 to 128 characters, no control characters, no surrounding whitespace.
fn id_shape(v: &str) -> bool {
    v.chars().count() <= 128 && !v.chars().any(char::is_control) && v.trim() == v
}

/// The email rules: trimmed and lower-cased first, then `local@domain`
/// without whitespace or control characters, at most 320 characters.
fn email_ok(v: &str) -> Option<String> {
    let email = v.trim().to_lowercase();
    let ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    (ok && email.chars().count() <= 320).then_some(email)
}

/// Metadata as compact JSON, or the path of the first value JSON cannot
/// hold (fields in key order).
fn json_object(s: &Struct) -> Result<String, String> {
    fn value(v: &Value) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        Ok(match v.kind.as_ref().ok_or_else(String::new)? {
            Kind::NullValue(_) => J::Null,
            Kind::BoolValue(b) => J::Bool(*b),
            Kind::StringValue(s) => J::String(s.clone()),
            Kind::NumberValue(n) => {
                J::Number(serde_json::Number::from_f64(*n).ok_or_else(String::new)?)
            }
            Kind::StructValue(s) => object(s)?,
            Kind::ListValue(l) => J::Array(
                l.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| value(v).map_err(|p| join(&format!("[{i}]"), &p)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
    fn object(s: &Struct) -> Result<serde_json::Value, String> {
        s.fields
            .iter()
            .map(|(k, v)| Ok((k.clone(), value(v).map_err(|p| join(k, &p))?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(serde_json::Value::Object)
    }
    fn join(head: &str, rest: &str) -> String {
        match rest {
            "" => head.to_owned(),
            r if r.starts_with('[') => format!("{head}{r}"),
            r => format!("{head}.{r}"),
        }
    }
    Ok(object(s)?.to_string())
}

/// A field path as an answer reports it: at most 128 characters, then '…'.
fn reported_field(field: &str) -> String {
    let mut shown: String = field.chars().take(128).collect();
    if shown.len() < field.len() {
        shown.push('…');
    }
    shown
}

/// A valid wire timestamp: nanos in 0..1e9 and a time in years 1 to 9999.
fn time_ok(t: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .filter(|d| (1..=9999).contains(&chrono::Datelike::year(d)))
}

fn to_time(t: &Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap_or_default()
}

fn expect(seed: &Seed, call: &Call) -> Expected {
    let mut f = Fields::default();
    let is_seed_user = |u: &UserArg| user_id(seed, u) == seed.user_id;
    match call {
        Call::CreateUser { user, email, name } => {
            let id = user_id(seed, user);
            f.id("user_id", &id);
            let normalised = email_ok(&email_str(seed, email));
            f.bad("email", normalised.is_none());
            f.text("name", name);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            let email = normalised.unwrap_or_default();
            if id == seed.user_id {
                if email == seed.email {
                    Expected::SeedUser
                } else {
                    Expected::Error(Code::AlreadyExists, "USER_ALREADY_EXISTS")
                }
            } else if email == seed.email {
                Expected::Error(Code::AlreadyExists, "EMAIL_ALREADY_EXISTS")
            } else {
                Expected::Created { user_id: id, email }
            }
        }
        Call::GetUser { user } | Call::GetBalance { user } => {
            f.id("user_id", &user_id(seed, user));
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            match (is_seed_user(user), call) {
                (false, _) => Expected::Error(Code::NotFound, "USER_NOT_FOUND"),
                (true, Call::GetUser { .. }) => Expected::SeedUser,
                (true, _) => Expected::Balance,
            }
        }
        Call::TopUp {
            user,
            amount,
            key,
            metadata,
        }
        | Call::Grant {
            user,
            amount,
            key,
            metadata,
            ..
        } => {
            let reason = match call {
                Call::Grant { reason, .. } => {
                    f.text("reason", reason);
                    reason.as_str()
                }
                _ => "",
            };
            f.id("user_id", &user_id(seed, user));
            f.amount(*amount);
            f.optional_id("idempotency_key", &key_str(key));
            f.metadata(metadata);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            let (kind, seed_index) = match call {
                Call::TopUp { .. } => (pb::TransactionType::TopUp, 0),
                _ => (pb::TransactionType::Grant, 2),
            };
            // The seed's top-up had no reason; its grant had "r".
            let same_as_seed = metadata.is_none()
                && match seed_index {
                    0 => *amount == 1000,
                    _ => *amount == 50 && reason == "r",
                };
            write_rules(
                seed,
                user,
                key,
                seed_index,
                same_as_seed,
                || match SEED_BALANCE.checked_add(*amount) {
                    None => Expected::Error(Code::InvalidArgument, "BALANCE_OVERFLOW"),
                    Some(_) => Expected::Applied {
                        kind,
                        delta: *amount,
                        refund_of: None,
                    },
                },
            )
        }
        Call::Spend {
            user,
            amount,
            key,
            usage,
            metadata,
        } => {
            let u = usage.clone().unwrap_or_default();
            for (field, v) in [
                ("usage.graph_exec_id", &u.graph_exec_id),
                ("usage.graph_id", &u.graph_id),
                ("usage.node_id", &u.node_id),
                ("usage.node_exec_id", &u.node_exec_id),
                ("usage.block_id", &u.block_id),
                ("usage.reason", &u.reason),
            ] {
                f.text(field, v);
            }
            f.id("user_id", &user_id(seed, user));
            f.amount(*amount);
            f.optional_id("idempotency_key", &key_str(key));
            f.metadata(metadata);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            // Absent usage and empty usage are the same request.
            let same_as_seed = metadata.is_none() && *amount == 100 && u == seed_usage();
            write_rules(seed, user, key, 1, same_as_seed, || {
                if *amount > SEED_BALANCE {
                    Expected::Error(Code::FailedPrecondition, "INSUFFICIENT_BALANCE")
                } else {
                    Expected::Applied {
                        kind: pb::TransactionType::Usage,
                        delta: -*amount,
                        refund_of: None,
                    }
                }
            })
        }
        Call::Refund {
            user,
            target,
            amount,
            key,
            reason,
            metadata,
        } => {
            f.id("user_id", &user_id(seed, user));
            let target_id = tx_str(seed, target);
            f.tx_id(&target_id);
            if let Some(a) = amount {
                f.amount(*a);
            }
            f.text("reason", reason);
            f.optional_id("idempotency_key", &key_str(key));
            f.metadata(metadata);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            // Any spelling of a UUID names the transaction the server
            // issued (it stores the canonical form).
            let same_uuid =
                |id: &str| uuid::Uuid::try_parse(id).ok() == uuid::Uuid::try_parse(&target_id).ok();
            // The seed refund: 10 of the spend, reason "r", no metadata.
            let same_as_seed = metadata.is_none()
                && *amount == Some(10)
                && reason == "r"
                && same_uuid(&seed.history[1].transaction_id);
            write_rules(seed, user, key, 3, same_as_seed, || {
                let Some(t) = seed
                    .history
                    .iter()
                    .position(|t| same_uuid(&t.transaction_id))
                else {
                    return Expected::Error(Code::NotFound, "TRANSACTION_NOT_FOUND");
                };
                let original = &seed.history[t];
                let sign = match original.r#type() {
                    pb::TransactionType::Usage => 1,
                    pb::TransactionType::TopUp | pb::TransactionType::Grant => -1,
                    _ => return Expected::Error(Code::FailedPrecondition, "NOT_REFUNDABLE"),
                };
                let remaining = original.amount.abs() - original.refunded_amount;
                let requested = amount.unwrap_or(remaining);
                if requested > remaining || requested <= 0 {
                    return Expected::Error(Code::FailedPrecondition, "REFUND_EXCEEDS_ORIGINAL");
                }
                // The seed balance covers every refund of a grant or top-up.
                Expected::Applied {
                    kind: pb::TransactionType::Refund,
                    delta: sign * requested,
                    refund_of: Some((t, requested)),
                }
            })
        }
        Call::GetTransaction { user, target } => {
            f.id("user_id", &user_id(seed, user));
            let target_id = tx_str(seed, target);
            f.tx_id(&target_id);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            if !is_seed_user(user) {
                return Expected::Error(Code::NotFound, "USER_NOT_FOUND");
            }
            let same_uuid = |t: &pb::Transaction| {
                uuid::Uuid::try_parse(&t.transaction_id).ok()
                    == uuid::Uuid::try_parse(&target_id).ok()
            };
            match seed.history.iter().position(same_uuid) {
                // Found whatever the spelling (the server reads any spelling
                // as the canonical id it issued).
                Some(i) => Expected::Transaction(i, true),
                None => Expected::Error(Code::NotFound, "TRANSACTION_NOT_FOUND"),
            }
        }
        Call::List {
            user,
            page_size,
            token,
            types,
            after,
            before,
            graph_exec_id,
        } => {
            let id = user_id(seed, user);
            f.id("user_id", &id);
            f.bad("page_size", *page_size < 0);
            for (i, t) in types.iter().enumerate() {
                f.bad(&format!("types[{i}]"), !(1..=6).contains(t));
            }
            let after_t = after.as_ref().map(|t| time_value(seed, t));
            let before_t = before.as_ref().map(|t| time_value(seed, t));
            let after_ok = after_t.as_ref().map(time_ok);
            let before_ok = before_t.as_ref().map(time_ok);
            f.bad("created_after", matches!(after_ok, Some(None)));
            f.bad("created_before", matches!(before_ok, Some(None)));
            if let (Some(Some(a)), Some(Some(b))) = (after_ok, before_ok) {
                f.bad("created_before", a >= b);
            }
            f.text("graph_exec_id", graph_exec_id);
            if let Some(invalid) = f.into_expected() {
                return invalid;
            }
            // The token is read before the user is looked up; it is valid
            // only for the user and the filters it was issued with (none).
            let unfiltered =
                types.is_empty() && after.is_none() && before.is_none() && graph_exec_id.is_empty();
            let below = match token {
                // An empty token is no token.
                _ if token_str(seed, token).is_empty() => None,
                None => None,
                // It was issued after the newest transaction, the 4th.
                Some(TokenArg::Real) if id == seed.user_id && unfiltered => Some(4),
                Some(TokenArg::RealAt(s)) if id == seed.user_id && unfiltered && *s >= 1 => {
                    Some(*s)
                }
                Some(_) => return Expected::Invalid(vec!["page_token".to_owned()]),
            };
            if id != seed.user_id {
                return Expected::Error(Code::NotFound, "USER_NOT_FOUND");
            }
            let size = match *page_size {
                0 => 50,
                n => (n as usize).min(1000),
            };
            let in_range = |t: &pb::Transaction, strict: bool| {
                let at = to_time(&t.created_at.unwrap_or_default());
                let near = |b: &Timestamp| {
                    (to_time(b) - at)
                        .num_nanoseconds()
                        .unwrap_or(i64::MAX)
                        .abs()
                        < 1000
                };
                let lo = after_t
                    .as_ref()
                    .is_none_or(|a| at >= to_time(a) || (!strict && near(a)));
                let hi = before_t
                    .as_ref()
                    .is_none_or(|b| at < to_time(b) || (!strict && near(b)));
                lo && hi
            };
            let matches = |t: &pb::Transaction, strict: bool| {
                below.is_none_or(|s| t.sequence < s)
                    && (types.is_empty() || types.contains(&t.r#type))
                    && (graph_exec_id.is_empty()
                        || t.usage
                            .as_ref()
                            .is_some_and(|u| &u.graph_exec_id == graph_exec_id)
                            && t.r#type() == pb::TransactionType::Usage)
                    && in_range(t, strict)
            };
            let newest_first = (0..seed.history.len()).rev();
            let sure: Vec<usize> = newest_first
                .clone()
                .filter(|&i| matches(&seed.history[i], true))
                .collect();
            let maybe: Vec<usize> = newest_first
                .filter(|&i| matches(&seed.history[i], false) && !sure.contains(&i))
                .collect();
            let more = sure.len() > size;
            Expected::Page(sure.into_iter().take(size).collect(), more, maybe)
        }
    }
}

/// The write rules after the field checks: the user, then the key (a
/// replay of the seed write with that key, or its reuse), then `rules`.
fn write_rules(
    seed: &Seed,
    user: &UserArg,
    key: &KeyArg,
    seed_index: usize,
    same_as_seed: bool,
    rules: impl FnOnce() -> Expected,
) -> Expected {
    if user_id(seed, user) != seed.user_id {
        return Expected::Error(Code::NotFound, "USER_NOT_FOUND");
    }
    if let KeyArg::Seed(k) = key {
        return if *k == seed_index && same_as_seed {
            Expected::Replayed(*k)
        } else {
            Expected::Error(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
        };
    }
    rules()
}

/// Compares the answer and the state after the call with the oracle.
fn check(
    seed: &Seed,
    call: &Call,
    expected: Expected,
    got: Result<Reply, Status>,
    after: &[pb::Transaction],
    balance: i64,
) -> anyhow::Result<()> {
    let unchanged = || -> anyhow::Result<()> {
        ensure!(
            balance == SEED_BALANCE && after == seed.history.as_slice(),
            "the state changed: balance {balance}, history {after:#?}"
        );
        Ok(())
    };
    let refused = |code: Code, reason: &str| -> anyhow::Result<Status> {
        match got.as_ref() {
            Ok(r) => bail!("expected {code:?}/{reason}, got {r:?}"),
            Err(s) => {
                ensure!(
                    s.code() == code && api::reason(s).as_deref() == Some(reason),
                    "expected {code:?}/{reason}, got {s:?}"
                );
                Ok(s.clone())
            }
        }
    };
    match expected {
        Expected::Invalid(fields) => {
            let status = refused(Code::InvalidArgument, "INVALID_ARGUMENT")?;
            let mut named = api::bad_fields(&status);
            named.sort();
            // Answers cut long field paths (metadata keys are the caller's)
            // to 128 characters and a '…'.
            let mut fields: Vec<String> = fields.iter().map(|f| reported_field(f)).collect();
            fields.sort();
            ensure!(
                named == fields,
                "BadRequest names {named:?}, expected {fields:?}"
            );
            unchanged()
        }
        Expected::Error(code, reason) => {
            refused(code, reason)?;
            unchanged()
        }
        Expected::Created { user_id, email } => {
            let Ok(Reply::User(u)) = got else {
                bail!("expected a new user, got {got:?}")
            };
            let Call::CreateUser { name, .. } = call else {
                unreachable!()
            };
            ensure!(
                u.user_id == user_id && u.email == email && &u.name == name,
                "created {u:?}"
            );
            unchanged()
        }
        Expected::SeedUser => {
            let Ok(Reply::User(u)) = got else {
                bail!("expected the seed user, got {got:?}")
            };
            ensure!(
                u.user_id == seed.user_id && u.email == seed.email && u.name == seed.name,
                "got {u:?}"
            );
            unchanged()
        }
        Expected::Balance => {
            let Ok(Reply::Balance(b, seq)) = got else {
                bail!("expected the balance, got {got:?}")
            };
            ensure!(
                b == SEED_BALANCE && seq == 4,
                "balance {b}, last_sequence {seq}"
            );
            unchanged()
        }
        Expected::Replayed(i) => {
            let Ok(Reply::Written(tx, b)) = got else {
                bail!("expected a replay, got {got:?}")
            };
            ensure!(
                *tx == seed.history[i] && b == tx.running_balance,
                "replayed {tx:?} / {b}, the original is {:?}",
                seed.history[i]
            );
            unchanged()
        }
        Expected::Applied {
            kind,
            delta,
            refund_of,
        } => {
            let Ok(Reply::Written(tx, b)) = got else {
                bail!("expected a new {kind:?} of {delta}, got {got:?}")
            };
            let (key, metadata) = match call {
                Call::TopUp { key, metadata, .. }
                | Call::Spend { key, metadata, .. }
                | Call::Grant { key, metadata, .. }
                | Call::Refund { key, metadata, .. } => (key_str(key), metadata),
                _ => unreachable!(),
            };
            let new_balance = SEED_BALANCE + delta;
            ensure!(
                tx.r#type() == kind
                    && tx.amount == delta
                    && tx.running_balance == new_balance
                    && tx.sequence == 5
                    && b == new_balance
                    && (key.is_empty() || tx.idempotency_key == key),
                "wrote {tx:?} / balance {b}"
            );
            // What was accepted comes back exactly (numbers bit for bit).
            ensure!(
                same_metadata(&tx.metadata, metadata, 0),
                "metadata changed on the way: sent {metadata:?}, got {:?}",
                tx.metadata
            );
            let mut want = seed.history.clone();
            if let Some((t, refunded)) = refund_of {
                want[t].refunded_amount += refunded;
            }
            want.push(*tx);
            ensure!(
                balance == new_balance && same_history(after, &want),
                "state after the write: balance {balance}, history {after:#?}"
            );
            Ok(())
        }
        Expected::Transaction(i, exact) => {
            match got {
                Ok(Reply::Transactions(txs, _)) => ensure!(
                    txs == [seed.history[i].clone()],
                    "got {txs:?}, expected {:?}",
                    seed.history[i]
                ),
                // Another spelling of the id may be not found (it is not
                // the id the server issued); never something else.
                Err(s) if !exact => ensure!(
                    s.code() == Code::NotFound
                        && api::reason(&s).as_deref() == Some("TRANSACTION_NOT_FOUND"),
                    "{s:?}"
                ),
                other => bail!("expected transaction {i}, got {other:?}"),
            }
            unchanged()
        }
        Expected::Page(sure, more, maybe) => {
            let Ok(Reply::Transactions(txs, next)) = got else {
                bail!("expected a page, got {got:?}")
            };
            let got_ids: Vec<&str> = txs.iter().map(|t| t.transaction_id.as_str()).collect();
            let want_ids: Vec<&str> = sure
                .iter()
                .map(|&i| seed.history[i].transaction_id.as_str())
                .collect();
            let lenient = |ids: &[&str]| -> Vec<String> {
                ids.iter()
                    .filter(|id| {
                        !maybe
                            .iter()
                            .any(|&i| seed.history[i].transaction_id == **id)
                    })
                    .map(|id| id.to_string())
                    .collect()
            };
            if maybe.is_empty() {
                ensure!(
                    got_ids == want_ids && next.is_empty() != more,
                    "listed {got_ids:?} (next {next:?}), expected {want_ids:?} (more: {more})"
                );
            } else {
                // A bound within a microsecond of a transaction's time: the
                // databases keep microseconds, so it may fall either way.
                ensure!(
                    lenient(&got_ids) == lenient(&want_ids),
                    "listed {got_ids:?}, expected {want_ids:?} give or take {maybe:?}"
                );
            }
            for t in &txs {
                ensure!(
                    seed.history.contains(t),
                    "listed {t:?}, which is not as stored"
                );
            }
            unchanged()
        }
    }
}

/// Histories equal but for metadata numbers that came back from the
/// database one unit in the last place off (see
/// `metadata_numbers_survive_the_database`).
fn same_history(got: &[pb::Transaction], want: &[pb::Transaction]) -> bool {
    let bare = |t: &pb::Transaction| pb::Transaction {
        metadata: None,
        ..t.clone()
    };
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| bare(g) == bare(w) && same_metadata(&g.metadata, &w.metadata, 1))
}

/// Metadata as the server should return it: the same fields and values,
/// numbers at most `ulps` units in the last place apart.
fn same_metadata(got: &Option<Struct>, sent: &Option<Struct>, ulps: u64) -> bool {
    let value = |a: &Value, b: &Value| same_value(a, b, ulps);
    match (got, sent) {
        (Some(a), Some(b)) => {
            a.fields.len() == b.fields.len()
                && a.fields
                    .iter()
                    .zip(&b.fields)
                    .all(|((ka, va), (kb, vb))| ka == kb && value(va, vb))
        }
        (None, None) => true,
        _ => false,
    }
}

fn same_value(a: &Value, b: &Value, ulps: u64) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::NumberValue(x)), Some(Kind::NumberValue(y))) => {
            x.to_bits() == y.to_bits()
                || (x.signum() == y.signum() && x.to_bits().abs_diff(y.to_bits()) <= ulps)
        }
        (Some(Kind::NullValue(_)), Some(Kind::NullValue(_))) => true,
        (Some(Kind::StructValue(x)), Some(Kind::StructValue(y))) => {
            same_metadata(&Some(x.clone()), &Some(y.clone()), ulps)
        }
        (Some(Kind::ListValue(x)), Some(Kind::ListValue(y))) => {
            x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(a, b)| same_value(a, b, ulps))
        }
        (x, y) => x == y,
    }
}

// ---------------------------------------------------------------------------
// Inputs the server once mishandled, pinned here with the smallest input
// that showed each bug (the comments say what was wrong); each now passes.

/// Runs `scenario` on a fresh server of `backend` (skipped when unset). A
/// minute is plenty; a hang (e.g. a database connection left wedged by a
/// bad query, so the server cannot stop) fails the test.
async fn pinned<F>(name: &str, backend: Backend, scenario: F)
where
    F: AsyncFnOnce(&TestServer) -> anyhow::Result<()>,
{
    let run = integration_tests::run(name, backend, scenario);
    if tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .is_err()
    {
        panic!("{name} on {backend:?} hung (the scenario or the server's shutdown)");
    }
}

/// Asserts that a call was answered INVALID_ARGUMENT with the field
/// violation `field`, and that the same channel still works afterwards.
async fn readable_refusal<T: std::fmt::Debug>(
    c: &mut Client,
    got: Result<T, Status>,
    field: &str,
) -> anyhow::Result<()> {
    let status = api::assert_error(got, Code::InvalidArgument, "INVALID_ARGUMENT");
    ensure!(
        api::bad_fields(&status)
            .iter()
            .any(|f| f.starts_with(field)),
        "{:?}",
        api::bad_fields(&status)
    );
    api::balance(c, "u")
        .await
        .context("the next call on the same channel")?;
    Ok(())
}

fn one_field(key: &str, kind: Kind) -> Option<Struct> {
    Some(Struct {
        fields: [(key.to_owned(), Value { kind: Some(kind) })].into(),
    })
}

async fn top_up_with_metadata(
    c: &mut Client,
    metadata: Option<Struct>,
) -> Result<pb::TopUpResponse, Status> {
    c.top_up(pb::TopUpRequest {
        user_id: "u".into(),
        amount: 1,
        idempotency_key: String::new(),
        metadata,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Bug: metadata is stored as JSON text and parsed back with serde_json's
/// default float parsing, which is not exact without its `float_roundtrip`
/// feature. TopUp with metadata {"n": 2.702707759663711e-171} answers that
/// number, but GetTransaction (and ListTransactions, and a replay) then
/// return 2.7027077596637112e-171: one unit in the last place off, against
/// "Caller-supplied metadata, returned exactly as given". The fuzz tolerates
/// that one unit for stored metadata; the answer to the write is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_numbers_survive_the_database() {
    pinned("metadata_numbers", Backend::Sqlite, async |server| {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        let sent = one_field("n", Kind::NumberValue(2.702707759663711e-171));
        let written = top_up_with_metadata(&mut c, sent.clone())
            .await?
            .transaction
            .context("no transaction")?;
        ensure!(same_metadata(&written.metadata, &sent, 0));
        let read = c
            .get_transaction(pb::GetTransactionRequest {
                user_id: "u".into(),
                transaction_id: written.transaction_id,
            })
            .await?
            .into_inner()
            .transaction
            .context("no transaction")?;
        ensure!(
            same_metadata(&read.metadata, &sent, 0),
            "sent {sent:?}, read back {:?}",
            read.metadata
        );
        Ok(())
    })
    .await
}

/// Bug: a refusal repeats unbounded caller input in its answer. The path of
/// a bad metadata value is the caller's keys, and it goes into both the
/// message and the BadRequest of the trailers; with a 5,000-character key
/// the trailers pass the HTTP/2 header limit and the caller gets INTERNAL
/// ("h2 protocol error"), no ErrorInfo, nothing to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_metadata_path_gives_a_readable_error() {
    pinned("long_metadata_path", Backend::Sqlite, async |server| {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        let bad = one_field(&"k".repeat(5_000), Kind::NumberValue(f64::NAN));
        let got = top_up_with_metadata(&mut c, bad).await;
        readable_refusal(&mut c, got, "metadata").await
    })
    .await
}

/// Bug: the same with many violations: ListTransactions with 100 unknown
/// `types` (a 300-byte request) lists all 100 in the message and the
/// BadRequest; the caller gets INTERNAL without details, and with 200 the
/// next call on the same channel fails too (CANCELLED: the connection was
/// reset), so one bad request breaks other calls sharing the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_types_give_a_readable_error() {
    pinned("many_bad_types", Backend::Sqlite, async |server| {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        for n in [100, 200] {
            let got = c
                .list_transactions(pb::ListTransactionsRequest {
                    user_id: "u".into(),
                    types: vec![99; n],
                    ..Default::default()
                })
                .await;
            readable_refusal(&mut c, got, "types[").await?;
        }
        Ok(())
    })
    .await
}

/// Bug: metadata nested 33 objects deep (`{"a":{"a":...{"a":1}}}`, 34
/// levels) passes the protobuf decoder's recursion limit, and tonic answers
/// a message it cannot decode with INTERNAL ("failed to decode Protobuf
/// message"), without ErrorInfo. Lists go 48 deep before the same happens.
/// The fuzz stays within 8 levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_metadata_is_invalid_argument() {
    pinned("deep_metadata", Backend::Sqlite, async |server| {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        let mut deep = one_field("a", Kind::NumberValue(1.0));
        for _ in 0..33 {
            deep = one_field("a", Kind::StructValue(deep.unwrap_or_default()));
        }
        let got = top_up_with_metadata(&mut c, deep).await;
        readable_refusal(&mut c, got, "metadata").await
    })
    .await
}

/// Text fields (name, reason, usage details, the graph_exec_id filter) may
/// hold any character but must never make the server fail: stored and
/// returned, or refused as INVALID_ARGUMENT. Bug on PostgreSQL: a NUL
/// character, which PostgreSQL text cannot hold, is answered INTERNAL
/// (`Grant{reason: "a\0b"}`, `CreateUser{name: "a\0b"}`, a Spend with
/// usage.graph_exec_id "g\0", ListTransactions{graph_exec_id: "g\0"}).
/// Metadata strings are fine (JSON escapes them). The fuzz keeps NUL out of
/// text fields on PostgreSQL.
async fn nul_in_text(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let fine = |what: &str, got: Result<(), Status>| match got {
        Ok(()) => Ok(()),
        Err(s) if s.code() == Code::InvalidArgument => Ok(()),
        Err(s) => Err(anyhow::anyhow!("{what}: {s:?}")),
    };
    let created = c
        .create_user(pb::CreateUserRequest {
            user_id: "u".into(),
            email: "u@example.com".into(),
            name: "a\0b".into(),
        })
        .await;
    fine("CreateUser name", created.map(|_| ()))?;
    api::create_user(&mut c, "v").await?;
    let grant = c
        .grant(pb::GrantRequest {
            user_id: "v".into(),
            amount: 10,
            reason: "a\0b".into(),
            ..Default::default()
        })
        .await;
    fine("Grant reason", grant.map(|_| ()))?;
    api::top_up(&mut c, "v", 10).await?;
    let spend = c
        .spend(pb::SpendRequest {
            user_id: "v".into(),
            amount: 1,
            usage: Some(pb::UsageDetails {
                graph_exec_id: "g\0".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    fine("Spend usage.graph_exec_id", spend.map(|_| ()))?;
    let list = c
        .list_transactions(pb::ListTransactionsRequest {
            user_id: "v".into(),
            graph_exec_id: "g\0".into(),
            ..Default::default()
        })
        .await;
    fine("ListTransactions graph_exec_id", list.map(|_| ()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_sqlite() {
    pinned("nul_in_text", Backend::Sqlite, nul_in_text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_postgres() {
    pinned("nul_in_text", Backend::Postgres, nul_in_text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_text_mysql() {
    pinned("nul_in_text", Backend::MySql, nul_in_text).await
}

/// A history filter with any valid time (the API accepts every time
/// `google.protobuf.Timestamp` can hold that chrono can) must either filter
/// correctly or be refused as INVALID_ARGUMENT, on every backend. One
/// transaction made now; each bound must include or exclude it correctly.
/// Bugs:
/// - SQLite stores times as RFC 3339 text and compares them as text, so a
///   bound in year 10000 or later ("+10000-...") sorts before every real
///   time: `created_after` 10000-01-01 lists today's transaction,
///   `created_before` 10000-01-01 lists nothing.
/// - PostgreSQL: a bound before 4713 BC (e.g. year -5000) is answered
///   INTERNAL ("timestamp out of range").
/// - MariaDB: a bound before year 0 or after 9999 is answered INTERNAL (the
///   driver drops the parameter: "prepared statement expected 3 parameters
///   but 2 parameters were provided"), bounds such as 1000-01-01 and
///   9999-01-01 filter wrongly (`created_after` 1000-01-01 lists nothing),
///   and after such a query the server does not shut down (a pool
///   connection is left wedged).
///
/// The fuzz keeps its valid times within years 2000 to 2037 (see `time`).
async fn far_time_filters(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 1).await?;
    let start_of = |year: i32| {
        chrono::NaiveDate::from_ymd_opt(year, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp())
            .unwrap_or_default()
    };
    let mut wrong = Vec::new();
    for year in [-5000, -1, 1000, 1969, 2039, 9999, 10_000, 100_000] {
        let bound = Some(Timestamp {
            seconds: start_of(year),
            nanos: 0,
        });
        let now_is_after = year < 2026;
        for (after, expected) in [(true, now_is_after), (false, !now_is_after)] {
            let got = c
                .list_transactions(pb::ListTransactionsRequest {
                    user_id: "u".into(),
                    created_after: bound.filter(|_| after),
                    created_before: bound.filter(|_| !after),
                    ..Default::default()
                })
                .await;
            let got = got.map(|page| page.into_inner().transactions.len());
            let which = if after {
                "created_after"
            } else {
                "created_before"
            };
            match got {
                Ok(listed) if (listed == 1) == expected => {}
                Err(s) if s.code() == Code::InvalidArgument => {}
                other => wrong.push(format!("{which} {year}-01-01: {other:?}")),
            }
        }
    }
    if !wrong.is_empty() {
        // Said now too: on MariaDB the server then hangs on shutdown, and
        // the harness reports the error only after that.
        eprintln!("far_time_filters: wrong answers: {wrong:#?}");
    }
    ensure!(wrong.is_empty(), "wrong answers: {wrong:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_time_filters_sqlite() {
    pinned("far_time_filters", Backend::Sqlite, far_time_filters).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_time_filters_postgres() {
    pinned("far_time_filters", Backend::Postgres, far_time_filters).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_time_filters_mysql() {
    pinned("far_time_filters", Backend::MySql, far_time_filters).await
}

/// Ids, idempotency keys and emails are compared exactly: "alice",
/// "ALICE" and "alicé" are three users, "key" and "KEY" two keys, and
/// "josé@x.com" is not "jose@x.com". Bug on MariaDB: the tables use the
/// server's default collation (utf8mb4_general_ci, case- and
/// accent-insensitive), so there
/// - CreateUser("ALICE") after "alice" is USER_ALREADY_EXISTS, and
///   GetBalance("ALICE") answers alice's balance (another user's data);
/// - CreateUser with "jose@x.com" after "josé@x.com" is
///   EMAIL_ALREADY_EXISTS;
/// - TopUp(alice, key "KEY") after key "key" is ABORTED/CONFLICT, on every
///   retry: the lookup in Rust misses, the unique index does not.
///
/// The model test's ids and keys never differ only in case or accents.
async fn exact_names(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for (id, email) in [
        ("alice", "alice@x.com"),
        ("ALICE", "alice2@x.com"),
        ("alicé", "alice3@x.com"),
        ("bob", "josé@x.com"),
        ("bob2", "jose@x.com"),
    ] {
        let user = c
            .create_user(pb::CreateUserRequest {
                user_id: id.into(),
                email: email.into(),
                name: String::new(),
            })
            .await
            .with_context(|| format!("CreateUser({id}, {email})"))?
            .into_inner()
            .user
            .unwrap_or_default();
        ensure!(
            user.user_id == id && user.email == email,
            "created {user:?}"
        );
    }
    api::top_up(&mut c, "alice", 7).await?;
    for id in ["ALICE", "alicé"] {
        let balance = c
            .get_balance(pb::GetBalanceRequest { user_id: id.into() })
            .await?
            .into_inner();
        ensure!(
            balance.user_id == id && balance.balance == 0,
            "GetBalance({id}): {balance:?}"
        );
    }
    for (key, amount) in [("key", 1), ("KEY", 2), ("kéy", 3)] {
        let tx = api::top_up_with_key(&mut c, "alice", amount, key)
            .await
            .with_context(|| format!("TopUp with key {key}"))?
            .transaction
            .unwrap_or_default();
        ensure!(tx.amount == amount && tx.idempotency_key == key, "{tx:?}");
    }
    ensure!(api::balance(&mut c, "alice").await? == 13);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_names_sqlite() {
    pinned("exact_names", Backend::Sqlite, exact_names).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_names_postgres() {
    pinned("exact_names", Backend::Postgres, exact_names).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_names_mysql() {
    pinned("exact_names", Backend::MySql, exact_names).await
}
