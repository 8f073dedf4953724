//! The in-process registry: servers of this process, found with no configuration.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use super::{Discovery, RegionMap, ServerEndpoint};

/// The in-process registry: servers started in this process register themselves here
/// (with their region and the certificate to trust), and a client built with no
/// configuration follows it. This is what lets a script start servers and a client in one
/// process and call across them with nothing configured.
///
/// Trusting the registry's certificates is safe only because they belong to servers of
/// this very process.
pub struct LocalRegistry {
    map: watch::Sender<RegionMap>,
    roots: Mutex<Vec<(SocketAddr, CertificateDer<'static>)>>,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("map", &*self.map.borrow())
            .finish_non_exhaustive()
    }
}

/// Removes a server from the [`LocalRegistry`] when dropped.
#[derive(Debug)]
pub struct Registration {
    addr: SocketAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        LocalRegistry::global().unregister(self.addr);
    }
}

impl LocalRegistry {
    /// The process-wide registry.
    pub fn global() -> Arc<LocalRegistry> {
        static GLOBAL: OnceLock<Arc<LocalRegistry>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Arc::new(LocalRegistry {
                    map: watch::channel(RegionMap::new()).0,
                    roots: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Registers a server; it stays listed until the returned guard is dropped.
    pub fn register(
        &self,
        region: &str,
        server: ServerEndpoint,
        trust: CertificateDer<'static>,
    ) -> Registration {
        let addr = server.addr;
        if let Ok(mut roots) = self.roots.lock() {
            roots.push((addr, trust));
        }
        self.map.send_modify(|m| {
            m.add_server(region, server);
        });
        Registration { addr }
    }

    fn unregister(&self, addr: SocketAddr) {
        if let Ok(mut roots) = self.roots.lock() {
            roots.retain(|(a, _)| *a != addr);
        }
        self.map.send_modify(|m| {
            m.remove_server(addr);
        });
    }

    /// Certificates of the servers registered now (trust anchors for a local client).
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots
            .lock()
            .map(|r| r.iter().map(|(_, c)| c.clone()).collect())
            .unwrap_or_default()
    }

    /// The current map.
    pub fn snapshot(&self) -> RegionMap {
        self.map.borrow().clone()
    }
}

impl Discovery for LocalRegistry {
    fn watch(&self) -> watch::Receiver<RegionMap> {
        self.map.subscribe()
    }
}
