//! Opaque history page tokens. A token holds the position after which the
//! next page starts (a sequence number), the user it belongs to and a hash of
//! the filters, so it cannot be replayed against another user or with other
//! filters (AIP-158).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::LedgerError;
use super::model::HistoryFilter;

#[derive(Serialize, Deserialize)]
struct Token {
    /// The user the token was issued for.
    u: String,
    /// Hash of the filters it was issued with.
    f: String,
    /// The next page holds sequences below this one.
    s: i64,
}

/// Makes the token for the page after `last_sequence`.
pub fn encode(user_id: &str, filter: &HistoryFilter, last_sequence: i64) -> String {
    let token = Token {
        u: user_id.to_owned(),
        f: filter_hash(filter),
        s: last_sequence,
    };
    // Serialising a struct of strings and an integer cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// Reads a token back: the sequence the next page starts below.
pub fn decode(token: &str, user_id: &str, filter: &HistoryFilter) -> Result<i64, LedgerError> {
    let invalid = |why: &str| LedgerError::invalid("page_token", why);
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid("not a page token issued by this service"))?;
    let token: Token = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("not a page token issued by this service"))?;
    if token.u != user_id {
        return Err(invalid("the page token belongs to another user"));
    }
    if token.f != filter_hash(filter) {
        return Err(invalid(
            "the page token was issued for other filters; repeat the first request's filters",
        ));
    }
    if token.s < 1 {
        return Err(invalid("not a page token issued by this service"));
    }
    Ok(token.s)
}

fn filter_hash(filter: &HistoryFilter) -> String {
    let mut kinds: Vec<&str> = filter.kinds.iter().map(|k| k.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut canonical = serde_json::json!([
        kinds,
        filter.created_after.map(|t| t.timestamp_micros()),
        filter.created_before.map(|t| t.timestamp_micros()),
        filter.graph_exec_id,
    ]);
    // Appended only when set, so tokens issued before the filter existed
    // stay valid.
    if let (Some(created_by), Some(parts)) = (&filter.created_by, canonical.as_array_mut()) {
        parts.push(created_by.as_str().into());
    }
    hex::encode(&Sha256::digest(canonical.to_string().as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::model::TxKind;

    #[test]
    fn tokens_round_trip_and_stay_bound() {
        let filter = HistoryFilter {
            kinds: vec![TxKind::Usage, TxKind::TopUp],
            graph_exec_id: Some("g".into()),
            ..HistoryFilter::default()
        };
        let token = encode("u", &filter, 42);
        assert_eq!(decode(&token, "u", &filter).unwrap(), 42);
        // The same filters in another order are the same filters.
        let reordered = HistoryFilter {
            kinds: vec![TxKind::TopUp, TxKind::Usage],
            ..filter.clone()
        };
        assert_eq!(decode(&token, "u", &reordered).unwrap(), 42);
        assert!(decode(&token, "v", &filter).is_err(), "another user");
        let other = HistoryFilter {
            created_by: Some("ops".into()),
            ..filter.clone()
        };
        assert!(decode(&token, "u", &other).is_err(), "other filters");
        assert!(decode("garbage", "u", &filter).is_err());
        assert!(decode(&encode("u", &filter, 0), "u", &filter).is_err());
    }
}
