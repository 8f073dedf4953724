//! Discovery: where servers are. The region map ([`RegionMap`]) and the sources that fill
//! it and keep it current: code or a TOML file ([`StaticDiscovery`]), the in-process
//! [`LocalRegistry`], etcd (feature `etcd`), or any other [`Discovery`].
//!
//! This layer sits below both the server (which registers itself) and the clients (which
//! follow a map), and knows nothing of either.
//!
//! # Addresses and names
//!
//! A server's address ([`ServerAddr`]) is an IP literal or a DNS host name with a port; a
//! host name is kept as written and resolved each time the server is dialled, so a server
//! dialled afresh (after its connection was lost and it was ejected) follows DNS changes.
//! The name its certificate must carry defaults to that host (a DNS name, or an IP
//! address checked against the certificate's IP address entries), as gRPC takes the
//! authority from its target; an explicit `server_name` wins.
//!
//! # The registry is part of the trust base
//!
//! A client verifies that a server's certificate chains to a root it trusts and carries
//! the name it expects; but by default both the address and that name come from the
//! region map, that is from whoever can write the registry (the etcd prefix, the region
//! file). Such a writer can point clients at any host that holds a valid certificate
//! from the same CA by writing that certificate's name, and over plain `http://` etcd so
//! can anyone on the path. Two client-side settings narrow this. A name expected per
//! region ([`RegionClientBuilder::expect_server_name`](crate::region::RegionClientBuilder::expect_server_name),
//! or `server_name` on a region of the client's own region file) takes the choice of
//! name away from the registry: it can still send calls to a host of its choosing, but
//! only one holding a certificate for the name the client chose. Pinning
//! ([`RegionClientBuilder::pin_cert_sha256`](crate::region::RegionClientBuilder::pin_cert_sha256),
//! `pin_cert_sha256 = true`) additionally requires each server's certificate to be
//! exactly the one whose SHA-256 its record publishes, so a server presenting another
//! valid certificate is refused. What pinning does not protect against: a registry
//! writer can publish the hash of a certificate it controls together with an address it
//! controls, so a hash read from the same registry only helps when the registry itself is
//! authenticated and access-controlled (etcd over TLS with client certificates and
//! per-prefix roles); a hash from client-side configuration is stronger. Neither setting
//! stops a registry writer from removing servers or sending all traffic to one of them
//! (availability), and a pinned hash must be updated whenever a certificate is rotated.
//! The in-process [`LocalRegistry`] is trusted because only servers of this process
//! write it; its clients pin each address's own end-entity certificate.

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
