//! Tests of `meridian::codec`: the Value binary encoding, its limits against
//! hostile input, the serde bridge, and the message helpers.
//!
//! Long on purpose: one file per subject keeps each test beside the fixtures it shares
//! (the hostile-input builders); every test is short.

use std::collections::BTreeMap;

use meridian::codec::{
    decode_message, encode_message, from_value, to_value, Codec, CodecError, DecodeLimits, Value,
    DEFAULT_MAX_DEPTH,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Structural equality that compares floats bit for bit (NaN == NaN).
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

/// Container nesting depth, counted as the decoder does.
fn depth(v: &Value) -> usize {
    match v {
        Value::List(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn decode(bytes: &[u8]) -> Result<Value, CodecError> {
    Value::decode(bytes, &DecodeLimits::default())
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(|bits| Value::Float(f64::from_bits(bits))),
        ".{0,16}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

// ---------------------------------------------------------------------------
// Typed messages used with the serde bridge
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unit;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meters(f64);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Named { name: String, sides: u8 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Response {
    id: u64,
    label: String,
    tags: Vec<String>,
    matrix: Vec<Vec<i32>>,
    parent: Option<Box<Response>>,
    shape: Shape,
    shapes: Vec<Shape>,
    counts: BTreeMap<String, u16>,
    pair: (i8, char),
    unit: Unit,
    length: Meters,
    maybe: Option<i64>,
    flag: bool,
}

fn sample_response() -> Response {
    let mut counts = BTreeMap::new();
    counts.insert("x".to_owned(), 3);
    counts.insert("y".to_owned(), u16::MAX);
    Response {
        id: 42,
        label: "résumé ✓".to_owned(),
        tags: vec!["a".to_owned(), String::new()],
        matrix: vec![vec![1, -2], vec![], vec![i32::MIN, i32::MAX]],
        parent: Some(Box::new(Response {
            id: 1,
            label: "parent".to_owned(),
            tags: vec![],
            matrix: vec![],
            parent: None,
            shape: Shape::Empty,
            shapes: vec![],
            counts: BTreeMap::new(),
            pair: (0, 'a'),
            unit: Unit,
            length: Meters(0.0),
            maybe: None,
            flag: false,
        })),
        shape: Shape::Named {
            name: "hex".to_owned(),
            sides: 6,
        },
        shapes: vec![Shape::Empty, Shape::Circle(1.5), Shape::Rect(2, 3)],
        counts,
        pair: (-7, '€'),
        unit: Unit,
        length: Meters(12.25),
        maybe: Some(-1),
        flag: true,
    }
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        (-1e9f64..1e9).prop_map(Shape::Circle),
        (any::<u32>(), any::<u32>()).prop_map(|(w, h)| Shape::Rect(w, h)),
        (".{0,8}", any::<u8>()).prop_map(|(name, sides)| Shape::Named { name, sides }),
    ]
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_respect_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        max_depth in 0usize..8,
        max_size in 0usize..300,
    ) {
        let limits = DecodeLimits { max_depth, max_size, ..DecodeLimits::default() };
        match Value::decode(&bytes, &limits) {
            Ok(v) => {
                prop_assert!(bytes.len() <= max_size);
                prop_assert!(depth(&v) <= max_depth);
                // A decoded value re-encodes to exactly the input (the
                // encoding is canonical).
                prop_assert_eq!(v.to_bytes(), bytes);
            }
            Err(CodecError::TooLarge { size, limit }) => {
                prop_assert_eq!(size, bytes.len());
                prop_assert_eq!(limit, max_size);
                prop_assert!(bytes.len() > max_size);
            }
            Err(_) => prop_assert!(bytes.len() <= max_size),
        }
    }

    #[test]
    fn mutated_encodings_never_panic(
        v in arb_value(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = v.to_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode(&bytes);
        let end = cut.index(bytes.len());
        if let Ok(partial) = decode(&bytes[..end]) {
            prop_assert_eq!(partial.encoded_len(), end);
        }
    }

    #[test]
    fn value_round_trips(v in arb_value()) {
        let bytes = v.to_bytes();
        prop_assert_eq!(bytes.len(), v.encoded_len());
        let back = decode(&bytes);
        prop_assert!(matches!(&back, Ok(b) if same(b, &v)), "{:?} -> {:?}", v, back);
    }

    #[test]
    fn encode_appends(v in arb_value(), prefix in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut out = prefix.clone();
        v.encode(&mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &v.to_bytes()[..]);
    }

    #[test]
    fn trailing_bytes_rejected(v in arb_value(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let mut bytes = v.to_bytes();
        bytes.extend_from_slice(&extra);
        prop_assert!(matches!(decode(&bytes), Err(CodecError::TrailingBytes)));
    }

    #[test]
    fn depth_limit_is_exact(v in arb_value()) {
        let bytes = v.to_bytes();
        let d = depth(&v);
        let exact = DecodeLimits { max_depth: d, max_size: usize::MAX, ..DecodeLimits::default() };
        prop_assert!(Value::decode(&bytes, &exact).is_ok());
        if d > 0 {
            let tight = DecodeLimits { max_depth: d - 1, max_size: usize::MAX, ..DecodeLimits::default() };
            let tight_result = Value::decode(&bytes, &tight);
            let rejected = matches!(tight_result, Err(CodecError::TooDeep { limit }) if limit == d - 1);
            prop_assert!(rejected);
        }
    }

    #[test]
    fn typed_values_round_trip(
        add in (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Add { a, b }),
        shapes in proptest::collection::vec(arb_shape(), 0..5),
        nested in proptest::collection::vec(proptest::collection::vec(any::<Option<u32>>(), 0..4), 0..4),
        bytes in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let v = to_value(&add).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(from_value::<Add>(v).ok(), Some(add.clone()));

        let v = to_value(&shapes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(from_value::<Vec<Shape>>(v).ok(), Some(shapes.clone()));

        let v = to_value(&nested).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(from_value::<Vec<Vec<Option<u32>>>>(v).ok(), Some(nested.clone()));

        let v = to_value(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(from_value::<Vec<u8>>(v).ok(), Some(bytes.clone()));

        // The same through the wire format of both typed codecs.
        for codec in [Codec::Value, Codec::Postcard] {
            let mut out = Vec::new();
            encode_message(codec, &(&add, &shapes, &nested), &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: (Add, Vec<Shape>, Vec<Vec<Option<u32>>>) =
                decode_message(codec, &out, &DecodeLimits::default())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, (add.clone(), shapes.clone(), nested.clone()));
        }
    }
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

#[test]
fn deep_nesting_is_rejected_without_stack_overflow() {
    let mut bytes = Vec::with_capacity(200_001);
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[0x07, 0x01]);
    }
    bytes.push(0x00);
    assert!(matches!(
        decode(&bytes),
        Err(CodecError::TooDeep {
            limit: DEFAULT_MAX_DEPTH
        })
    ));

    // Maps nest through keys and values alike.
    let mut bytes = Vec::new();
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[0x08, 0x01]);
    }
    assert!(matches!(decode(&bytes), Err(CodecError::TooDeep { .. })));

    // Even with no depth limit the decoder does not recurse: a truncated
    // 100,000-deep input fails cleanly.
    let unlimited = DecodeLimits {
        max_depth: usize::MAX,
        max_size: usize::MAX,
        ..DecodeLimits::default()
    };
    let mut bytes = Vec::new();
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[0x07, 0x01]);
    }
    assert!(matches!(
        Value::decode(&bytes, &unlimited),
        Err(CodecError::Truncated)
    ));
}

#[test]
fn exact_default_depth_is_accepted() {
    let mut bytes = Vec::new();
    for _ in 0..DEFAULT_MAX_DEPTH {
        bytes.extend_from_slice(&[0x07, 0x01]);
    }
    bytes.push(0x00);
    let v = decode(&bytes);
    assert!(matches!(&v, Ok(v) if depth(v) == DEFAULT_MAX_DEPTH));
}

#[test]
fn huge_declared_counts_fail_fast() {
    for tag in [0x05u8, 0x06, 0x07, 0x08] {
        for count in [1u64 << 60, u64::MAX, 5, 3] {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&varint(count));
            bytes.extend_from_slice(&[0x00, 0x00]);
            let result = decode(&bytes);
            assert!(
                matches!(result, Err(CodecError::Truncated)),
                "tag {tag:#x} count {count}: {result:?}"
            );
        }
    }
    // A map pair needs at least two bytes: one pair in one byte is truncated.
    assert!(matches!(
        decode(&[0x08, 0x01, 0x00]),
        Err(CodecError::Truncated)
    ));
    // Five bytes claiming 2^28 - 1 items, and a varint cut short.
    assert!(matches!(
        decode(&[0x07, 0xff, 0xff, 0xff, 0x7f]),
        Err(CodecError::Truncated)
    ));
    assert!(matches!(
        decode(&[0x07, 0x80, 0x80, 0x80, 0x80]),
        Err(CodecError::Truncated)
    ));
}

/// A list of `n` nulls: `n + 1` nodes from about `n` bytes.
fn list_of_nulls(n: usize) -> Vec<u8> {
    let mut bytes = Value::List(Vec::new()).to_bytes();
    bytes.truncate(1);
    let mut count = n as u64;
    loop {
        let low = (count & 0x7f) as u8;
        count >>= 7;
        if count == 0 {
            bytes.push(low);
            break;
        }
        bytes.push(low | 0x80);
    }
    bytes.resize(bytes.len() + n, 0x00);
    bytes
}

#[test]
fn decoded_memory_is_charged_per_node_and_a_body_of_nulls_is_refused() {
    // 4 MiB of one-byte nulls: within the message size, but 128 MiB as Values.
    let limits = DecodeLimits::default();
    let bytes = list_of_nulls(limits.max_size - 5);
    assert!(bytes.len() <= limits.max_size);
    let result = Value::decode(&bytes, &limits);
    assert!(result.is_err(), "4 MiB of nulls decoded whole");
    let result = decode_message::<Vec<()>>(Codec::Value, &bytes, &limits);
    assert!(result.is_err(), "4 MiB of nulls decoded to a typed target");

    // The budget is exact: the list node and its items, 32 bytes each on 64-bit targets.
    let node = std::mem::size_of::<Value>();
    let budget = DecodeLimits {
        max_decoded_size: 1000 * node,
        ..DecodeLimits::default()
    };
    assert!(Value::decode(&list_of_nulls(999), &budget).is_ok());
    assert!(matches!(
        Value::decode(&list_of_nulls(1000), &budget),
        Err(CodecError::DecodedTooLarge { limit }) if limit == 1000 * node
    ));
    // Strings and byte strings are charged their bytes on top of their node.
    let text = Value::Str("x".repeat(100)).to_bytes();
    let just = DecodeLimits {
        max_decoded_size: node + 100,
        ..DecodeLimits::default()
    };
    assert!(Value::decode(&text, &just).is_ok());
    let short = DecodeLimits {
        max_decoded_size: node + 99,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        Value::decode(&text, &short),
        Err(CodecError::DecodedTooLarge { .. })
    ));
    // Through the RPC layer it is the caller's bad argument.
    let status = meridian::Status::from(Value::decode(&text, &short).unwrap_err());
    assert_eq!(status.code(), meridian::Code::InvalidArgument);
}

#[test]
fn size_limit_is_checked_first() {
    let limits = DecodeLimits {
        max_depth: 4,
        max_size: 8,
        ..DecodeLimits::default()
    };
    // Nine bytes of garbage: size wins over the invalid tag.
    let result = Value::decode(&[0xff; 9], &limits);
    assert!(matches!(
        result,
        Err(CodecError::TooLarge { size: 9, limit: 8 })
    ));
    assert!(Value::decode(&[0x06, 0x06, 1, 2, 3, 4, 5, 6], &limits).is_ok());
    let default = DecodeLimits::default();
    assert_eq!(default.max_size, 4 * 1024 * 1024);
    assert_eq!(default.max_depth, DEFAULT_MAX_DEPTH);
    assert_eq!(DEFAULT_MAX_DEPTH, 64);
    assert_eq!(default.max_decoded_size, 32 * 1024 * 1024);
}

#[test]
fn malformed_scalars() {
    assert!(matches!(decode(&[0x09]), Err(CodecError::InvalidTag(0x09))));
    assert!(matches!(decode(&[0xff]), Err(CodecError::InvalidTag(0xff))));
    assert!(matches!(
        decode(&[0x05, 0x02, 0xc3, 0x28]),
        Err(CodecError::InvalidUtf8)
    ));
    // Overlong and overflowing ints.
    assert!(matches!(
        decode(&[0x03, 0x80, 0x00]),
        Err(CodecError::VarintOverflow)
    ));
    let mut too_big = vec![0x03];
    too_big.extend_from_slice(&[0xff; 9]);
    too_big.push(0x02);
    assert!(matches!(decode(&too_big), Err(CodecError::VarintOverflow)));
    let mut max = vec![0x03];
    max.extend_from_slice(&[0xff; 9]);
    max.push(0x01);
    assert_eq!(decode(&max).ok(), Some(Value::Int(i64::MIN)));
    assert!(matches!(decode(&[0x03, 0x80]), Err(CodecError::Truncated)));
    assert!(matches!(
        decode(&[0x04, 1, 2, 3, 4, 5, 6, 7]),
        Err(CodecError::Truncated)
    ));
}

#[test]
fn error_messages_are_readable() {
    let msgs = [
        CodecError::TooLarge { size: 10, limit: 5 }.to_string(),
        CodecError::TooDeep { limit: 64 }.to_string(),
        CodecError::InvalidTag(0x2a).to_string(),
        CodecError::Truncated.to_string(),
    ];
    assert_eq!(msgs[0], "message of 10 bytes exceeds the limit of 5 bytes");
    assert!(msgs[1].contains("64"));
    assert!(msgs[2].contains("0x2a"));
    assert!(msgs[3].contains("truncated"));
}

// ---------------------------------------------------------------------------
// serde bridge
// ---------------------------------------------------------------------------

#[test]
fn python_style_arguments_decode_into_typed_handlers() {
    let tuple_call = Value::List(vec![Value::Int(10), Value::Int(5)]);
    assert_eq!(
        from_value::<(i64, i64)>(tuple_call.clone()).ok(),
        Some((10, 5))
    );
    // Positional struct arguments are accepted too.
    assert_eq!(
        from_value::<Add>(tuple_call).ok(),
        Some(Add { a: 10, b: 5 })
    );

    let struct_call = Value::Map(vec![
        (Value::from("a"), Value::Int(10)),
        (Value::from("b"), Value::Int(5)),
    ]);
    assert_eq!(
        from_value::<Add>(struct_call.clone()).ok(),
        Some(Add { a: 10, b: 5 })
    );

    // And through the wire, as the RPC layer sees it.
    let bytes = struct_call.to_bytes();
    let add: Result<Add, _> = decode_message(Codec::Value, &bytes, &DecodeLimits::default());
    assert_eq!(add.ok(), Some(Add { a: 10, b: 5 }));

    // Wrong arity and wrong types are errors, not silent truncation.
    let three = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
    assert!(from_value::<(i64, i64)>(three.clone()).is_err());
    assert!(from_value::<Add>(three).is_err());
    let wrong = Value::Map(vec![
        (Value::from("a"), Value::from("ten")),
        (Value::from("b"), Value::Int(5)),
    ]);
    let err = from_value::<Add>(wrong).err().map(|e| e.to_string());
    assert!(
        matches!(&err, Some(msg) if msg.contains("invalid type")),
        "{err:?}"
    );
    let missing = Value::Map(vec![(Value::from("a"), Value::Int(1))]);
    assert!(from_value::<Add>(missing).is_err());
}

#[test]
fn typed_response_round_trips_through_value_encoding() {
    let response = sample_response();
    let value = to_value(&response);
    assert!(value.is_ok(), "{value:?}");
    let Ok(value) = value else { return };
    assert_eq!(value.get("id"), Some(&Value::Int(42)));
    assert_eq!(
        value
            .get("shape")
            .and_then(|s| s.get("Named"))
            .and_then(|n| n.get("sides")),
        Some(&Value::Int(6))
    );
    assert_eq!(value.get("unit"), Some(&Value::Null));
    assert_eq!(value.get("length"), Some(&Value::Float(12.25)));

    let bytes = value.to_bytes();
    let decoded = decode(&bytes);
    assert!(matches!(&decoded, Ok(d) if same(d, &value)));
    let Ok(decoded) = decoded else { return };
    let back = from_value::<Response>(decoded);
    assert!(matches!(&back, Ok(r) if *r == response), "{back:?}");
}

#[test]
fn serializer_mapping() {
    assert_eq!(to_value(&true).ok(), Some(Value::Bool(true)));
    assert_eq!(to_value(&-3i8).ok(), Some(Value::Int(-3)));
    assert_eq!(to_value(&7u16).ok(), Some(Value::Int(7)));
    assert_eq!(to_value(&1.5f32).ok(), Some(Value::Float(1.5)));
    assert_eq!(to_value(&'x').ok(), Some(Value::from("x")));
    assert_eq!(to_value(&None::<i32>).ok(), Some(Value::Null));
    assert_eq!(to_value(&Some(3)).ok(), Some(Value::Int(3)));
    assert_eq!(to_value(&()).ok(), Some(Value::Null));
    assert_eq!(to_value(&Unit).ok(), Some(Value::Null));
    assert_eq!(to_value(&Meters(2.0)).ok(), Some(Value::Float(2.0)));
    assert_eq!(to_value(&Shape::Empty).ok(), Some(Value::from("Empty")));
    assert_eq!(
        to_value(&Shape::Circle(1.0)).ok(),
        Some(Value::Map(vec![(Value::from("Circle"), Value::Float(1.0))]))
    );
    assert_eq!(
        to_value(&Shape::Rect(1, 2)).ok(),
        Some(Value::Map(vec![(
            Value::from("Rect"),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        )]))
    );
    assert_eq!(
        to_value(&Shape::Named {
            name: "n".to_owned(),
            sides: 3
        })
        .ok(),
        Some(Value::Map(vec![(
            Value::from("Named"),
            Value::Map(vec![
                (Value::from("name"), Value::from("n")),
                (Value::from("sides"), Value::Int(3)),
            ])
        )]))
    );
    assert!(matches!(
        to_value(&u64::MAX),
        Err(CodecError::IntegerOutOfRange)
    ));
    assert!(matches!(
        to_value(&(u128::from(u64::MAX) + 1)),
        Err(CodecError::IntegerOutOfRange)
    ));
    assert_eq!(
        to_value(&i128::from(i64::MIN)).ok(),
        Some(Value::Int(i64::MIN))
    );

    struct RawBytes<'a>(&'a [u8]);
    impl Serialize for RawBytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    assert_eq!(
        to_value(&RawBytes(&[1, 2])).ok(),
        Some(Value::Bytes(vec![1, 2]))
    );
}

