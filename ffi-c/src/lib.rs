//! C ABI for Meridian. The exported API arrives with the C ABI issue; this crate only builds for now.
