//! etcd discovery, present only in builds with the `etcd` feature.
//!
//! With the feature these are the core's etcd types. Without it they are uninhabited
//! stand-ins: nothing can make one, so the code paths that use them compile to nothing,
//! and asking for etcd (`etcd=` or a region file with an `[etcd]` table) raises a
//! `RuntimeError` that says how to get a build with it.

use std::sync::Arc;
use std::time::Duration;

use meridian::region::{Discovery, RegionMap};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[cfg(feature = "etcd")]
pub(crate) use meridian::region::{EtcdConfig, EtcdRegistration, ServerRecord};

#[cfg(not(feature = "etcd"))]
pub(crate) use absent::{EtcdConfig, EtcdRegistration, ServerRecord};

/// An etcd configuration from the Python arguments, `None` without endpoints.
pub(crate) fn config(
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ttl: Option<f64>,
) -> PyResult<Option<EtcdConfig>> {
    let Some(endpoints) = endpoints else {
        return Ok(None);
    };
    if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(PyValueError::new_err(
            "etcd needs at least one endpoint URL",
        ));
    }
    if matches!(&prefix, Some(p) if p.is_empty()) {
        return Err(PyValueError::new_err("etcd_prefix must not be empty"));
    }
    let ttl = match ttl {
        Some(ttl) if !(1.0..=86_400.0).contains(&ttl) => {
            return Err(PyValueError::new_err(
                "etcd_ttl must be between 1 and 86400 seconds",
            ))
        }
        Some(ttl) => Some(Duration::from_secs_f64(ttl)),
        None => None,
    };
    build_config(endpoints, prefix, ttl).map(Some)
}

#[cfg(feature = "etcd")]
fn build_config(
    endpoints: Vec<String>,
    prefix: Option<String>,
    ttl: Option<Duration>,
) -> PyResult<EtcdConfig> {
    let mut config = EtcdConfig::new(endpoints);
    if let Some(p) = prefix {
        config = config.prefix(p);
    }
    if let Some(ttl) = ttl {
        config = config.lease_ttl(ttl);
    }
    Ok(config)
}

#[cfg(not(feature = "etcd"))]
fn build_config(
    _endpoints: Vec<String>,
    _prefix: Option<String>,
    _ttl: Option<Duration>,
) -> PyResult<EtcdConfig> {
    Err(absent::unsupported())
}

/// The `[etcd]` table of region file `path` (with `prefix` in place of its own), if it
/// has one.
#[cfg(feature = "etcd")]
pub(crate) fn config_from_region_file(
    path: &str,
    prefix: Option<String>,
) -> PyResult<Option<EtcdConfig>> {
    let config =
        EtcdConfig::from_toml_file(path).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(config.map(|c| match prefix {
        Some(p) => c.prefix(p),
        None => c,
    }))
}

/// Without etcd support a region file with an `[etcd]` table is refused rather than
/// silently followed without its etcd servers.
#[cfg(not(feature = "etcd"))]
pub(crate) fn config_from_region_file(
    path: &str,
    _prefix: Option<String>,
) -> PyResult<Option<EtcdConfig>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PyValueError::new_err(format!("cannot read {path:?}: {e}")))?;
    let has_etcd_table = text.lines().any(|line| {
        let line = line.trim();
        line.starts_with("[etcd]") || line.starts_with("[etcd.")
    });
    if has_etcd_table {
        return Err(absent::unsupported());
    }
    Ok(None)
}

/// The servers registered in etcd plus those of `base`, followed live.
#[cfg(feature = "etcd")]
pub(crate) fn discovery(config: &EtcdConfig, base: RegionMap) -> PyResult<Arc<dyn Discovery>> {
    let found = crate::runtime()?
        .block_on(meridian::region::EtcdDiscovery::connect_with_base(
            config.clone(),
            base,
        ))
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot read etcd: {e}")))?;
    Ok(found)
}

#[cfg(not(feature = "etcd"))]
pub(crate) fn discovery(config: &EtcdConfig, _base: RegionMap) -> PyResult<Arc<dyn Discovery>> {
    match *config {}
}

#[cfg(not(feature = "etcd"))]
mod absent {
    use meridian::Server;
    use pyo3::exceptions::PyRuntimeError;
    use pyo3::PyErr;

    /// An etcd configuration: none can exist in a build without etcd.
    #[derive(Clone)]
    pub(crate) enum EtcdConfig {}

    /// A server's etcd record: none can exist in a build without etcd.
    pub(crate) enum ServerRecord {}

    /// A server's registration in etcd: none can exist in a build without etcd.
    pub(crate) enum EtcdRegistration {}

    impl EtcdRegistration {
        pub(crate) async fn register(
            config: &EtcdConfig,
            _record: ServerRecord,
        ) -> Result<EtcdRegistration, String> {
            match *config {}
        }

        pub(crate) async fn deregister(self) {
            match self {}
        }

        pub(crate) fn refresh_from(&self, _server: &Server) {
            match *self {}
        }
    }

    pub(crate) fn unsupported() -> PyErr {
        PyRuntimeError::new_err(
            "this build of meridian has no etcd support; build it with the etcd feature: \
             MATURIN_PEP517_ARGS=\"--features etcd\" pip install ./python (needs protoc)",
        )
    }
}
