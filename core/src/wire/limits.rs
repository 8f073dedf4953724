//! The receiver's size limits on peer input.

/// Bounds applied to everything decoded from a peer.
///
/// All checks happen before allocation: a peer that declares a 1 GiB frame is refused after
/// reading its first nine bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest DATA payload (one message), in bytes. Default 4 MiB.
    pub max_message_size: usize,
    /// Largest metadata block (sum of key and value lengths) in HEADERS or TRAILERS.
    /// Default 16 KiB.
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
