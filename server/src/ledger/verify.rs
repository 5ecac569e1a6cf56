//! The ledger verifier: reads the tables and reports every place where they
//! break the ledger's invariants. It never writes.
//!
//! For every user (or one) it checks that
//! - the user has its `user_balance` row (the primary key makes it at most
//!   one), and no balance row or transaction belongs to a user that does
//!   not exist;
//! - sequences run 1..n without gaps and `last_sequence` is the last one;
//! - each running balance chains: the opening balance plus the amount for
//!   sequence 1, the previous running balance plus the amount after that;
//! - `balance == opening_balance + sum(amount)`;
//! - a balance below zero is explained: only a REFUND of a TOP_UP may take
//!   it there (that money went back to the payer), and while it stays there
//!   only credits (positive amounts) may follow;
//! - every REFUND names an earlier, refundable transaction of the same user,
//!   with the sign that kind of refund has; the refunds of a transaction add
//!   up to at most its amount, and to exactly its `refunded_amount`.
//!
//! Users are streamed in pages and each user's transactions in pages, so
//! memory stays bounded by a page plus the user's refunds. Each user is read
//! inside its own read-only snapshot (REPEATABLE READ on PostgreSQL and
//! MySQL, a read transaction on SQLite's WAL), so a verifier running next to
//! a live server sees each user's balance row and log at one instant and
//! reports no false alarm; short per-user snapshots keep it from holding
//! back vacuum or WAL checkpoints the way one long snapshot would.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};

use sea_orm::sea_query::{Expr, ExprTrait, IntoColumnRef, Query};
use sea_orm::{
    AccessMode, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, FromQueryResult, IsolationLevel, QueryFilter, QueryOrder, QuerySelect, Select,
    TransactionOptions, TransactionTrait,
};

use super::error::LedgerError;
use super::handle::Ledger;
use super::model::TxKind;
use super::verify_holds as hold_checks;
use crate::entity::{credit_transaction as ctx, user, user_balance};

/// Users read per page.
const USER_PAGE: u64 = 500;
/// Transactions read per page.
const TX_PAGE: u64 = 1000;
/// Ids per `IN (...)` list, well under every backend's bind limit.
const ID_CHUNK: usize = 500;
/// Violations kept in a report; more are only counted, so a badly broken
/// database cannot exhaust memory.
pub const MAX_VIOLATIONS: usize = 10_000;

/// What the verifier found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Users whose ledger was checked.
    pub users_checked: u64,
    /// Transactions read while checking them.
    pub transactions_checked: u64,
    /// The violations, in user order then sequence order (at most
    /// [`MAX_VIOLATIONS`]).
    pub violations: Vec<Violation>,
    /// Violations found beyond [`MAX_VIOLATIONS`], counted but not kept.
    pub violations_omitted: u64,
    /// The instant holds are judged at.
    pub(super) now: Option<DateTime<Utc>>,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub user_id: String,
    /// The transaction concerned, when there is one.
    pub sequence: Option<i64>,
    pub kind: ViolationKind,
    /// What exactly is wrong, with the numbers involved.
    pub detail: String,
}

/// The invariant a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// A user without its `user_balance` row.
    MissingBalanceRow,
    /// A balance row or transactions of a user that does not exist.
    OrphanRow,
    /// `balance != opening_balance + sum(amount)`.
    BalanceMismatch,
    /// A balance below zero that no TOP_UP refund explains.
    NegativeBalance,
    /// Sequences are not 1..n (a row is missing or repeated).
    SequenceGap,
    /// `last_sequence` is not the sequence of the last transaction.
    LastSequenceMismatch,
    /// A running balance is not the previous one plus the amount.
    RunningBalanceMismatch,
    /// A `type` the ledger does not know.
    UnknownType,
    /// An amount whose sign contradicts its type (a positive spend, a
    /// negative top-up, a refund that moves the wrong way).
    InvalidAmount,
    /// A REFUND naming no transaction, a missing one, another user's, a
    /// later one or one that cannot be refunded; or a non-refund naming one.
    RefundTargetInvalid,
    /// The refunds of a transaction add up to more than its amount.
    RefundExceedsOriginal,
    /// A transaction's `refunded_amount` differs from the sum of its refunds.
    RefundedAmountMismatch,
    /// `user_balance.held`, `holds_expire_at` or `hold_count` disagree with
    /// the user's holds.
    HeldMismatch,
    /// A hold whose fields contradict its state (closed without a close
    /// time, captured without its transaction, ...).
    HoldInvalid,
    /// A captured hold without exactly one USAGE transaction of its
    /// captured amount, or a transaction naming a hold that it did not
    /// capture (a hold closed twice).
    HoldCaptureMismatch,
    /// `balance - held < 0` (by the holds not yet expired) with no TOP_UP
    /// refund to explain it.
    NegativeAvailable,
    /// The lots disagree with the balance, with their allocations, with
    /// their bounds or with the holds' earmarks.
    LotMismatch,
    /// A transaction since lots began whose allocations do not add up to
    /// its amount.
    AllocationMismatch,
    /// A lot that expired before its user's last write still has
    /// unearmarked credit (its EXPIRATION was not written).
    ExpirationMissing,
    /// Balance alerts and their events disagree with the log: a crossing
    /// without its one event, an event without a crossing, a wrong armed
    /// state or alert count.
    AlertMismatch,
}

