//! Drives the server's reading of one call stream with arbitrary frame sequences split at
//! arbitrary points, without a network.
//!
//! What it covers: the bytes a client can put on a call stream, built from a structured
//! description (well-formed HEADERS, DATA, TRAILERS and HELLO frames with arbitrary
//! fields, frames of any kind byte with any payload, and raw junk), fed to a
//! [`FrameDecoder`] in arbitrary chunks as quinn would hand them over; every frame goes
//! through the same decoders the server uses (HEADERS, then DATA bodies decoded with the
//! call's codec into a [`Value`] or a postcard type), following the server's rules for one
//! call (`server/call.rs`: the first frame must be HEADERS; unary and server-streaming
//! methods take exactly one DATA then the end of the stream; streaming requests take DATA
//! until the end of the stream, anything else ends the call).
//!
//! What it checks: nothing panics; the frames and the verdict do not depend on how the
//! bytes were split; the decoder's buffer never holds more than twice the most bytes it
//! was ever given (a declared length costs nothing); frames built by the encoders come
//! back byte for byte, and decoding them and encoding again gives the same bytes.
//!
//! What it does not cover: quinn, tokio and the I/O around the decoders (resets,
//! STOP_SENDING, deadlines, 0-RTT holding, flow control), which the tests in
//! `core/tests/hostile.rs` exercise over real QUIC. The call rules above are restated here
//! from the server's code, not called from it.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use meridian::codec::{decode_message, Codec, DecodeLimits, Value};
use meridian::wire::{
    put_frame, Code, FrameDecoder, FrameKind, Hello, Metadata, MethodInfo, MethodKind, ProxyTime,
    RequestHeaders, Trailers, WireError, WireLimits,
};
use std::time::Duration;

/// The shape of the method the call names, which decides what the server reads.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Shape {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Bidi,
}

