//! JSON <-> `Value`, and durations as text.

use std::time::Duration;

use meridian::Value;

use super::errors::{CliError, CliResult};

/// The request of `call`/`bench`: no argument is `null`, one is that JSON value, several
/// are a list of them (`call add 10 5` is `call add '[10, 5]'`); `@FILE` alone reads the
/// value from a file, `-` alone from stdin (beyond the kernel's limit on arguments).
pub fn request_value(args: &[String]) -> CliResult<Value> {
    let parse = |text: &str| -> CliResult<Value> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = serde::Deserialize::deserialize(&mut de)
            .and_then(|v: Value| de.end().map(|()| v))
            .map_err(|e| CliError::usage(format!("bad JSON argument {text:?}: {e}")))?;
        Ok(v)
    };
    match args {
        [] => Ok(Value::Null),
        [one] if one == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
                .map_err(|e| CliError::usage(format!("cannot read the request from stdin: {e}")))?;
            parse_whole(&text, "the request on stdin")
        }
        [one] if one.starts_with('@') => {
            let path = &one[1..];
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read the request file {path}: {e}"))
            })?;
            parse_whole(&text, &format!("the request file {path}"))
        }
        [one] => parse(one),
        many => Ok(Value::List(
            many.iter().map(|a| parse(a)).collect::<CliResult<_>>()?,
        )),
    }
}

/// One JSON value read from a file or stdin (`what` names it in errors).
fn parse_whole(text: &str, what: &str) -> CliResult<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserialize::deserialize(&mut de)
        .and_then(|v: Value| de.end().map(|()| v))
        .map_err(|e| CliError::usage(format!("bad JSON in {what}: {e}")))
}

/// A `Value` as JSON. Never fails: bytes become an array of numbers (as in the C ABI),
/// map keys that are not strings become their text form, non-finite floats `null`.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        Value::List(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

/// `1.234 ms`-style text for a duration.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Milliseconds as a float, for JSON output.
pub fn ms_f64(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
