//! The multi-region demo (the README's main command): three regions on loopback behind
//! emulated WAN links, one region client that finds the nearest, routes by method and
//! key, and survives an outage. The demo itself lives in `meridian::testing::demo`, shared
//! with the `meridian demo` command.
//!
//! Run: `cargo run --release -p meridian-examples --bin regions_demo` (add `--quick` for a
//! 4-second run without the recovery part).

use meridian::testing::demo::{run, DemoError, DemoOptions};

#[tokio::main]
async fn main() -> Result<(), DemoError> {
    let options = DemoOptions {
        quick: std::env::args().skip(1).any(|a| a == "--quick"),
    };
    run(&mut std::io::stdout().lock(), &options).await
}
