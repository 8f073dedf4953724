//! Fuzzes the Value decoder with arbitrary bytes.
//!
//! Decoding must never panic, whatever the input. When the input does
//! decode, the encoding must be canonical (re-encoding gives back exactly
//! the input) and decoding the re-encoded bytes must give the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian::codec::{DecodeLimits, Value};

/// Structural equality comparing floats bit for bit, so NaN equals itself.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(xs), Value::List(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        (Value::Map(xs), Value::Map(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys)
                    .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let Ok(value) = Value::decode(data, &limits) else {
        return;
    };
    let encoded = value.to_bytes();
    assert_eq!(encoded.len(), value.encoded_len(), "encoded_len mismatch");
    assert_eq!(encoded.as_slice(), data, "encoding is not canonical");
    match Value::decode(&encoded, &limits) {
        Ok(again) => assert!(same(&again, &value), "decode(encode(v)) != v"),
        Err(e) => panic!("re-encoded value failed to decode: {e}"),
    }
});
