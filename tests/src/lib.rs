//! End-to-end suites that span crates live here as they arrive (Python and C suites sit beside this crate).
