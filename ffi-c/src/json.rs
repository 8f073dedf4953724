//! JSON text to and from Meridian's self-describing `Value`, for C callers.
//!
//! JSON objects become `Value::Map`s with string keys, integers become `Int` (they must fit
//! in an `i64`), other numbers `Float`. Back to JSON, a `Bytes` value becomes an array of
//! numbers and a map key must be a string or an integer: anything else is an error, never a
//! silent change.

use mcore::Value;
use serde::Deserialize;

use crate::boundary::{meridian_status, Fail};

/// Parses JSON text into a `Value`.
pub(crate) fn to_value(text: &[u8]) -> Result<Value, Fail> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Value::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| Fail::new(meridian_status::MERIDIAN_BAD_JSON, format!("bad JSON: {e}")))?;
    Ok(value)
}

/// Writes a `Value` as JSON text followed by a NUL byte (not part of the JSON).
pub(crate) fn from_value(value: &Value) -> Result<Vec<u8>, Fail> {
    let mut out = serde_json::to_vec(value).map_err(|e| {
        Fail::new(
            meridian_status::MERIDIAN_BAD_JSON,
            format!("the value cannot be written as JSON: {e}"),
        )
    })?;
    out.push(0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let v = to_value(br#"{"a": [1, 2.5, "x", null, true]}"#).unwrap();
        assert_eq!(
            v.get("a").and_then(|l| l.as_list()).map(|l| l.len()),
            Some(5)
        );
        assert_eq!(
            from_value(&v).unwrap(),
            b"{\"a\":[1,2.5,\"x\",null,true]}\0"
        );
        assert_eq!(
            to_value(b"{").unwrap_err().status,
            meridian_status::MERIDIAN_BAD_JSON
        );
        assert_eq!(
            to_value(b"1 2").unwrap_err().status,
            meridian_status::MERIDIAN_BAD_JSON
        );
        assert_eq!(
            to_value(b"18446744073709551615").unwrap_err().status,
            meridian_status::MERIDIAN_BAD_JSON
        );
        let odd = Value::Map(vec![(Value::List(vec![]), Value::Null)]);
        assert_eq!(
            from_value(&odd).unwrap_err().status,
            meridian_status::MERIDIAN_BAD_JSON
        );
    }
}
