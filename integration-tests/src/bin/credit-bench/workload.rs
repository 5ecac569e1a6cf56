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

/// One call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Spend,
    TopUp,
    Read,
    History,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Spend, Op::TopUp, Op::Read, Op::History];

    pub fn name(self) -> &'static str {
        match self {
            Op::Spend => "spend",
            Op::TopUp => "top-up",
            Op::Read => "read",
            Op::History => "history",
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
            Scenario::SpendHot | Scenario::SpendSpread => Op::Spend,
            Scenario::Read => Op::Read,
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

/// How many users a scenario needs per target.
pub fn user_count(scenario: Scenario, users: usize) -> usize {
    match scenario {
        Scenario::SpendHot => 1,
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
