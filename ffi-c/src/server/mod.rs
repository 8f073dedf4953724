//! The server side: a server handle, handler callbacks per method, the request a handler
//! reads (and who sent it) and the reply it fills (now, or later from any thread), start, certificate reload and graceful
//! stop.

mod deferred;
mod handle;
mod handler;
mod peer;
mod reply;
mod request;

pub use deferred::*;
pub use handle::*;
pub use handler::*;
pub use peer::*;
pub use reply::*;
pub use request::*;
