//! Who may call: bearer API keys, each with a role.
//!
//! Keys are configured as SHA-256 hashes (`credit-server new-key` makes
//! one), so the key file holds nothing a reader could call with. A presented
//! key is hashed and compared with every configured hash in constant time,
//! without stopping at a match, so timing tells nothing about which keys
//! exist or how close a guess was.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The name writes are recorded under when the server runs without keys.
pub const ANONYMOUS: &str = "anonymous";

/// What a key may do; each role may also do everything of the roles below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Balances and history.
    Reader,
    /// Also top-up, spend, and refund of usage.
    Service,
    /// Also grant, refund of anything, create user, verify the ledger.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Service => "service",
            Role::Admin => "admin",
        })
    }
}

/// The authenticated caller of a request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name, for logs; never the key.
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller when no keys are configured (loopback-only development);
    /// its writes are recorded as made by `anonymous`.
    pub fn open() -> Self {
        Self {
            name: ANONYMOUS.into(),
            role: Role::Admin,
        }
    }
}

struct ApiKey {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The configured keys.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<ApiKey>,
}

impl fmt::Debug for KeyRing {
    /// Names and roles only: even hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| format!("{} ({})", k.name, k.role)))
            .finish()
    }
}

impl KeyRing {
    /// Parses key lines `NAME ROLE sha256:HEX` (blank lines and `#` comments
    /// ignored). Entries may also be separated by commas, for environment
    /// variables.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.split(['\n', ',']).enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(format!(
                    "key entry {}: expected `NAME ROLE sha256:HEX`",
                    n + 1
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!("key {name}: role must be reader, service or admin, not {role:?}")
            })?;
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| format!("key {name}: the hash must be sha256: and 64 hex digits"))?;
            keys.push(ApiKey {
                name: name.to_owned(),
                role,
                hash,
            });
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The caller a presented key belongs to, if any.
    pub fn authenticate(&self, key: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.hash.ct_eq(&presented)) {
                found = Some(Caller {
                    name: k.name.clone(),
                    role: k.role,
                });
            }
        }
        found
    }
}

/// The configuration line for `key`: `NAME ROLE sha256:HEX`.
pub fn key_line(name: &str, role: Role, key: &str) -> String {
    format!(
        "{name} {role} sha256:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// Parses a role name given on the command line.
pub fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "the role must be reader, service or admin".to_owned())
}

/// The least role that may call a `CreditService` method; `None` for a
/// method this service does not have (tonic answers UNIMPLEMENTED).
pub fn required_role(method: &str) -> Option<Role> {
    Some(match method {
        "GetUser" | "GetBalance" | "GetTransaction" | "ListTransactions" | "GetHold"
        | "ListHolds" | "ListLots" | "WatchBalance" | "ListAlertEvents" => Role::Reader,
        // Readers watch one user; the handler asks admin for every user.
        "WatchTransactions" => Role::Reader,
        // A service may refund only usage; the ledger checks the target.
        "TopUp" | "Spend" | "Refund" | "Reserve" | "Capture" | "Release" => Role::Service,
        // An alert's events lead to top-ups: the service that makes them
        // sets them.
        "SetBalanceAlert" | "DeleteBalanceAlert" => Role::Service,
        "CreateUser" | "Grant" | "VerifyLedger" => Role::Admin,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_by_hash_only() {
        let ring = KeyRing::parse(&format!(
            "# ops keys\n{}\n{}",
            key_line("billing", Role::Service, "secret-1"),
            key_line("ops", Role::Admin, "secret-2")
        ))
        .unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(
            ring.authenticate("secret-1").map(|c| c.role),
            Some(Role::Service)
        );
        assert_eq!(
            ring.authenticate("secret-2").map(|c| c.name),
            Some("ops".into())
        );
        assert_eq!(ring.authenticate("secret-3"), None);
        assert_eq!(ring.authenticate(""), None);
    }

    #[test]
    fn bad_key_lines_say_what_is_wrong() {
        assert!(KeyRing::parse("a admin").unwrap_err().contains("expected"));
        assert!(
            KeyRing::parse("a root sha256:00")
                .unwrap_err()
                .contains("role")
        );
        assert!(
            KeyRing::parse("a admin sha256:zz")
                .unwrap_err()
                .contains("64 hex")
        );
    }
}
