//! Model-based property test: proptest generates sequences of operations,
//! valid and invalid, runs them against the real server (loopback port, real
//! generated client) and compares every answer with a small in-memory model
//! of the ledger's rules (README "The API in brief", `ledger/rules.rs`,
//! `ledger/batch.rs`). At the end of each case the full state (balances and
//! histories) is compared and the ledger invariants are checked.
//!
//! One server per backend serves every case; each case lives in its own
//! namespace of user ids and emails, so cases (and proptest's shrinking
//! reruns) never see each other's state. `PROPTEST_CASES` sets the number
//! of cases (default 32).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use integration_tests::{Backend, Client, TestServer, api, invariants};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost_types::{Struct, Value, value::Kind};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Users a case may create; slot `GHOST` is never created.
const USERS: usize = 3;
const GHOST: usize = USERS;
/// A tiny pool, so keys are reused with the same and with other parameters.
const KEYS: [&str; 3] = ["key-a", "key-b", "key-c"];
/// Ample for 60 operations; a hung server fails the case instead of the run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn model_sqlite() {
    run_backend(Backend::Sqlite);
}

#[test]
fn model_postgres() {
    run_backend(Backend::Postgres);
}

#[test]
fn model_mysql() {
    run_backend(Backend::MySql);
}

// ---------------------------------------------------------------------------
// Operations and their strategies. Amounts and targets are described
// relative to the model's state and resolved when the operation runs, so
// that "just enough", "one too many" and "exactly to i64::MAX" come up often
// instead of by chance.

#[derive(Debug, Clone)]
enum Amount {
    Small(i64),
    Zero,
    Negative(i64),
    Max,
    /// `i64::MAX - balance + d`: around the largest amount that fits.
    Headroom(i64),
    /// `balance + d`: around the whole balance.
    OfBalance(i64),
}

#[derive(Debug, Clone)]
enum RefundAmount {
    /// No amount: everything not yet refunded.
    All,
    /// `remaining + d`.
    Remaining(i64),
    /// A percentage of what remains (at least 1).
    Part(u8),
    Fixed(Amount),
}

#[derive(Debug, Clone)]
enum Target {
    /// A transaction of the same user.
    Own(Index),
    /// A transaction of another user of the case.
    Foreign(Index),
    /// A UUID no transaction has.
    Unknown,
}

#[derive(Debug, Clone)]
enum Email {
    /// The slot's own address.
    Own,
    /// Another slot's address.
    OtherSlot(usize),
    /// An address no slot owns by default.
    Fresh(u8),
}

#[derive(Debug, Clone)]
enum Op {
    CreateUser {
        slot: usize,
        email: Email,
        upper: bool,
        padded: bool,
        name: u8,
    },
    TopUp {
        slot: usize,
        amount: Amount,
        key: Option<usize>,
        meta: u8,
    },
    Spend {
        slot: usize,
        amount: Amount,
        key: Option<usize>,
        meta: u8,
        usage: u8,
    },
    Grant {
        slot: usize,
        amount: Amount,
        key: Option<usize>,
        meta: u8,
        reason: u8,
    },
    Refund {
        slot: usize,
        target: Target,
        amount: RefundAmount,
        key: Option<usize>,
        meta: u8,
        reason: u8,
    },
    GetBalance {
        slot: usize,
    },
    GetTransaction {
        slot: usize,
        target: Target,
    },
    List {
        slot: usize,
        page_size: i32,
        types: Vec<i32>,
    },
    /// Sends an earlier write of the case again, verbatim: a replay when it
    /// had a key and was applied, else whatever the state now says.
    Retry(Index),
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        // A few common values, so that equal requests come up.
        5 => prop::sample::select(vec![1i64, 10, 100]).prop_map(Amount::Small),
        5 => (1..=1000i64).prop_map(Amount::Small),
        1 => Just(Amount::Zero),
        1 => (i64::MIN..0).prop_map(Amount::Negative),
        1 => Just(Amount::Max),
        2 => (-2..=2i64).prop_map(Amount::Headroom),
        2 => (-2..=2i64).prop_map(Amount::OfBalance),
    ]
}