#[derive(Arbitrary, Debug)]
struct ArbHeaders {
    method: String,
    codec: u8,
    timeout_us: Option<u64>,
    idempotent: bool,
    routing_key: Option<Vec<u8>>,
    metadata: Vec<(String, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct ArbTrailers {
    code: u8,
    message: String,
    metadata: Vec<(String, Vec<u8>)>,
    server_time_us: Option<u64>,
    proxy_us: Option<(u64, u64)>,
    not_run: bool,
}

#[derive(Arbitrary, Debug)]
struct ArbHello {
    version: u8,
    server_id: String,
    region: String,
    load: u64,
    methods: Vec<(String, u8, bool)>,
}

/// One piece of the stream.
#[derive(Arbitrary, Debug)]
enum Piece {
    /// A well-formed HEADERS frame.
    Headers(ArbHeaders),
    /// A DATA frame with arbitrary payload bytes.
    Data(Vec<u8>),
    /// A DATA frame holding a well-formed Value built from the input.
    DataValue(Vec<u8>),
    /// A well-formed TRAILERS frame (a client must not send one).
    Trailers(ArbTrailers),
    /// A well-formed HELLO frame (it belongs on the server's control stream only).
    Hello(ArbHello),
    /// A frame of any kind byte, correctly framed, with any payload.
    Framed { kind: u8, payload: Vec<u8> },
    /// A frame header alone, declaring any length.
    HeaderOnly { kind: u8, len: u64 },
    /// Raw bytes.
    Junk(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    shape: Shape,
    /// Use small limits, so the limit checks are reached with small inputs.
    small_limits: bool,
    pieces: Vec<Piece>,
    /// Sizes of the chunks the bytes arrive in (0 is read as 1).
    splits: Vec<u16>,
}

fn metadata(entries: &[(String, Vec<u8>)]) -> Metadata {
    let mut m = Metadata::new();
    for (k, v) in entries {
        m.insert(k.clone(), Bytes::copy_from_slice(v));
    }
    m
}

const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A Value derived from bytes: a small interpreter that builds nested lists and maps.
fn value_from(bytes: &[u8]) -> Value {
    let mut stack: Vec<Vec<Value>> = vec![Vec::new()];
    for (i, &b) in bytes.iter().enumerate() {
        let depth = stack.len();
        let top = stack.last_mut().expect("stack never empty");
        match b % 10 {
            0 => top.push(Value::Null),
            1 => top.push(Value::Bool(b & 0x80 != 0)),
            2 => top.push(Value::Int(i64::from(b as i8) * (i as i64 + 1) * 7919)),
            3 => top.push(Value::Float(f64::from(b) / 3.0)),
            4 => top.push(Value::Str(format!("s{i}"))),
            5 => top.push(Value::Bytes(vec![b; i % 5])),
            6 if depth < 80 => stack.push(Vec::new()),
            7 | 8 if depth > 1 => {
                let items = stack.pop().expect("checked");
                let v = if b % 10 == 7 {
                    Value::List(items)
                } else {
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                };
                stack.last_mut().expect("stack never empty").push(v);
            }
            _ => top.push(Value::Int(i64::from(b) << (i % 56))),
        }
    }
    while stack.len() > 1 {
        let items = stack.pop().expect("checked");
        stack
            .last_mut()
            .expect("stack never empty")
            .push(Value::List(items));
    }
    Value::List(stack.pop().expect("stack never empty"))
}

/// What the encoders produced, to compare with what comes out of the decoder.
enum Expect {
    /// A frame with exactly this kind and payload.
    Frame(FrameKind, Bytes),
    /// Bytes whose framing is not known here.
    Unknown,
}

fn build(pieces: &[Piece]) -> (Vec<u8>, Vec<Expect>) {
    let mut out = BytesMut::new();
    let mut expect = Vec::new();
    for p in pieces {
        let start = out.len();
        match p {
            Piece::Headers(h) => {
                let codec = Codec::from_u8(h.codec % 3).expect("0..3 are codecs");
                let headers = RequestHeaders {
                    method: h.method.clone(),
                    codec,
                    timeout: h.timeout_us.map(Duration::from_micros),
                    idempotent: h.idempotent,
                    routing_key: h.routing_key.as_deref().map(Bytes::copy_from_slice),
                    metadata: metadata(&h.metadata),
                };
                out.extend_from_slice(&headers.to_frame());
            }
            Piece::Data(payload) => put_frame(&mut out, FrameKind::Data, payload),
            Piece::DataValue(seed) => {
                put_frame(&mut out, FrameKind::Data, &value_from(seed).to_bytes())
            }
            Piece::Trailers(t) => {
                let trailers = Trailers {
                    code: CODES[usize::from(t.code) % CODES.len()],
                    message: t.message.clone(),
                    metadata: metadata(&t.metadata),
                    server_time: t.server_time_us.map(Duration::from_micros),
                    proxy: t.proxy_us.map(|(i, u)| ProxyTime {
                        inside: Duration::from_micros(i),
                        upstream: Duration::from_micros(u),
                    }),
                    not_run: t.not_run,
                };
                trailers.put_frame(&mut out);
            }
            Piece::Hello(h) => {
                let kinds = [
                    MethodKind::Unary,
                    MethodKind::ServerStreaming,
                    MethodKind::ClientStreaming,
                    MethodKind::Bidi,
                ];
                let hello = Hello {
                    version: h.version,
                    server_id: h.server_id.clone(),
                    region: h.region.clone(),
                    load: h.load,
                    methods: h
                        .methods
                        .iter()
                        .map(|(name, kind, idempotent)| MethodInfo {
                            name: name.clone(),
                            kind: kinds[usize::from(*kind) % 4],
                            idempotent: *idempotent,
                        })
                        .collect(),
                };
                out.extend_from_slice(&hello.to_frame());
            }
            Piece::Framed { kind, payload } => {
                out.extend_from_slice(&[*kind]);
                meridian::wire::put_varint(&mut out, payload.len() as u64);
                out.extend_from_slice(payload);
                expect.push(Expect::Unknown);
                continue;
            }
            Piece::HeaderOnly { kind, len } => {
                out.extend_from_slice(&[*kind]);
                meridian::wire::put_varint(&mut out, *len);
                expect.push(Expect::Unknown);
                continue;
            }
            Piece::Junk(bytes) => {
                out.extend_from_slice(bytes);
                expect.push(Expect::Unknown);
                continue;
            }
        }
        // A frame from an encoder: kind byte, length, payload.
        let frame = &out[start..];
        let kind = FrameKind::from_u8(frame[0]).expect("encoders write known kinds");
        let (len, n) = meridian::wire::peek_varint(&frame[1..]).expect("a whole varint");
        assert_eq!(
            1 + n + len as usize,
            frame.len(),
            "frame length field is wrong"
        );
        expect.push(Expect::Frame(kind, Bytes::copy_from_slice(&frame[1 + n..])));
    }
    (out.to_vec(), expect)
}

/// How the server's reading of the call ends.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The stream ended before any frame.
    Empty,
    /// The call would reach its handler with these request bodies.
    Run(usize),
    /// The call is refused with this status code.
    Refused(Code),
}

/// The decoder's memory follows the bytes it was given, never a declared length.
fn check_memory(dec: &FrameDecoder, peak: usize) {
    assert!(
        dec.capacity() <= 2 * peak + 64,
        "decoder holds {} bytes of memory for at most {} bytes given",
        dec.capacity(),
        peak
    );
}

/// Splits `bytes` into frames, delivering them in chunks of the given sizes, and checks the
/// decoder's memory as it goes. Returns the frames and the error that stopped it, if any.
fn frames(
    bytes: &[u8],
    splits: &[u16],
    limits: WireLimits,
) -> (Vec<(FrameKind, Bytes)>, Option<WireError>) {
    let mut dec = FrameDecoder::new(limits);
    let mut got = Vec::new();
    let mut rest = bytes;
    let mut sizes = splits.iter().copied().cycle();
    let mut peak = 0usize;
    while !rest.is_empty() {
        let n = if splits.is_empty() {
            rest.len()
        } else {
            usize::from(sizes.next().expect("cycle of a non-empty list")).clamp(1, rest.len())
        };
        dec.extend(&rest[..n]);
        rest = &rest[n..];
        peak = peak.max(dec.buffered());
        check_memory(&dec, peak);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => got.push((f.kind, f.payload)),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
        // Taking frames (or finding one incomplete) must not reserve anything either.
        check_memory(&dec, peak);
    }
    if dec.buffered() != 0 {
        // What the server does at the end of the stream with a partial frame.
        let e = dec.next_frame().err().unwrap_or(WireError::Truncated);
        return (got, Some(e));
    }
    (got, None)
}

fn decode_body(codec: Codec, body: &[u8], limits: &DecodeLimits) {
    match codec {
        Codec::Raw => {}
        Codec::Value => {
            if let Ok(v) = Value::decode(body, limits) {
                // Canonical: re-encoding gives back the input.
                assert_eq!(v.to_bytes(), body, "Value encoding is not canonical");
            }
        }
        Codec::Postcard => {
            let _ = decode_message::<(u32, String, Vec<u8>, Option<i64>)>(codec, body, limits);
            let _ = decode_message::<Vec<String>>(codec, body, limits);
        }
    }
}

/// The server's rules for one call stream, as in `server/call.rs` and `server/streams.rs`.
fn serve(
    shape: Shape,
    frames: &[(FrameKind, Bytes)],
    err: Option<&WireError>,
    limits: &WireLimits,
    value_limits: &DecodeLimits,
) -> Verdict {
    let wire_status = |e: &WireError| match e {
        WireError::TooLarge { .. } => Code::ResourceExhausted,
        _ => Code::Internal,
    };
    let Some((kind, payload)) = frames.first() else {
        return match err {
            Some(e) => Verdict::Refused(wire_status(e)),
            None => Verdict::Empty,
        };
    };
    if *kind != FrameKind::Headers {
        return Verdict::Refused(Code::InvalidArgument);
    }
    let headers = match RequestHeaders::decode(payload, limits) {
        Ok(h) => h,
        Err(WireError::TooLarge { .. }) => return Verdict::Refused(Code::ResourceExhausted),
        Err(_) => return Verdict::Refused(Code::InvalidArgument),
    };
    let body = &frames[1..];
    match shape {
        Shape::Unary | Shape::ServerStreaming => match body {
            [] => Verdict::Refused(err.map_or(Code::InvalidArgument, wire_status)),
            [(FrameKind::Data, msg)] => match err {
                Some(e) => Verdict::Refused(wire_status(e)),
                None => {
                    decode_body(headers.codec, msg, value_limits);
                    Verdict::Run(1)
                }
            },
            // Another frame after the message, or a first frame that is not DATA.
            _ => Verdict::Refused(Code::InvalidArgument),
        },
        Shape::ClientStreaming | Shape::Bidi => {
            // The handler reads messages until the end, a non-DATA frame or an error.
            let mut n = 0;
            for (kind, msg) in body {
                if *kind != FrameKind::Data {
                    return Verdict::Refused(Code::InvalidArgument);
                }
                decode_body(headers.codec, msg, value_limits);
                n += 1;
            }
            match err {
                Some(e) => Verdict::Refused(wire_status(e)),
                None => Verdict::Run(n),
            }
        }
    }
}

/// Checks that control frames built by the encoders decode, and encode back to the same
/// bytes.
fn check_round_trip(kind: FrameKind, payload: &Bytes, limits: &WireLimits) {
    match kind {
        FrameKind::Headers => {
            if let Ok(h) = RequestHeaders::decode(payload, limits) {
                let again = h.to_frame();
                let (len, n) = meridian::wire::peek_varint(&again[1..]).expect("varint");
                assert_eq!(len as usize, payload.len());
                assert_eq!(&again[1 + n..], &payload[..], "HEADERS do not round-trip");
            }
        }
        FrameKind::Trailers => {
            if let Ok(t) = Trailers::decode(payload, limits) {
                let mut again = BytesMut::new();
                t.encode(&mut again);
                assert_eq!(&again[..], &payload[..], "TRAILERS do not round-trip");
            }
        }
        FrameKind::Hello => {
            if let Ok(h) = Hello::decode(payload) {
                let again = h.to_frame();
                let (_, n) = meridian::wire::peek_varint(&again[1..]).expect("varint");
                assert_eq!(&again[1 + n..], &payload[..], "HELLO does not round-trip");
            }
        }
        FrameKind::Data => {}
    }
}

fuzz_target!(|input: Input| {
    let (limits, value_limits) = if input.small_limits {
        (
            WireLimits {
                max_message_size: 512,
                max_metadata_size: 256,
                max_control_frame_size: 384,
            },
            DecodeLimits {
                max_depth: 8,
                max_size: 512,
                max_decoded_size: 2048,
            },
        )
    } else {
        (WireLimits::default(), DecodeLimits::default())
    };
    let (bytes, expect) = build(&input.pieces);

    let (whole, whole_err) = frames(&bytes, &[], limits);
    let (split, split_err) = frames(&bytes, &input.splits, limits);
    assert_eq!(whole, split, "frames depend on how the bytes were split");
    assert_eq!(
        whole_err, split_err,
        "errors depend on how the bytes were split"
    );

    // While every piece so far came from an encoder, the frames are exactly those pieces.
    for (e, (kind, payload)) in expect.iter().zip(&whole) {
        match e {
            Expect::Frame(k, p) => {
                assert_eq!(k, kind, "frame kind changed");
                assert_eq!(p, payload, "frame payload changed");
                check_round_trip(*kind, payload, &limits);
            }
            Expect::Unknown => break,
        }
    }

    let a = serve(
        input.shape,
        &whole,
        whole_err.as_ref(),
        &limits,
        &value_limits,
    );
    let b = serve(
        input.shape,
        &split,
        split_err.as_ref(),
        &limits,
        &value_limits,
    );
    assert_eq!(a, b);
});
