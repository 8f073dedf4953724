//! [`Attach`]: a value kept alive by an open stream until its call ends.

use std::any::Any;

use super::intercept::Intercepted;
use super::streaming::{RequestSink, ResponseFuture, Streaming};

/// An opened streaming call that can keep a value until the call ends (its TRAILERS or
/// failure arrive, or the caller drops it). The region client attaches its claim on the
/// server this way, so an open stream counts as load on that server for as long as it
/// runs.
pub(crate) trait Attach {
    /// Keeps `value` until the call ends.
    fn attach(&mut self, value: Box<dyn Any + Send + Sync>);

    /// Tells the interceptors that let the call through how it ended, when it ends.
    fn attach_end(&mut self, end: Intercepted);
}

impl<T> Attach for Streaming<T> {
    fn attach(&mut self, value: Box<dyn Any + Send + Sync>) {
        self.recv.hold = Some(value);
    }

    fn attach_end(&mut self, end: Intercepted) {
        self.recv.end = Some(end);
    }
}

impl<Req, Resp> Attach for (RequestSink<Req>, ResponseFuture<Resp>) {
    fn attach(&mut self, value: Box<dyn Any + Send + Sync>) {
        self.1.recv.hold = Some(value);
    }

    fn attach_end(&mut self, end: Intercepted) {
        self.1.recv.end = Some(end);
    }
}

impl<Req, Resp> Attach for (RequestSink<Req>, Streaming<Resp>) {
    fn attach(&mut self, value: Box<dyn Any + Send + Sync>) {
        self.1.recv.hold = Some(value);
    }

    fn attach_end(&mut self, end: Intercepted) {
        self.1.recv.end = Some(end);
    }
}
