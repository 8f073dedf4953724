//! Unit tests of the wire format.

use std::time::Duration;

use bytes::BytesMut;

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
