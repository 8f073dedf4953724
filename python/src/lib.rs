//! Python bindings for Meridian. The PyO3 module arrives with the Python issue; this crate only builds for now.
