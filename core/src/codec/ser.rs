//! Serialization side of the serde bridge.
//!
//! Two directions live here: `impl Serialize for Value` lets a Value be
//! written by any serde format (JSON for logs, postcard, …), and
//! [`ValueSerializer`] turns any `T: Serialize` into a [`Value`], which is
//! how a typed Rust response is sent to a client that asked for the Value
//! codec. The type mapping is listed in the parent module docs.

use serde::ser::{self, Serialize, SerializeMap as _, SerializeSeq as _};

use super::{CodecError, Value};

impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Converts any serializable value into a [`Value`].
///
/// Fails with [`CodecError::IntegerOutOfRange`] for integers outside the
/// `i64` range and with [`CodecError::Custom`] for errors raised by the
/// type's own `Serialize` implementation.
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, CodecError> {
    v.serialize(ValueSerializer)
}

/// A serde `Serializer` whose output is a [`Value`]; see [`to_value`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ValueSerializer;

/// Builds a [`Value::List`] from sequences, tuples and tuple structs.
pub struct SeqBuilder {
    items: Vec<Value>,
}

/// Builds the one-entry map `{variant: [items]}` of a tuple variant.
pub struct TupleVariantBuilder {
    variant: &'static str,
    items: Vec<Value>,
}

/// Builds a [`Value::Map`] from a serde map.
pub struct MapBuilder {
    entries: Vec<(Value, Value)>,
    key: Option<Value>,
}

/// Builds a [`Value::Map`] with string keys from a struct.
pub struct StructBuilder {
    entries: Vec<(Value, Value)>,
}

/// Builds the one-entry map `{variant: {fields}}` of a struct variant.
pub struct StructVariantBuilder {
    variant: &'static str,
    entries: Vec<(Value, Value)>,
}

/// The externally tagged form of a non-unit enum variant.
fn tagged(variant: &'static str, content: Value) -> Value {
    Value::Map(vec![(Value::Str(variant.to_owned()), content)])
}

fn int_from<T: TryInto<i64>>(v: T) -> Result<Value, CodecError> {
    v.try_into()
        .map(Value::Int)
        .map_err(|_| CodecError::IntegerOutOfRange)
}

/// Guards against a `size_hint` that the type got wrong or inflated.
fn capacity(hint: Option<usize>) -> usize {
    hint.unwrap_or(0).min(4096)
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = CodecError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = TupleVariantBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructVariantBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, CodecError> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_i16(self, v: i16) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_i32(self, v: i32) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_i64(self, v: i64) -> Result<Value, CodecError> {
        Ok(Value::Int(v))
    }

    fn serialize_i128(self, v: i128) -> Result<Value, CodecError> {
        int_from(v)
    }

    fn serialize_u8(self, v: u8) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_u16(self, v: u16) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_u32(self, v: u32) -> Result<Value, CodecError> {
        Ok(Value::Int(i64::from(v)))
    }

    fn serialize_u64(self, v: u64) -> Result<Value, CodecError> {
        int_from(v)
    }

    fn serialize_u128(self, v: u128) -> Result<Value, CodecError> {
        int_from(v)
    }

    fn serialize_f32(self, v: f32) -> Result<Value, CodecError> {
        Ok(Value::Float(f64::from(v)))
    }

    fn serialize_f64(self, v: f64) -> Result<Value, CodecError> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, CodecError> {
        Ok(Value::Str(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Value, CodecError> {
        Ok(Value::Str(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, CodecError> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Value, CodecError> {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, CodecError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, CodecError> {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, CodecError> {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, CodecError> {
        Ok(Value::Str(variant.to_owned()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, CodecError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, CodecError> {
        Ok(tagged(variant, value.serialize(self)?))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, CodecError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(capacity(len)),
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, CodecError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, CodecError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<TupleVariantBuilder, CodecError> {
        Ok(TupleVariantBuilder {
            variant,
            items: Vec::with_capacity(capacity(Some(len))),
        })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, CodecError> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(capacity(len)),
            key: None,
        })
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<StructBuilder, CodecError> {
        Ok(StructBuilder {
            entries: Vec::with_capacity(capacity(Some(len))),
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructVariantBuilder, CodecError> {
        Ok(StructVariantBuilder {
            variant,
            entries: Vec::with_capacity(capacity(Some(len))),
        })
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        self.items.push(to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, CodecError> {
        Ok(Value::List(self.items))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, CodecError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<Value, CodecError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for TupleVariantBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        self.items.push(to_value(value)?);
        Ok(())
    }

    fn end(self) -> Result<Value, CodecError> {
        Ok(tagged(self.variant, Value::List(self.items)))
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CodecError> {
        self.key = Some(to_value(key)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| CodecError::Custom("map value serialized before its key".to_owned()))?;
        self.entries.push((key, to_value(value)?));
        Ok(())
    }

    fn end(self) -> Result<Value, CodecError> {
        Ok(Value::Map(self.entries))
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CodecError> {
        self.entries
            .push((Value::Str(key.to_owned()), to_value(value)?));
        Ok(())
    }

    fn end(self) -> Result<Value, CodecError> {
        Ok(Value::Map(self.entries))
    }
}

impl ser::SerializeStructVariant for StructVariantBuilder {
    type Ok = Value;
    type Error = CodecError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CodecError> {
        self.entries
            .push((Value::Str(key.to_owned()), to_value(value)?));
        Ok(())
    }

    fn end(self) -> Result<Value, CodecError> {
        Ok(tagged(self.variant, Value::Map(self.entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ranges() {
        assert_eq!(to_value(&u64::MAX).ok(), None);
        assert!(matches!(
            to_value(&(i64::MAX as u64 + 1)),
            Err(CodecError::IntegerOutOfRange)
        ));
        assert_eq!(
            to_value(&(i64::MAX as u64)).ok(),
            Some(Value::Int(i64::MAX))
        );
        assert_eq!(to_value(&-5i128).ok(), Some(Value::Int(-5)));
        assert!(matches!(
            to_value(&i128::MIN),
            Err(CodecError::IntegerOutOfRange)
        ));
        assert_eq!(to_value(&7u128).ok(), Some(Value::Int(7)));
    }

    #[test]
    fn value_serializes_through_serde_json() {
        let v = Value::Map(vec![(
            Value::from("k"),
            Value::List(vec![Value::Null, Value::Int(1), Value::from("s")]),
        )]);
        let json = serde_json::to_string(&v).ok();
        assert_eq!(json.as_deref(), Some(r#"{"k":[null,1,"s"]}"#));
    }
}
