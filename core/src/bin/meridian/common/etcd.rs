//! etcd flags, present in every build; a build without the `etcd` feature refuses them.

use clap::Args;
#[cfg(feature = "etcd")]
use meridian::region::{EtcdConfig, EtcdError};

use super::errors::CliError;
#[cfg(feature = "etcd")]
use super::errors::Exit;

/// The key prefix servers register under in etcd by default.
#[cfg(feature = "etcd")]
pub const ETCD_DEFAULT_PREFIX: &str = EtcdConfig::DEFAULT_PREFIX;
/// The key prefix servers register under in etcd by default (the library's, which a build
/// without etcd does not compile).
#[cfg(not(feature = "etcd"))]
pub const ETCD_DEFAULT_PREFIX: &str = "/meridian/";

/// Flags that find servers in an etcd registry (where `meridian serve --etcd` registers).
/// They exist in every build, so scripts see the same flags; a build without the `etcd`
/// feature refuses them with exit code 3 and says how to get a build that has them.
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// Find the servers registered in etcd at these client URLs (comma-separated or
    /// repeated), e.g. http://127.0.0.1:2379; membership is followed live.
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix servers register under in etcd.
    #[arg(long, value_name = "PREFIX", default_value = ETCD_DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

/// The error of a build without the `etcd` feature that is asked to use etcd.
#[cfg(not(feature = "etcd"))]
pub fn etcd_not_built(what: &str) -> CliError {
    CliError::config(format!(
        "{what} needs etcd support, which this `meridian` was built without: \
         rebuild with `cargo install --path core --features cli,etcd` \
         (the build needs protoc and the protobuf include files: \
         apt-get install protobuf-compiler libprotobuf-dev)"
    ))
}

#[cfg(feature = "etcd")]
impl EtcdArgs {
    /// The etcd settings these flags describe, if `--etcd` was given.
    pub fn config(&self) -> Option<EtcdConfig> {
        (!self.etcd.is_empty())
            .then(|| EtcdConfig::new(self.etcd.clone()).prefix(self.etcd_prefix.clone()))
    }
}

/// An etcd failure: configuration (exit 3) or an unreachable etcd (exit 4).
#[cfg(feature = "etcd")]
pub fn etcd_error(e: &EtcdError) -> CliError {
    match e {
        EtcdError::Config(_) => CliError::config(e.to_string()),
        _ => CliError::new(Exit::Unreachable, e.to_string()),
    }
}
