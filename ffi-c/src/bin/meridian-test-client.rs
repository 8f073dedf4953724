//! A Rust Meridian client for the C tests: calls the C test server (`tests/c/c_server.c`)
//! and checks its answers, so Rust -> C is covered as well as C -> Rust.
//!
//! `meridian-test-client PORT CA_PEM` exits 0 when every check passed.

use std::time::Duration;

use mcore::{Channel, ClientTls, Code, Codec, Value};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: meridian-test-client PORT CA_PEM")?
        .parse()?;
    let ca = args
        .next()
        .ok_or("usage: meridian-test-client PORT CA_PEM")?;
    let tls = ClientTls::with_roots_pem_file(ca)?;
    let channel = Channel::builder(([127, 0, 0, 1], port).into(), tls)
        .connect()
        .await?;

    // Raw bytes through a C handler, with its trailer.
    let r = channel
        .call("echo")
        .raw()
        .unary(&bytes::Bytes::from_static(b"from rust"))
        .await?;
    assert_eq!(&r.get_ref()[..], b"from rust");
    assert_eq!(r.metadata().get_str("handled-by"), Some("c"));

    // Typed Rust values reach a C JSON handler through the Value codec.
    let sum: i64 = channel
        .call("add")
        .codec(Codec::Value)
        .unary(&(10i64, 5i64))
        .await?
        .into_inner();
    assert_eq!(sum, 15);
    let v: Value = channel
        .call_value("add", &Value::List(vec![1.into(), 2.into()]))
        .await?;
    assert_eq!(v, Value::Int(3));

    // Statuses set by C handlers.
    let e = channel
        .call("fail")
        .raw()
        .unary(&bytes::Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "no such thing");
    let e = channel
        .call("bad_reply")
        .codec(Codec::Value)
        .unary::<Value, Value>(&Value::Null)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    let e = channel
        .call("slow")
        .timeout(Duration::from_millis(100))
        .raw()
        .unary(&bytes::Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);

    // Server streaming from C.
    let mut s = channel
        .call("count")
        .raw()
        .server_streaming(&bytes::Bytes::from_static(b"3"))
        .await?;
    let mut got = Vec::new();
    while let Some(m) = s.message().await? {
        got.push(String::from_utf8(m.to_vec())?);
    }
    assert_eq!(got, ["0", "1", "2"]);
    println!("meridian-test-client: Rust client -> C server: all checks passed");
    Ok(())
}
