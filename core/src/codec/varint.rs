//! LEB128 varints and zigzag mapping used by the Value encoding.
//!
//! These are deliberately separate from the wire layer's QUIC-style varints:
//! the Value format is a stable, client-facing format with its own rules
//! (canonical encodings only, see the parent module docs).

use super::CodecError;

/// Maximum encoded length of a 64-bit varint.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub(crate) fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`write_varint`] produces for `v`.
#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    // One byte per started group of 7 significant bits; zero takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a canonical unsigned LEB128 varint from the front of `input`,
/// advancing it past the varint.
///
/// Rejects varints over 10 bytes, values over 64 bits and overlong encodings
/// with [`CodecError::VarintOverflow`]; running out of input is
/// [`CodecError::Truncated`].
#[inline]
pub(crate) fn read_varint(input: &mut &[u8]) -> Result<u64, CodecError> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 0x01 {
            return Err(CodecError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(CodecError::VarintOverflow);
            }
            *input = input.get(i + 1..).unwrap_or_default();
            return Ok(value);
        }
    }
    // The 10th-byte check above ends every longer run, so this is a short read.
    Err(CodecError::Truncated)
}

/// Maps a signed integer to an unsigned one so small magnitudes stay short.
#[inline]
pub(crate) fn zigzag_encode(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// Inverse of [`zigzag_encode`].
#[inline]
pub(crate) fn zigzag_decode(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: u64) {
        let mut buf = Vec::new();
        write_varint(v, &mut buf);
        assert_eq!(buf.len(), varint_len(v), "len of {v}");
        let mut input = buf.as_slice();
        assert_eq!(read_varint(&mut input).ok(), Some(v));
        assert!(input.is_empty());
    }

    #[test]
    fn varint_round_trips() {
        for v in [0, 1, 127, 128, 255, 16383, 16384, u64::MAX / 2, u64::MAX] {
            round_trip(v);
        }
        for shift in 0..64 {
            round_trip(1u64 << shift);
            round_trip((1u64 << shift) - 1);
        }
    }

    #[test]
    fn varint_rejects_bad_encodings() {
        let overlong: &[u8] = &[0x80, 0x00];
        assert!(matches!(
            read_varint(&mut { overlong }),
            Err(CodecError::VarintOverflow)
        ));
        let too_big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            read_varint(&mut { too_big }),
            Err(CodecError::VarintOverflow)
        ));
        let too_long: &[u8] = &[0xff; 11];
        assert!(matches!(
            read_varint(&mut { too_long }),
            Err(CodecError::VarintOverflow)
        ));
        let truncated: &[u8] = &[0x80, 0x80];
        assert!(matches!(
            read_varint(&mut { truncated }),
            Err(CodecError::Truncated)
        ));
    }

    #[test]
    fn zigzag_round_trips() {
        for n in [0, -1, 1, -2, 2, i64::MIN, i64::MAX, -300, 300] {
            assert_eq!(zigzag_decode(zigzag_encode(n)), n);
        }
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
        assert_eq!(zigzag_encode(i64::MIN), u64::MAX);
    }
}
