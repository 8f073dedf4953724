//! Regions: where each call goes.
//!
//! Servers are grouped in regions. A [`RegionClient`] keeps a connection to the servers it
//! may use, measures the network round trip to every region with QUIC's own estimator
//! (kept fresh by keep-alive pings, so an idle region's figure never goes stale), and sends
//! each call to the nearest healthy region that serves the method (or, with a routing key,
//! to the key's owner). Inside a region it balances on each server's service time. When a
//! server or a whole region stops answering it is ejected within about a second and calls
//! move on; idempotent calls caught in flight are sent again elsewhere.
//!
//! Two signals are kept apart on purpose: the network RTT chooses the region, the service
//! time chooses the server inside it. Mixing them (as many systems do) makes a busy nearby
//! server look like a distant one.
//!
//! The decisions themselves live in plain structs fed with samples and instants
//! ([`estimate`], [`select`], [`balance`], [`health`], [`budget`], [`hedge`],
//! [`rendezvous`]), and the bookkeeping of every attempt in one routing [`table`]; all are
//! tested in simulated time. This module's client only moves data between them and the
//! network.
//!
//! Whom a region client trusts is decided per dial: its [`ClientTls`](crate::ClientTls)
//! (or, for [`RegionClient::local`], each local server's own certificate), the name the
//! client expects for the region if it set one
//! ([`RegionClientBuilder::expect_server_name`]) or else the name the map gives, and,
//! with [`RegionClientBuilder::pin_cert_sha256`], the certificate hash the map publishes.
//! The registry that fills the map is part of the trust base: see the
//! [`discovery`](crate::discovery) module for what these settings protect against and
//! what they do not.

pub mod balance;
pub mod budget;
pub mod estimate;
pub mod health;
pub mod hedge;
pub mod rendezvous;
pub mod select;
pub mod table;

mod client;

pub use client::{
    RegionCallBuilder, RegionClient, RegionClientBuilder, RegionStat, RegionStats, ServerStat,
};
// The discovery types a region client is built from, re-exported where it is used.
#[cfg(feature = "etcd")]
pub use crate::discovery::etcd::{
    CatalogEntry, EtcdConfig, EtcdDiscovery, EtcdError, EtcdRegistration, EtcdTls, ServerRecord,
};
pub use crate::discovery::{
    Discovery, LocalRegistry, Region, RegionMap, Registrant, Registration, ServerAddr,
    ServerEndpoint, StaticDiscovery,
};