#[test]
fn deserializer_edge_cases() {
    // Narrow integers are range-checked, never wrapped.
    assert!(from_value::<u8>(Value::Int(300)).is_err());
    assert!(from_value::<u8>(Value::Int(-1)).is_err());
    assert!(from_value::<i16>(Value::Int(40_000)).is_err());
    assert_eq!(from_value::<u8>(Value::Int(200)).ok(), Some(200));
    assert_eq!(
        from_value::<u64>(Value::Int(i64::MAX)).ok(),
        Some(i64::MAX as u64)
    );
    // Floats accept ints; chars accept one-character strings.
    assert_eq!(from_value::<f64>(Value::Int(3)).ok(), Some(3.0));
    assert_eq!(from_value::<char>(Value::from("é")).ok(), Some('é'));
    assert!(from_value::<char>(Value::from("ab")).is_err());
    // Options.
    assert_eq!(from_value::<Option<i64>>(Value::Null).ok(), Some(None));
    assert_eq!(from_value::<Option<i64>>(Value::Int(1)).ok(), Some(Some(1)));
    // Enums: unit variant from a string, others from a one-entry map;
    // unit variant also from {name: null}.
    assert_eq!(
        from_value::<Shape>(Value::from("Empty")).ok(),
        Some(Shape::Empty)
    );
    assert_eq!(
        from_value::<Shape>(Value::Map(vec![(Value::from("Empty"), Value::Null)])).ok(),
        Some(Shape::Empty)
    );
    assert!(from_value::<Shape>(Value::from("Hexagon")).is_err());
    assert!(from_value::<Shape>(Value::from("Circle")).is_err());
    assert!(from_value::<Shape>(Value::Map(vec![])).is_err());
    assert!(from_value::<Shape>(Value::Map(vec![
        (Value::from("Circle"), Value::Float(1.0)),
        (Value::from("Empty"), Value::Null),
    ]))
    .is_err());
    // Byte buffers from Bytes or a list of small ints.
    assert_eq!(
        from_value::<Vec<u8>>(Value::List(vec![Value::Int(1), Value::Int(255)])).ok(),
        Some(vec![1, 255])
    );
    assert!(from_value::<Vec<u8>>(Value::List(vec![Value::Int(256)])).is_err());
    // Unknown struct fields are ignored (serde's default).
    let extra = Value::Map(vec![
        (Value::from("a"), Value::Int(1)),
        (Value::from("zzz"), Value::List(vec![Value::Null])),
        (Value::from("b"), Value::Int(2)),
    ]);
    assert_eq!(from_value::<Add>(extra).ok(), Some(Add { a: 1, b: 2 }));
    // Maps with non-string keys.
    let map = Value::Map(vec![
        (Value::Int(1), Value::from("one")),
        (Value::Int(2), Value::from("two")),
    ]);
    let parsed = from_value::<BTreeMap<i64, String>>(map);
    assert_eq!(parsed.ok().map(|m| m.len()), Some(2));
    // Value itself deserializes from a Value.
    let v = Value::List(vec![Value::Bytes(vec![9]), Value::Float(0.5)]);
    assert_eq!(from_value::<Value>(v.clone()).ok(), Some(v));
}

