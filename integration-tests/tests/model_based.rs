//! Model-based property test: proptest generates sequences of operations,
//! valid and invalid, runs them against the real server (loopback port, real
//! generated client) and compares every answer with a small in-memory model
//! of the ledger's rules (README "The API in brief" and "Paid and
//! promotional credits", `ledger/rules.rs`, `ledger/batch.rs`,
//! `ledger/lots.rs`). At the end of each case the full state (balances,
//! lots and histories) is compared and the ledger invariants are checked.
//!
//! The model keeps every user's lots (category, priority, expiry, what is
//! left, the order they were made in) and the deficit a TOP_UP refund may
//! leave, and predicts each transaction's allocations in draw order, the
//! EXPIRATION transactions the next write of a user writes first (and the
//! ones a USAGE refund into an expired lot writes after itself), the
//! balance breakdown of GetBalance and what ListLots pages through. Time
//! moves only by whole ticks of the ledger's clock (`advance_clock`), and
//! every expire_time is a whole second on that grid, so whether a lot has
//! expired never depends on how fast the case runs.
//!
//! One server per backend serves every case; each case lives in its own
//! namespace of user ids and emails, so cases (and proptest's shrinking
//! reruns) never see each other's state; the clock only moves forward,
//! and each case's expire_times are relative to where it found the clock.
//! `PROPTEST_CASES` sets the number of cases (default 32). Holds are not
//! modelled (nothing here earmarks credit).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use credit_proto::v1 as pb;
use integration_tests::{Backend, Client, TestServer, api, invariants};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Users a case may create; slot `GHOST` is never created.
const USERS: usize = 3;
const GHOST: usize = USERS;
/// A tiny pool, so keys are reused with the same and with other parameters.
const KEYS: [&str; 3] = ["key-a", "key-b", "key-c"];
/// Ample for 60 operations; a hung server fails the case instead of the run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// One step of the ledger's clock. Far longer than a case runs, so the
/// real time that passes during a case never decides an expiry.
const TICK_SECS: i64 = 3600;
/// Page size of the ListLots comparison at the end of each case.
const FINAL_LOT_PAGE: i32 = 2;

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
    /// A percentage of the balance (at least 1): spends that fit, and
    /// draw from more than one lot.
    Part(u8),
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
    /// The user's latest USAGE (0), TOP_UP (1) or GRANT (2): refunds of
    /// what was just spent or bought, whose lots are still in play.
    Latest(u8),
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

/// What a TopUp or Grant says about its lot, relative to the clock.
#[derive(Debug, Clone)]
struct LotTerms {
    /// `None`: the default; -1 and 101 are out of range.
    priority: Option<i32>,
    /// Ticks from now: 1.. ahead; 0 (now) and -1 are not in the future.
    expire: Option<i64>,
    /// Grants only, as the wire numbers it: 0 unset, 1 PAID, 2 PROMOTIONAL.
    category: i32,
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
        terms: LotTerms,
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
        terms: LotTerms,
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
    ListLots {
        slot: usize,
        page_size: i32,
        include_empty: bool,
    },
    /// Moves the ledger's clock forward by this many ticks.
    Advance(u8),
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
        3 => (1..=99u8).prop_map(Amount::Part),
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
        3 => Just(Target::Latest(0)),
        2 => (1..3u8).prop_map(Target::Latest),
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
    prop::option::weighted(0.5, 0..KEYS.len())
}

/// Lot terms: mostly the defaults or a few common priorities (so that ties
/// broken by expiry and age come up), expiries a few ticks ahead (equal
/// ones too), now and then out of range or not in the future.
fn lot_terms(grant: bool) -> impl Strategy<Value = LotTerms> {
    let priority = prop_oneof![
        5 => Just(None),
        3 => prop::sample::select(vec![0, 50, 100]).prop_map(Some),
        2 => (0..=100i32).prop_map(Some),
        1 => prop::sample::select(vec![-1, 101]).prop_map(Some),
    ];
    let expire = prop_oneof![
        4 => Just(None),
        4 => (1..=3i64).prop_map(Some),
        1 => (-1..=0i64).prop_map(Some),
    ];
    let category = match grant {
        true => prop_oneof![3 => Just(0), 1 => Just(1), 1 => Just(2)].boxed(),
        false => Just(0).boxed(),
    };
    (priority, expire, category).prop_map(|(priority, expire, category)| LotTerms {
        priority,
        expire,
        category,
    })
}

fn op() -> impl Strategy<Value = Op> {
    // Writes go to the ghost now and then, to check USER_NOT_FOUND.
    let slot = || prop_oneof![15 => 0..USERS, 1 => Just(GHOST)];
    prop_oneof![
        2 => (0..USERS, email(), any::<bool>(), any::<bool>(), 0..2u8).prop_map(
            |(slot, email, upper, padded, name)| Op::CreateUser { slot, email, upper, padded, name }
        ),
        5 => (slot(), amount(), key(), 0..4u8, lot_terms(false)).prop_map(
            |(slot, amount, key, meta, terms)| Op::TopUp { slot, amount, key, meta, terms }
        ),
        5 => (slot(), amount(), key(), 0..4u8, 0..4u8).prop_map(
            |(slot, amount, key, meta, usage)| Op::Spend { slot, amount, key, meta, usage }
        ),
        4 => (slot(), amount(), key(), 0..4u8, 0..3u8, lot_terms(true)).prop_map(
            |(slot, amount, key, meta, reason, terms)| Op::Grant { slot, amount, key, meta, reason, terms }
        ),
        5 => (slot(), target(), refund_amount(), key(), 0..4u8, 0..3u8).prop_map(
            |(slot, target, amount, key, meta, reason)| Op::Refund { slot, target, amount, key, meta, reason }
        ),
        2 => slot().prop_map(|slot| Op::GetBalance { slot }),
        2 => (slot(), target()).prop_map(|(slot, target)| Op::GetTransaction { slot, target }),
        4 => any::<Index>().prop_map(Op::Retry),
        1 => (
            slot(),
            prop::sample::select(vec![-1, 0, 1, 2, 3, 7, 5000]),
            prop::collection::vec(1..=6i32, 0..=2),
        )
            .prop_map(|(slot, page_size, types)| Op::List { slot, page_size, types }),
        1 => (slot(), prop::sample::select(vec![-1, 0, 1, 2, 3]), any::<bool>()).prop_map(
            |(slot, page_size, include_empty)| Op::ListLots { slot, page_size, include_empty }
        ),
        3 => (1..=2u8).prop_map(Op::Advance),
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
    Expiration = 6,
}

/// One write as sent.
#[derive(Debug, Clone)]
struct Write {
    slot: usize,
    key: Option<&'static str>,
    params: Params,
}

/// A TopUp's or Grant's lot terms as sent (absolute: a retry sends the
/// same instant again).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Terms {
    priority: Option<i32>,
    expire: Option<DateTime<Utc>>,
    /// The wire's CreditCategory (0: unset, the same as absent).
    category: i32,
}

