//! The committed header must equal a fresh cbindgen run, so the C interface cannot drift
//! from the Rust code. `MERIDIAN_BLESS=1 cargo test -p meridian-ffi --test header`
//! rewrites `include/meridian.h` after an intended change.

use std::path::Path;

#[test]
fn committed_header_matches_a_fresh_generation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = dir.join("include/meridian.h");
    if std::env::var_os("MERIDIAN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/meridian.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "ffi-c/include/meridian.h differs from what cbindgen generates from ffi-c/src; \
         run `MERIDIAN_BLESS=1 cargo test -p meridian-ffi --test header` and commit the result"
    );
}
