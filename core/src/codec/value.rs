//! The [`Value`] type: a self-describing message body for non-Rust clients.
//!
//! Python and C clients cannot share Rust types with a server, so they send
//! and receive this small dynamic data model instead. It is deliberately
//! close to JSON (plus byte strings and arbitrary map keys) so that every
//! client language has an obvious native counterpart. Its binary encoding is
//! specified in the parent module docs and implemented in `binary.rs`.

use std::fmt;

/// A self-describing value, the data model of [`Codec::Value`](super::Codec::Value).
///
/// Maps keep insertion order and may use any `Value` as a key; duplicate
/// keys are preserved as they were written.
///
/// Dropping or encoding a Value recurses once per nesting level, so values
/// built locally should stay reasonably shallow; values decoded from a peer
/// are bounded by [`DecodeLimits::max_depth`](super::DecodeLimits).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The absence of a value (Python `None`, C `NULL`, Rust `()`/`None`).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit IEEE-754 float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// An arbitrary byte string.
    Bytes(Vec<u8>),
    /// An ordered list of values.
    List(Vec<Value>),
    /// An ordered list of key/value pairs.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// Returns `true` if this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is a [`Value::Int`].
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a float: a [`Value::Float`] as is, or a [`Value::Int`]
    /// converted (possibly rounding very large magnitudes).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The string, if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a [`Value::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if this is a [`Value::List`].
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The pairs, if this is a [`Value::Map`].
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// Looks up the first entry whose key is the string `key` in a
    /// [`Value::Map`]; `None` if absent or if this is not a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of this value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}

impl From<Vec<(Value, Value)>> for Value {
    fn from(v: Vec<(Value, Value)>) -> Self {
        Value::Map(v)
    }
}

/// Renders a JSON-like text form, for logs and debugging: strings are
/// quoted and escaped, bytes are written as `b"<hex>"`, and maps as
/// `{key: value, ...}` with keys rendered as values.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(bytes) => {
                f.write_str("b\"")?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                f.write_str("\"")
            }
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_and_display() {
        let v = Value::Map(vec![
            (Value::from("a"), Value::from(1i32)),
            (Value::Int(2), Value::from(vec![1u8, 255])),
            (Value::from("c"), Value::from(vec![Value::Null, 1.5.into()])),
        ]);
        assert_eq!(v.get("a").and_then(Value::as_i64), Some(1));
        assert_eq!(v.get("missing"), None);
        assert_eq!(
            v.get("c").and_then(Value::as_list).map(<[Value]>::len),
            Some(2)
        );
        assert_eq!(Value::Int(3).as_f64(), Some(3.0));
        assert_eq!(
            v.to_string(),
            "{\"a\": 1, 2: b\"01ff\", \"c\": [null, 1.5]}"
        );
    }
}
