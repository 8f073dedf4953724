//! End-to-end RPC behaviour over real QUIC connections on loopback, one module per
//! behaviour.

#[path = "rpc/common.rs"]
mod common;

#[path = "rpc/bad_input.rs"]
mod bad_input;
#[path = "rpc/call_kinds.rs"]
mod call_kinds;
#[path = "rpc/cancellation.rs"]
mod cancellation;
#[path = "rpc/client_intercept.rs"]
mod client_intercept;
#[path = "rpc/concurrency.rs"]
mod concurrency;
#[path = "rpc/extension.rs"]
mod extension;
#[path = "rpc/graceful_stop.rs"]
mod graceful_stop;
#[path = "rpc/hello_shutdown.rs"]
mod hello_shutdown;
#[path = "rpc/intercept.rs"]
mod intercept;
#[path = "rpc/link_emulator.rs"]
mod link_emulator;
#[path = "rpc/tls.rs"]
mod tls;
#[path = "rpc/zero_rtt.rs"]
mod zero_rtt;
