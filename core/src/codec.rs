//! Message codecs: how the body of an RPC message is turned into bytes.
//!
//! # Why three codecs
//!
//! Meridian serves two kinds of callers. Rust peers share the message types
//! at compile time, so they want the most compact and fastest encoding and
//! need no type information on the wire: that is [`Codec::Postcard`]. Python
//! and C clients have no Rust types to share; they need a small,
//! self-describing format they can build by hand: that is [`Codec::Value`],
//! backed by the [`Value`] type and its binary encoding documented below.
//! Finally, some calls carry opaque payloads (files, pre-encoded blobs) that
//! must not be touched at all: that is [`Codec::Raw`].
//!
//! The codec is chosen per call and travels as a single byte on the wire
//! ([`Codec::as_u8`] / [`Codec::from_u8`]). Because [`Value`] implements
//! serde's `Serializer`/`Deserializer` bridge ([`to_value`], [`from_value`]),
//! a handler written once for typed Rust arguments also accepts a call that
//! arrives as a `Value`: [`decode_message`] and [`encode_message`] hide the
//! difference from the RPC layer.
//!
//! | byte | codec                | body                                            |
//! |------|----------------------|-------------------------------------------------|
//! | 0    | [`Codec::Raw`]       | opaque bytes, never interpreted                  |
//! | 1    | [`Codec::Postcard`]  | [postcard] encoding of the Rust type             |
//! | 2    | [`Codec::Value`]     | the Value encoding below                         |
//!
//! # The Value binary encoding
//!
//! A Value is one tag byte (null, false, true, int, float, string, bytes, list, map)
//! followed by its payload, with LEB128 varints for lengths and zigzag for integers; every
//! number has exactly one valid encoding, and exactly one top-level Value fills the input.
//! The normative, byte-level specification (tags, varints, zigzag, errors, examples) is
//! `docs/PROTOCOL.md` §5.3; this module is its implementation, and a test in
//! `tests/codec_value.rs` reads the examples table from that document and checks every row.
//! For instance the list `[10, "hi", null]` encodes as `07 03 03 14 05 02 68 69 00`.
//!
//! # Limits when decoding from a peer
//!
//! Values decoded from the network are bounded by [`DecodeLimits`]:
//! - inputs longer than `max_size` are rejected (`TooLarge`) before any
//!   parsing;
//! - containers (lists and maps) may nest at most `max_depth` deep: a
//!   top-level list has depth 1, so `max_depth = 0` admits only scalars
//!   (`TooDeep` otherwise). The decoder is iterative, so even very deep input
//!   cannot overflow the stack;
//! - every declared length or count is checked against the bytes still
//!   unread **before** anything is allocated: a string or byte string needs
//!   its full length, a list item at least 1 byte, a map pair at least 2
//!   bytes (`Truncated` otherwise). Pre-allocation for containers is further
//!   capped, so memory use stays proportional to the bytes actually present;
//! - the decoded value's memory is charged as it is built, [`VALUE_NODE_COST`]
//!   (32 bytes) per node plus the length of each string and byte string,
//!   against `max_decoded_size` (`DecodedTooLarge` once over it): a body of
//!   one-byte nulls would otherwise grow 32 times in memory.
//!
//! `max_size` also applies to [`Codec::Postcard`] bodies in
//! [`decode_message`]; nesting depth there is bounded by the Rust target type.
//!
//! # Mapping Rust types to Value
//!
//! [`to_value`] maps: `bool` → Bool; all integers → Int (unsigned and 128-bit
//! integers that do not fit in `i64` give `IntegerOutOfRange`); `f32`/`f64`
//! → Float; `char`/`str` → Str; byte slices (`serialize_bytes`) → Bytes;
//! `None`, `()` and unit structs → Null; `Some(x)` → `x`; sequences, tuples
//! and tuple structs → List; maps → Map; structs → Map with Str keys (field
//! names); newtype structs → their content; enums are externally tagged like
//! serde_json: a unit variant → Str(variant name), other variants → a Map
//! with one entry `{Str(variant name): content}`.
//!
//! [`from_value`] accepts the same shapes and is lenient where a hand-built
//! Value can reasonably differ: structs also accept a List (fields in
//! declaration order), byte buffers also accept a List of small Ints, and
//! map keys / field names may be Ints (read as field indices).

