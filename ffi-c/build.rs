//! Gives the shared library an ELF SONAME, so the dynamic linker can keep two ABI versions
//! apart: `libmeridian.so.MAJOR` from 1.0 on, `libmeridian.so.0.MINOR` before (a 0.x minor
//! release may break the interface, as cargo-c also assumes). `scripts/install_c.sh`
//! installs the file under that name with the usual symbolic links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets the version");
    let soname = if major == "0" {
        format!("libmeridian.so.0.{minor}")
    } else {
        format!("libmeridian.so.{major}")
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "freebsd" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
