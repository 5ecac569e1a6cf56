//! tonic answers some requests before our handlers see them: a message it
//! cannot decode (INTERNAL, as if the server were at fault) or one over the
//! size limit (OUT_OF_RANGE), both without ErrorInfo. Our handlers never
//! answer either code without ErrorInfo, so a bare one can only be tonic's:
//! it is replaced by the answer README promises. The decision rests on the
//! code and the missing details, not on tonic's wording; only the choice of
//! field in the decode refusal reads the text (pinned by the fuzz test
//! `deep_metadata_is_invalid_argument`).

use tonic::body::Body;
use tonic::{Code, Status};

use crate::ledger::{FieldViolation, LedgerError};
use crate::service::MAX_METADATA_DEPTH;
use crate::service::status;

/// `response`, with tonic's bare transport errors replaced by ours.
pub fn transport_errors(
    response: http::Response<Body>,
    max_message_bytes: usize,
) -> http::Response<Body> {
    let headers = response.headers();
    if headers.contains_key("grpc-status-details-bin") {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    match status.code() {
        Code::Internal => {
            let violation = if status.message().contains("recursion limit") {
                FieldViolation::new(
                    "metadata",
                    format!("is nested too deeply: at most {MAX_METADATA_DEPTH} levels"),
                )
            } else {
                FieldViolation::new("", "is not a valid credit.v1 request message")
            };
            Status::from(LedgerError::InvalidArgument(vec![violation])).into_http()
        }
        Code::OutOfRange => status::message_too_large(max_message_bytes).into_http(),
        _ => response,
    }
}
