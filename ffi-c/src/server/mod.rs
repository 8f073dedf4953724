//! The server side: a server handle, handler callbacks per method, the request a handler
//! reads and the reply it fills, start and graceful stop.

mod handle;
mod handler;
mod reply;
mod request;

pub use handle::*;
pub use handler::*;
pub use reply::*;
pub use request::*;
