//! Fault hooks for tests: make the ledger fail at a chosen point for a
//! chosen user, to prove that failure paths free what they hold and never
//! apply a write twice. Reachable only through the library API (never from
//! the network), and empty in a server nobody armed.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Panic inside a write batch that holds the user.
    PanicInBatch,
    /// Panic inside the balance read of the user.
    PanicInBalanceRead,
    /// Fail a batch holding the user with a database error before it
    /// commits (the transaction rolls back).
    FailBeforeCommit,
    /// Commit a batch holding the user, then report the commit as failed
    /// (the answer was lost: the outcome is unknown to the server).
    LoseCommitAnswer,
}

/// The armed faults: each fires for its user until cleared.
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<HashMap<Fault, String>>,
}

impl Faults {
    pub fn arm(&self, fault: Fault, user_id: &str) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.insert(fault, user_id.to_owned());
        }
    }

    pub fn clear(&self) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.clear();
        }
    }

    /// True when `fault` is armed for one of `users`.
    pub fn fires<'a>(&self, fault: Fault, mut users: impl Iterator<Item = &'a str>) -> bool {
        let Ok(armed) = self.armed.lock() else {
            return false;
        };
        match armed.get(&fault) {
            Some(target) => users.any(|u| u == target),
            None => false,
        }
    }
}
