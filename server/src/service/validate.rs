//! Field checks shared by every RPC. A checker collects every violation of a
//! request first, so the caller learns everything to fix in one answer.

use prost_types::Struct;

use super::convert::from_struct;
use crate::ledger::model::Metadata;
use crate::ledger::{FieldViolation, LedgerError};

/// Longest user id, transaction id or idempotency key (characters).
pub const MAX_ID_CHARS: usize = 128;
/// Longest free text: names, reasons, usage details (characters).
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest email address (characters).
pub const MAX_EMAIL_CHARS: usize = 320;
/// Largest metadata, as compact JSON (bytes).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest metadata nesting (the top-level object is level 1). The wire
/// decoder gives up a few levels deeper (prost's recursion limit); both
/// refusals name this limit.
pub const MAX_METADATA_DEPTH: usize = 30;

/// Collects the violations of one request.
#[derive(Default)]
pub struct Checker {
    violations: Vec<FieldViolation>,
}

impl Checker {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// A required identifier: 1 to 128 characters, no control characters,
    /// no surrounding spaces.
    pub fn id(&mut self, field: &str, value: String) -> String {
        if value.is_empty() {
            self.fail(field, "is required");
        } else {
            self.id_shape(field, &value);
        }
        value
    }

    /// An optional identifier (empty means absent).
    pub fn optional_id(&mut self, field: &str, value: String) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        self.id_shape(field, &value);
        Some(value)
    }

    fn id_shape(&mut self, field: &str, value: &str) {
        let chars = value.chars().count();
        if chars > MAX_ID_CHARS {
            self.fail(
                field,
                format!("must be at most {MAX_ID_CHARS} characters, got {chars}"),
            );
        } else if value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        } else if value.trim() != value {
            self.fail(field, "must not start or end with whitespace");
        }
    }

    /// A transaction id as this service issues them (a UUID).
    /// A transaction id (see [`Checker::uuid`]).
    pub fn transaction_id(&mut self, field: &str, value: String) -> String {
        self.uuid(field, value, "a transaction id returned by this service")
    }

    /// An id this service issued. Any spelling of a UUID (upper case,
    /// without hyphens, braced, URN) is read as the canonical lower-case,
    /// hyphenated form it stores.
    pub fn uuid(&mut self, field: &str, value: String, what: &str) -> String {
        if value.is_empty() {
            self.fail(field, "is required");
            return value;
        }
        match uuid::Uuid::try_parse(&value) {
            Ok(id) => id.hyphenated().to_string(),
            Err(_) => {
                self.fail(field, format!("must be {what} (a UUID)"));
                value
            }
        }
    }

    /// Optional free text of at most `MAX_TEXT_CHARS` (empty means absent).
    pub fn text(&mut self, field: &str, value: String) -> Option<String> {
        let chars = value.chars().count();
        if chars > MAX_TEXT_CHARS {
            self.fail(
                field,
                format!("must be at most {MAX_TEXT_CHARS} characters, got {chars}"),
            );
        } else if value.contains('\0') {
            // PostgreSQL text cannot hold NUL; refuse it on every database.
            self.fail(field, "must not contain NUL characters");
        }
        (!value.is_empty()).then_some(value)
    }

    /// An email address, normalised to lower case: it must be unique across
    /// users, and every supported database must agree on what "the same"
    /// means.
    pub fn email(&mut self, field: &str, value: String) -> String {
        let email = value.trim().to_lowercase();
        let chars = email.chars().count();
        let well_formed = match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            }
            None => false,
        };
        if email.is_empty() {
            self.fail(field, "is required");
        } else if chars > MAX_EMAIL_CHARS {
            self.fail(
                field,
                format!("must be at most {MAX_EMAIL_CHARS} characters, got {chars}"),
            );
        } else if !well_formed {
            self.fail(field, "must be an email address like name@example.com");
        }
        email
    }

    /// A credit amount: an integer > 0.
    pub fn amount(&mut self, field: &str, value: i64) -> i64 {
        if value <= 0 {
            self.fail(field, format!("must be greater than 0, got {value}"));
        }
        value
    }

    /// Optional metadata: JSON-representable and at most 16 KiB.
    pub fn metadata(&mut self, field: &str, value: Option<Struct>) -> Option<Metadata> {
        let metadata = match from_struct(value?) {
            Ok(m) => m,
            Err(path) => {
                self.fail(
                    &format!("{field}.{path}"),
                    "must be a JSON value (a value with a kind, not NaN or infinite)",
                );
                return None;
            }
        };
        let json = serde_json::Value::Object(metadata.clone());
        let depth = depth(&json);
        if depth > MAX_METADATA_DEPTH {
            self.fail(
                field,
                format!("is nested too deeply: at most {MAX_METADATA_DEPTH} levels, got {depth}"),
            );
        }
        let bytes = json.to_string().len();
        if bytes > MAX_METADATA_BYTES {
            self.fail(
                field,
                format!("must be at most {MAX_METADATA_BYTES} bytes as JSON, got {bytes}"),
            );
        }
        Some(metadata)
    }

    /// A rule that spans fields.
    pub fn require(&mut self, ok: bool, field: &str, description: &str) {
        if !ok {
            self.fail(field, description);
        }
    }

    /// `Ok` when every check passed, else one INVALID_ARGUMENT naming all.
    pub fn finish(self) -> Result<(), LedgerError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(LedgerError::InvalidArgument(self.violations))
        }
    }
}

/// Nesting depth of a JSON value: a scalar is 0, an object or a list one
/// more than its deepest member.
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