fn refund_amount() -> impl Strategy<Value = RefundAmount> {
    prop_oneof![
        3 => Just(RefundAmount::All),
        2 => (-2..=2i64).prop_map(RefundAmount::Remaining),
        3 => (1..=99u8).prop_map(RefundAmount::Part),
        2 => amount().prop_map(RefundAmount::Fixed),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Own),
        1 => any::<Index>().prop_map(Target::Foreign),
        1 => Just(Target::Unknown),
    ]
}

fn email() -> impl Strategy<Value = Email> {
    prop_oneof![
        4 => Just(Email::Own),
        1 => (0..USERS).prop_map(Email::OtherSlot),
        1 => (0..2u8).prop_map(Email::Fresh),
    ]
}

fn key() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.7, 0..KEYS.len())
}

fn op() -> impl Strategy<Value = Op> {
    // Writes go to the ghost now and then, to check USER_NOT_FOUND.
    let slot = || prop_oneof![15 => 0..USERS, 1 => Just(GHOST)];
    prop_oneof![
        2 => (0..USERS, email(), any::<bool>(), any::<bool>(), 0..2u8).prop_map(
            |(slot, email, upper, padded, name)| Op::CreateUser { slot, email, upper, padded, name }
        ),
        5 => (slot(), amount(), key(), 0..4u8)
            .prop_map(|(slot, amount, key, meta)| Op::TopUp { slot, amount, key, meta }),
        5 => (slot(), amount(), key(), 0..4u8, 0..4u8).prop_map(
            |(slot, amount, key, meta, usage)| Op::Spend { slot, amount, key, meta, usage }
        ),
        3 => (slot(), amount(), key(), 0..4u8, 0..3u8).prop_map(
            |(slot, amount, key, meta, reason)| Op::Grant { slot, amount, key, meta, reason }
        ),
        5 => (slot(), target(), refund_amount(), key(), 0..4u8, 0..3u8).prop_map(
            |(slot, target, amount, key, meta, reason)| Op::Refund { slot, target, amount, key, meta, reason }
        ),
        1 => slot().prop_map(|slot| Op::GetBalance { slot }),
        2 => (slot(), target()).prop_map(|(slot, target)| Op::GetTransaction { slot, target }),
        4 => any::<Index>().prop_map(Op::Retry),
        1 => (
            slot(),
            prop::sample::select(vec![-1, 0, 1, 2, 3, 7, 5000]),
            prop::collection::vec(1..=5i32, 0..=2),
        )
            .prop_map(|(slot, page_size, types)| Op::List { slot, page_size, types }),
    ]
}

/// 20-60 operations after creating users 0 and 1, so that most cases have
/// someone to write to from the start (user 2 waits for a generated
/// CreateUser).
fn scenario() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 20..=60).prop_map(|ops| {
        let create = |slot| Op::CreateUser {
            slot,
            email: Email::Own,
            upper: false,
            padded: false,
            name: 0,
        };
        [create(0), create(1)].into_iter().chain(ops).collect()
    })
}

// ---------------------------------------------------------------------------
// The model.

/// Kinds as the wire numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxType {
    TopUp = 1,
    Usage = 2,
    Grant = 3,
    Refund = 4,
}

/// One write as sent.
#[derive(Debug, Clone)]
struct Write {
    slot: usize,
    key: Option<&'static str>,
    params: Params,
}

/// A write's parameters besides user and key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Params {
    TopUp {
        amount: i64,
        meta: u8,
    },
    Spend {
        amount: i64,
        meta: u8,
        /// A `usage()` code.
        usage: u8,
    },
    Grant {
        amount: i64,
        meta: u8,
        reason: Option<&'static str>,
    },
    Refund {
        target: String,
        amount: Option<i64>,
        meta: u8,
        reason: Option<&'static str>,
    },
}

