//! Property tests of the wire layer: decoding arbitrary bytes never panics, and every
//! frame, HEADERS, TRAILERS and HELLO round-trips.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian::wire::{
    self, Code, FrameDecoder, FrameKind, Hello, Metadata, MethodInfo, MethodKind, ProxyTime,
    RequestHeaders, Trailers, WireError, WireLimits,
};
use meridian::Codec;
use proptest::prelude::*;

fn limits() -> WireLimits {
    WireLimits {
        max_message_size: 4096,
        max_metadata_size: 1024,
        max_control_frame_size: 4096,
    }
}

fn metadata() -> impl Strategy<Value = Metadata> {
    proptest::collection::vec(
        (
            "[a-z0-9-]{0,12}",
            proptest::collection::vec(any::<u8>(), 0..24),
        ),
        0..6,
    )
    .prop_map(|v| v.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
}

fn headers() -> impl Strategy<Value = RequestHeaders> {
    (
        "[a-zA-Z0-9_.]{0,40}",
        0u8..3,
        proptest::option::of(0u64..(1 << 40)),
        any::<bool>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        metadata(),
    )
        .prop_map(
            |(method, codec, timeout, idempotent, key, metadata)| RequestHeaders {
                method,
                codec: Codec::from_u8(codec).unwrap(),
                timeout: timeout.map(Duration::from_micros),
                idempotent,
                routing_key: key.map(Bytes::from),
                metadata,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut dec = FrameDecoder::new(limits());
        dec.extend(&data);
        // Bounded: each frame consumes at least one byte.
        for _ in 0..=data.len() {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    prop_assert!(f.payload.len() <= 4096);
                    let _ = RequestHeaders::decode(&f.payload, &limits());
                    let _ = Trailers::decode(&f.payload, &limits());
                    let _ = Hello::decode(&f.payload);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = RequestHeaders::decode(&data, &limits());
        let _ = Trailers::decode(&data, &limits());
        let _ = Hello::decode(&data);
    }

    #[test]
    fn headers_round_trip(h in headers()) {
        let frame = h.to_frame();
        let mut dec = FrameDecoder::new(WireLimits::default());
        dec.extend(&frame);
        let f = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(f.kind, FrameKind::Headers);
        prop_assert_eq!(RequestHeaders::decode(&f.payload, &WireLimits::default()).unwrap(), h);
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn trailers_round_trip(code in 0u64..17, message in ".{0,60}", md in metadata(), t in proptest::option::of(0u64..(1 << 40)), p in proptest::option::of((0u64..(1 << 40), 0u64..(1 << 40))), not_run in any::<bool>()) {
        let proxy = p.map(|(inside, upstream)| ProxyTime { inside: Duration::from_micros(inside), upstream: Duration::from_micros(upstream) });
        let tr = Trailers { code: Code::from_u64(code), message, metadata: md, server_time: t.map(Duration::from_micros), proxy, not_run: not_run && code != 0 };
        let mut out = BytesMut::new();
        tr.put_frame(&mut out);
        let mut dec = FrameDecoder::new(WireLimits::default());
        dec.extend(&out);
        let f = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(Trailers::decode(&f.payload, &WireLimits::default()).unwrap(), tr);
    }

    #[test]
    fn hello_round_trips(names in proptest::collection::vec(("[a-z_]{1,20}", 0u8..4, any::<bool>()), 0..20), load in 0u64..1_000_000) {
        let kinds = [MethodKind::Unary, MethodKind::ServerStreaming, MethodKind::ClientStreaming, MethodKind::Bidi];
        let hello = Hello {
            version: wire::PROTOCOL_VERSION,
            server_id: "s1".into(),
            region: "eu".into(),
            load,
            methods: names.into_iter().map(|(name, k, idempotent)| MethodInfo { name, kind: kinds[k as usize], idempotent }).collect(),
        };
        let frame = hello.to_frame();
        let mut dec = FrameDecoder::new(WireLimits::default());
        dec.extend(&frame);
        let f = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(Hello::decode(&f.payload).unwrap(), hello);
    }

    #[test]
    fn frames_split_anywhere_reassemble(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8), cut in 1usize..64) {
        let mut stream = BytesMut::new();
        for p in &payloads {
            wire::put_frame(&mut stream, FrameKind::Data, p);
        }
        let mut dec = FrameDecoder::new(limits());
        let mut got = Vec::new();
        for chunk in stream.chunks(cut) {
            dec.extend(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f.payload.to_vec());
            }
        }
        prop_assert_eq!(got, payloads);
    }

    #[test]
    fn chunks_taken_over_whole_or_copied_reassemble_alike(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..8), cut in 1usize..6000, owned in proptest::collection::vec(any::<bool>(), 1..16)) {
        let mut stream = BytesMut::new();
        for p in &payloads {
            wire::put_frame(&mut stream, FrameKind::Data, p);
        }
        let stream = stream.freeze();
        let mut dec = FrameDecoder::new(limits());
        let mut got = Vec::new();
        let mut at = 0;
        for (i, chunk) in stream.chunks(cut).enumerate() {
            if owned[i % owned.len()] {
                dec.extend_bytes(stream.slice(at..at + chunk.len()));
            } else {
                dec.extend(chunk);
            }
            at += chunk.len();
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f.payload.to_vec());
            }
            prop_assert!(dec.capacity() <= 2 * stream.len().max(FrameDecoder::MAX_HELD_CHUNK));
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(got, payloads);
    }
}

