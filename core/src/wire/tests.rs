//! Unit tests of the wire format.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::*;

#[test]
fn varint_boundaries_round_trip() {
    for v in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), varint_len(v));
        assert_eq!(peek_varint(&b), Some((v, b.len())));
    }
}

#[test]
fn proxy_trailers_match_the_protocol_example() {
    // docs/PROTOCOL.md §3.5.
    let t = Trailers {
        code: Code::Ok,
        message: String::new(),
        metadata: Metadata::new(),
        server_time: Some(Duration::from_micros(100)),
        proxy: Some(ProxyTime {
            inside: Duration::from_micros(12),
            upstream: Duration::from_micros(300),
        }),
        not_run: false,
    };
    let mut b = BytesMut::new();
    t.encode(&mut b);
    assert_eq!(
        &b[..],
        &[0x03, 0x00, 0x00, 0x00, 0x40, 0x64, 0x0c, 0x41, 0x2c]
    );
    assert_eq!(Trailers::decode(&b, &WireLimits::default()).unwrap(), t);
    // Truncated proxy times are an error, not a guess.
    assert!(Trailers::decode(&b[..7], &WireLimits::default()).is_err());
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    let limits = WireLimits {
        max_message_size: 10,
        ..WireLimits::default()
    };
    let mut b = BytesMut::new();
    put_frame_header(&mut b, FrameKind::Data, 11);
    let err = parse_frame_header(&b, &limits).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { size: 11, .. }));
}

/// Feeds `bytes` to a decoder with default limits and returns it, with no frame complete.
fn fed(bytes: &[u8]) -> FrameDecoder {
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(bytes);
    assert_eq!(dec.next_frame(), Ok(None));
    dec
}

#[test]
fn a_declared_length_reserves_nothing_before_the_bytes_arrive() {
    // HEADERS for a method, then a DATA header declaring 4 MiB and no payload: 15 bytes.
    let headers = RequestHeaders {
        method: "echo".into(),
        codec: crate::codec::Codec::Raw,
        timeout: None,
        idempotent: false,
        routing_key: None,
        metadata: Metadata::new(),
    };
    let mut b = headers.to_frame();
    put_frame_header(
        &mut b,
        FrameKind::Data,
        WireLimits::DEFAULT_MAX_MESSAGE_SIZE,
    );
    assert_eq!(b.len(), 15);
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(&b);
    assert_eq!(dec.next_frame().unwrap().unwrap().kind, FrameKind::Headers);
    assert_eq!(dec.next_frame(), Ok(None));
    assert!(
        dec.capacity() <= 64,
        "capacity {} after 15 bytes",
        dec.capacity()
    );

    // The same for every frame kind, declared at its limit, one byte of payload.
    for (kind, len) in [
        (
            FrameKind::Headers,
            WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE,
        ),
        (
            FrameKind::Trailers,
            WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE,
        ),
        (FrameKind::Hello, WireLimits::DEFAULT_MAX_CONTROL_FRAME_SIZE),
        (FrameKind::Data, WireLimits::DEFAULT_MAX_MESSAGE_SIZE),
    ] {
        let mut b = BytesMut::new();
        put_frame_header(&mut b, kind, len);
        b.extend_from_slice(&[0]);
        let dec = fed(&b);
        assert!(dec.capacity() <= 64, "{kind}: capacity {}", dec.capacity());
    }
    // An unknown kind is refused from its first byte.
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(&[0x7f, 0x80, 0x01, 0x00, 0x00]);
    assert_eq!(dec.next_frame(), Err(WireError::UnknownFrame(0x7f)));
}