impl Params {
    /// What the server's fingerprint covers: equal fingerprints are a
    /// retry, different ones a reuse of the key. Absent usage and empty
    /// usage are the same request.
    fn fingerprint(&self) -> Params {
        match self {
            Params::Spend {
                amount,
                meta,
                usage: 1,
            } => Params::Spend {
                amount: *amount,
                meta: *meta,
                usage: 0,
            },
            other => other.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct ModelTx {
    id: String,
    slot: usize,
    kind: TxType,
    amount: i64,
    running_balance: i64,
    sequence: i64,
    /// The caller's key; `None` when the server made one.
    key: Option<&'static str>,
    graph: Option<&'static str>,
    reason: Option<&'static str>,
    meta: u8,
    refunded_transaction_id: Option<String>,
    refunded_amount: i64,
}

#[derive(Debug)]
struct ModelUser {
    email: String,
    name: String,
    balance: i64,
    /// Indexes into `Model::txs`, oldest first.
    txs: Vec<usize>,
    keys: HashMap<&'static str, (Params, usize)>,
}

/// One case's ledger as the rules say it should be.
struct Model {
    ns: String,
    users: Vec<Option<ModelUser>>,
    txs: Vec<ModelTx>,
    /// Normalised email -> slot.
    emails: HashMap<String, usize>,
    /// Every write sent so far, for verbatim retries.
    sent: Vec<Write>,
    /// How often each outcome came up, to show what the run exercised.
    outcomes: BTreeMap<&'static str, usize>,
}

impl Model {
    fn new(ns: String) -> Self {
        Self {
            ns,
            users: (0..USERS).map(|_| None).collect(),
            txs: Vec::new(),
            emails: HashMap::new(),
            sent: Vec::new(),
            outcomes: BTreeMap::new(),
        }
    }

    fn user_id(&self, slot: usize) -> String {
        if slot == GHOST {
            format!("{}-ghost", self.ns)
        } else {
            format!("{}-u{slot}", self.ns)
        }
    }

    fn user(&self, slot: usize) -> Option<&ModelUser> {
        self.users.get(slot).and_then(Option::as_ref)
    }

    fn balance(&self, slot: usize) -> i64 {
        self.user(slot).map_or(0, |u| u.balance)
    }

    /// The transaction id a target names for `slot`: one of its own, one of
    /// another user of the case, or an unknown UUID (also when the wanted
    /// kind has none).
    fn target_id(&self, slot: usize, target: &Target) -> String {
        let pick = |mine: bool, index: &Index| {
            let candidates: Vec<&ModelTx> = self
                .txs
                .iter()
                .filter(|t| (t.slot == slot) == mine)
                .collect();
            (!candidates.is_empty()).then(|| index.get(&candidates).id.clone())
        };
        match target {
            Target::Own(i) => pick(true, i),
            Target::Foreign(i) => pick(false, i),
            Target::Unknown => None,
        }
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }

    /// This user's transaction with `id`.
    fn own_tx(&self, slot: usize, id: &str) -> Option<usize> {
        self.txs.iter().position(|t| t.id == id && t.slot == slot)
    }
}

fn resolve(amount: &Amount, balance: i64) -> i64 {
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    match amount {
        Amount::Small(n) | Amount::Negative(n) => *n,
        Amount::Zero => 0,
        Amount::Max => i64::MAX,
        Amount::Headroom(d) => clamp(i64::MAX as i128 - balance as i128 + *d as i128),
        Amount::OfBalance(d) => clamp(balance as i128 + *d as i128),
    }
}

fn metadata(code: u8) -> Option<Struct> {
    let number = |n: f64| Struct {
        fields: [(
            "n".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(n)),
            },
        )]
        .into(),
    };
    match code {
        0 => None,
        // Present but empty is not the same request as absent.
        1 => Some(Struct::default()),
        2 => Some(number(1.0)),
        _ => Some(number(2.5)),
    }
}

/// Free text; "" is how the wire says "absent".
fn text(code: u8) -> Option<&'static str> {
    match code {
        0 => None,
        1 => Some("alpha"),
        _ => Some("beta"),
    }
}

/// Spend usage: absent, present but empty (the same request), or a graph.
fn usage(code: u8) -> (Option<pb::UsageDetails>, Option<&'static str>) {
    match code {
        0 => (None, None),
        1 => (Some(pb::UsageDetails::default()), None),
        2 => (Some(graph_usage("graph-1")), Some("graph-1")),
        _ => (Some(graph_usage("graph-2")), Some("graph-2")),
    }
}