impl ViolationKind {
    /// A stable UPPER_SNAKE_CASE name, for reports and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingBalanceRow => "MISSING_BALANCE_ROW",
            Self::OrphanRow => "ORPHAN_ROW",
            Self::BalanceMismatch => "BALANCE_MISMATCH",
            Self::NegativeBalance => "NEGATIVE_BALANCE",
            Self::SequenceGap => "SEQUENCE_GAP",
            Self::LastSequenceMismatch => "LAST_SEQUENCE_MISMATCH",
            Self::RunningBalanceMismatch => "RUNNING_BALANCE_MISMATCH",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::InvalidAmount => "INVALID_AMOUNT",
            Self::RefundTargetInvalid => "REFUND_TARGET_INVALID",
            Self::RefundExceedsOriginal => "REFUND_EXCEEDS_ORIGINAL",
            Self::RefundedAmountMismatch => "REFUNDED_AMOUNT_MISMATCH",
            Self::HeldMismatch => "HELD_MISMATCH",
            Self::HoldInvalid => "HOLD_INVALID",
            Self::HoldCaptureMismatch => "HOLD_CAPTURE_MISMATCH",
            Self::NegativeAvailable => "NEGATIVE_AVAILABLE",
            Self::LotMismatch => "LOT_MISMATCH",
            Self::AllocationMismatch => "ALLOCATION_MISMATCH",
            Self::ExpirationMissing => "EXPIRATION_MISSING",
            Self::AlertMismatch => "ALERT_MISMATCH",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {:?}", self.user_id)?;
        if let Some(sequence) = self.sequence {
            write!(f, " sequence {sequence}")?;
        }
        write!(f, ": {}: {}", self.kind, self.detail)
    }
}

impl VerifyReport {
    /// True when no invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.violations_omitted == 0
    }

    /// Every violation found, including those not kept.
    pub fn violation_count(&self) -> u64 {
        self.violations.len() as u64 + self.violations_omitted
    }

    /// The kept violations of one user.
    pub fn violations_of<'a>(&'a self, user_id: &'a str) -> impl Iterator<Item = &'a Violation> {
        self.violations.iter().filter(move |v| v.user_id == user_id)
    }

    pub(super) fn push(
        &mut self,
        user_id: &str,
        sequence: Option<i64>,
        kind: ViolationKind,
        detail: String,
    ) {
        if self.violations.len() >= MAX_VIOLATIONS {
            self.violations_omitted += 1;
            return;
        }
        self.violations.push(Violation {
            user_id: user_id.to_owned(),
            sequence,
            kind,
            detail,
        });
    }
}

impl fmt::Display for VerifyReport {
    /// One line per violation, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.violations {
            writeln!(f, "VIOLATION {v}")?;
        }
        if self.violations_omitted > 0 {
            writeln!(
                f,
                "... and {} more violations not listed",
                self.violations_omitted
            )?;
        }
        if self.is_clean() {
            write!(
                f,
                "ledger OK: {} users, {} transactions checked, no violations",
                self.users_checked, self.transactions_checked
            )
        } else {
            let users: HashSet<&str> = self.violations.iter().map(|v| v.user_id.as_str()).collect();
            write!(
                f,
                "ledger BROKEN: {} violations affecting {} users; {} users and {} transactions checked",
                self.violation_count(),
                users.len(),
                self.users_checked,
                self.transactions_checked
            )
        }
    }
}

