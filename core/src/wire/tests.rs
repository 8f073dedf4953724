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
