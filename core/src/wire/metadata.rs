//! Call metadata: ordered key/value pairs.

use bytes::{Bytes, BytesMut};

use super::error::WireError;
use super::varint::{get_bytes, get_varint, put_bytes, put_varint, varint_len};

/// What each metadata entry is charged against
/// [`WireLimits::max_metadata_size`](super::WireLimits::max_metadata_size) on top of its key
/// and value bytes, as HTTP/2 charges each header (RFC 7541 §4.1): an empty entry is two
/// bytes on the wire but a key, a value and their bookkeeping in memory.
pub const METADATA_ENTRY_OVERHEAD: usize = 32;

/// Ordered key/value pairs sent with a call (in HEADERS) and with its result (in TRAILERS).
///
/// Keys are text, conventionally lowercase ASCII; values are bytes, usually text. A key may
/// appear more than once, as in gRPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Bytes)>,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push((key.into(), value.into()));
        self
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first value for `key`, if it is UTF-8 text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size charged against
    /// [`WireLimits::max_metadata_size`](super::WireLimits::max_metadata_size): the key and
    /// value lengths plus [`METADATA_ENTRY_OVERHEAD`] per entry, so that many empty entries
    /// cost what they cost in memory.
    pub fn byte_size(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, v)| METADATA_ENTRY_OVERHEAD + k.len() + v.len())
            .sum()
    }

    /// The number of bytes [`encode`](Self::encode) writes.
    pub(super) fn encoded_len(&self) -> usize {
        let entries: usize = self
            .entries
            .iter()
            .map(|(k, v)| {
                varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len()
            })
            .sum();
        varint_len(self.entries.len() as u64) + entries
    }

    pub(super) fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.entries.len() as u64);
        for (k, v) in &self.entries {
            put_bytes(out, k.as_bytes());
            put_bytes(out, v);
        }
    }

    pub(super) fn decode(buf: &mut &[u8], limit: usize) -> Result<Metadata, WireError> {
        let count = get_varint(buf)?;
        // Each entry takes at least two bytes (two empty lengths), and is charged the
        // per-entry overhead: a count the bytes present or the limit cannot hold is refused
        // before anything is allocated, so the vector below is at most `limit / 32` entries.
        if count > (buf.len() / 2) as u64 {
            return Err(WireError::Truncated);
        }
        if count > (limit / METADATA_ENTRY_OVERHEAD) as u64 {
            return Err(WireError::TooLarge {
                what: "metadata",
                size: count.saturating_mul(METADATA_ENTRY_OVERHEAD as u64),
                limit: limit as u64,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut size = 0usize;
        for _ in 0..count {
            // Lengths are checked against the bytes present, the total against the limit,
            // before anything is copied.
            let k = get_bytes(buf, "metadata key", usize::MAX)?;
            let v = get_bytes(buf, "metadata value", usize::MAX)?;
            size += METADATA_ENTRY_OVERHEAD + k.len() + v.len();
            if size > limit {
                return Err(WireError::TooLarge {
                    what: "metadata",
                    size: size as u64,
                    limit: limit as u64,
                });
            }
            let k = std::str::from_utf8(k).map_err(|_| WireError::InvalidUtf8("metadata key"))?;
            entries.push((k.to_owned(), Bytes::copy_from_slice(v)));
        }
        Ok(Metadata { entries })
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Metadata {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireLimits;

    /// A metadata block of `count` empty entries.
    fn empty_entries(count: u64) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_varint(&mut b, count);
        for _ in 0..count {
            put_bytes(&mut b, b"");
            put_bytes(&mut b, b"");
        }
        b.to_vec()
    }

    #[test]
    fn each_entry_is_charged_its_overhead() {
        let m: Metadata = [("a", "bc")].into_iter().collect();
        assert_eq!(m.byte_size(), METADATA_ENTRY_OVERHEAD + 3);
        assert_eq!(Metadata::new().byte_size(), 0);
    }

    #[test]
    fn thousands_of_empty_entries_are_refused_and_reserve_little() {
        let limit = WireLimits::DEFAULT_MAX_METADATA_SIZE;
        // A whole 64 KiB HEADERS of empty entries: 2 bytes each on the wire.
        let block = empty_entries(32_000);
        let err = Metadata::decode(&mut &block[..], limit).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::TooLarge {
                    what: "metadata",
                    ..
                }
            ),
            "{err}"
        );
        // Exactly as many as the limit holds are fine, and their vector is that big.
        let most = (limit / METADATA_ENTRY_OVERHEAD) as u64;
        let m = Metadata::decode(&mut &empty_entries(most)[..], limit).unwrap();
        assert_eq!(m.len() as u64, most);
        assert_eq!(m.byte_size(), limit);
        assert!(m.entries.capacity() <= limit / METADATA_ENTRY_OVERHEAD);
        let err = Metadata::decode(&mut &empty_entries(most + 1)[..], limit).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        // Keys and values count too, as they arrive.
        let mut b = BytesMut::new();
        put_varint(&mut b, 2);
        put_bytes(&mut b, b"k");
        put_bytes(&mut b, &vec![b'v'; limit - METADATA_ENTRY_OVERHEAD - 1]);
        put_bytes(&mut b, b"");
        put_bytes(&mut b, b"");
        let err = Metadata::decode(&mut &b[..], limit).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { size, .. } if size == (limit + METADATA_ENTRY_OVERHEAD) as u64),
            "{err}"
        );
    }
}
