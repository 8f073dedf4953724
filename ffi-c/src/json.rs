//! JSON text to and from Meridian's self-describing `Value`, for C callers.
//!
//! JSON objects become `Value::Map`s with string keys, integers become `Int` (they must fit
//! in an `i64`: a wider integer literal is refused, never turned into a float), other
//! numbers `Float`. Lists and objects nest at most [`MAX_DEPTH`] deep, the depth every
//! Meridian receiver accepts by default, so deeper input is refused here, before sending. Back to JSON, a `Bytes` value becomes an array of
//! numbers and a map key must be a string or an integer: anything else is an error, never a
//! silent change.

use mcore::Value;
use serde::Deserialize;

use crate::boundary::{meridian_status, Fail};

/// Deepest nesting of JSON arrays and objects accepted (a top-level array is depth 1): the
/// core codec's default decoding depth.
pub(crate) const MAX_DEPTH: usize = mcore::codec::DEFAULT_MAX_DEPTH;

/// One pass over the text outside strings: refuses nesting deeper than [`MAX_DEPTH`] and
/// integer literals outside the signed 64-bit range (serde would read those as floats).
/// Malformed text is left to the parser, which names the problem.
fn check_depth_and_integers(text: &[u8]) -> Result<(), Fail> {
    let bad = |m: String| Fail::new(meridian_status::MERIDIAN_BAD_JSON, m);
    let (mut depth, mut i) = (0usize, 0usize);
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(bad(format!(
                        "bad JSON: nesting exceeds the maximum depth of {MAX_DEPTH}"
                    )));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let digits = token.strip_prefix(b"-").unwrap_or(token);
                let integer = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
                let fits = std::str::from_utf8(token).is_ok_and(|t| t.parse::<i64>().is_ok());
                if integer && !fits {
                    return Err(bad(format!(
                        "bad JSON: the integer {} does not fit in a signed 64-bit integer",
                        String::from_utf8_lossy(token)
                    )));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Parses JSON text into a `Value`.
pub(crate) fn to_value(text: &[u8]) -> Result<Value, Fail> {
    check_depth_and_integers(text)?;
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
        // Wider than 64 bits: refused, not a float.
        for wide in [
            &b"[99999999999999999999999]"[..],
            b"-9223372036854775809",
            b"{\"a\": 18446744073709551616}",
        ] {
            assert_eq!(
                to_value(wide).unwrap_err().status,
                meridian_status::MERIDIAN_BAD_JSON
            );
        }
        assert!(to_value(b"[-9223372036854775808, 9223372036854775807, 1e30, 2.5]").is_ok());
        // Digits inside strings are text.
        assert!(to_value(br#"{"99999999999999999999999": "[[[[ 1e400"}"#).is_ok());
        // Nesting: 64 levels pass, 65 are refused here.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(to_value(nest(MAX_DEPTH).as_bytes()).is_ok());
        let deep = to_value(nest(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(deep.status, meridian_status::MERIDIAN_BAD_JSON);
        assert!(deep.message.contains("maximum depth of 64"));
        let odd = Value::Map(vec![(Value::List(vec![]), Value::Null)]);
        assert_eq!(
            from_value(&odd).unwrap_err().status,
            meridian_status::MERIDIAN_BAD_JSON
        );
    }
}
