//! Payload styles: how a call's messages become bytes and back. A call builder or a handler
//! is generic over its style, so every call kind is written once for typed messages and raw
//! bytes alike.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::messages::{check_size, decode_typed, encode_typed};
use crate::codec::{Codec, DecodeLimits};
use crate::status::Status;
use crate::wire::FrameDecoder;

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

    /// [`DecodeAs::decode`] for a client's response, whose bytes may be a slice of the
    /// datagram they arrived in ([`FrameDecoder::MAX_HELD_CHUNK`]): a style that hands
    /// the bytes themselves to the caller copies such small ones, so keeping a response
    /// does not keep a receive buffer. Typed messages are decoded into owned values and
    /// need no copy.
    ///
    /// [`FrameDecoder::MAX_HELD_CHUNK`]: crate::wire::FrameDecoder::MAX_HELD_CHUNK
    fn decode_response(codec: Codec, bytes: Bytes, limits: &DecodeLimits) -> Result<T, Status> {
        Self::decode(codec, bytes, limits)
    }
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

    fn decode_response(_: Codec, bytes: Bytes, _: &DecodeLimits) -> Result<Bytes, Status> {
        if bytes.len() <= FrameDecoder::MAX_HELD_CHUNK {
            return Ok(Bytes::copy_from_slice(&bytes));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_response_small_enough_to_be_a_datagram_slice_is_copied_out_of_it() {
        let limits = DecodeLimits::default();
        let small = Bytes::from(vec![1u8; FrameDecoder::MAX_HELD_CHUNK]);
        let got =
            <Raw as DecodeAs<Bytes>>::decode_response(Codec::Raw, small.clone(), &limits).unwrap();
        assert_eq!(got, small);
        assert_ne!(got.as_ptr(), small.as_ptr(), "copied");

        let large = Bytes::from(vec![1u8; FrameDecoder::MAX_HELD_CHUNK + 1]);
        let got =
            <Raw as DecodeAs<Bytes>>::decode_response(Codec::Raw, large.clone(), &limits).unwrap();
        assert_eq!(
            got.as_ptr(),
            large.as_ptr(),
            "a large one was never a slice: kept"
        );
        // On the server, a raw request is handed over as it is.
        let got = <Raw as DecodeAs<Bytes>>::decode(Codec::Raw, small.clone(), &limits).unwrap();
        assert_eq!(got.as_ptr(), small.as_ptr());
    }
}
