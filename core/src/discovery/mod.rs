//! Discovery: where servers are. The region map ([`RegionMap`]) and the sources that fill
//! it and keep it current: code or a TOML file ([`StaticDiscovery`]), the in-process
//! [`LocalRegistry`], etcd (feature `etcd`), or any other [`Discovery`].
//!
//! This layer sits below both the server (which registers itself) and the clients (which
//! follow a map), and knows nothing of either.

use std::sync::Arc;

use tokio::sync::watch;

mod addr;
mod catalog;
#[cfg(feature = "etcd")]
pub mod etcd;
mod local;
mod map;

pub use addr::ServerAddr;
pub use catalog::Catalog;
pub use local::{LocalRegistry, Registration};
pub use map::{parse_sha256, sha256_hex, Region, RegionMap, ServerEndpoint};

use crate::wire::MethodInfo;

/// A source of region membership that can change while running. A real registry (etcd,
/// Consul, ...) implements this; so do [`StaticDiscovery`] and [`LocalRegistry`].
pub trait Discovery: Send + Sync + 'static {
    /// The current map; the receiver sees every later update.
    fn watch(&self) -> watch::Receiver<RegionMap>;
}

/// Membership given in code or read from a file, updatable by hand (tests use
/// [`StaticDiscovery::update`] to add and remove servers while a client runs).
#[derive(Debug)]
pub struct StaticDiscovery {
    map: watch::Sender<RegionMap>,
}

impl StaticDiscovery {
    /// Serves `map` until updated.
    pub fn new(map: RegionMap) -> Arc<StaticDiscovery> {
        Arc::new(StaticDiscovery {
            map: watch::channel(map).0,
        })
    }

    /// Replaces the map; clients following it see the change at their next refresh.
    pub fn update(&self, map: RegionMap) {
        self.map.send_replace(map);
    }

    /// Changes the map in place.
    pub fn modify(&self, f: impl FnOnce(&mut RegionMap)) {
        self.map.send_modify(f);
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self) -> watch::Receiver<RegionMap> {
        self.map.subscribe()
    }
}

/// What a registry records about a running server: its region, catalog and load.
/// [`Server`](crate::Server) implements it; so can anything else that wants to register
/// (a proxy, a test double).
pub trait Registrant {
    /// The region the server announces.
    fn region(&self) -> &str;
    /// The methods it serves.
    fn catalog(&self) -> Vec<MethodInfo>;
    /// The load it advertises: calls in flight now.
    fn load(&self) -> u64;
}