fn graph_usage(id: &str) -> pb::UsageDetails {
    pb::UsageDetails {
        graph_exec_id: id.to_owned(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Running a case.

fn run_backend(backend: Backend) {
    let Some(live) = common::start("model_based", backend) else {
        return;
    };
    let (rt, server, client) = (&live.rt, &live.server, &live.client);
    let config = common::config(32);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let outcomes = RefCell::new(BTreeMap::new());
    let started = Instant::now();
    let result = runner.run(&scenario(), |ops| {
        let ns = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut client = client.clone();
        let case = rt.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, run_case(server, &mut client, ns, &ops)).await
        });
        match case {
            Ok(Ok(seen)) => {
                let mut outcomes = outcomes.borrow_mut();
                for (outcome, n) in seen {
                    *outcomes.entry(outcome).or_insert(0) += n;
                }
                Ok(())
            }
            Ok(Err(err)) => Err(TestCaseError::fail(format!("{err:#}"))),
            Err(_) => Err(TestCaseError::fail("the case timed out")),
        }
    });
    eprintln!(
        "model_based on {backend:?}: {cases} cases in {:.1?}; outcomes {:?}",
        started.elapsed(),
        outcomes.borrow()
    );
    live.finish("model_based", result);
}

async fn run_case(
    server: &TestServer,
    c: &mut Client,
    ns: String,
    ops: &[Op],
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut model = Model::new(ns);
    for (step, op) in ops.iter().enumerate() {
        apply(c, &mut model, op)
            .await
            .with_context(|| format!("step {step}: {op:?}"))?;
    }
    for slot in 0..USERS {
        let Some(user) = model.user(slot) else {
            continue;
        };
        let user_id = model.user_id(slot);
        let balance = api::balance(c, &user_id).await?;
        ensure!(
            balance == user.balance,
            "{user_id}: balance {balance}, model {}",
            user.balance
        );
        let history = invariants::check_user(server, &user_id)
            .await
            .with_context(|| format!("invariants of {user_id}"))?;
        ensure!(
            history.len() == user.txs.len(),
            "{user_id}: {} transactions, model {}",
            history.len(),
            user.txs.len()
        );
        for (got, &i) in history.iter().zip(&user.txs) {
            check_tx(got, &model.txs[i], &user_id).context("final history")?;
        }
    }
    Ok(model.outcomes)
}

