//! The receiver's size limits on peer input.

/// Bounds applied to everything decoded from a peer.
///
/// All checks happen before allocation: a peer that declares a 1 GiB frame is refused after
/// reading its first nine bytes, and one that declares a frame within the limits gets a
/// buffer that grows with the bytes it actually sends, never with the declared length.
/// Limits are inclusive: a size equal to its limit is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest DATA payload (one message), in bytes. Default 4 MiB.
    pub max_message_size: usize,
    /// Largest metadata block in HEADERS or TRAILERS: the sum over its entries of key and
    /// value lengths plus [`METADATA_ENTRY_OVERHEAD`](super::METADATA_ENTRY_OVERHEAD)
    /// (32 bytes) each, see [`Metadata::byte_size`](super::Metadata::byte_size); checked by
    /// receivers and by senders. Default 16 KiB (at most 512 entries).
    pub max_metadata_size: usize,
    /// Largest HEADERS, TRAILERS or HELLO frame. Default 64 KiB.
    pub max_control_frame_size: usize,
}

impl WireLimits {
    /// Default largest message: 4 MiB, as gRPC.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
    /// Default largest metadata block: 16 KiB.
    pub const DEFAULT_MAX_METADATA_SIZE: usize = 16 * 1024;
    /// Default largest control frame: 64 KiB.
    pub const DEFAULT_MAX_CONTROL_FRAME_SIZE: usize = 64 * 1024;
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_metadata_size: Self::DEFAULT_MAX_METADATA_SIZE,
            max_control_frame_size: Self::DEFAULT_MAX_CONTROL_FRAME_SIZE,
        }
    }
}
