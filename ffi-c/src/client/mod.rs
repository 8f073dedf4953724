//! The client side: configuration, the client handle, call options, unary calls
//! (blocking and asynchronous), responses, server-streaming results, and client-streaming
//! and bidirectional calls.

mod call;
mod config;
mod handle;
mod options;
mod response;
mod stream;
mod unary;

pub use call::*;
pub use config::*;
pub use handle::*;
pub use options::*;
pub use response::*;
pub use stream::*;
pub use unary::*;
