//! Transaction metadata travels as `google.protobuf.Struct`; callers write
//! and read it as JSON. These are the two directions.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

use crate::Error;

/// Metadata as the caller sees it: a JSON object.
pub type Metadata = Map<String, Json>;

/// A JSON value as a `Struct`. Only objects can be one; anything else is
/// rejected here, before a request is sent.
///
/// Numbers become `f64` on the wire (as `Struct` has no integers), so
/// integers beyond 2^53 lose precision: send those as strings.
pub(crate) fn to_struct(value: Json) -> Result<Struct, Error> {
    match value {
        Json::Object(map) => Ok(object_to_struct(map)),
        other => Err(Error::InvalidInput(format!(
            "metadata must be a JSON object, got {}",
            json_kind(&other)
        ))),
    }
}

fn object_to_struct(map: Metadata) -> Struct {
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        // Without serde_json's arbitrary precision every number has an f64.
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A `Struct` from the server as a JSON object.
pub(crate) fn from_struct(s: Struct) -> Metadata {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, from_value(v)))
        .collect()
}

fn from_value(value: Value) -> Json {
    match value.kind {
        // The server never stores these (it validates metadata as JSON), so
        // `null` is the closest honest reading rather than an error.
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.into_iter().map(from_value).collect())
        }
        Some(Kind::StructValue(s)) => Json::Object(from_struct(s)),
    }
}

/// Whole numbers come back as JSON integers, so `{"n": 3}` round-trips as
/// `3` rather than `3.0`.
fn number(n: f64) -> Json {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        return Json::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_nested_json() -> Result<(), Error> {
        let value = json!({"order": "A-1", "n": 3, "ratio": 0.5, "ok": true,
                           "none": null, "tags": ["x", 1], "nested": {"k": "v"}});
        let back = from_struct(to_struct(value.clone())?);
        assert_eq!(Json::Object(back), value);
        Ok(())
    }

    #[test]
    fn rejects_non_objects() {
        let err = to_struct(json!([1, 2])).err();
        assert!(matches!(err, Some(Error::InvalidInput(m)) if m.contains("an array")));
    }
}
