//! etcd flags, present in every build; a build without the `etcd` feature refuses them.

use clap::Args;
#[cfg(feature = "etcd")]
use meridian::region::{EtcdConfig, EtcdError, EtcdRegistration, ServerRecord};

use super::errors::CliError;
#[cfg(feature = "etcd")]
use super::errors::CliResult;
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

/// An etcd failure: configuration (exit 3) or an unreachable etcd (exit 4), e.g.
/// `cannot reach etcd at http://127.0.0.1:2379: connection refused; is etcd running?`.
#[cfg(feature = "etcd")]
pub fn etcd_error(e: &EtcdError, endpoints: &[String]) -> CliError {
    match e {
        EtcdError::Config(_) => CliError::config(e.to_string()),
        _ if e.is_unreachable() => CliError::new(
            Exit::Unreachable,
            format!(
                "cannot reach etcd at {}: {}; is etcd running?",
                endpoints.join(", "),
                e.cause()
            ),
        ),
        _ => CliError::new(Exit::Unreachable, e.to_string()),
    }
}

/// A server's etcd registration: made, or retried in the background while etcd cannot be
/// reached (the server serves meanwhile).
#[cfg(feature = "etcd")]
pub enum Registering {
    /// Registered.
    Done(EtcdRegistration),
    /// etcd was unreachable at start; the task registers once it answers.
    Retrying(tokio::task::JoinHandle<EtcdRegistration>),
}

/// The first and the largest pause between attempts to register while etcd is down.
#[cfg(feature = "etcd")]
const REGISTER_RETRY: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(30),
);

/// Registers `record` in etcd. A configuration error fails (exit 3); an unreachable etcd
/// does not stop the server: a warning goes to stderr and registration is retried in the
/// background with backoff (1 s doubling to 30 s), a warning for every failed attempt and
/// a note when it succeeds.
#[cfg(feature = "etcd")]
pub async fn register_in_etcd(config: EtcdConfig, record: ServerRecord) -> CliResult<Registering> {
    match EtcdRegistration::register(&config, record.clone()).await {
        Ok(r) => Ok(Registering::Done(r)),
        Err(e) if e.is_unreachable() => {
            let (mut pause, cap) = REGISTER_RETRY;
            register_warning(&e, &config, pause);
            Ok(Registering::Retrying(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(cap);
                    match EtcdRegistration::register(&config, record.clone()).await {
                        Ok(r) => {
                            eprintln!(
                                "registered in etcd under {} (lease TTL {:.0} s)",
                                r.key(),
                                config.lease_ttl.as_secs_f64()
                            );
                            return r;
                        }
                        Err(e) => register_warning(&e, &config, pause),
                    }
                }
            })))
        }
        Err(e) => Err(etcd_error(&e, &config.endpoints)),
    }
}

#[cfg(feature = "etcd")]
fn register_warning(e: &EtcdError, config: &EtcdConfig, pause: std::time::Duration) {
    let why = etcd_error(e, &config.endpoints);
    eprintln!(
        "meridian: warning: not registered in etcd yet ({why}); serving anyway, retrying in {:.0} s",
        pause.as_secs_f64()
    );
}

#[cfg(feature = "etcd")]
impl Registering {
    /// The key, once registered.
    pub fn key(&self) -> Option<&str> {
        match self {
            Registering::Done(r) => Some(r.key()),
            Registering::Retrying(_) => None,
        }
    }

    /// Leaves etcd, or stops trying to join it.
    pub async fn deregister(self) {
        match self {
            Registering::Done(r) => r.deregister().await,
            Registering::Retrying(task) if task.is_finished() => {
                if let Ok(r) = task.await {
                    r.deregister().await;
                }
            }
            Registering::Retrying(task) => task.abort(),
        }
    }
}