/// A write's parameters besides user and key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Params {
    TopUp {
        amount: i64,
        meta: u8,
        terms: Terms,
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
        terms: Terms,
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
    /// usage are the same request; lot terms count as given (a priority
    /// equal to the default is still another request than none).
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

    fn terms(&self) -> Option<&Terms> {
        match self {
            Params::TopUp { terms, .. } | Params::Grant { terms, .. } => Some(terms),
            _ => None,
        }
    }
}

/// A lot's entry in an allocation: a lot (index into `Model::lots`), or
/// `None` for the user's deficit.
type Allocation = (Option<usize>, i64);

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
    reason: Option<String>,
    meta: u8,
    refunded_transaction_id: Option<String>,
    /// For a REFUND, the index of the transaction it refunds.
    refund_of: Option<usize>,
    refunded_amount: i64,
    /// What it took from or gave to each lot, in draw order.
    allocations: Vec<Allocation>,
    /// Known ahead for an EXPIRATION of a lot's own credit (its
    /// expire_time); otherwise taken from the first answer that shows it
    /// (the server's clock), and compared from then on.
    created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct ModelLot {
    /// The server's; empty until the answer of the write that made it.
    id: String,
    slot: usize,
    /// The TopUp or Grant that made it (index into `Model::txs`).
    source: usize,
    paid: bool,
    priority: i32,
    granted: i64,
    /// What is left as written down: credit past the expire_time that no
    /// write has expired yet is still here (but no longer counts).
    remaining: i64,
    /// What the lot got when it was made (the answer shows that, also to
    /// a retry).
    answered: i64,
    expire: Option<DateTime<Utc>>,
    /// From the answer of the write that made it.
    created_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct ModelUser {
    email: String,
    name: String,
    /// As written down: includes expired credit until a write expires it.
    balance: i64,
    /// What a TOP_UP refund took beyond the lots, owed by the next credit.
    deficit: i64,
    /// Indexes into `Model::txs`, oldest first.
    txs: Vec<usize>,
    /// Indexes into `Model::lots`, oldest first.
    lots: Vec<usize>,
    keys: HashMap<&'static str, (Params, usize)>,
}

/// What GetBalance must say.
#[derive(Debug, PartialEq, Eq)]
struct BalanceView {
    balance: i64,
    paid: i64,
    promotional: i64,
    next_expire_time: Option<Timestamp>,
    next_expiring_amount: i64,
    last_sequence: i64,
}

/// One case's ledger as the rules say it should be.
struct Model {
    ns: String,
    users: Vec<Option<ModelUser>>,
    txs: Vec<ModelTx>,
    lots: Vec<ModelLot>,
    /// Normalised email -> slot.
    emails: HashMap<String, usize>,
    /// Every write sent so far, for verbatim retries.
    sent: Vec<Write>,
    /// How often each outcome came up, to show what the run exercised.
    outcomes: BTreeMap<&'static str, usize>,
    /// The ledger's clock when the case started, to the whole second.
    epoch: DateTime<Utc>,
    /// Ticks the case moved the clock since.
    ticks: i64,
}

impl Model {
    fn new(ns: String, epoch: DateTime<Utc>) -> Self {
        Self {
            ns,
            users: (0..USERS).map(|_| None).collect(),
            txs: Vec::new(),
            lots: Vec::new(),
            emails: HashMap::new(),
            sent: Vec::new(),
            outcomes: BTreeMap::new(),
            epoch,
            ticks: 0,
        }
    }

    fn count(&mut self, outcome: &'static str, n: usize) {
        if n > 0 {
            *self.outcomes.entry(outcome).or_insert(0) += n;
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

    fn user_mut(&mut self, slot: usize) -> &mut ModelUser {
        self.users[slot].as_mut().expect("an existing user")
    }

    /// The tick the clock is at. The server's clock is a little past it
    /// (the real time the case took), never as far as the next.
    fn now(&self) -> DateTime<Utc> {
        self.tick(0)
    }

    /// `ahead` ticks from now, on the tick grid.
    fn tick(&self, ahead: i64) -> DateTime<Utc> {
        self.epoch + TimeDelta::seconds((self.ticks + ahead) * TICK_SECS)
    }

    fn expired(&self, lot: usize) -> bool {
        self.lots[lot].expire.is_some_and(|at| at <= self.now())
    }

    /// What a lot holds as of now: nothing once it has expired.
    fn remaining_now(&self, lot: usize) -> i64 {
        match self.expired(lot) {
            true => 0,
            false => self.lots[lot].remaining,
        }
    }

    /// The balance as of now (reads leave out expired credit at once).
    fn balance(&self, slot: usize) -> i64 {
        let Some(user) = self.user(slot) else {
            return 0;
        };
        let expired: i64 = user
            .lots
            .iter()
            .filter(|&&l| self.expired(l))
            .map(|&l| self.lots[l].remaining)
            .sum();
        user.balance - expired
    }

    fn balance_view(&self, slot: usize) -> Option<BalanceView> {
        let user = self.user(slot)?;
        let live: Vec<usize> = user
            .lots
            .iter()
            .copied()
            .filter(|&l| self.remaining_now(l) > 0)
            .collect();
        let balance = self.balance(slot);
        let promotional = live
            .iter()
            .filter(|&&l| !self.lots[l].paid)
            .map(|&l| self.lots[l].remaining)
            .sum();
        let next = live.iter().filter_map(|&l| self.lots[l].expire).min();
        let next_expiring_amount = live
            .iter()
            .filter(|&&l| next.is_some() && self.lots[l].expire == next)
            .map(|&l| self.lots[l].remaining)
            .sum();
        Some(BalanceView {
            balance,
            paid: balance - promotional,
            promotional,
            next_expire_time: next.map(ts),
            next_expiring_amount,
            last_sequence: user.txs.len() as i64,
        })
    }

    /// The draw order's key (`lots.rs::draw_order`): priority, soonest
    /// expiry (never-expiring last), oldest, id.
    fn draw_key(
        &self,
        lot: usize,
    ) -> (
        i32,
        bool,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        String,
    ) {
        let l = &self.lots[lot];
        (
            l.priority,
            l.expire.is_none(),
            l.expire,
            l.created_at,
            l.id.clone(),
        )
    }

    /// Every lot of `slot`, in draw order (as ListLots lists them).
    fn lots_in_order(&self, slot: usize) -> Vec<usize> {
        let mut lots = self.user(slot).map(|u| u.lots.clone()).unwrap_or_default();
        lots.sort_by_key(|&l| self.draw_key(l));
        lots
    }

    /// The transaction id a target names for `slot`: one of its own, one of
    /// another user of the case, or an unknown UUID (also when the wanted
    /// kind has none).
    fn target_id(&self, slot: usize, target: &Target) -> String {
        let pick = |mine: bool, index: &Index| {
            let candidates: Vec<&ModelTx> = self
                .txs
                .iter()
                .filter(|t| (t.slot == slot) == mine && !t.id.is_empty())
                .collect();
            (!candidates.is_empty()).then(|| index.get(&candidates).id.clone())
        };
        match target {
            Target::Own(i) => pick(true, i),
            Target::Foreign(i) => pick(false, i),
            Target::Latest(kind) => {
                let kind = [TxType::Usage, TxType::TopUp, TxType::Grant][usize::from(*kind % 3)];
                self.txs
                    .iter()
                    .rev()
                    .find(|t| t.slot == slot && t.kind == kind && !t.id.is_empty())
                    .map(|t| t.id.clone())
            }
            Target::Unknown => None,
        }
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }

    /// This user's transaction with `id`.
    fn own_tx(&self, slot: usize, id: &str) -> Option<usize> {
        self.txs.iter().position(|t| t.id == id && t.slot == slot)
    }

    /// The lot a TopUp or Grant made.
    fn lot_made_by(&self, tx: usize) -> Option<usize> {
        self.lots.iter().position(|l| l.source == tx)
    }

    /// Appends a transaction of `slot` changing the balance by `amount`
    /// (its allocations are filled in by the caller).
    fn push_tx(&mut self, slot: usize, tx: ModelTx) -> usize {
        let index = self.txs.len();
        let user = self.user_mut(slot);
        user.balance = tx.running_balance;
        user.txs.push(index);
        self.txs.push(tx);
        index
    }

    /// The next transaction of `slot`, with the balance after `amount`.
    fn new_tx(&self, slot: usize, kind: TxType, amount: i64) -> ModelTx {
        let user = self.user(slot).expect("an existing user");
        ModelTx {
            // Filled in from an answer: the server makes the id.
            id: String::new(),
            slot,
            kind,
            amount,
            running_balance: user.balance + amount,
            sequence: user.txs.len() as i64 + 1,
            key: None,
            graph: None,
            reason: None,
            meta: 0,
            refunded_transaction_id: None,
            refund_of: None,
            refunded_amount: 0,
            allocations: Vec::new(),
            created_at: None,
        }
    }

    /// One EXPIRATION of what is left in `lot`, dated `at` (`None`: the
    /// write that causes it, known from its answer).
    fn expire_lot(&mut self, slot: usize, lot: usize, at: Option<DateTime<Utc>>) {
        let amount = self.lots[lot].remaining;
        self.lots[lot].remaining = 0;
        let mut tx = self.new_tx(slot, TxType::Expiration, -amount);
        tx.reason = Some(format!("lot {} expired", self.lots[lot].id));
        tx.allocations = vec![(Some(lot), -amount)];
        tx.created_at = at;
        self.push_tx(slot, tx);
    }

    /// What every write of `slot` does first (`expire_due`): an EXPIRATION
    /// for each lot past its expire_time with credit left, in the order
    /// they expired, dated their expire_time.
    fn expire_due(&mut self, slot: usize) {
        let Some(user) = self.user(slot) else {
            return;
        };
        let mut due: Vec<usize> = user
            .lots
            .iter()
            .copied()
            .filter(|&l| self.expired(l) && self.lots[l].remaining > 0)
            .collect();
        due.sort_by_key(|&l| (self.lots[l].expire, self.lots[l].id.clone()));
        self.count("EXPIRATION", due.len());
        for lot in due {
            let at = self.lots[lot].expire;
            self.expire_lot(slot, lot, at);
        }
    }

    /// After a write: credit it gave back to a lot that has expired expires
    /// at once, dated the write (`expire_lots`), by lot id.
    fn expire_returned(&mut self, slot: usize) {
        let mut due: Vec<usize> = self.user(slot).map(|u| u.lots.clone()).unwrap_or_default();
        due.retain(|&l| self.expired(l) && self.lots[l].remaining > 0);
        due.sort_by_key(|&l| self.lots[l].id.clone());
        self.count("EXPIRATION after a refund", due.len());
        for lot in due {
            self.expire_lot(slot, lot, None);
        }
    }

    /// Takes `amount` from `slot`'s unexpired lots in draw order, `first`
    /// before the others; what they cannot give is deficit when
    /// `allow_deficit`.
    fn draw(
        &mut self,
        slot: usize,
        amount: i64,
        first: Option<usize>,
        allow_deficit: bool,
    ) -> anyhow::Result<Vec<Allocation>> {
        let mut order: Vec<usize> = self
            .lots_in_order(slot)
            .into_iter()
            .filter(|&l| self.remaining_now(l) > 0)
            .collect();
        if let Some(first) = first
            && let Some(at) = order.iter().position(|&l| l == first)
        {
            order.remove(at);
            order.insert(0, first);
        }
        let mut left = amount;
        let mut allocations = Vec::new();
        for lot in order {
            if left == 0 {
                break;
            }
            let take = self.lots[lot].remaining.min(left);
            self.lots[lot].remaining -= take;
            allocations.push((Some(lot), -take));
            left -= take;
        }
        if left > 0 {
            ensure!(
                allow_deficit,
                "model: the lots hold {left} fewer than the balance allowed to take"
            );
            self.user_mut(slot).deficit += left;
            self.count("deficit", 1);
            allocations.push((None, -left));
        }
        Ok(allocations)
    }

    /// Gives `amount` refunded credits of the USAGE `target` back to the
    /// lots it took them from, the last-drawn first, less what earlier
    /// refunds of it gave back.
    fn return_to_lots(&mut self, target: usize, amount: i64) -> anyhow::Result<Vec<Allocation>> {
        let mut returnable: Vec<Allocation> = Vec::new();
        for &(lot, a) in &self.txs[target].allocations {
            match returnable.iter_mut().find(|(l, _)| *l == lot) {
                Some((_, n)) => *n -= a,
                None => returnable.push((lot, -a)),
            }
        }
        for refund in self.txs.iter().filter(|t| t.refund_of == Some(target)) {
            for &(lot, a) in &refund.allocations {
                if let Some((_, n)) = returnable.iter_mut().find(|(l, _)| *l == lot) {
                    *n -= a;
                }
            }
        }
        let mut left = amount;
        let mut allocations = Vec::new();
        for (lot, n) in returnable.into_iter().rev() {
            let give = n.min(left);
            if give <= 0 {
                continue;
            }
            let Some(lot) = lot else {
                bail!("model: a USAGE drew from the deficit");
            };
            let l = &mut self.lots[lot];
            l.remaining = l
                .remaining
                .checked_add(give)
                .context("model: a lot overflows")?;
            allocations.push((Some(lot), give));
            left -= give;
        }
        ensure!(left == 0, "model: {left} refunded credits have no lot");
        Ok(allocations)
    }

    /// A new lot for a TopUp or Grant: it pays back the deficit first.
    fn add_lot(
        &mut self,
        slot: usize,
        source: usize,
        amount: i64,
        terms: &Terms,
    ) -> (usize, Vec<Allocation>) {
        let grant = self.txs[source].kind == TxType::Grant;
        let lot = self.lots.len();
        let user = self.user_mut(slot);
        let settled = user.deficit.min(amount);
        user.deficit -= settled;
        user.lots.push(lot);
        let mut allocations = Vec::new();
        if settled > 0 {
            allocations.push((None, settled));
        }
        // A credit that goes wholly to the deficit records nothing for its
        // (empty) lot.
        if amount > settled {
            allocations.push((Some(lot), amount - settled));
        }
        self.count("deficit paid back", usize::from(settled > 0));
        self.lots.push(ModelLot {
            id: String::new(),
            slot,
            source,
            paid: match terms.category {
                0 => !grant,
                c => c == pb::CreditCategory::Paid as i32,
            },
            priority: terms.priority.unwrap_or(if grant { 50 } else { 100 }),
            granted: amount,
            remaining: amount - settled,
            answered: amount - settled,
            expire: terms.expire,
            created_at: None,
        });
        (lot, allocations)
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
        Amount::Part(p) => ((balance.max(0) as i128 * *p as i128 / 100) as i64).max(1),
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

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn from_ts(t: &Timestamp) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).with_context(|| format!("{t:?}"))
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
    let start = server.ledger.now();
    let epoch = DateTime::from_timestamp(start.timestamp(), 0).context("the clock")?;
    let mut model = Model::new(ns, epoch);
    for (step, op) in ops.iter().enumerate() {
        // The server's clock runs a little ahead of the model's tick (the
        // real time the case took); far from the next tick, so no expiry
        // depends on it.
        let ahead = server.ledger.now() - model.now();
        ensure!(
            ahead >= TimeDelta::zero() && ahead < TimeDelta::seconds(TICK_SECS / 4),
            "step {step}: the ledger's clock is {ahead} past the model's"
        );
        apply(server, c, &mut model, op)
            .await
            .with_context(|| format!("step {step}: {op:?}"))?;
    }
    for slot in 0..USERS {
        if model.user(slot).is_none() {
            continue;
        }
        let user_id = model.user_id(slot);
        // As of now, before anything writes the due expiries down.
        list_lots(c, &mut model, slot, FINAL_LOT_PAGE, true)
            .await
            .context("final ListLots")?;
        get_balance(c, &model, slot)
            .await
            .context("final GetBalance")?;
        // What the sweeper does for a user nobody writes to: an ordinary
        // write that writes down what is due (and the model with it).
        let settled = server
            .ledger
            .settle(&user_id)
            .await
            .map_err(|e| anyhow!("settle {user_id}: {e}"))?;
        model.expire_due(slot);
        learn_expirations(c, &mut model, slot)
            .await
            .context("the expiries a settle wrote")?;
        let user = model.user(slot).expect("checked above");
        ensure!(
            settled.transaction.is_none() && settled.balance == user.balance,
            "settle answered {settled:?}, model balance {}",
            user.balance
        );
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
            check_tx(got, &model, i, false).context("final history")?;
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
        /// For INVALID_ARGUMENT: the fields BadRequest names, in order.
        fields: Vec<&'static str>,
    },
    /// A new transaction (already pushed to the model) or a replay of one,
    /// the balance the answer must show, and the lot it made (a TopUp or
    /// Grant).
    Written {
        tx: usize,
        replay: bool,
        balance: i64,
        lot: Option<usize>,
    },
}

fn error(code: Code, reason: &'static str) -> Expected {
    Expected::Error {
        code,
        reason,
        info: Vec::new(),
        fields: Vec::new(),
    }
}

fn invalid(fields: Vec<&'static str>) -> Expected {
    Expected::Error {
        code: Code::InvalidArgument,
        reason: "INVALID_ARGUMENT",
        info: Vec::new(),
        fields,
    }
}

async fn apply(
    server: &TestServer,
    c: &mut Client,
    model: &mut Model,
    op: &Op,
) -> anyhow::Result<()> {
    match op {
        Op::CreateUser {
            slot,
            email,
            upper,
            padded,
            name,
        } => create_user(c, model, *slot, email, *upper, *padded, *name).await,
        Op::GetBalance { slot } => get_balance(c, model, *slot).await,
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
                    check_tx(&got, model, i, true)
                }
            }
        }
        Op::List {
            slot,
            page_size,
            types,
        } => list(c, model, *slot, *page_size, types).await,
        Op::ListLots {
            slot,
            page_size,
            include_empty,
        } => list_lots(c, model, *slot, *page_size, *include_empty).await,
        Op::Advance(ticks) => {
            let ticks = i64::from(*ticks);
            server
                .ledger
                .advance_clock(Duration::from_secs((ticks * TICK_SECS) as u64));
            model.ticks += ticks;
            model.count("clock advanced", 1);
            Ok(())
        }
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

/// GetBalance, compared with the model as of now: expired credit left out,
/// the paid and promotional parts, the next expiry.
async fn get_balance(c: &mut Client, model: &Model, slot: usize) -> anyhow::Result<()> {
    let got = c
        .get_balance(pb::GetBalanceRequest {
            user_id: model.user_id(slot),
        })
        .await;
    let Some(want) = model.balance_view(slot) else {
        return expect_error(got, Code::NotFound, "USER_NOT_FOUND", &[]).map(|_| ());
    };
    let got = got?.into_inner();
    let seen = BalanceView {
        balance: got.balance,
        paid: got.paid,
        promotional: got.promotional,
        next_expire_time: got.next_expire_time,
        next_expiring_amount: got.next_expiring_amount,
        last_sequence: got.last_sequence,
    };
    ensure!(seen == want, "GetBalance {seen:?}, model {want:?}");
    ensure!(
        got.held == 0 && got.available == got.balance,
        "held {} / available {} without holds",
        got.held,
        got.available
    );
    Ok(())
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
        deficit: 0,
        txs: Vec::new(),
        lots: Vec::new(),
        keys: HashMap::new(),
    });
    Ok(())
}

