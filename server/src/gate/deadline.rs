//! A call's deadline: the server's request timeout, or the caller's
//! `grpc-timeout` when shorter.

use std::time::Duration;

/// The deadline of a call with `headers`.
pub fn of(headers: &http::HeaderMap, server_timeout: Duration) -> Duration {
    headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
        .map_or(server_timeout, |t| t.min(server_timeout))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m,
/// u, n), per the gRPC over HTTP/2 spec.
fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("123456789m"), None);
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("50m"));
        assert_eq!(
            of(&headers, Duration::from_secs(10)),
            Duration::from_millis(50)
        );
        assert_eq!(
            of(&headers, Duration::from_millis(20)),
            Duration::from_millis(20)
        );
    }
}