#[test]
fn a_small_chunk_is_taken_over_without_a_copy_and_a_large_one_is_copied() {
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, FrameKind::Data, b"hello");
    wire::put_frame(&mut b, FrameKind::Trailers, b"t");
    let chunk = b.freeze();
    let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
    let mut dec = FrameDecoder::new(limits());
    dec.extend_bytes(chunk.clone());
    let data = dec.next_frame().unwrap().unwrap();
    let trailers = dec.next_frame().unwrap().unwrap();
    assert_eq!(
        (&data.payload[..], &trailers.payload[..]),
        (&b"hello"[..], &b"t"[..])
    );
    assert!(
        range.contains(&(data.payload.as_ptr() as usize)),
        "a slice of the chunk"
    );
    assert!(range.contains(&(trailers.payload.as_ptr() as usize)));
    assert_eq!(dec.buffered(), 0);

    let mut b = BytesMut::new();
    wire::put_frame(
        &mut b,
        FrameKind::Data,
        &[7u8; FrameDecoder::MAX_HELD_CHUNK],
    );
    let chunk = b.freeze();
    let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
    dec.extend_bytes(chunk);
    let big = dec.next_frame().unwrap().unwrap();
    assert_eq!(big.payload.len(), FrameDecoder::MAX_HELD_CHUNK);
    assert!(
        !range.contains(&(big.payload.as_ptr() as usize)),
        "copied into the buffer"
    );
}

#[test]
fn a_partial_frame_taken_over_moves_to_the_buffer_when_the_rest_arrives() {
    let mut b = BytesMut::new();
    wire::put_frame(&mut b, FrameKind::Data, &[1u8; 100]);
    let whole = b.freeze();
    let mut dec = FrameDecoder::new(limits());
    dec.extend_bytes(whole.slice(..40));
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.buffered(), 40);
    assert_eq!(dec.wanted(), Ok(Some(whole.len() - 40)));
    dec.extend_bytes(whole.slice(40..));
    let f = dec.next_frame().unwrap().unwrap();
    assert_eq!(&f.payload[..], &[1u8; 100][..]);
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn a_huge_declared_length_is_refused_before_allocating() {
    let mut b = BytesMut::new();
    wire::put_frame_header(&mut b, FrameKind::Data, 1 << 50);
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(&b);
    assert!(matches!(dec.next_frame(), Err(WireError::TooLarge { .. })));
}

#[test]
fn metadata_over_the_limit_is_refused() {
    let mut md = Metadata::new();
    md.insert("k", vec![0u8; 2000]);
    let h = RequestHeaders {
        method: "m".into(),
        codec: Codec::Postcard,
        timeout: None,
        idempotent: false,
        routing_key: None,
        metadata: md,
    };
    let frame = h.to_frame();
    let payload = &frame[1 + wire::varint_len((frame.len() - 3) as u64)..];
    let err = RequestHeaders::decode(payload, &limits()).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
}

#[test]
fn unknown_status_numbers_map_to_unknown() {
    assert_eq!(Code::from_u64(17), Code::Unknown);
    assert_eq!(Code::from_u64(u64::MAX), Code::Unknown);
    for n in 0..17 {
        assert_eq!(Code::from_u64(n) as u64, n);
    }
}
