//! The binary encoding of [`Value`] (specified in the parent module docs).
//!
//! Decoding runs on every call that uses the Value codec and on bytes chosen
//! by a peer, so it is written to be both fast and hostile-input safe: it
//! walks a `&[u8]` cursor without copying except into the output, keeps its
//! own explicit stack instead of recursing (deep input cannot overflow the
//! thread stack), and checks each declared length against the unread bytes
//! before allocating anything.

use super::varint::{read_varint, varint_len, write_varint, zigzag_decode, zigzag_encode};
use super::{CodecError, DecodeLimits, Value, VALUE_NODE_COST};

const TAG_NULL: u8 = 0x00;
const TAG_FALSE: u8 = 0x01;
const TAG_TRUE: u8 = 0x02;
const TAG_INT: u8 = 0x03;
const TAG_FLOAT: u8 = 0x04;
const TAG_STR: u8 = 0x05;
const TAG_BYTES: u8 = 0x06;
const TAG_LIST: u8 = 0x07;
const TAG_MAP: u8 = 0x08;

/// Upper bound on the items pre-allocated for one container. The declared
/// count is already bounded by the unread input, but several nested
/// containers may each claim nearly all of it; capping keeps the memory of
/// hostile input proportional to its size.
const MAX_PREALLOC: usize = 4096;

impl Value {
    /// Appends the binary encoding of this value to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(TAG_NULL),
            Value::Bool(false) => out.push(TAG_FALSE),
            Value::Bool(true) => out.push(TAG_TRUE),
            Value::Int(i) => {
                out.push(TAG_INT);
                write_varint(zigzag_encode(*i), out);
            }
            Value::Float(f) => {
                out.push(TAG_FLOAT);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Str(s) => {
                out.push(TAG_STR);
                write_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(TAG_BYTES);
                write_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.push(TAG_LIST);
                write_varint(items.len() as u64, out);
                for item in items {
                    item.encode(out);
                }
            }
            Value::Map(entries) => {
                out.push(TAG_MAP);
                write_varint(entries.len() as u64, out);
                for (k, v) in entries {
                    k.encode(out);
                    v.encode(out);
                }
            }
        }
    }

    /// Encodes this value into a new, exactly sized buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// The number of bytes [`Value::encode`] appends for this value.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Value::Null | Value::Bool(_) => 0,
            Value::Int(i) => varint_len(zigzag_encode(*i)),
            Value::Float(_) => 8,
            Value::Str(s) => varint_len(s.len() as u64) + s.len(),
            Value::Bytes(b) => varint_len(b.len() as u64) + b.len(),
            Value::List(items) => {
                varint_len(items.len() as u64) + items.iter().map(Value::encoded_len).sum::<usize>()
            }
            Value::Map(entries) => {
                varint_len(entries.len() as u64)
                    + entries
                        .iter()
                        .map(|(k, v)| k.encoded_len() + v.encoded_len())
                        .sum::<usize>()
            }
        }
    }

    /// The memory (as [`DecodeLimits::max_decoded_size`] counts it) that decoding `bytes`
    /// would take, found by walking the tags without building anything: for charging a
    /// body to a memory budget before decoding it. Malformed input gets an estimate (the
    /// decode itself then fails), never more than [`VALUE_NODE_COST`] per input byte.
    pub fn decoded_size_hint(bytes: &[u8]) -> usize {
        let mut input = bytes;
        let mut size = 0usize;
        while let Some((&tag, rest)) = input.split_first() {
            input = rest;
            size = size.saturating_add(VALUE_NODE_COST);
            let skip = match tag {
                TAG_INT => {
                    let _ = read_varint(&mut input);
                    0
                }
                TAG_FLOAT => 8,
                TAG_STR | TAG_BYTES => match read_varint(&mut input) {
                    Ok(n) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                        size = size.saturating_add(n);
                        n
                    }
                    Err(_) => 0,
                },
                TAG_LIST | TAG_MAP => {
                    let _ = read_varint(&mut input);
                    0
                }
                _ => 0,
            };
            input = &input[skip.min(input.len())..];
        }
        size
    }

    /// Decodes exactly one value from `bytes`, enforcing `limits`.
    ///
    /// Errors: [`CodecError::TooLarge`] if `bytes` is longer than
    /// `limits.max_size` (checked first), [`CodecError::TooDeep`] if lists
    /// and maps nest deeper than `limits.max_depth`,
    /// [`CodecError::DecodedTooLarge`] if the value would take more memory than
    /// `limits.max_decoded_size`, [`CodecError::Truncated`], [`CodecError::InvalidTag`],
    /// [`CodecError::InvalidUtf8`], [`CodecError::VarintOverflow`] for
    /// malformed input, and [`CodecError::TrailingBytes`] if anything follows
    /// the value.
    pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, CodecError> {
        if bytes.len() > limits.max_size {
            return Err(CodecError::TooLarge {
                size: bytes.len(),
                limit: limits.max_size,
            });
        }
        let mut input = bytes;
        let mut budget = Budget {
            left: limits.max_decoded_size,
            limit: limits.max_decoded_size,
        };
        let value = decode_one(&mut input, limits.max_depth, &mut budget)?;
        if input.is_empty() {
            Ok(value)
        } else {
            Err(CodecError::TrailingBytes)
        }
    }
}

