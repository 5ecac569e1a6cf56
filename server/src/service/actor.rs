//! Who made a request, for the audit trail: the API key's name the gate
//! admitted it with, and the subject of the TLS client certificate the
//! connection presented (if any).

use tonic::Request;

use crate::auth::{ANONYMOUS, Caller};
use crate::ledger::model::Actor;

/// Longest certificate subject recorded (the column's width).
const MAX_SUBJECT_CHARS: usize = 512;

/// The actor of `request`.
pub fn of<T>(request: &Request<T>) -> Actor {
    let name = request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| ANONYMOUS.to_owned(), |c| c.name.clone());
    let certificate_subject = request
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|der| subject(der)));
    Actor {
        name,
        certificate_subject,
    }
}

/// The subject of a DER certificate as RFC 4514-style text
/// (`CN=billing, O=Example`).
fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let text = cert.subject().to_string();
    Some(text.chars().take(MAX_SUBJECT_CHARS).collect())
}