mod binary;
mod de;
mod ser;
mod value;
mod varint;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use de::from_value;
pub use ser::{to_value, ValueSerializer};
pub use value::Value;

/// The codec of one RPC message, written as a single byte on the wire.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opaque bytes: the body is passed through untouched.
    Raw = 0,
    /// The compact, non-self-describing postcard encoding of a Rust type.
    Postcard = 1,
    /// The self-describing [`Value`] encoding (see the module docs).
    Value = 2,
}

impl Codec {
    /// Parses the codec byte from the wire; `None` for an unknown codec.
    pub fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Postcard),
            2 => Some(Codec::Value),
            _ => None,
        }
    }

    /// The byte that identifies this codec on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Default maximum container nesting depth for decoding a [`Value`].
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Default maximum encoded message size accepted by the decoders (4 MiB).
pub const DEFAULT_MAX_SIZE: usize = 4 * 1024 * 1024;

/// Default budget for the memory a decoded [`Value`] may take (32 MiB): eight times the
/// default message size, so a 4 MiB body averaging 5 or more bytes per value decodes within
/// it, while 4 MiB of one-byte nulls (128 MiB once decoded) is refused.
pub const DEFAULT_MAX_DECODED_SIZE: usize = 32 * 1024 * 1024;

/// What every decoded [`Value`] node (scalar, list, map, or either half of a map entry)
/// is charged against [`DecodeLimits::max_decoded_size`]: the size of a `Value`, 32 bytes
/// on 64-bit targets. Strings and byte strings are charged their length on top.
pub const VALUE_NODE_COST: usize = std::mem::size_of::<Value>();

/// Bounds applied when decoding a message received from a peer.
///
/// See the module documentation for exactly what each limit covers.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Maximum nesting of lists and maps; a top-level list is depth 1.
    /// Default [`DEFAULT_MAX_DEPTH`] (64).
    pub max_depth: usize,
    /// Maximum length in bytes of the encoded input. Default [`DEFAULT_MAX_SIZE`] (4 MiB).
    pub max_size: usize,
    /// Budget for the memory a decoded [`Value`] takes: [`VALUE_NODE_COST`] per node plus
    /// the length of every string and byte string, charged as the value is decoded; input
    /// that would go over it is refused ([`CodecError::DecodedTooLarge`]) instead of
    /// growing a value many times the size of its bytes. Default
    /// [`DEFAULT_MAX_DECODED_SIZE`] (32 MiB).
    pub max_decoded_size: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_size: DEFAULT_MAX_SIZE,
            max_decoded_size: DEFAULT_MAX_DECODED_SIZE,
        }
    }
}

/// Errors from encoding or decoding a message.
///
/// The messages are written for the caller of an RPC: a decoding error is
/// reported back to the client as the text of an INVALID_ARGUMENT status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is longer than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the rejected input in bytes.
        size: usize,
        /// The configured maximum in bytes.
        limit: usize,
    },
    /// Lists and maps are nested deeper than the configured maximum.
    #[error("value nesting exceeds the maximum depth of {limit}")]
    TooDeep {
        /// The configured maximum depth.
        limit: usize,
    },
    /// The decoded value would take more memory than the configured budget
    /// ([`DecodeLimits::max_decoded_size`]).
    #[error("value takes more than {limit} bytes once decoded (the limit)")]
    DecodedTooLarge {
        /// The configured budget in bytes.
        limit: usize,
    },
    /// The input ended before the value it declares was complete.
    #[error("value is truncated: input ends before its declared contents")]
    Truncated,
    /// A tag byte that is not part of the Value encoding.
    #[error("invalid value tag 0x{0:02x}")]
    InvalidTag(u8),
    /// A string that is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A varint longer than 10 bytes, exceeding 64 bits, or overlong.
    #[error("malformed varint: overlong or larger than 64 bits")]
    VarintOverflow,
    /// Bytes remain after the top-level value.
    #[error("unexpected trailing bytes after the message")]
    TrailingBytes,
    /// An integer does not fit the target type (e.g. a `u64` above `i64::MAX`).
    #[error("integer out of range for a 64-bit signed value")]
    IntegerOutOfRange,
    /// A typed message was requested from or for the Raw codec.
    #[error("the raw codec carries opaque bytes and cannot encode or decode typed messages")]
    RawNotTyped,
    /// The postcard codec failed.
    #[error("postcard: {0}")]
    Postcard(String),
    /// A custom error, typically a type mismatch reported through serde.
    #[error("{0}")]
    Custom(String),
}

