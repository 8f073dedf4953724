//! Each call kind end to end, typed, `Value` and raw, with metadata.

use std::time::Duration;

use meridian::{Code, Codec, Value};

use crate::common::{Add, Fixture};

#[tokio::test]
async fn unary_typed_with_metadata_both_ways() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    assert_eq!(ch.unary::<_, i64>("add", &(10i64, 5i64)).await.unwrap(), 15);

    let resp = ch
        .call("add_struct")
        .unary::<_, i64>(&Add { a: 2, b: 3 })
        .await
        .unwrap();
    assert_eq!(*resp.get_ref(), 5);
    assert_eq!(resp.metadata().get_str("x-handled-by"), Some("add_struct"));
    assert!(resp.server_time().is_some());

    let seen: Option<String> = ch
        .call("echo_meta")
        .metadata("x-tenant", "blue")
        .unary(&"x-tenant".to_string())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.as_deref(), Some("blue"));
}

#[tokio::test]
async fn value_calls_reach_typed_handlers() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    // What a Python client sends for add(10, 5): a list of two ints.
    let args = Value::List(vec![Value::Int(10), Value::Int(5)]);
    assert_eq!(ch.call_value("add", &args).await.unwrap(), Value::Int(15));

    // A struct handler accepts a map with its field names.
    let args = Value::Map(vec![
        (Value::from("a"), Value::Int(7)),
        (Value::from("b"), Value::Int(8)),
    ]);
    assert_eq!(
        ch.call_value("add_struct", &args).await.unwrap(),
        Value::Int(15)
    );

    // A Value handler gets nested values back intact.
    let nested = Value::Map(vec![(
        Value::from("k"),
        Value::List(vec![
            Value::Null,
            Value::Bool(true),
            Value::Float(1.5),
            Value::Bytes(vec![0, 255]),
        ]),
    )]);
    assert_eq!(ch.call_value("value_echo", &nested).await.unwrap(), nested);

    // A wrongly typed Value argument is INVALID_ARGUMENT, not a crash.
    let bad = Value::List(vec![Value::from("ten"), Value::Int(5)]);
    let err = ch.call_value("add", &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Raw bytes sent to a typed handler are refused clearly.
    let err = ch
        .call("add")
        .raw()
        .unary(&bytes::Bytes::from_static(b"\x01"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let _ = Codec::Raw;
}

#[tokio::test]
async fn unary_raw_bytes() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let out = ch
        .call("raw_reverse")
        .raw()
        .unary(&bytes::Bytes::from_static(b"abc"))
        .await
        .unwrap();
    assert_eq!(&out.into_inner()[..], b"cba");
}

#[tokio::test]
async fn server_streaming_delivers_every_message_in_order() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let mut stream = ch
        .call("count")
        .server_streaming::<_, u32>(&100u32)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(v) = stream.message().await.unwrap() {
        got.push(v);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(stream.server_time().is_some());
}

#[tokio::test]
async fn client_streaming_sums_requests() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let (mut sink, resp) = ch.call("sum").client_streaming::<i64, i64>().await.unwrap();
    for i in 1..=100 {
        sink.send(&i).await.unwrap();
    }
    sink.finish();
    assert_eq!(resp.response().await.unwrap().into_inner(), 5050);
}

/// A server that answers a client-streaming call before reading every request: later
/// sends are discarded (not errors), and the call's status is the server's answer.
async fn answered_early(method: &'static str) -> Result<i64, meridian::Status> {
    let fx = Fixture::start_with(|b| {
        b.client_streaming(
            "refuse_second",
            |mut reqs: meridian::RequestStream<i64>, _| async move {
                reqs.message().await?;
                reqs.message().await?;
                Err::<i64, _>(meridian::Status::failed_precondition("one is enough"))
            },
        )
        .client_streaming(
            "first_only",
            |mut reqs: meridian::RequestStream<i64>, _| async move {
                Ok(reqs.message().await?.unwrap_or(-1))
            },
        )
    })
    .await;
    let ch = fx.channel().await;
    let (mut sink, resp) = ch
        .call(method)
        .client_streaming::<i64, i64>()
        .await
        .unwrap();
    sink.send(&7).await.unwrap();
    sink.send(&8).await.unwrap();
    let answer = tokio::spawn(resp.response());
    // Go on sending until the server's STOP_SENDING arrives: every send succeeds.
    let mut sends = 0;
    while !sink.closed_by_server() {
        assert!(sends < 2_000, "the server never stopped the request stream");
        sink.send(&9)
            .await
            .expect("a send after the server answered is not an error");
        sends += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Once closed, sends are discarded at once.
    sink.send(&10).await.unwrap();
    assert!(sink.closed_by_server());
    sink.finish();
    answer.await.unwrap().map(|r| r.into_inner())
}

#[tokio::test]
async fn client_streaming_answered_early_with_an_error_reports_that_error() {
    let status = answered_early("refuse_second").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "one is enough");
}

#[tokio::test]
async fn client_streaming_answered_early_with_a_value_returns_it() {
    assert_eq!(answered_early("first_only").await.unwrap(), 7);
}

#[tokio::test]
async fn bidi_streams_both_ways_interleaved() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let (mut sink, mut stream) = ch.call("double").bidi::<i64, i64>().await.unwrap();
    for i in 0..20 {
        sink.send(&i).await.unwrap();
        // Each answer arrives before the next request is sent: a true conversation.
        assert_eq!(stream.message().await.unwrap(), Some(i * 2));
    }
    sink.finish();
    assert_eq!(stream.message().await.unwrap(), None);
}

#[tokio::test]
async fn handler_errors_arrive_as_status() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let err = ch
        .unary::<_, ()>("fail", &"no such key".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such key");
    let err = ch
        .unary::<_, i64>("add", &(i64::MAX, 1i64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}

/// Bytes already encoded by someone else (what a gateway forwards) go out as a raw call with
/// the codec byte they were encoded with, set by the ordinary `codec` option: the typed
/// handler decodes them, and the answer comes back in the same codec, still undecoded.
#[tokio::test]
async fn raw_calls_announce_the_codec_they_are_given() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    let args = Value::List(vec![Value::Int(20), Value::Int(22)]);
    let out = ch
        .call("add")
        .codec(Codec::Value)
        .raw()
        .unary(&bytes::Bytes::from(args.to_bytes()))
        .await
        .unwrap()
        .into_inner();
    let limits = meridian::codec::DecodeLimits::default();
    assert_eq!(Value::decode(&out, &limits).unwrap(), Value::Int(42));
    // Without the option the same bytes are announced as raw, which a typed handler refuses.
    let err = ch
        .call("add")
        .raw()
        .unary(&bytes::Bytes::from(args.to_bytes()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn unary_call_to_a_streaming_method_says_so() {
    let fx = Fixture::start().await;
    let ch = fx.channel().await;
    assert!(ch
        .wait_server_info(std::time::Duration::from_secs(5))
        .await
        .is_some());
    // Three responses, and none: both are the wrong kind of call, named as such.
    for n in [3u32, 0] {
        let err = ch.unary::<_, u32>("count", &n).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains("server-streaming"), "{err}");
    }
    // The channel keeps working.
    assert_eq!(ch.unary::<_, i64>("add", &(1i64, 2i64)).await.unwrap(), 3);
}