/// What is left of [`DecodeLimits::max_decoded_size`] while a value is decoded.
struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    /// Charges `bytes` of decoded memory, failing once the budget is spent.
    #[inline]
    fn charge(&mut self, bytes: usize) -> Result<(), CodecError> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(CodecError::DecodedTooLarge { limit: self.limit }),
        }
    }

    /// How many more nodes the budget could hold: a bound for pre-allocation.
    #[inline]
    fn nodes_left(&self) -> usize {
        self.left / VALUE_NODE_COST
    }
}

/// A container whose items are still being decoded.
enum OpenContainer {
    List {
        items: Vec<Value>,
        remaining: usize,
    },
    Map {
        entries: Vec<(Value, Value)>,
        remaining: usize,
        key: Option<Value>,
    },
}

/// What reading one tag produced: a finished value or an opened container.
enum Step {
    Done(Value),
    Open(OpenContainer),
}

/// Splits `n` bytes off the front of `input`.
#[inline]
fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], CodecError> {
    if n > input.len() {
        return Err(CodecError::Truncated);
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// Reads a varint length or count and checks that `per_item` bytes for each
/// of them are still available.
#[inline]
fn read_len(input: &mut &[u8], per_item: usize) -> Result<usize, CodecError> {
    let n = read_varint(input)?;
    let available = (input.len() / per_item) as u64;
    if n > available {
        return Err(CodecError::Truncated);
    }
    // n <= input.len(), so it fits in usize.
    Ok(n as usize)
}

/// Reads one tag and its scalar payload, or opens a container, charging the node (and a
/// string's or byte string's bytes) to `budget` before allocating it.
#[inline]
fn read_step(input: &mut &[u8], budget: &mut Budget) -> Result<Step, CodecError> {
    let (&tag, rest) = input.split_first().ok_or(CodecError::Truncated)?;
    *input = rest;
    budget.charge(VALUE_NODE_COST)?;
    let value = match tag {
        TAG_NULL => Value::Null,
        TAG_FALSE => Value::Bool(false),
        TAG_TRUE => Value::Bool(true),
        TAG_INT => Value::Int(zigzag_decode(read_varint(input)?)),
        TAG_FLOAT => {
            let raw = take(input, 8)?;
            let mut le = [0u8; 8];
            le.copy_from_slice(raw);
            Value::Float(f64::from_le_bytes(le))
        }
        TAG_STR => {
            let len = read_len(input, 1)?;
            budget.charge(len)?;
            let raw = take(input, len)?;
            let s = std::str::from_utf8(raw).map_err(|_| CodecError::InvalidUtf8)?;
            Value::Str(s.to_owned())
        }
        TAG_BYTES => {
            let len = read_len(input, 1)?;
            budget.charge(len)?;
            Value::Bytes(take(input, len)?.to_vec())
        }
        TAG_LIST => {
            let n = read_len(input, 1)?;
            return Ok(Step::Open(OpenContainer::List {
                items: Vec::with_capacity(n.min(MAX_PREALLOC).min(budget.nodes_left())),
                remaining: n,
            }));
        }
        TAG_MAP => {
            let n = read_len(input, 2)?;
            return Ok(Step::Open(OpenContainer::Map {
                entries: Vec::with_capacity(n.min(MAX_PREALLOC).min(budget.nodes_left() / 2)),
                remaining: n,
                key: None,
            }));
        }
        other => return Err(CodecError::InvalidTag(other)),
    };
    Ok(Step::Done(value))
}

/// Decodes one value (possibly nested) from the front of `input`.
fn decode_one(
    input: &mut &[u8],
    max_depth: usize,
    budget: &mut Budget,
) -> Result<Value, CodecError> {
    let mut stack: Vec<OpenContainer> = Vec::new();
    loop {
        let mut value = match read_step(input, budget)? {
            Step::Done(v) => v,
            Step::Open(frame) => {
                if stack.len() >= max_depth {
                    return Err(CodecError::TooDeep { limit: max_depth });
                }
                match frame {
                    OpenContainer::List {
                        items,
                        remaining: 0,
                    } => Value::List(items),
                    OpenContainer::Map {
                        entries,
                        remaining: 0,
                        ..
                    } => Value::Map(entries),
                    open => {
                        stack.push(open);
                        continue;
                    }
                }
            }
        };
        // Hand the finished value to its parent, closing every container
        // that it completes.
        loop {
            let completed = match stack.last_mut() {
                None => return Ok(value),
                Some(OpenContainer::List { items, remaining }) => {
                    items.push(value);
                    *remaining -= 1;
                    *remaining == 0
                }
                Some(OpenContainer::Map {
                    entries,
                    remaining,
                    key,
                }) => match key.take() {
                    None => {
                        *key = Some(value);
                        false
                    }
                    Some(k) => {
                        entries.push((k, value));
                        *remaining -= 1;
                        *remaining == 0
                    }
                },
            };
            if !completed {
                break;
            }
            value = match stack.pop() {
                Some(OpenContainer::List { items, .. }) => Value::List(items),
                Some(OpenContainer::Map { entries, .. }) => Value::Map(entries),
                // `completed` implies the stack had a last element.
                None => return Err(CodecError::Truncated),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Value, CodecError> {
        Value::decode(bytes, &DecodeLimits::default())
    }

    #[test]
    fn the_size_hint_is_what_decoding_charges() {
        let values = [
            Value::Null,
            Value::Str("hello".into()),
            Value::List(vec![Value::Null; 1000]),
            Value::Map(vec![
                (Value::Str("k".into()), Value::Bytes(vec![1; 300])),
                (Value::Int(-5), Value::Float(1.5)),
                (Value::Bool(true), Value::List(vec![Value::Int(1 << 40)])),
            ]),
        ];
        for v in values {
            let mut bytes = Vec::new();
            v.encode(&mut bytes);
            let hint = Value::decoded_size_hint(&bytes);
            let exact = DecodeLimits {
                max_decoded_size: hint,
                ..DecodeLimits::default()
            };
            assert_eq!(Value::decode(&bytes, &exact).ok().as_ref(), Some(&v));
            let short = DecodeLimits {
                max_decoded_size: hint - 1,
                ..DecodeLimits::default()
            };
            assert!(Value::decode(&bytes, &short).is_err(), "{v:?}");
        }
        // Four million nulls: 4 MB on the wire, 128 MB decoded.
        assert_eq!(
            Value::decoded_size_hint(&[0u8; 1000]),
            1000 * VALUE_NODE_COST
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(decode(&[0x00]).ok(), Some(Value::Null));
        assert_eq!(decode(&[0x01]).ok(), Some(Value::Bool(false)));
        assert_eq!(decode(&[0x02]).ok(), Some(Value::Bool(true)));
        assert_eq!(decode(&[0x03, 0x05]).ok(), Some(Value::Int(-3)));
        assert_eq!(
            decode(&[0x05, 0x02, b'h', b'i']).ok(),
            Some(Value::from("hi"))
        );
        assert!(matches!(
            decode(&[0x05, 0x01, 0xff]),
            Err(CodecError::InvalidUtf8)
        ));
        assert!(matches!(decode(&[0x09]), Err(CodecError::InvalidTag(9))));
        assert!(matches!(decode(&[]), Err(CodecError::Truncated)));
        assert!(matches!(decode(&[0x04, 0, 0]), Err(CodecError::Truncated)));
        assert!(matches!(
            decode(&[0x00, 0x00]),
            Err(CodecError::TrailingBytes)
        ));
    }

    #[test]
    fn depth_is_counted_per_container() {
        let limits = DecodeLimits {
            max_depth: 1,
            max_size: 100,
            ..DecodeLimits::default()
        };
        assert!(Value::decode(&[0x07, 0x00], &limits).is_ok());
        assert!(Value::decode(&[0x07, 0x01, 0x00], &limits).is_ok());
        assert!(matches!(
            Value::decode(&[0x07, 0x01, 0x07, 0x00], &limits),
            Err(CodecError::TooDeep { limit: 1 })
        ));
        let scalars_only = DecodeLimits {
            max_depth: 0,
            max_size: 100,
            ..DecodeLimits::default()
        };
        assert!(Value::decode(&[0x03, 0x00], &scalars_only).is_ok());
        assert!(matches!(
            Value::decode(&[0x08, 0x00], &scalars_only),
            Err(CodecError::TooDeep { limit: 0 })
        ));
    }

    #[test]
    fn nested_map_round_trip() {
        let v = Value::Map(vec![
            (
                Value::List(vec![Value::Int(1)]),
                Value::Map(vec![(Value::Null, Value::Bytes(vec![1, 2]))]),
            ),
            (Value::from("x"), Value::List(vec![])),
        ]);
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), v.encoded_len());
        assert_eq!(decode(&bytes).ok(), Some(v));
    }
}
