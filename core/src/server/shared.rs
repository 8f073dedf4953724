//! State shared by the accept loop, every connection and the [`Server`] handle: the method table, the published catalog, counters, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::builder::{Fallback, MethodEntry};
use crate::discovery::Catalog;
use crate::transport::TransportConfig;
use crate::wire::{Hello, MethodInfo, PROTOCOL_VERSION};

pub(super) struct Shared {
    pub(super) server_id: String,
    pub(super) region: String,
    /// The catalog announced in HELLO frames; connections follow it and send an update
    /// when it changes.
    pub(super) catalog: watch::Sender<Arc<Vec<MethodInfo>>>,
    pub(super) methods: std::sync::RwLock<HashMap<String, Arc<MethodEntry>>>,
    pub(super) fallback: Option<Arc<Fallback>>,
    /// Methods announced beside the server's own (the proxy's upstream catalog).
    pub(super) extra_catalog: Mutex<Vec<MethodInfo>>,
    pub(super) transport: TransportConfig,
    pub(super) client_auth: bool,
    pub(super) shutting_down: AtomicBool,
    pub(super) inflight: AtomicUsize,
    /// Connections open now.
    pub(super) connections: AtomicUsize,
    pub(super) idle: Notify,
    pub(super) calls_total: AtomicU64,
    pub(super) calls_failed: AtomicU64,
}

impl Shared {
    pub(super) fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            server_id: self.server_id.clone(),
            region: self.region.clone(),
            load: self.inflight.load(Ordering::Relaxed) as u64,
            methods: self.catalog.borrow().as_ref().clone(),
        }
    }

    pub(super) fn method(&self, name: &str) -> Option<Arc<MethodEntry>> {
        if let Some(e) = self.methods.read().ok()?.get(name) {
            return Some(e.clone());
        }
        let fallback = self.fallback.as_ref()?;
        let info = (fallback.resolve)(name);
        let handler = fallback.handlers.get(&info.kind)?.clone();
        Some(Arc::new(MethodEntry { info, handler }))
    }

    /// Rebuilds the catalog from the method table and tells every connection.
    pub(super) fn publish_catalog(&self) {
        // The server's own handlers first, so they win over announced names (a proxy's own
        // methods over its upstream's).
        let mut all: Vec<MethodInfo> = match self.methods.read() {
            Ok(m) => m.values().map(|e| e.info.clone()).collect(),
            Err(_) => return,
        };
        if let Ok(extra) = self.extra_catalog.lock() {
            all.extend(extra.iter().cloned());
        }
        let catalog = Catalog::new(all).methods().to_vec();
        if **self.catalog.borrow() != catalog {
            self.catalog.send_replace(Arc::new(catalog));
        }
    }
}

/// Sets the methods a server announces beside its own handlers (the proxy announces what
/// its upstream servers serve). From [`Server::catalog_handle`](super::Server::catalog_handle).
#[derive(Debug, Clone)]
pub struct CatalogHandle(pub(super) std::sync::Weak<Shared>);

impl CatalogHandle {
    /// Announces `methods`; connections get an update only when the catalog changes.
    /// Returns false once the server is gone.
    pub fn set(&self, methods: Vec<MethodInfo>) -> bool {
        let Some(shared) = self.0.upgrade() else {
            return false;
        };
        if let Ok(mut extra) = shared.extra_catalog.lock() {
            if *extra == methods {
                return true;
            }
            *extra = methods;
        }
        shared.publish_catalog();
        true
    }
}