#[test]
fn a_buffer_grows_with_the_bytes_and_never_past_the_frame() {
    let len = WireLimits::DEFAULT_MAX_MESSAGE_SIZE;
    let mut frame = BytesMut::new();
    put_frame_header(&mut frame, FrameKind::Data, len);
    let header = frame.len();
    frame.resize(header + len, 0xab);
    let mut dec = FrameDecoder::new(WireLimits::default());
    let mut fed = 0;
    for chunk in frame.chunks(256 * 1024) {
        dec.extend(chunk);
        fed += chunk.len();
        // At most twice what arrived, and never more than the whole frame.
        assert!(dec.capacity() <= (2 * fed).min(header + len).max(fed));
        if fed < frame.len() {
            assert_eq!(dec.next_frame(), Ok(None));
        }
    }
    let f = dec.next_frame().unwrap().unwrap();
    assert_eq!(f.payload.len(), len);
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn a_huge_timeout_is_clamped_never_truncated() {
    // 2^62 s is 2^68 * 15625 µs: truncated to 64 bits, exactly 0 (an expired deadline).
    for t in [Duration::from_secs(1 << 62), Duration::MAX] {
        let h = RequestHeaders {
            method: "m".into(),
            codec: crate::codec::Codec::Raw,
            timeout: Some(t),
            idempotent: false,
            routing_key: None,
            metadata: Metadata::new(),
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        let back = RequestHeaders::decode(&b, &WireLimits::default()).unwrap();
        assert_eq!(
            back.timeout,
            Some(Duration::from_micros(VARINT_MAX)),
            "{t:?}"
        );
        let trailers = Trailers {
            code: Code::Ok,
            message: String::new(),
            metadata: Metadata::new(),
            server_time: Some(t),
            proxy: None,
            not_run: false,
        };
        let mut b = BytesMut::new();
        trailers.encode(&mut b);
        let back = Trailers::decode(&b, &WireLimits::default()).unwrap();
        assert_eq!(back.server_time, Some(Duration::from_micros(VARINT_MAX)));
    }
}

#[test]
fn small_reads_past_a_complete_frame_still_grow_geometrically() {
    // A complete frame left in the buffer, then one byte at a time of the next: the
    // buffer must not be resized to the exact length on every byte.
    let mut b = BytesMut::new();
    put_frame(&mut b, FrameKind::Data, b"done");
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(&b);
    let mut grown = 0;
    let mut last = dec.capacity();
    for _ in 0..4096 {
        dec.extend(&[0]);
        if dec.capacity() != last {
            grown += 1;
            last = dec.capacity();
        }
    }
    assert!(grown <= 16, "{grown} reallocations for 4096 bytes");
}
#[test]
fn a_shutdown_reason_says_from_which_stream_no_call_ran() {
    for n in [0, 1, 4, 13, VARINT_MAX] {
        let reason = shutdown_reason("server shutting down", n);
        assert!(reason.starts_with(b"server shutting down; "));
        assert_eq!(shutdown_not_run_from(&reason), Some(n));
    }
    // Anything else says nothing: older servers, other closes, damaged phrases.
    for reason in [
        &b""[..],
        b"server shutting down",
        b"server dropped",
        b"not-run-from=",
        b"not-run-from=12x",
        b"not-run-from=-1",
        b"not-run-from= 4",
        b"not-run-from=99999999999999999999999",
        b"\xff not-run-from=4\xff",
    ] {
        assert_eq!(shutdown_not_run_from(reason), None, "{reason:?}");
    }
}

#[test]
fn trailers_frame_len_is_exactly_what_put_frame_appends() {
    let long = "é".repeat(MAX_STATUS_MESSAGE_LEN); // cut on a character boundary
    let mut metadata = Metadata::new();
    metadata.insert("retry-after-ms", Bytes::from_static(b"250"));
    metadata.insert("k", Bytes::from(vec![7u8; 300]));
    let times = [
        None,
        Some(Duration::ZERO),
        Some(Duration::from_micros(VARINT_MAX + 5)),
    ];
    for message in [String::new(), "no".into(), "x".repeat(100), long] {
        for server_time in times {
            for proxy in [
                None,
                Some(ProxyTime {
                    inside: Duration::from_micros(70),
                    upstream: Duration::from_secs(9),
                }),
            ] {
                for metadata in [Metadata::new(), metadata.clone()] {
                    let t = Trailers {
                        code: Code::Unavailable,
                        message: message.clone(),
                        metadata,
                        server_time,
                        proxy,
                        not_run: true,
                    };
                    let mut b = BytesMut::from(&b"before"[..]);
                    t.put_frame(&mut b);
                    assert_eq!(b.len() - 6, t.frame_len());
                    let header = parse_frame_header(&b[6..], &WireLimits::default())
                        .unwrap()
                        .unwrap();
                    assert_eq!(header.kind, FrameKind::Trailers);
                    assert_eq!(header.header_len + header.len, t.frame_len());
                    let back =
                        Trailers::decode(&b[6 + header.header_len..], &WireLimits::default())
                            .unwrap();
                    assert_eq!(back.metadata, t.metadata);
                    assert_eq!(back.proxy.is_some(), t.proxy.is_some());
                }
            }
        }
    }
}

#[test]
fn headers_frame_len_is_exactly_what_put_frame_appends() {
    let mut metadata = Metadata::new();
    metadata.insert("authorization", Bytes::from(vec![b'x'; 200]));
    for method in ["a", "kv.Get", &"m".repeat(MAX_METHOD_LEN)] {
        for timeout in [
            None,
            Some(Duration::ZERO),
            Some(Duration::from_secs(3600 * 24 * 365)),
        ] {
            for routing_key in [
                None,
                Some(Bytes::from_static(b"user-7")),
                Some(Bytes::from(vec![1u8; 700])),
            ] {
                for metadata in [Metadata::new(), metadata.clone()] {
                    let h = RequestHeaders {
                        method: method.to_string(),
                        codec: crate::codec::Codec::Raw,
                        timeout,
                        idempotent: true,
                        routing_key: routing_key.clone(),
                        metadata,
                    };
                    let mut b = BytesMut::from(&b"prefix"[..]);
                    h.put_frame(&mut b);
                    assert_eq!(b.len() - 6, h.frame_len());
                    let frame = h.to_frame();
                    assert_eq!(
                        (frame.len(), frame.capacity()),
                        (h.frame_len(), h.frame_len())
                    );
                    let header = parse_frame_header(&frame, &WireLimits::default())
                        .unwrap()
                        .unwrap();
                    assert_eq!(
                        (header.kind, header.header_len + header.len),
                        (FrameKind::Headers, frame.len())
                    );
                    let back =
                        RequestHeaders::decode(&frame[header.header_len..], &WireLimits::default())
                            .unwrap();
                    assert_eq!(back.method, h.method);
                    assert_eq!(back.routing_key, h.routing_key);
                    assert_eq!(back.metadata, h.metadata);
                }
            }
        }
    }
}

#[test]
fn headers_decoded_in_place_borrow_the_method_name_and_match_the_owned_decode() {
    let mut metadata = Metadata::new();
    metadata.insert("k", Bytes::from_static(b"v"));
    let headers = RequestHeaders {
        method: "kv.Get".into(),
        codec: crate::codec::Codec::Raw,
        timeout: Some(Duration::from_millis(250)),
        idempotent: true,
        routing_key: Some(Bytes::from_static(b"user-7")),
        metadata,
    };
    let mut dec = FrameDecoder::new(WireLimits::default());
    dec.extend(&headers.to_frame());
    let frame = dec.next_frame().unwrap().unwrap();
    let limits = WireLimits::default();
    let view = HeadersRef::decode(&frame.payload, &limits).unwrap();
    let range = frame.payload.as_ptr_range();
    assert!(range.contains(&view.method.as_ptr()), "not copied");
    assert_eq!(view.clone().into_owned(), headers);
    assert_eq!(
        RequestHeaders::decode(&frame.payload, &limits).unwrap(),
        headers
    );

    // A method name that is not UTF-8 is refused as the owned decode refuses it.
    let mut bad = headers.clone();
    bad.method = "ab".into();
    let mut payload = BytesMut::new();
    bad.encode(&mut payload);
    let at = payload.iter().position(|&b| b == b'a').unwrap();
    payload[at] = 0xff;
    assert_eq!(
        HeadersRef::decode(&payload, &limits),
        Err(WireError::InvalidUtf8("method name"))
    );
    assert_eq!(
        RequestHeaders::decode(&payload, &limits),
        Err(WireError::InvalidUtf8("method name"))
    );
}
