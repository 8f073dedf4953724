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

/// The version macros in the header are literals (cbindgen cannot evaluate `env!`), so they
/// are checked here against the crate's version: a release that bumps Cargo.toml and
/// forgets the header fails this test.
#[test]
fn header_version_macros_match_the_crate_version() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/meridian.h"))
            .expect("read include/meridian.h");
    let define = |name: &str| -> String {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("the header defines no {name}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        define("MERIDIAN_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        define("MERIDIAN_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        define("MERIDIAN_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
}