/// Verifies the ledger of every user (`None`) or of one.
///
/// A `user_id` that names no user, no balance row and no transaction gives a
/// clean report with `users_checked == 0` (callers may answer NOT_FOUND).
/// Errors are only the database's: broken data is reported, never an error.
pub async fn verify(db: &DatabaseConnection, user_id: Option<&str>) -> Result<VerifyReport, DbErr> {
    verify_at(db, user_id, Utc::now()).await
}

/// [`verify`] with holds judged at `now` (the ledger's clock: an ACTIVE hold
/// whose expire_time is not after it holds nothing).
pub async fn verify_at(
    db: &DatabaseConnection,
    user_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<VerifyReport, DbErr> {
    let mut report = VerifyReport {
        now: Some(now),
        ..VerifyReport::default()
    };
    match user_id {
        Some(id) => {
            let exists = user::Entity::find_by_id(id.to_owned())
                .select_only()
                .column(user::Column::Id)
                .into_tuple::<String>()
                .one(db)
                .await?
                .is_some();
            if exists {
                check_user(db, id, &mut report).await?;
            } else {
                find_orphans(db, Some(id), &mut report).await?;
            }
        }
        None => {
            let mut after: Option<String> = None;
            loop {
                let mut page = user::Entity::find()
                    .select_only()
                    .column(user::Column::Id)
                    .order_by_asc(user::Column::Id)
                    .limit(USER_PAGE);
                if let Some(after) = after {
                    page = page.filter(user::Column::Id.gt(after));
                }
                let ids: Vec<String> = page.into_tuple().all(db).await?;
                for id in &ids {
                    check_user(db, id, &mut report).await?;
                }
                match ids.into_iter().last() {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
            find_orphans(db, None, &mut report).await?;
        }
    }
    Ok(report)
}

/// Checks one existing user inside its own read-only snapshot.
async fn check_user(
    db: &DatabaseConnection,
    user_id: &str,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    let txn = begin_snapshot(db).await?;
    let result = check_user_in(&txn, user_id, report).await;
    // Read-only: ending it either way changes nothing.
    txn.rollback().await?;
    result
}

/// A read-only transaction that sees one snapshot of the database.
async fn begin_snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let options = match db.get_database_backend() {
        // WAL gives a deferred read transaction one snapshot from its first
        // read; SQLite has no isolation levels to set.
        DbBackend::Sqlite => TransactionOptions::default(),
        _ => TransactionOptions {
            isolation_level: Some(IsolationLevel::RepeatableRead),
            access_mode: Some(AccessMode::ReadOnly),
            ..Default::default()
        },
    };
    db.begin_with_options(options).await
}

/// The columns of a transaction the checks need (not metadata or usage).
#[derive(Debug, FromQueryResult)]
struct Row {
    id: String,
    user_id: String,
    sequence: i64,
    kind: String,
    amount: i64,
    running_balance: i64,
    refunded_transaction_id: Option<String>,
    refunded_amount: i64,
}

fn rows() -> Select<ctx::Entity> {
    use ctx::Column as C;
    ctx::Entity::find()
        .select_only()
        .columns([
            C::Id,
            C::UserId,
            C::Sequence,
            C::Amount,
            C::RunningBalance,
            C::RefundedTransactionId,
            C::RefundedAmount,
        ])
        .column_as(C::Type, "kind")
}

async fn check_user_in(
    txn: &DatabaseTransaction,
    user_id: &str,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    report.users_checked += 1;
    let account = user_balance::Entity::find_by_id(user_id.to_owned())
        .one(txn)
        .await?;
    if account.is_none() {
        report.push(
            user_id,
            None,
            ViolationKind::MissingBalanceRow,
            "the user has no user_balance row".into(),
        );
    }
    let opening = account.as_ref().map_or(0, |a| a.opening_balance);
    let mut walk = Walk::new(user_id, opening);
    let mut after: Option<i64> = None;
    loop {
        let mut page = rows()
            .filter(ctx::Column::UserId.eq(user_id))
            .order_by_asc(ctx::Column::Sequence)
            .limit(TX_PAGE);
        if let Some(after) = after {
            page = page.filter(ctx::Column::Sequence.gt(after));
        }
        let page: Vec<Row> = page.into_model().all(txn).await?;
        for row in &page {
            walk.step(row, report);
        }
        match page.last() {
            Some(last) => after = Some(last.sequence),
            None => break,
        }
    }
    report.transactions_checked += walk.count;
    if let Some(account) = &account {
        walk.check_account(account, report);
    }
    let targets = load_targets(txn, &walk.refunds).await?;
    walk.check_refunds(&targets, report);
    let top_up_refunded = walk.refunds.iter().any(|r| {
        r.target
            .as_deref()
            .and_then(|t| targets.get(t))
            .is_some_and(|t| t.kind == "TOP_UP")
    });
    if let Some(account) = &account {
        let now = report.now.unwrap_or_else(Utc::now);
        hold_checks::check(txn, account, top_up_refunded, now, report).await?;
        super::verify_lots::check(txn, account, report).await?;
        super::verify_alerts::check(txn, account, report).await?;
    }
    Ok(())
}

/// A REFUND row, kept until its target has been read.
struct RefundRow {
    sequence: i64,
    target: Option<String>,
    amount: i64,
    /// It left the balance below zero by taking credits away: fine only if
    /// the target is a TOP_UP.
    went_negative: bool,
}

/// A row whose `refunded_amount` is not zero, to match against its refunds.
struct RefundedRow {
    id: String,
    sequence: i64,
    refunded_amount: i64,
}

/// The state of one pass over a user's transactions, in sequence order.
struct Walk<'a> {
    user_id: &'a str,
    opening: i64,
    next_sequence: i64,
    previous_running: i64,
    sum: i128,
    count: u64,
    /// The last row's sequence and running balance.
    last: Option<(i64, i64)>,
    refunds: Vec<RefundRow>,
    refunded: Vec<RefundedRow>,
}

impl<'a> Walk<'a> {
    fn new(user_id: &'a str, opening: i64) -> Self {
        Self {
            user_id,
            opening,
            next_sequence: 1,
            previous_running: opening,
            sum: 0,
            count: 0,
            last: None,
            refunds: Vec::new(),
            refunded: Vec::new(),
        }
    }

    fn step(&mut self, row: &Row, report: &mut VerifyReport) {
        let user = self.user_id;
        let seq = Some(row.sequence);
        self.count += 1;
        self.sum += i128::from(row.amount);

        if row.sequence != self.next_sequence {
            let detail = if row.sequence > self.next_sequence {
                format!(
                    "expected sequence {}, found {}: {} missing",
                    self.next_sequence,
                    row.sequence,
                    row.sequence - self.next_sequence
                )
            } else {
                format!(
                    "expected sequence {}, found {} again or out of order",
                    self.next_sequence, row.sequence
                )
            };
            report.push(user, seq, ViolationKind::SequenceGap, detail);
        }
        // Resynchronise, so one missing row is reported once.
        self.next_sequence = row.sequence.saturating_add(1);

        // Chain from the stored previous value: each row is judged on its
        // own link, so one altered row does not flag everything after it.
        match self.previous_running.checked_add(row.amount) {
            Some(expected) if expected == row.running_balance => {}
            Some(expected) => report.push(
                user,
                seq,
                ViolationKind::RunningBalanceMismatch,
                format!(
                    "running balance {}, expected {expected} (previous {} + amount {})",
                    row.running_balance, self.previous_running, row.amount
                ),
            ),
            None => report.push(
                user,
                seq,
                ViolationKind::RunningBalanceMismatch,
                format!(
                    "previous {} + amount {} overflows int64",
                    self.previous_running, row.amount
                ),
            ),
        }
        self.previous_running = row.running_balance;
        self.last = Some((row.sequence, row.running_balance));

        let kind = TxKind::parse(&row.kind);
        match kind {
            None => report.push(
                user,
                seq,
                ViolationKind::UnknownType,
                format!("type {:?}", row.kind),
            ),
            Some(TxKind::TopUp | TxKind::Grant) if row.amount <= 0 => report.push(
                user,
                seq,
                ViolationKind::InvalidAmount,
                format!("a {} of {}", row.kind, row.amount),
            ),
            Some(TxKind::Usage) if row.amount >= 0 => report.push(
                user,
                seq,
                ViolationKind::InvalidAmount,
                format!("a USAGE of {} (spends are stored negative)", row.amount),
            ),
            Some(TxKind::Expiration) if row.amount >= 0 => report.push(
                user,
                seq,
                ViolationKind::InvalidAmount,
                format!("an EXPIRATION of {} (stored negative)", row.amount),
            ),
            _ => {}
        }

        let is_refund = kind == Some(TxKind::Refund);
        // A credit never makes a balance more negative; a negative balance
        // it leaves came from an earlier row, judged there. An EXPIRATION
        // below zero is judged against the deficit (`verify_lots.rs`).
        let unexplained_negative =
            row.running_balance < 0 && row.amount <= 0 && kind != Some(TxKind::Expiration);
        if is_refund {
            self.refunds.push(RefundRow {
                sequence: row.sequence,
                target: row.refunded_transaction_id.clone(),
                amount: row.amount,
                went_negative: unexplained_negative,
            });
        } else {
            if unexplained_negative {
                report.push(
                    user,
                    seq,
                    ViolationKind::NegativeBalance,
                    format!(
                        "a {} of {} took the balance to {}",
                        row.kind, row.amount, row.running_balance
                    ),
                );
            }
            if let Some(target) = &row.refunded_transaction_id {
                report.push(
                    user,
                    seq,
                    ViolationKind::RefundTargetInvalid,
                    format!("a {} names refunded transaction {target}", row.kind),
                );
            }
        }
        if row.refunded_amount != 0 {
            self.refunded.push(RefundedRow {
                id: row.id.clone(),
                sequence: row.sequence,
                refunded_amount: row.refunded_amount,
            });
        }
    }

    /// The balance row against the log.
    fn check_account(&self, account: &user_balance::Model, report: &mut VerifyReport) {
        let user = self.user_id;
        let (last_sequence, last_running) = match self.last {
            Some((sequence, running)) => (sequence, Some(running)),
            None => (0, None),
        };
        if account.last_sequence != last_sequence {
            report.push(
                user,
                None,
                ViolationKind::LastSequenceMismatch,
                format!(
                    "last_sequence is {}, the last transaction's sequence is {last_sequence} ({} transactions)",
                    account.last_sequence, self.count
                ),
            );
        }
        let expected = i128::from(self.opening) + self.sum;
        if i128::from(account.balance) != expected {
            report.push(
                user,
                None,
                ViolationKind::BalanceMismatch,
                format!(
                    "balance {} != opening balance {} + sum of {} amounts {} = {expected}",
                    account.balance, self.opening, self.count, self.sum
                ),
            );
        }
        // A negative last running balance was judged by the walk; any other
        // negative balance has no history behind it.
        if account.balance < 0 && last_running != Some(account.balance) {
            report.push(
                user,
                None,
                ViolationKind::NegativeBalance,
                format!(
                    "balance {} is below zero and no transaction leads there",
                    account.balance
                ),
            );
        }
    }

    /// Refund links, signs, totals and `refunded_amount`s.
    fn check_refunds(&self, targets: &HashMap<String, Row>, report: &mut VerifyReport) {
        let user = self.user_id;
        let mut totals: HashMap<&str, i128> = HashMap::new();
        for refund in &self.refunds {
            let seq = Some(refund.sequence);
            let Some(target_id) = &refund.target else {
                report.push(
                    user,
                    seq,
                    ViolationKind::RefundTargetInvalid,
                    "a REFUND that names no transaction".into(),
                );
                continue;
            };
            let target = targets.get(target_id).filter(|t| t.user_id == user);
            let target_kind = target.and_then(|t| TxKind::parse(&t.kind));
            if refund.went_negative && target_kind != Some(TxKind::TopUp) {
                report.push(
                    user,
                    seq,
                    ViolationKind::NegativeBalance,
                    format!(
                        "a refund of {} (not a TOP_UP) took the balance below zero",
                        target.map_or("an unknown transaction", |t| t.kind.as_str())
                    ),
                );
            }
            let Some(target) = target else {
                let detail = match targets.get(target_id) {
                    Some(t) => {
                        format!("refunds {target_id}, a transaction of user {:?}", t.user_id)
                    }
                    None => format!("refunds {target_id}, which does not exist"),
                };
                report.push(user, seq, ViolationKind::RefundTargetInvalid, detail);
                continue;
            };
            let sign_ok = match target_kind {
                Some(TxKind::Usage) => refund.amount > 0,
                Some(TxKind::TopUp | TxKind::Grant) => refund.amount < 0,
                _ => {
                    report.push(
                        user,
                        seq,
                        ViolationKind::RefundTargetInvalid,
                        format!(
                            "refunds {target_id}, a {} that cannot be refunded",
                            target.kind
                        ),
                    );
                    continue;
                }
            };
            if !sign_ok {
                report.push(
                    user,
                    seq,
                    ViolationKind::InvalidAmount,
                    format!("a refund of {} of a {}", refund.amount, target.kind),
                );
            }
            if target.sequence >= refund.sequence {
                report.push(
                    user,
                    seq,
                    ViolationKind::RefundTargetInvalid,
                    format!(
                        "refunds {target_id}, which comes later (sequence {})",
                        target.sequence
                    ),
                );
            }
            *totals.entry(target_id.as_str()).or_default() += i128::from(refund.amount).abs();
        }

        for (id, total) in &totals {
            let Some(target) = targets.get(*id) else {
                continue;
            };
            let seq = Some(target.sequence);
            let original = i128::from(target.amount).abs();
            if *total > original {
                report.push(
                    user,
                    seq,
                    ViolationKind::RefundExceedsOriginal,
                    format!(
                        "refunds of {id} add up to {total}, more than its amount {}",
                        target.amount
                    ),
                );
            }
            if i128::from(target.refunded_amount) != *total {
                report.push(
                    user,
                    seq,
                    ViolationKind::RefundedAmountMismatch,
                    format!(
                        "{id} has refunded_amount {}, its refunds add up to {total}",
                        target.refunded_amount
                    ),
                );
            }
        }
        for row in &self.refunded {
            if !totals.contains_key(row.id.as_str()) {
                report.push(
                    user,
                    Some(row.sequence),
                    ViolationKind::RefundedAmountMismatch,
                    format!(
                        "{} has refunded_amount {}, but no refund names it",
                        row.id, row.refunded_amount
                    ),
                );
            }
        }
    }
}

/// The transactions the refunds name, by id, whoever they belong to.
async fn load_targets(
    txn: &DatabaseTransaction,
    refunds: &[RefundRow],
) -> Result<HashMap<String, Row>, DbErr> {
    let ids: Vec<&str> = refunds
        .iter()
        .filter_map(|r| r.target.as_deref())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut targets = HashMap::new();
    for chunk in ids.chunks(ID_CHUNK) {
        let found: Vec<Row> = rows()
            .filter(ctx::Column::Id.is_in(chunk.iter().copied()))
            .into_model()
            .all(txn)
            .await?;
        targets.extend(found.into_iter().map(|r| (r.id.clone(), r)));
    }
    Ok(targets)
}

/// Balance rows and transactions whose user does not exist (all users, or
/// only `user_id`). Foreign keys forbid them, but a verifier checks rather
/// than trusts (SQLite enforces them only when each connection asks).
async fn find_orphans(
    db: &DatabaseConnection,
    user_id: Option<&str>,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    let mut balances = user_balance::Entity::find()
        .select_only()
        .column(user_balance::Column::UserId)
        .filter(no_user((
            user_balance::Entity,
            user_balance::Column::UserId,
        )))
        .order_by_asc(user_balance::Column::UserId)
        .limit(MAX_VIOLATIONS as u64);
    if let Some(id) = user_id {
        balances = balances.filter(user_balance::Column::UserId.eq(id));
    }
    for id in balances.into_tuple::<String>().all(db).await? {
        report.push(
            &id,
            None,
            ViolationKind::OrphanRow,
            "a user_balance row of a user that does not exist".into(),
        );
    }

    let mut logs = ctx::Entity::find()
        .select_only()
        .column(ctx::Column::UserId)
        .column_as(ctx::Column::Id.count(), "n")
        .filter(no_user((ctx::Entity, ctx::Column::UserId)))
        .group_by(ctx::Column::UserId)
        .order_by_asc(ctx::Column::UserId)
        .limit(MAX_VIOLATIONS as u64);
    if let Some(id) = user_id {
        logs = logs.filter(ctx::Column::UserId.eq(id));
    }
    for (id, n) in logs.into_tuple::<(String, i64)>().all(db).await? {
        report.push(
            &id,
            None,
            ViolationKind::OrphanRow,
            format!("{n} transactions of a user that does not exist"),
        );
    }
    Ok(())
}

/// `NOT EXISTS (SELECT 1 FROM user WHERE user.id = owner)`. NOT EXISTS, not
/// NOT IN: PostgreSQL plans it as a hash anti-join, where a large NOT IN
/// list can degrade to a nested loop.
fn no_user(owner: impl IntoColumnRef) -> Expr {
    Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from(user::Entity)
            .and_where(Expr::col((user::Entity, user::Column::Id)).equals(owner))
            .to_owned(),
    )
    .not()
}

impl Ledger {
    /// Checks every invariant of one user's ledger, or of all users'.
    pub async fn verify(&self, user_id: Option<&str>) -> Result<VerifyReport, LedgerError> {
        verify_at(self.db(), user_id, self.store.clock.now())
            .await
            .map_err(|e| self.store.explain(e.into()))
    }
}
