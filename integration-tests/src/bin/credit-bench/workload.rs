//! What each client does next: the operation mix of a scenario over the
//! users of one target.

use rand::Rng;

use crate::args::{Scenario, TargetKind};

/// Credits every user starts with: enough that spends of 1 never run out.
pub const SEED_BALANCE: i64 = 1_000_000_000_000;
/// A spend takes this much.
pub const SPEND_AMOUNT: i64 = 1;
/// A top-up in the mixed scenario adds this much.
pub const TOP_UP_AMOUNT: i64 = 100;
/// Rows per history page in the mixed scenario.
pub const HISTORY_PAGE: i32 = 50;
/// What a reserve-capture pair holds: the estimate of the work's cost.
pub const RESERVE_AMOUNT: i64 = 100;
/// The most a pair's Capture charges: 1.2x the estimate, so about one
/// capture in six takes the excess from the available balance. The least is
/// 1: a Capture of 0 would be a release and write no transaction.
pub const CAPTURE_MAX: i64 = RESERVE_AMOUNT * 6 / 5;

/// The lots a spend-lots user holds besides its seed top-up (priority
/// 100, never expires): (grant or top-up, priority, days to expiry). Each
/// holds `SEED_BALANCE`, so spends of 1 never empty one; every spend reads
/// and orders all five and draws from the first.
pub const EXTRA_LOTS: [(LotKind, i32, Option<i64>); 4] = [
    (LotKind::Grant, 10, Some(30)),
    (LotKind::Grant, 50, Some(7)),
    (LotKind::Grant, 50, None),
    (LotKind::TopUp, 80, Some(365)),
];

/// How a spend-lots lot comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LotKind {
    Grant,
    TopUp,
}

/// One call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Spend,
    TopUp,
    Read,
    History,
    /// A Reserve of `RESERVE_AMOUNT`, then a Capture of that hold for
    /// 1..=`CAPTURE_MAX`: one operation, timed from the Reserve's request
    /// to the Capture's answer.
    ReserveCapture,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Spend,
        Op::TopUp,
        Op::Read,
        Op::History,
        Op::ReserveCapture,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Spend => "spend",
            Op::TopUp => "top-up",
            Op::Read => "read",
            Op::History => "history",
            Op::ReserveCapture => "reserve+capture",
        }
    }

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The users of one target and the scenario's mix.
pub struct Workload {
    pub scenario: Scenario,
    pub users: Vec<String>,
}

impl Workload {
    /// The next operation and the user it is for.
    pub fn next<'a>(&'a self, rng: &mut impl Rng) -> (Op, &'a str) {
        let user = &self.users[rng.random_range(0..self.users.len())];
        let op = match self.scenario {
            Scenario::SpendHot | Scenario::SpendSpread | Scenario::SpendLots | Scenario::Feed => {
                Op::Spend
            }
            Scenario::Read => Op::Read,
            Scenario::ReserveCapture => Op::ReserveCapture,
            // Metered calls dominate; reads and history pages are what
            // dashboards add; top-ups are rare.
            Scenario::Mixed => match rng.random_range(0..100) {
                0..70 => Op::Spend,
                70..75 => Op::TopUp,
                75..95 => Op::Read,
                _ => Op::History,
            },
        };
        (op, user)
    }
}

/// The amount a pair's Capture charges: uniform in 1..=`CAPTURE_MAX`.
pub fn capture_amount(rng: &mut impl Rng) -> i64 {
    rng.random_range(1..=CAPTURE_MAX)
}

/// How many users a scenario needs per target.
pub fn user_count(scenario: Scenario, users: usize) -> usize {
    match scenario {
        Scenario::SpendHot | Scenario::ReserveCapture | Scenario::SpendLots => 1,
        _ => users,
    }
}

/// The prefix of a target's user ids in this run. A random run id keeps
/// runs against an existing database apart; no `_` or `%`, so it can be
/// used in LIKE as it is.
pub fn user_prefix(run_id: &str, scenario: Scenario, target: TargetKind) -> String {
    format!("{run_id}-{}-{}-", scenario.name(), target.name())
}

/// The ids of a target's users.
pub fn user_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn captures_stay_within_one_to_1_2x_the_estimate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let amounts: Vec<i64> = (0..10_000).map(|_| capture_amount(&mut rng)).collect();
        assert_eq!(CAPTURE_MAX, 120);
        assert!(amounts.iter().all(|a| (1..=CAPTURE_MAX).contains(a)));
        assert!(amounts.iter().any(|a| *a > RESERVE_AMOUNT));
        assert!(amounts.iter().any(|a| *a < RESERVE_AMOUNT));
    }
}