impl serde::de::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Custom(msg.to_string())
    }
}

impl serde::ser::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Custom(msg.to_string())
    }
}

/// Appends postcard output to an existing buffer without an intermediate
/// allocation (postcard's extend flavor needs an owned `Extend<u8>`).
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Encodes `msg` with `codec`, appending the bytes to `out`.
///
/// On error `out` is left as it was on entry. [`Codec::Raw`] cannot encode a
/// typed message and returns [`CodecError::RawNotTyped`].
pub fn encode_message<T: Serialize + ?Sized>(
    codec: Codec,
    msg: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    match codec {
        Codec::Raw => Err(CodecError::RawNotTyped),
        Codec::Postcard => {
            let start = out.len();
            match postcard::to_extend(msg, Append(out)) {
                Ok(_) => Ok(()),
                Err(e) => {
                    out.truncate(start);
                    Err(CodecError::Postcard(e.to_string()))
                }
            }
        }
        Codec::Value => {
            let value = to_value(msg)?;
            value.encode(out);
            Ok(())
        }
    }
}

/// Decodes a message body encoded with `codec` into `T`.
///
/// The whole of `bytes` must be consumed: trailing bytes are an error for
/// both typed codecs. `limits.max_size` applies to every codec;
/// `limits.max_depth` and `limits.max_decoded_size` bound [`Codec::Value`] input.
/// [`Codec::Raw`] returns [`CodecError::RawNotTyped`].
pub fn decode_message<T: DeserializeOwned>(
    codec: Codec,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<T, CodecError> {
    match codec {
        Codec::Raw => Err(CodecError::RawNotTyped),
        Codec::Postcard => {
            if bytes.len() > limits.max_size {
                return Err(CodecError::TooLarge {
                    size: bytes.len(),
                    limit: limits.max_size,
                });
            }
            let (msg, rest) = postcard::take_from_bytes::<T>(bytes)
                .map_err(|e| CodecError::Postcard(e.to_string()))?;
            if rest.is_empty() {
                Ok(msg)
            } else {
                Err(CodecError::TrailingBytes)
            }
        }
        Codec::Value => from_value(Value::decode(bytes, limits)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_byte_round_trip() {
        for c in [Codec::Raw, Codec::Postcard, Codec::Value] {
            assert_eq!(Codec::from_u8(c.as_u8()), Some(c));
        }
        assert_eq!(Codec::from_u8(3), None);
    }

    #[test]
    fn documented_examples() {
        assert_eq!(Value::Int(-3).to_bytes(), [0x03, 0x05]);
        assert_eq!(Value::Int(300).to_bytes(), [0x03, 0xd8, 0x04]);
        let v = Value::List(vec![Value::Int(10), Value::from("hi"), Value::Null]);
        assert_eq!(
            v.to_bytes(),
            [0x07, 0x03, 0x03, 0x14, 0x05, 0x02, 0x68, 0x69, 0x00]
        );
    }

    #[test]
    fn encode_message_raw_is_rejected() {
        let mut out = Vec::new();
        assert!(matches!(
            encode_message(Codec::Raw, &1u8, &mut out),
            Err(CodecError::RawNotTyped)
        ));
        assert!(matches!(
            decode_message::<u8>(Codec::Raw, &[], &DecodeLimits::default()),
            Err(CodecError::RawNotTyped)
        ));
    }
}
