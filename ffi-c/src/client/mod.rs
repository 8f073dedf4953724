//! The client side: configuration, the client handle, call options, unary calls
//! (blocking and asynchronous), responses, and server-streaming results.

mod config;
mod handle;
mod options;
mod response;
mod stream;
mod unary;

pub use config::*;
pub use handle::*;
pub use options::*;
pub use response::*;
pub use stream::*;
pub use unary::*;