/// What the model says an operation must answer.
enum Expected {
    Error {
        code: Code,
        reason: &'static str,
        /// ErrorInfo metadata that must be present with these values.
        info: Vec<(&'static str, String)>,
    },
    /// A new transaction (already pushed to the model) or a replay of one.
    Written { tx: usize, replay: bool },
}

fn error(code: Code, reason: &'static str) -> Expected {
    Expected::Error {
        code,
        reason,
        info: Vec::new(),
    }
}

async fn apply(c: &mut Client, model: &mut Model, op: &Op) -> anyhow::Result<()> {
    match op {
        Op::CreateUser {
            slot,
            email,
            upper,
            padded,
            name,
        } => create_user(c, model, *slot, email, *upper, *padded, *name).await,
        Op::GetBalance { slot } => {
            let got = c
                .get_balance(pb::GetBalanceRequest {
                    user_id: model.user_id(*slot),
                })
                .await;
            match model.user(*slot) {
                None => expect_error(got, Code::NotFound, "USER_NOT_FOUND", &[]).map(|_| ()),
                Some(user) => {
                    let got = got?.into_inner();
                    ensure!(
                        got.balance == user.balance && got.last_sequence == user.txs.len() as i64,
                        "balance {} / last_sequence {}, model {} / {}",
                        got.balance,
                        got.last_sequence,
                        user.balance,
                        user.txs.len()
                    );
                    Ok(())
                }
            }
        }
        Op::GetTransaction { slot, target } => {
            let id = model.target_id(*slot, target);
            let got = c
                .get_transaction(pb::GetTransactionRequest {
                    user_id: model.user_id(*slot),
                    transaction_id: id.clone(),
                })
                .await;
            if model.user(*slot).is_none() {
                return expect_error(got, Code::NotFound, "USER_NOT_FOUND", &[]).map(|_| ());
            }
            match model.own_tx(*slot, &id) {
                None => expect_error(got, Code::NotFound, "TRANSACTION_NOT_FOUND", &[]).map(|_| ()),
                Some(i) => {
                    let got = got?.into_inner().transaction.context("no transaction")?;
                    check_tx(&got, &model.txs[i], &model.user_id(*slot))
                }
            }
        }
        Op::List {
            slot,
            page_size,
            types,
        } => list(c, model, *slot, *page_size, types).await,
        Op::Retry(index) => match model.sent.is_empty() {
            true => Ok(()),
            false => {
                let again = index.get(&model.sent).clone();
                send_write(c, model, again).await
            }
        },
        write => match resolve_write(model, write) {
            Some(write) => send_write(c, model, write).await,
            None => bail!("not a write: {write:?}"),
        },
    }
}

async fn create_user(
    c: &mut Client,
    model: &mut Model,
    slot: usize,
    email: &Email,
    upper: bool,
    padded: bool,
    name: u8,
) -> anyhow::Result<()> {
    let canonical = match email {
        Email::Own => format!("{}-u{slot}@example.com", model.ns),
        Email::OtherSlot(other) => format!("{}-u{other}@example.com", model.ns),
        Email::Fresh(n) => format!("{}-fresh{n}@example.com", model.ns),
    };
    let mut sent = if upper {
        canonical.to_uppercase()
    } else {
        canonical.clone()
    };
    if padded {
        sent = format!(" {sent}\t");
    }
    let name = format!("Name {name}");
    let user_id = model.user_id(slot);
    let got = c
        .create_user(pb::CreateUserRequest {
            user_id: user_id.clone(),
            email: sent,
            name: name.clone(),
        })
        .await;
    // The same id and email again is the existing user (whatever the name);
    // another email for the id, or the email of another id, is refused.
    if let Some(existing) = model.user(slot) {
        if existing.email != canonical {
            return expect_error(got, Code::AlreadyExists, "USER_ALREADY_EXISTS", &[]).map(|_| ());
        }
        let user = got?.into_inner().user.context("no user")?;
        ensure!(
            user.user_id == user_id && user.email == existing.email && user.name == existing.name,
            "got {user:?}, the existing user is {existing:?}"
        );
        return Ok(());
    }
    if model.emails.contains_key(&canonical) {
        return expect_error(got, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS", &[]).map(|_| ());
    }
    let user = got?.into_inner().user.context("no user")?;
    ensure!(
        user.user_id == user_id && user.email == canonical && user.name == name,
        "created {user:?}, wanted {user_id} / {canonical} / {name}"
    );
    model.emails.insert(canonical.clone(), slot);
    model.users[slot] = Some(ModelUser {
        email: canonical,
        name,
        balance: 0,
        txs: Vec::new(),
        keys: HashMap::new(),
    });
    Ok(())
}

/// The four writes: the request as described relative to the model's
/// state, made concrete.
fn resolve_write(model: &Model, op: &Op) -> Option<Write> {
    let (slot, key) = match op {
        Op::TopUp { slot, key, .. }
        | Op::Spend { slot, key, .. }
        | Op::Grant { slot, key, .. }
        | Op::Refund { slot, key, .. } => (*slot, key.map(|k| KEYS[k])),
        _ => return None,
    };
    let balance = model.balance(slot);
    let params = match op {
        Op::TopUp { amount, meta, .. } => Params::TopUp {
            amount: resolve(amount, balance),
            meta: *meta,
        },
        Op::Spend {
            amount,
            meta,
            usage,
            ..
        } => Params::Spend {
            amount: resolve(amount, balance),
            meta: *meta,
            usage: *usage,
        },
        Op::Grant {
            amount,
            meta,
            reason,
            ..
        } => Params::Grant {
            amount: resolve(amount, balance),
            meta: *meta,
            reason: text(*reason),
        },
        Op::Refund {
            target,
            amount,
            meta,
            reason,
            ..
        } => {
            let target = model.target_id(slot, target);
            let remaining = model
                .txs
                .iter()
                .find(|t| t.id == target)
                .map_or(0, |t| t.amount.saturating_abs() - t.refunded_amount);
            let amount = match amount {
                RefundAmount::All => None,
                RefundAmount::Remaining(d) => Some(remaining.saturating_add(*d)),
                RefundAmount::Part(p) => {
                    Some(((remaining as i128 * *p as i128 / 100) as i64).max(1))
                }
                RefundAmount::Fixed(a) => Some(resolve(a, balance)),
            };
            Params::Refund {
                target,
                amount,
                meta: *meta,
                reason: text(*reason),
            }
        }
        _ => return None,
    };
    Some(Write { slot, key, params })
}

/// Sends one write, works out what the rules say about it, compares.
async fn send_write(c: &mut Client, model: &mut Model, write: Write) -> anyhow::Result<()> {
    let Write { slot, key, params } = write.clone();
    model.sent.push(write);
    let user_id = model.user_id(slot);
    let key_wire = key.unwrap_or_default().to_owned();
    let amount_sent = match &params {
        Params::TopUp { amount, .. }
        | Params::Spend { amount, .. }
        | Params::Grant { amount, .. } => Some(*amount),
        Params::Refund { amount, .. } => *amount,
    };
    let expected = expect_write(model, slot, key, &params, amount_sent);
    let outcome = match &expected {
        Expected::Error { reason, .. } => reason,
        Expected::Written { replay: true, .. } => "replayed",
        Expected::Written { .. } => "written",
    };
    *model.outcomes.entry(outcome).or_insert(0) += 1;

    let got: Result<(pb::Transaction, i64), Status> = match &params {
        Params::TopUp { amount, meta } => c
            .top_up(pb::TopUpRequest {
                user_id: user_id.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                metadata: metadata(*meta),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance)
            }),
        Params::Spend {
            amount,
            meta,
            usage: u,
        } => c
            .spend(pb::SpendRequest {
                user_id: user_id.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                usage: usage(*u).0,
                metadata: metadata(*meta),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance)
            }),
        Params::Grant {
            amount,
            meta,
            reason,
        } => c
            .grant(pb::GrantRequest {
                user_id: user_id.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                reason: reason.unwrap_or_default().to_owned(),
                metadata: metadata(*meta),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance)
            }),
        Params::Refund {
            target,
            amount,
            meta,
            reason,
        } => c
            .refund(pb::RefundRequest {
                user_id: user_id.clone(),
                transaction_id: target.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                reason: reason.unwrap_or_default().to_owned(),
                metadata: metadata(*meta),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance)
            }),
    };

    match expected {
        Expected::Error { code, reason, info } => {
            let status = expect_error(got, code, reason, &info)?;
            if reason == "INVALID_ARGUMENT" {
                ensure!(
                    api::bad_fields(&status) == ["amount"],
                    "BadRequest names {:?}, not [amount]",
                    api::bad_fields(&status)
                );
            }
            Ok(())
        }
        Expected::Written { tx, .. } => {
            let (got, balance) = got.context("the model expected success")?;
            let want = &model.txs[tx];
            check_tx(&got, want, &user_id)?;
            ensure!(
                balance == want.running_balance,
                "answered balance {balance}, the transaction's running balance is {}",
                want.running_balance
            );
            if want.id.is_empty() {
                ensure!(
                    !got.transaction_id.is_empty()
                        && !model.txs.iter().any(|t| t.id == got.transaction_id),
                    "a new transaction has the id {:?}",
                    got.transaction_id
                );
                model.txs[tx].id = got.transaction_id;
            }
            Ok(())
        }
    }
}

