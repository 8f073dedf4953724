//! Deserialization side of the serde bridge.
//!
//! `impl Deserialize for Value` reads a Value out of any self-describing
//! serde format (serde_json in tests and tools). The more important half is
//! `impl Deserializer for Value`: it lets a handler's typed argument,
//! `T: Deserialize`, be built directly from the Value a Python or C client
//! sent, so one handler serves both codecs. It consumes the Value, so
//! strings, byte strings and containers move into `T` without copying.
//!
//! Narrow integer targets are range-checked by serde's own visitors: an
//! `Int(300)` handed to a `u8` visitor is an error, never a wrapped value.

use std::fmt;
use std::vec;

use serde::de::{
    self, value::SeqDeserializer, DeserializeOwned, DeserializeSeed, Error as _, IntoDeserializer,
    Unexpected, Visitor,
};
use serde::Deserialize;

use super::{CodecError, Value};

/// Upper bound on capacity reserved from an untrusted `size_hint`.
const MAX_PREALLOC: usize = 4096;

/// Builds a `T` from a [`Value`], consuming it.
///
/// Structs accept a Map with string keys or a List of fields in declaration
/// order; enums accept a Str (unit variant) or a one-entry Map
/// `{variant: content}`. Errors are [`CodecError::Custom`] with serde's
/// description of the mismatch (e.g. "invalid type: string \"x\", expected
/// i64"), suitable for an INVALID_ARGUMENT status.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, CodecError> {
    T::deserialize(v)
}

impl Value {
    /// Describes this value for serde's type-mismatch errors.
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::Float(f) => Unexpected::Float(*f),
            Value::Str(s) => Unexpected::Str(s),
            Value::Bytes(b) => Unexpected::Bytes(b),
            Value::List(_) => Unexpected::Seq,
            Value::Map(_) => Unexpected::Map,
        }
    }

    fn invalid_type(&self, exp: &dyn de::Expected) -> CodecError {
        CodecError::invalid_type(self.unexpected(), exp)
    }
}

// ---------------------------------------------------------------------------
// Value as a Deserialize target.
// ---------------------------------------------------------------------------

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Accepts whatever a self-describing format holds and builds a [`Value`].
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value representable as a Meridian Value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(CodecError::IntegerOutOfRange))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(CodecError::IntegerOutOfRange))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(CodecError::IntegerOutOfRange))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

// ---------------------------------------------------------------------------
// Value as a Deserializer.
// ---------------------------------------------------------------------------

/// Hands the items of a list to `visitor`; every item must be consumed.
fn visit_list<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, CodecError> {
    let len = items.len();
    let mut seq = SeqDe {
        iter: items.into_iter(),
    };
    let out = visitor.visit_seq(&mut seq)?;
    if seq.iter.len() == 0 {
        Ok(out)
    } else {
        Err(CodecError::invalid_length(len, &"fewer list items"))
    }
}

/// Hands the entries of a map to `visitor`; every entry must be consumed.
fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, CodecError> {
    let len = entries.len();
    let mut map = MapDe {
        iter: entries.into_iter(),
        value: None,
    };
    let out = visitor.visit_map(&mut map)?;
    if map.iter.len() == 0 {
        Ok(out)
    } else {
        Err(CodecError::invalid_length(len, &"fewer map entries"))
    }
}

