//! QUIC variable-length integers (RFC 9000 section 16) and the length-prefixed byte
//! strings built on them.

use bytes::{Buf, BufMut, BytesMut};

use super::error::WireError;

/// Largest value a QUIC variable-length integer can hold (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Number of bytes [`put_varint`] uses for `v`.
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` as a QUIC variable-length integer. Values above [`VARINT_MAX`] are clamped,
/// which never happens for lengths this crate writes.
pub fn put_varint(out: &mut impl BufMut, v: u64) {
    let v = v.min(VARINT_MAX);
    match varint_len(v) {
        1 => out.put_u8(v as u8),
        2 => out.put_u16(0x4000 | v as u16),
        4 => out.put_u32(0x8000_0000 | v as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | v),
    }
}

/// Reads a QUIC variable-length integer, or `Ok(None)` if `buf` is too short to hold it.
pub fn peek_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

pub(crate) fn get_varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let (v, n) = peek_varint(buf).ok_or(WireError::Truncated)?;
    buf.advance(n);
    Ok(v)
}

pub(crate) fn get_u8(buf: &mut &[u8]) -> Result<u8, WireError> {
    if buf.is_empty() {
        return Err(WireError::Truncated);
    }
    Ok(buf.get_u8())
}

/// Reads a length-prefixed byte string of at most `limit` bytes, borrowing from `buf`.
pub(crate) fn get_bytes<'a>(
    buf: &mut &'a [u8],
    what: &'static str,
    limit: usize,
) -> Result<&'a [u8], WireError> {
    let len = get_varint(buf)?;
    if len > limit as u64 {
        return Err(WireError::TooLarge {
            what,
            size: len,
            limit: limit as u64,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(WireError::Truncated);
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

pub(crate) fn get_str(
    buf: &mut &[u8],
    what: &'static str,
    limit: usize,
) -> Result<String, WireError> {
    let raw = get_bytes(buf, what, limit)?;
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| WireError::InvalidUtf8(what))
}

pub(crate) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}