#[test]
fn value_through_serde_json() {
    let v = Value::Map(vec![
        (Value::from("n"), Value::Null),
        (Value::from("i"), Value::Int(-9)),
        (Value::from("f"), Value::Float(0.25)),
        (
            Value::from("l"),
            Value::List(vec![Value::Bool(false), Value::from("s")]),
        ),
    ]);
    let json = serde_json::to_string(&v);
    assert!(json.is_ok());
    let back = json
        .ok()
        .and_then(|j| serde_json::from_str::<Value>(&j).ok());
    assert_eq!(back, Some(v));
    // u64 beyond i64 from JSON is out of range.
    assert!(serde_json::from_str::<Value>("18446744073709551615").is_err());
}

// ---------------------------------------------------------------------------
// Message helpers
// ---------------------------------------------------------------------------

#[test]
fn postcard_messages_round_trip_and_reject_trailing_bytes() {
    let response = sample_response();
    let mut out = vec![0xaa];
    let encoded = encode_message(Codec::Postcard, &response, &mut out);
    assert!(encoded.is_ok(), "{encoded:?}");
    assert_eq!(out[0], 0xaa, "existing bytes are kept");
    let body = &out[1..];
    let back: Result<Response, _> = decode_message(Codec::Postcard, body, &DecodeLimits::default());
    assert!(matches!(&back, Ok(r) if *r == response), "{back:?}");

    let mut trailing = body.to_vec();
    trailing.push(0);
    let result = decode_message::<Response>(Codec::Postcard, &trailing, &DecodeLimits::default());
    assert!(matches!(result, Err(CodecError::TrailingBytes)));

    let small = DecodeLimits {
        max_depth: 64,
        max_size: body.len() - 1,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_message::<Response>(Codec::Postcard, body, &small),
        Err(CodecError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_message::<Response>(
            Codec::Postcard,
            &body[..body.len() / 2],
            &DecodeLimits::default()
        ),
        Err(CodecError::Postcard(_))
    ));
}