/// The rules, in the order the server applies them: field checks, the user,
/// the idempotency key, the operation's own rules, then the balance.
/// Updates the model when the write is applied.
fn expect_write(
    model: &mut Model,
    slot: usize,
    key: Option<&'static str>,
    params: &Params,
    amount_sent: Option<i64>,
) -> Expected {
    if amount_sent.is_some_and(|a| a <= 0) {
        return error(Code::InvalidArgument, "INVALID_ARGUMENT");
    }
    let Some(user) = model.user(slot) else {
        return error(Code::NotFound, "USER_NOT_FOUND");
    };
    if let Some(key) = key
        && let Some((original, tx)) = user.keys.get(key)
    {
        return if original.fingerprint() == params.fingerprint() {
            Expected::Written {
                tx: *tx,
                replay: true,
            }
        } else {
            Expected::Error {
                code: Code::AlreadyExists,
                reason: "IDEMPOTENCY_KEY_REUSED",
                info: vec![("idempotencyKey", key.to_owned())],
            }
        };
    }
    let balance = user.balance;

    let (kind, delta, may_go_negative, refund_of) = match params {
        Params::TopUp { amount, .. } => (TxType::TopUp, *amount, false, None),
        Params::Grant { amount, .. } => (TxType::Grant, *amount, false, None),
        Params::Spend { amount, .. } => (TxType::Usage, -*amount, false, None),
        Params::Refund { target, amount, .. } => {
            let Some(t) = model.own_tx(slot, target) else {
                return error(Code::NotFound, "TRANSACTION_NOT_FOUND");
            };
            let original = &model.txs[t];
            let (sign, may_go_negative) = match original.kind {
                TxType::Usage => (1, false),
                // The money went back to the payer: the balance may go
                // below zero.
                TxType::TopUp => (-1, true),
                TxType::Grant => (-1, false),
                TxType::Refund => return error(Code::FailedPrecondition, "NOT_REFUNDABLE"),
            };
            let remaining = original.amount.abs() - original.refunded_amount;
            let requested = amount.unwrap_or(remaining);
            if requested > remaining || requested <= 0 {
                return Expected::Error {
                    code: Code::FailedPrecondition,
                    reason: "REFUND_EXCEEDS_ORIGINAL",
                    info: vec![("refundableAmount", remaining.to_string())],
                };
            }
            (
                TxType::Refund,
                sign * requested,
                may_go_negative,
                Some((t, requested)),
            )
        }
    };
    // A result outside int64 is an overflow, checked before the floor.
    let Some(new_balance) = balance.checked_add(delta) else {
        return error(Code::InvalidArgument, "BALANCE_OVERFLOW");
    };
    // Only taking credits is refused for want of them; a credit to a
    // balance left negative by a TOP_UP refund is welcome.
    if delta < 0 && new_balance < 0 && !may_go_negative {
        return Expected::Error {
            code: Code::FailedPrecondition,
            reason: "INSUFFICIENT_BALANCE",
            info: vec![
                ("availableBalance", balance.to_string()),
                ("requestedAmount", (-delta).to_string()),
            ],
        };
    }

    let (graph, reason, meta) = match params {
        Params::TopUp { meta, .. } => (None, None, *meta),
        Params::Spend { meta, usage: u, .. } => (usage(*u).1, None, *meta),
        Params::Grant { meta, reason, .. } | Params::Refund { meta, reason, .. } => {
            (None, *reason, *meta)
        }
    };
    let index = model.txs.len();
    let sequence = model.user(slot).map_or(0, |u| u.txs.len() as i64) + 1;
    model.txs.push(ModelTx {
        // Filled in from the answer: the server makes the id.
        id: String::new(),
        slot,
        kind,
        amount: delta,
        running_balance: new_balance,
        sequence,
        key,
        graph,
        reason,
        meta,
        refunded_transaction_id: refund_of.map(|(t, _)| model.txs[t].id.clone()),
        refunded_amount: 0,
    });
    if let Some((t, requested)) = refund_of {
        model.txs[t].refunded_amount += requested;
    }
    let user = model.users[slot].as_mut().expect("checked above");
    user.balance = new_balance;
    user.txs.push(index);
    if let Some(key) = key {
        user.keys.insert(key, (params.clone(), index));
    }
    Expected::Written {
        tx: index,
        replay: false,
    }
}