/// The four writes: the request as described relative to the model's
/// state (the balance as of now, the clock's tick), made concrete.
fn resolve_write(model: &Model, op: &Op) -> Option<Write> {
    let (slot, key) = match op {
        Op::TopUp { slot, key, .. }
        | Op::Spend { slot, key, .. }
        | Op::Grant { slot, key, .. }
        | Op::Refund { slot, key, .. } => (*slot, key.map(|k| KEYS[k])),
        _ => return None,
    };
    let balance = model.balance(slot);
    let terms = |t: &LotTerms| Terms {
        priority: t.priority,
        expire: t.expire.map(|ahead| model.tick(ahead)),
        category: t.category,
    };
    let params = match op {
        Op::TopUp {
            amount,
            meta,
            terms: t,
            ..
        } => Params::TopUp {
            amount: resolve(amount, balance),
            meta: *meta,
            terms: terms(t),
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
            terms: t,
            ..
        } => Params::Grant {
            amount: resolve(amount, balance),
            meta: *meta,
            reason: text(*reason),
            terms: terms(t),
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
    let expected = expect_write(model, slot, key, &params, amount_sent)?;
    let outcome = match &expected {
        Expected::Error { fields, .. } if fields.as_slice() == ["expire_time"] => {
            "INVALID_ARGUMENT (expire_time)"
        }
        Expected::Error { fields, .. } if fields.contains(&"priority") => {
            "INVALID_ARGUMENT (priority)"
        }
        Expected::Error { reason, .. } => reason,
        Expected::Written { replay: true, .. } => "replayed",
        Expected::Written { tx, .. } => match model.txs[*tx].kind {
            TxType::TopUp => "written TOP_UP",
            TxType::Usage => "written USAGE",
            TxType::Grant => "written GRANT",
            _ => "written REFUND",
        },
    };
    model.count(outcome, 1);

    type Answer = (pb::Transaction, i64, Option<pb::Lot>);
    let got: Result<Answer, Status> = match &params {
        Params::TopUp {
            amount,
            meta,
            terms,
        } => c
            .top_up(pb::TopUpRequest {
                user_id: user_id.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                metadata: metadata(*meta),
                expire_time: terms.expire.map(ts),
                priority: terms.priority,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance, r.lot)
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
                (r.transaction.unwrap_or_default(), r.balance, None)
            }),
        Params::Grant {
            amount,
            meta,
            reason,
            terms,
        } => c
            .grant(pb::GrantRequest {
                user_id: user_id.clone(),
                amount: *amount,
                idempotency_key: key_wire,
                reason: reason.unwrap_or_default().to_owned(),
                metadata: metadata(*meta),
                expire_time: terms.expire.map(ts),
                priority: terms.priority,
                category: terms.category,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.transaction.unwrap_or_default(), r.balance, r.lot)
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
                (r.transaction.unwrap_or_default(), r.balance, None)
            }),
    };

    match expected {
        Expected::Error {
            code,
            reason,
            info,
            fields,
        } => {
            let status = expect_error(got, code, reason, &info)?;
            if reason == "INVALID_ARGUMENT" {
                ensure!(
                    api::bad_fields(&status) == fields,
                    "BadRequest names {:?}, not {fields:?}",
                    api::bad_fields(&status)
                );
            }
        }
        Expected::Written {
            tx, balance, lot, ..
        } => {
            let (got, got_balance, got_lot) = got.context("the model expected success")?;
            // Ids are the server's to make: a new lot takes the one its
            // answer gives (its allocation names it).
            if let Some(l) = lot
                && model.lots[l].id.is_empty()
            {
                let made = got_lot.as_ref().context("no lot in the answer")?;
                ensure!(
                    !made.lot_id.is_empty() && !model.lots.iter().any(|x| x.id == made.lot_id),
                    "a new lot has the id {:?}",
                    made.lot_id
                );
                model.lots[l].id = made.lot_id.clone();
                model.lots[l].created_at = made.created_at.as_ref().map(from_ts).transpose()?;
            }
            check_tx(&got, model, tx, true)?;
            ensure!(
                got_balance == balance,
                "answered balance {got_balance}, model {balance}"
            );
            if model.txs[tx].id.is_empty() {
                ensure!(
                    !got.transaction_id.is_empty()
                        && !model.txs.iter().any(|t| t.id == got.transaction_id),
                    "a new transaction has the id {:?}",
                    got.transaction_id
                );
                model.txs[tx].id = got.transaction_id.clone();
            }
            if model.txs[tx].created_at.is_none() {
                let at = from_ts(got.created_at.as_ref().context("no created_at")?)?;
                // And so are the EXPIRATIONs it wrote after itself.
                let undated: Vec<usize> = model.user(slot).map_or(Vec::new(), |u| {
                    u.txs
                        .iter()
                        .copied()
                        .filter(|&i| model.txs[i].created_at.is_none())
                        .collect()
                });
                for i in undated {
                    model.txs[i].created_at = Some(at);
                }
            }
            match lot {
                Some(l) => {
                    let made = got_lot.context("no lot in the answer")?;
                    check_lot(&made, model, l, model.lots[l].answered).context("answered lot")?;
                    ensure!(
                        model.lots[l].created_at == model.txs[tx].created_at,
                        "the lot was made at {:?}, its transaction at {:?}",
                        model.lots[l].created_at,
                        model.txs[tx].created_at
                    );
                }
                None => ensure!(got_lot.is_none(), "a lot in the answer: {got_lot:?}"),
            }
        }
    }
    learn_expirations(c, model, slot).await
}

