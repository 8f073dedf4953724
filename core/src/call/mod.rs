//! What one call needs on either side, client or server: frame I/O on its stream, message
//! encoding, reset codes and panic containment.

pub(crate) mod budget;
mod frames;
mod lazy_timeout;
mod messages;
mod payload;
mod reset;
mod retry;
mod unwind;

pub(crate) use frames::{closed_before_run, data_chunks, FramedRecv, RecvError, INLINE_MESSAGE};
pub(crate) use lazy_timeout::ready_or_timeout;
pub(crate) use messages::{decode_raw, DecodeFn, EncodeFn};
pub use payload::{DecodeAs, EncodeAs, PayloadStyle, Raw, Typed};
pub(crate) use reset::{reset_for_status, status_for_reset};
pub use retry::RetryPolicy;
pub(crate) use retry::{is_server_failure, may_send_again, may_send_again_before};
pub(crate) use unwind::CatchUnwind;