/// Pages through the history with `page_size` and `types` and compares it
/// with the model's, newest first.
async fn list(
    c: &mut Client,
    model: &mut Model,
    slot: usize,
    page_size: i32,
    types: &[i32],
) -> anyhow::Result<()> {
    let user_id = model.user_id(slot);
    let request = |page_token: String| pb::ListTransactionsRequest {
        user_id: user_id.clone(),
        page_size,
        page_token,
        types: types.to_vec(),
        ..Default::default()
    };
    if page_size < 0 {
        let status = expect_error(
            c.list_transactions(request(String::new())).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            &[],
        )?;
        ensure!(api::bad_fields(&status) == ["page_size"]);
        return Ok(());
    }
    let Some(user) = model.user(slot) else {
        return expect_error(
            c.list_transactions(request(String::new())).await,
            Code::NotFound,
            "USER_NOT_FOUND",
            &[],
        )
        .map(|_| ());
    };
    let want: Vec<&ModelTx> = user
        .txs
        .iter()
        .rev()
        .map(|&i| &model.txs[i])
        .filter(|t| types.is_empty() || types.contains(&(t.kind as i32)))
        .collect();
    let size = match page_size {
        0 => 50,
        n => (n as usize).min(1000),
    };
    let mut got = Vec::new();
    let mut token = String::new();
    loop {
        let page = c.list_transactions(request(token)).await?.into_inner();
        ensure!(
            page.transactions.len() <= size,
            "a page of {} for page_size {page_size}",
            page.transactions.len()
        );
        let last = page.next_page_token.is_empty();
        ensure!(
            last || page.transactions.len() == size,
            "a short page of {} before the last",
            page.transactions.len()
        );
        got.extend(page.transactions);
        if last {
            break;
        }
        ensure!(got.len() <= want.len(), "more pages than transactions");
        token = page.next_page_token;
    }
    ensure!(
        got.len() == want.len(),
        "listed {} transactions, model {}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(want) {
        check_tx(g, w, &user_id)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Comparing answers.

/// Compares a transaction from the server with the model's. A model
/// transaction without an id is the one just written: it takes the id the
/// server gave it (ids are the server's to make).
fn check_tx(got: &pb::Transaction, want: &ModelTx, user_id: &str) -> anyhow::Result<()> {
    if !want.id.is_empty() {
        ensure!(
            got.transaction_id == want.id,
            "transaction id {}, model {}",
            got.transaction_id,
            want.id
        );
    }
    let (want_graph, want_usage) = match want.kind {
        TxType::Usage => (want.graph.unwrap_or_default(), true),
        _ => ("", false),
    };
    let got_graph = got
        .usage
        .as_ref()
        .map(|u| u.graph_exec_id.as_str())
        .unwrap_or_default();
    let checks = [
        ("user_id", got.user_id == user_id),
        ("type", got.r#type == want.kind as i32),
        ("amount", got.amount == want.amount),
        (
            "running_balance",
            got.running_balance == want.running_balance,
        ),
        ("sequence", got.sequence == want.sequence),
        (
            "idempotency_key",
            match want.key {
                Some(k) => got.idempotency_key == k,
                None => !got.idempotency_key.is_empty(),
            },
        ),
        (
            "usage",
            got.usage.is_some() == want_usage && got_graph == want_graph,
        ),
        ("reason", got.reason == want.reason.unwrap_or_default()),
        ("metadata", got.metadata == metadata(want.meta)),
        (
            "refunded_transaction_id",
            got.refunded_transaction_id == want.refunded_transaction_id.clone().unwrap_or_default(),
        ),
        (
            "refunded_amount",
            got.refunded_amount == want.refunded_amount,
        ),
    ];
    for (field, ok) in checks {
        ensure!(ok, "{field} differs: got {got:?}, model {want:?}");
    }
    Ok(())
}

/// Asserts an error with `code`, ErrorInfo `reason` in domain credit.v1, and
/// the given ErrorInfo metadata.
fn expect_error<T: std::fmt::Debug>(
    got: Result<T, Status>,
    code: Code,
    reason: &str,
    info: &[(&str, String)],
) -> anyhow::Result<Status> {
    let status = match got {
        Ok(v) => bail!("expected {code:?}/{reason}, got success: {v:?}"),
        Err(status) => status,
    };
    let error_info = status
        .get_details_error_info()
        .with_context(|| format!("no ErrorInfo in {status:?}"))?;
    ensure!(
        status.code() == code && error_info.reason == reason && error_info.domain == "credit.v1",
        "expected {code:?}/{reason}, got {:?}/{} ({}) in domain {:?}",
        status.code(),
        error_info.reason,
        status.message(),
        error_info.domain
    );
    for (k, v) in info {
        ensure!(
            error_info.metadata.get(*k) == Some(v),
            "ErrorInfo {k} is {:?}, expected {v:?}",
            error_info.metadata.get(*k)
        );
    }
    Ok(status)
}