#[test]
fn value_messages_round_trip_and_reject_trailing_bytes() {
    let response = sample_response();
    let mut out = Vec::new();
    assert!(encode_message(Codec::Value, &response, &mut out).is_ok());
    let back: Result<Response, _> = decode_message(Codec::Value, &out, &DecodeLimits::default());
    assert!(matches!(&back, Ok(r) if *r == response));
    // A Value-typed handler sees the generic form.
    let generic: Result<Value, _> = decode_message(Codec::Value, &out, &DecodeLimits::default());
    assert!(matches!(&generic, Ok(v) if v.get("id") == Some(&Value::Int(42))));

    out.push(0x00);
    assert!(matches!(
        decode_message::<Response>(Codec::Value, &out, &DecodeLimits::default()),
        Err(CodecError::TrailingBytes)
    ));

    let mut out = Vec::new();
    assert!(matches!(
        encode_message(Codec::Value, &u64::MAX, &mut out),
        Err(CodecError::IntegerOutOfRange)
    ));
    assert!(matches!(
        encode_message(Codec::Raw, &1u8, &mut out),
        Err(CodecError::RawNotTyped)
    ));
    assert!(matches!(
        decode_message::<u8>(Codec::Raw, &[1], &DecodeLimits::default()),
        Err(CodecError::RawNotTyped)
    ));
}

