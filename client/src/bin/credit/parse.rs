//! Parsers for flag values that are not plain strings or numbers.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value as Json;

/// A server address as `credit_client::parse_endpoint` reads it; kept as
/// given, since the scheme a bare `host:port` gets depends on the TLS flags.
pub fn parse_server(text: &str) -> Result<String, String> {
    match credit_client::parse_endpoint(text, "http") {
        Ok(_) => Ok(text.trim().to_owned()),
        Err(credit_client::Error::InvalidInput(message)) => Err(message),
        Err(other) => Err(other.to_string()),
    }
}

/// `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_unit(text);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A hold's TTL: a duration as [`parse_duration`] reads it, or days (`7d`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_unit(text);
    if unit == "d" {
        let days: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30m, 2h or 1d"))?;
        return days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"));
    }
    parse_duration(text)
}

/// An RFC 3339 time, e.g. `2030-01-02T03:04:05Z`.
pub fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| format!("{text:?} is not an RFC 3339 time: {err}"))
}

/// When credits expire: an RFC 3339 time, or a duration from now as
/// [`parse_ttl`] reads it (`30m`, `24h`, `7d`).
pub fn parse_expiry(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ttl = parse_ttl(text).map_err(|_| {
        format!("{text:?} is not an RFC 3339 time or a duration like 30m, 24h or 7d")
    })?;
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| Utc::now().checked_add_signed(ttl))
        .ok_or_else(|| format!("{text:?} is too far ahead"))
}

/// An RFC 3339 time, a date (midnight UTC), or an age (`30m`, `2h`, `7d`,
/// `2w`) counted back from now.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let hint =
        || format!("{text:?} is not a time: use RFC 3339, YYYY-MM-DD, or an age like 2h or 7d");
    let (number, unit) = split_unit(text);
    let value: i64 = number.parse().map_err(|_| hint())?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(value),
        "m" => chrono::Duration::try_minutes(value),
        "h" => chrono::Duration::try_hours(value),
        "d" => chrono::Duration::try_days(value),
        "w" => chrono::Duration::try_weeks(value),
        _ => return Err(hint()),
    };
    age.and_then(|age| Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("{text:?} is too far back"))
}

/// `k=v` (v as a string) or `k:=JSON` (v as the JSON value).
pub fn parse_meta(text: &str) -> Result<(String, Json), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not k=v or k:=JSON"))?;
    let (key, value) = match key.strip_suffix(':') {
        Some(key) => {
            let json = serde_json::from_str(value)
                .map_err(|err| format!("the value of {key:?} is not JSON: {err}"))?;
            (key, json)
        }
        None => (key, Json::String(value.to_owned())),
    };
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_owned(), value))
}

/// `"30m"` -> `("30", "m")`.
fn split_unit(text: &str) -> (&str, &str) {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("2x").is_err());
        assert!(parse_rfc3339("2030-01-02T03:04:05Z").is_ok());
        assert!(parse_rfc3339("2h").is_err());
    }

    #[test]
    fn expiries() -> Result<(), String> {
        let t = parse_expiry("2030-01-02T03:04:05+01:00")?;
        assert_eq!(t.to_rfc3339(), "2030-01-02T02:04:05+00:00");
        let ahead = parse_expiry("24h")? - Utc::now();
        assert!((ahead.num_minutes() - 24 * 60).abs() <= 1, "{ahead}");
        let ahead = parse_expiry("7d")? - Utc::now();
        assert!((ahead.num_hours() - 7 * 24).abs() <= 1, "{ahead}");
        assert!(parse_expiry("tomorrow").is_err());
        assert!(parse_expiry("2x").is_err());
        Ok(())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn servers() {
        for good in [
            "127.0.0.1:50051",
            "localhost:50051",
            "http://127.0.0.1:50051",
            "https://credits.internal",
            "[::1]:50051",
            "https://[::1]:443/",
        ] {
            assert!(parse_server(good).is_ok(), "{good}");
        }
        for bad in [
            "not a host::",
            "ftp://example.com:21",
            "http://",
            "http://:50051",
            "localhost:99999",
            "localhost:0",
            "localhost:port",
            "http://example.com/credit",
            "",
        ] {
            let err = parse_server(bad).expect_err(bad);
            assert!(err.contains("invalid server address"), "{bad}: {err}");
        }
        let scheme = parse_server("ftp://example.com").expect_err("ftp");
        assert!(scheme.contains("unsupported scheme \"ftp\""), "{scheme}");
    }

    #[test]
    fn times() -> Result<(), String> {
        let t = parse_time("2024-05-01T12:00:00+02:00")?;
        assert_eq!(t.to_rfc3339(), "2024-05-01T10:00:00+00:00");
        assert_eq!(
            parse_time("2024-05-01")?.to_rfc3339(),
            "2024-05-01T00:00:00+00:00"
        );
        let age = Utc::now() - parse_time("2h")?;
        assert!((age.num_minutes() - 120).abs() <= 1);
        assert!(parse_time("yesterday").is_err());
        Ok(())
    }

    #[test]
    fn metadata_entries() {
        assert_eq!(
            parse_meta("order=A-1"),
            Ok(("order".into(), Json::from("A-1")))
        );
        assert_eq!(parse_meta("n:=3"), Ok(("n".into(), Json::from(3))));
        assert_eq!(parse_meta("url=a=b"), Ok(("url".into(), Json::from("a=b"))));
        assert!(parse_meta("n:=nope").is_err());
        assert!(parse_meta("=x").is_err());
        assert!(parse_meta("novalue").is_err());
    }
}
