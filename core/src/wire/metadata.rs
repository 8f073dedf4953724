//! Call metadata: ordered key/value pairs.

use bytes::{Bytes, BytesMut};

use super::error::WireError;
use super::varint::{get_bytes, get_str, get_varint, put_bytes, put_varint};

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

    /// Sum of key and value lengths, the figure checked against
    /// [`WireLimits::max_metadata_size`](super::WireLimits::max_metadata_size).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
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
        // Each entry takes at least two bytes (two empty lengths).
        if count > (buf.len() / 2) as u64 {
            return Err(WireError::Truncated);
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut budget = limit;
        for _ in 0..count {
            let k = get_str(buf, "metadata key", budget)?;
            budget -= k.len();
            let v = get_bytes(buf, "metadata", budget)?;
            budget -= v.len();
            entries.push((k, Bytes::copy_from_slice(v)));
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