#[test]
fn codec_bytes() {
    assert_eq!(Codec::Raw.as_u8(), 0);
    assert_eq!(Codec::Postcard.as_u8(), 1);
    assert_eq!(Codec::Value.as_u8(), 2);
    for b in 0..=u8::MAX {
        match Codec::from_u8(b) {
            Some(c) => assert_eq!(c.as_u8(), b),
            None => assert!(b > 2),
        }
    }
}

/// The examples table of `docs/PROTOCOL.md` §5.3 is read from the document itself: every
/// value it lists encodes to exactly the bytes it lists, and those bytes decode back.
#[test]
fn the_protocol_document_s_value_examples_hold() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let section = &doc[doc.find("### 5.3 The Value encoding").expect("§5.3")..];
    let table = &section[section.find("| Value | Bytes |").expect("examples table")..];
    let mut checked = 0;
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        // Left: comma-separated JSON values (some in backticks); right: byte groups.
        let values: serde_json::Value =
            serde_json::from_str(&format!("[{}]", cells[0].replace('`', ""))).expect("values");
        let groups: Vec<Vec<u8>> = cells[1]
            .split('`')
            .filter(|g| !g.trim().is_empty() && g.trim() != ",")
            .map(|g| {
                g.split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
                    .collect()
            })
            .collect();
        let values = values.as_array().expect("list");
        assert_eq!(values.len(), groups.len(), "row {row}");
        for (json, bytes) in values.iter().zip(&groups) {
            let value = meridian::codec::to_value(json).expect("to Value");
            assert_eq!(&value.to_bytes(), bytes, "{json} per the document");
            assert_eq!(
                Value::decode(bytes, &DecodeLimits::default()).unwrap(),
                value
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 12,
        "only {checked} examples found: did the table move?"
    );
}
