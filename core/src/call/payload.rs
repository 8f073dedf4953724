//! Payload styles: how a call's messages become bytes and back. A call builder or a handler
//! is generic over its style, so every call kind is written once for typed messages and raw
//! bytes alike.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::messages::{check_size, decode_typed, encode_typed};
use crate::codec::{Codec, DecodeLimits};
use crate::status::Status;

/// A payload style: [`Typed`] (serde) or [`Raw`] (bytes already encoded).
pub trait PayloadStyle: Send + Sync + 'static {
    /// The codec announced when the call does not name one.
    const DEFAULT_CODEC: Codec;
}

/// Encodes messages of type `T` in a payload style.
pub trait EncodeAs<T: ?Sized>: PayloadStyle {
    /// Encodes `msg` with `codec`; a message over `max` bytes is `RESOURCE_EXHAUSTED`.
    fn encode(codec: Codec, msg: &T, max: usize) -> Result<Bytes, Status>;
}

/// Decodes messages of type `T` in a payload style.
pub trait DecodeAs<T>: PayloadStyle {
    /// Decodes `bytes` sent with `codec`, within `limits`; bad input is
    /// `INVALID_ARGUMENT`.
    fn decode(codec: Codec, bytes: Bytes, limits: &DecodeLimits) -> Result<T, Status>;
}

/// Typed messages through serde: postcard by default (Rust to Rust), or the
/// self-describing [`Value`](crate::Value) encoding with [`Codec::Value`] (any language).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Typed;

/// Raw bytes, encoded by the caller (or by someone the caller forwards for): sent as they
/// are, announced as [`Codec::Raw`] unless the call names the codec they were encoded with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raw;

impl PayloadStyle for Typed {
    const DEFAULT_CODEC: Codec = Codec::Postcard;
}

impl PayloadStyle for Raw {
    const DEFAULT_CODEC: Codec = Codec::Raw;
}

impl<T: Serialize + ?Sized> EncodeAs<T> for Typed {
    fn encode(codec: Codec, msg: &T, max: usize) -> Result<Bytes, Status> {
        encode_typed(codec, msg, max)
    }
}

impl<T: DeserializeOwned> DecodeAs<T> for Typed {
    fn decode(codec: Codec, bytes: Bytes, limits: &DecodeLimits) -> Result<T, Status> {
        decode_typed(codec, bytes, limits)
    }
}

impl EncodeAs<Bytes> for Raw {
    fn encode(_: Codec, msg: &Bytes, max: usize) -> Result<Bytes, Status> {
        check_size(msg.len(), max)?;
        Ok(msg.clone())
    }
}

impl DecodeAs<Bytes> for Raw {
    fn decode(_: Codec, bytes: Bytes, _: &DecodeLimits) -> Result<Bytes, Status> {
        Ok(bytes)
    }
}