/// Converts a list of small integers into bytes, for byte-buffer targets.
fn list_to_bytes(items: &[Value]) -> Result<Vec<u8>, CodecError> {
    items
        .iter()
        .map(|item| match item {
            Value::Int(i) => u8::try_from(*i).map_err(|_| {
                CodecError::invalid_value(Unexpected::Signed(*i), &"a byte (0..=255)")
            }),
            other => Err(other.invalid_type(&"a byte (0..=255)")),
        })
        .collect()
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = CodecError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::Float(f) => visitor.visit_f64(f),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) => visit_list(items, visitor),
            Value::Map(entries) => visit_map(entries, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self {
            // Lets `Vec<u8>` and `[u8; N]` targets accept a Bytes value.
            Value::Bytes(b) => {
                SeqDeserializer::<_, CodecError>::new(b.into_iter()).deserialize_any(visitor)
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        match self {
            Value::Map(entries) => visit_map(entries, visitor),
            Value::List(items) => visit_list(items, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        match self {
            Value::Str(_) | Value::Int(_) => visitor.visit_enum(EnumDe {
                variant: self,
                content: None,
            }),
            Value::Map(entries) => {
                let len = entries.len();
                let mut iter = entries.into_iter();
                match (iter.next(), iter.next()) {
                    (Some((variant, content)), None) => visitor.visit_enum(EnumDe {
                        variant,
                        content: Some(content),
                    }),
                    _ => Err(CodecError::invalid_length(
                        len,
                        &"a map with exactly one entry {variant: content}",
                    )),
                }
            }
            other => {
                Err(other.invalid_type(&"a variant name or a one-entry map {variant: content}"))
            }
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self {
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::Str(s) => visitor.visit_string(s),
            Value::List(items) => visitor.visit_byte_buf(list_to_bytes(&items)?),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self {
            // Field and variant indices, for clients that key by position.
            Value::Int(i) if i >= 0 => visitor.visit_u64(i as u64),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        drop(self);
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct map
    }
}

impl<'de> IntoDeserializer<'de, CodecError> for Value {
    type Deserializer = Value;

    fn into_deserializer(self) -> Value {
        self
    }
}

/// Sequence access over the items of a [`Value::List`].
struct SeqDe {
    iter: vec::IntoIter<Value>,
}

impl<'de> de::SeqAccess<'de> for SeqDe {
    type Error = CodecError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, CodecError> {
        match self.iter.next() {
            Some(item) => seed.deserialize(item).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// Map access over the entries of a [`Value::Map`].
struct MapDe {
    iter: vec::IntoIter<(Value, Value)>,
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for MapDe {
    type Error = CodecError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, CodecError> {
        match self.iter.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, CodecError> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(CodecError::custom("map value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// Enum access for the externally tagged forms `Str(variant)` and
/// `Map{variant: content}`.
struct EnumDe {
    variant: Value,
    content: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for EnumDe {
    type Error = CodecError;
    type Variant = VariantDe;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDe), CodecError> {
        let variant = seed.deserialize(self.variant)?;
        Ok((
            variant,
            VariantDe {
                content: self.content,
            },
        ))
    }
}

/// The content of an enum variant, absent for the plain `Str` form.
struct VariantDe {
    content: Option<Value>,
}

impl<'de> de::VariantAccess<'de> for VariantDe {
    type Error = CodecError;

    fn unit_variant(self) -> Result<(), CodecError> {
        match self.content {
            None | Some(Value::Null) => Ok(()),
            Some(other) => Err(other.invalid_type(&"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, CodecError> {
        match self.content {
            Some(value) => seed.deserialize(value),
            None => Err(CodecError::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        match self.content {
            Some(Value::List(items)) => visit_list(items, visitor),
            Some(other) => Err(other.invalid_type(&"tuple variant")),
            None => Err(CodecError::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        match self.content {
            Some(Value::Map(entries)) => visit_map(entries, visitor),
            Some(Value::List(items)) => visit_list(items, visitor),
            Some(other) => Err(other.invalid_type(&"struct variant")),
            None => Err(CodecError::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_integers_are_range_checked() {
        assert!(from_value::<u8>(Value::Int(300)).is_err());
        assert!(from_value::<u32>(Value::Int(-1)).is_err());
        assert_eq!(from_value::<u8>(Value::Int(255)).ok(), Some(255));
        assert_eq!(from_value::<i8>(Value::Int(-128)).ok(), Some(-128));
    }

    #[test]
    fn bytes_targets_accept_lists_and_bytes() {
        assert_eq!(
            from_value::<Vec<u8>>(Value::Bytes(vec![1, 2])).ok(),
            Some(vec![1, 2])
        );
        assert_eq!(
            from_value::<[u8; 2]>(Value::Bytes(vec![1, 2])).ok(),
            Some([1, 2])
        );
        assert!(from_value::<[u8; 2]>(Value::Bytes(vec![1, 2, 3])).is_err());
        assert!(list_to_bytes(&[Value::Int(256)]).is_err());
    }

    #[test]
    fn value_deserializes_from_serde_json() {
        let v: Option<Value> = serde_json::from_str(r#"{"a":[1,2.5,"x",null,true]}"#).ok();
        let expected = Value::Map(vec![(
            Value::from("a"),
            Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::from("x"),
                Value::Null,
                Value::Bool(true),
            ]),
        )]);
        assert_eq!(v, Some(expected));
    }
}