/// Learns the ids of the transactions a write wrote besides its own (the
/// EXPIRATIONs) from the newest page of the history, checks them there and
/// with GetTransaction (which shows their allocations).
async fn learn_expirations(c: &mut Client, model: &mut Model, slot: usize) -> anyhow::Result<()> {
    let Some(user) = model.user(slot) else {
        return Ok(());
    };
    let Some(first) = user.txs.iter().position(|&i| model.txs[i].id.is_empty()) else {
        return Ok(());
    };
    let recent = user.txs[first..].to_vec();
    let user_id = model.user_id(slot);
    let page = c
        .list_transactions(pb::ListTransactionsRequest {
            user_id: user_id.clone(),
            page_size: recent.len() as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        page.transactions.len() == recent.len(),
        "the newest {} transactions: got {:?}",
        recent.len(),
        page.transactions
    );
    let mut learned = Vec::new();
    for (got, &i) in page.transactions.iter().rev().zip(&recent) {
        check_tx(got, model, i, false).context("a transaction written besides the write's")?;
        if model.txs[i].id.is_empty() {
            ensure!(
                !got.transaction_id.is_empty()
                    && !model.txs.iter().any(|t| t.id == got.transaction_id),
                "a new transaction has the id {:?}",
                got.transaction_id
            );
            model.txs[i].id = got.transaction_id.clone();
            learned.push(i);
        }
    }
    for i in learned {
        let got = c
            .get_transaction(pb::GetTransactionRequest {
                user_id: user_id.clone(),
                transaction_id: model.txs[i].id.clone(),
            })
            .await?
            .into_inner()
            .transaction
            .context("no transaction")?;
        check_tx(&got, model, i, true).context("GetTransaction of an EXPIRATION")?;
    }
    Ok(())
}

/// The rules, in the order the server applies them: field checks, the user,
/// what time did since the user's last write (EXPIRATIONs first), the
/// idempotency key, the lot's expiry, the operation's own rules, then the
/// balance. Updates the model when the write is applied.
fn expect_write(
    model: &mut Model,
    slot: usize,
    key: Option<&'static str>,
    params: &Params,
    amount_sent: Option<i64>,
) -> anyhow::Result<Expected> {
    let terms = params.terms().cloned();
    let mut fields = Vec::new();
    if amount_sent.is_some_and(|a| a <= 0) {
        fields.push("amount");
    }
    if terms
        .as_ref()
        .and_then(|t| t.priority)
        .is_some_and(|p| !(0..=100).contains(&p))
    {
        fields.push("priority");
    }
    if !fields.is_empty() {
        return Ok(invalid(fields));
    }
    if model.user(slot).is_none() {
        return Ok(error(Code::NotFound, "USER_NOT_FOUND"));
    }
    // Whatever the write turns out to be (a replay, a refusal), its batch
    // first writes down the expiries due.
    model.expire_due(slot);
    let user = model.user(slot).expect("checked above");
    if let Some(key) = key
        && let Some((original, tx)) = user.keys.get(key)
    {
        return Ok(if original.fingerprint() == params.fingerprint() {
            let tx = *tx;
            Expected::Written {
                tx,
                replay: true,
                balance: model.txs[tx].running_balance,
                lot: model.lot_made_by(tx),
            }
        } else {
            Expected::Error {
                code: Code::AlreadyExists,
                reason: "IDEMPOTENCY_KEY_REUSED",
                info: vec![("idempotencyKey", key.to_owned())],
                fields: Vec::new(),
            }
        });
    }
    // Whether the expiry is in the future is the ledger's clock's to say.
    if terms
        .as_ref()
        .and_then(|t| t.expire)
        .is_some_and(|at| at <= model.now())
    {
        return Ok(invalid(vec!["expire_time"]));
    }
    let balance = user.balance;

    let (kind, delta, may_go_negative, refund_of) = match params {
        Params::TopUp { amount, .. } => (TxType::TopUp, *amount, false, None),
        Params::Grant { amount, .. } => (TxType::Grant, *amount, false, None),
        Params::Spend { amount, .. } => (TxType::Usage, -*amount, false, None),
        Params::Refund { target, amount, .. } => {
            let Some(t) = model.own_tx(slot, target) else {
                return Ok(error(Code::NotFound, "TRANSACTION_NOT_FOUND"));
            };
            let original = &model.txs[t];
            let (sign, may_go_negative) = match original.kind {
                TxType::Usage => (1, false),
                // The money went back to the payer: the balance may go
                // below zero.
                TxType::TopUp => (-1, true),
                TxType::Grant => (-1, false),
                TxType::Refund | TxType::Expiration => {
                    return Ok(error(Code::FailedPrecondition, "NOT_REFUNDABLE"));
                }
            };
            let remaining = original.amount.abs() - original.refunded_amount;
            let requested = amount.unwrap_or(remaining);
            if requested > remaining || requested <= 0 {
                return Ok(Expected::Error {
                    code: Code::FailedPrecondition,
                    reason: "REFUND_EXCEEDS_ORIGINAL",
                    info: vec![("refundableAmount", remaining.to_string())],
                    fields: Vec::new(),
                });
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
        return Ok(error(Code::InvalidArgument, "BALANCE_OVERFLOW"));
    };
    // Only taking credits is refused for want of them; a credit to a
    // balance left negative by a TOP_UP refund is welcome.
    if delta < 0 && new_balance < 0 && !may_go_negative {
        return Ok(Expected::Error {
            code: Code::FailedPrecondition,
            reason: "INSUFFICIENT_BALANCE",
            info: vec![
                ("availableBalance", balance.to_string()),
                ("requestedAmount", (-delta).to_string()),
            ],
            fields: Vec::new(),
        });
    }

    let (graph, reason, meta) = match params {
        Params::TopUp { meta, .. } => (None, None, *meta),
        Params::Spend { meta, usage: u, .. } => (usage(*u).1, None, *meta),
        Params::Grant { meta, reason, .. } | Params::Refund { meta, reason, .. } => {
            (None, *reason, *meta)
        }
    };
    let mut tx = model.new_tx(slot, kind, delta);
    tx.running_balance = new_balance;
    tx.key = key;
    tx.graph = graph;
    tx.reason = reason.map(str::to_owned);
    tx.meta = meta;
    tx.refunded_transaction_id = refund_of.map(|(t, _)| model.txs[t].id.clone());
    tx.refund_of = refund_of.map(|(t, _)| t);
    let index = model.push_tx(slot, tx);
    if let Some((t, requested)) = refund_of {
        model.txs[t].refunded_amount += requested;
    }
    if let Some(key) = key {
        model
            .user_mut(slot)
            .keys
            .insert(key, (params.clone(), index));
    }

    // Which lots it changes.
    let mut lot = None;
    let allocations = match params {
        Params::TopUp { amount, terms, .. } | Params::Grant { amount, terms, .. } => {
            let (made, allocations) = model.add_lot(slot, index, *amount, terms);
            lot = Some(made);
            allocations
        }
        Params::Spend { amount, .. } => model.draw(slot, *amount, None, false)?,
        Params::Refund { .. } => {
            let (t, requested) = refund_of.expect("a refund has a target");
            let label = match model.txs[t].kind {
                TxType::Usage => "refund of a USAGE",
                TxType::TopUp => "refund of a TOP_UP",
                _ => "refund of a GRANT",
            };
            model.count(label, 1);
            match model.txs[t].kind {
                TxType::Usage => model.return_to_lots(t, requested)?,
                // Taking back a top-up or grant starts with its own lot;
                // only a top-up may leave a deficit.
                kind => {
                    let first = model.txs[t].allocations.iter().find_map(|(l, _)| *l);
                    model.draw(slot, requested, first, kind == TxType::TopUp)?
                }
            }
        }
    };
    let total: i64 = allocations.iter().map(|(_, a)| a).sum();
    ensure!(
        total == delta,
        "model: allocations {allocations:?} add up to {total}, not {delta}"
    );
    model.txs[index].allocations = allocations;
    // A refund into a lot that expired since: gone again at once.
    model.expire_returned(slot);
    Ok(Expected::Written {
        tx: index,
        replay: false,
        balance: model.user(slot).map_or(0, |u| u.balance),
        lot,
    })
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
    let want: Vec<usize> = user
        .txs
        .iter()
        .rev()
        .copied()
        .filter(|&i| types.is_empty() || types.contains(&(model.txs[i].kind as i32)))
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
    for (g, &w) in got.iter().zip(&want) {
        check_tx(g, model, w, false)?;
    }
    Ok(())
}

/// Pages through ListLots with `page_size` and compares the lots with the
/// model's, in draw order, as of now (an expired lot shows nothing left).
async fn list_lots(
    c: &mut Client,
    model: &mut Model,
    slot: usize,
    page_size: i32,
    include_empty: bool,
) -> anyhow::Result<()> {
    let user_id = model.user_id(slot);
    let request = |page_token: String| pb::ListLotsRequest {
        user_id: user_id.clone(),
        include_empty,
        page_size,
        page_token,
    };
    if page_size < 0 {
        let status = expect_error(
            c.list_lots(request(String::new())).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            &[],
        )?;
        ensure!(api::bad_fields(&status) == ["page_size"]);
        return Ok(());
    }
    let Some(user) = model.user(slot) else {
        return expect_error(
            c.list_lots(request(String::new())).await,
            Code::NotFound,
            "USER_NOT_FOUND",
            &[],
        )
        .map(|_| ());
    };
    let all = user.lots.len();
    let want: Vec<usize> = model
        .lots_in_order(slot)
        .into_iter()
        .filter(|&l| include_empty || model.remaining_now(l) > 0)
        .collect();
    let size = match page_size {
        0 => 50,
        n => (n as usize).min(1000),
    };
    let (mut got, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = c.list_lots(request(token)).await?.into_inner();
        pages += 1;
        let last = page.next_page_token.is_empty();
        // Without include_empty a page may be short: lots empty only as of
        // now are left out after the page was read.
        ensure!(
            page.lots.len() <= size && (last || !include_empty || page.lots.len() == size),
            "a page of {} lots for page_size {page_size} (last: {last})",
            page.lots.len()
        );
        got.extend(page.lots);
        if last {
            break;
        }
        ensure!(pages <= all, "more pages than lots");
        token = page.next_page_token;
    }
    let listed: Vec<&str> = got.iter().map(|l| l.lot_id.as_str()).collect();
    let ordered: Vec<&str> = want.iter().map(|&l| model.lots[l].id.as_str()).collect();
    ensure!(
        listed == ordered,
        "ListLots (include_empty {include_empty}) listed {listed:?}, model {ordered:?}"
    );
    for (g, &l) in got.iter().zip(&want) {
        check_lot(g, model, l, model.remaining_now(l))?;
    }
    model.count("lots listed", got.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Comparing answers.

/// Compares a transaction from the server with the model's `i`th (and its
/// allocations, when the answer carries them: write answers and
/// GetTransaction do, history pages do not). A model transaction without
/// an id is the one just written: it takes the id the server gave it (ids
/// are the server's to make).
fn check_tx(
    got: &pb::Transaction,
    model: &Model,
    i: usize,
    with_allocations: bool,
) -> anyhow::Result<()> {
    let want = &model.txs[i];
    let user_id = model.user_id(want.slot);
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
    let want_allocations: Vec<(String, i64)> = match with_allocations {
        true => want
            .allocations
            .iter()
            .map(|(l, a)| (l.map(|l| model.lots[l].id.clone()).unwrap_or_default(), *a))
            .collect(),
        false => Vec::new(),
    };
    let got_allocations: Vec<(String, i64)> = got
        .allocations
        .iter()
        .map(|a| (a.lot_id.clone(), a.amount))
        .collect();
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
            match (want.key, want.kind) {
                (Some(k), _) => got.idempotency_key == k,
                (None, TxType::Expiration) => got.idempotency_key.starts_with("expiration:"),
                (None, _) => !got.idempotency_key.is_empty(),
            },
        ),
        (
            "usage",
            got.usage.is_some() == want_usage && got_graph == want_graph,
        ),
        (
            "reason",
            got.reason == want.reason.as_deref().unwrap_or_default(),
        ),
        ("metadata", got.metadata == metadata(want.meta)),
        (
            "refunded_transaction_id",
            got.refunded_transaction_id == want.refunded_transaction_id.clone().unwrap_or_default(),
        ),
        (
            "refunded_amount",
            got.refunded_amount == want.refunded_amount,
        ),
        (
            "created_at",
            want.created_at
                .is_none_or(|t| got.created_at == Some(ts(t))),
        ),
        ("allocations", got_allocations == want_allocations),
    ];
    for (field, ok) in checks {
        ensure!(
            ok,
            "{field} differs: got {got:?}, model {want:?} (allocations {want_allocations:?})"
        );
    }
    Ok(())
}

/// Compares a lot from the server with the model's, `remaining` as the
/// answer should show it.
fn check_lot(got: &pb::Lot, model: &Model, lot: usize, remaining: i64) -> anyhow::Result<()> {
    let l = &model.lots[lot];
    let category = match l.paid {
        true => pb::CreditCategory::Paid,
        false => pb::CreditCategory::Promotional,
    };
    let want = pb::Lot {
        lot_id: l.id.clone(),
        user_id: model.user_id(l.slot),
        category: category as i32,
        priority: l.priority,
        granted_amount: l.granted,
        remaining,
        held: 0,
        expire_time: l.expire.map(ts),
        source_transaction_id: model.txs[l.source].id.clone(),
        created_at: l.created_at.map(ts),
    };
    ensure!(*got == want, "lot {got:?}, model {want:?}");
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
