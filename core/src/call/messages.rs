//! Messages: encoding and decoding a call's payloads (typed, raw), with the size limit.

use bytes::Bytes;

use crate::codec::{self, Codec, DecodeLimits};
use crate::status::Status;

/// Encodes a typed message for the wire, checking the size limit.
pub(crate) fn encode_typed<T: serde::Serialize + ?Sized>(
    codec: Codec,
    msg: &T,
    max: usize,
) -> Result<Bytes, Status> {
    let mut out = Vec::new();
    codec::encode_message(codec, msg, &mut out)
        .map_err(|e| Status::internal(format!("cannot encode message: {e}")))?;
    check_size(out.len(), max)?;
    Ok(Bytes::from(out))
}

/// Decodes a typed message received from the peer.
pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(
    codec: Codec,
    bytes: Bytes,
    limits: &DecodeLimits,
) -> Result<T, Status> {
    codec::decode_message(codec, &bytes, limits)
        .map_err(|e| Status::invalid_argument(format!("cannot decode message: {e}")))
}

/// Checks an outgoing message against the message size limit.
pub(crate) fn check_size(len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "message of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// Turns a message into wire bytes, for typed or raw payloads.
pub(crate) type EncodeFn<T> = fn(Codec, &T, usize) -> Result<Bytes, Status>;
/// Turns wire bytes into a message, for typed or raw payloads.
pub(crate) type DecodeFn<T> = fn(Codec, Bytes, &DecodeLimits) -> Result<T, Status>;

pub(crate) fn decode_raw(_: Codec, bytes: Bytes, _: &DecodeLimits) -> Result<Bytes, Status> {
    Ok(bytes)
}
