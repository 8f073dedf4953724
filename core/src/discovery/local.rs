//! The in-process registry: servers of this process, found with no configuration.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use super::{Discovery, RegionMap, ServerAddr, ServerEndpoint};

/// The in-process registry: servers started in this process register themselves here
/// (with their region and the certificate they present), and a client built with no
/// configuration follows it. This is what lets a script start servers and a client in one
/// process and call across them with nothing configured.
///
/// A local client ([`RegionClient::local`](crate::region::RegionClient::local)) pins, for
/// each address, exactly the certificate registered for that address: it trusts no CA,
/// so a server whose chain ends in an intermediate or a CA certificate does not make that
/// CA trusted for other names. Trusting the registry is safe only because its entries
/// belong to servers of this very process.
pub struct LocalRegistry {
    map: watch::Sender<RegionMap>,
    certificates: Mutex<Vec<(ServerAddr, CertSource)>>,
}

/// Where the registry reads a server's certificate: a fixed one, or the one its TLS
/// settings present now (so a certificate rotated live stays trusted by local clients).
type CertSource = Arc<dyn Fn() -> CertificateDer<'static> + Send + Sync>;

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
    addr: ServerAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        LocalRegistry::global().unregister(&self.addr);
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
                    certificates: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Registers a server presenting `certificate` (its end-entity certificate: local
    /// clients pin it for the server's address); it stays listed until the returned guard
    /// is dropped.
    pub fn register(
        &self,
        region: &str,
        server: ServerEndpoint,
        certificate: CertificateDer<'static>,
    ) -> Registration {
        self.register_with(region, server, move || certificate.clone())
    }

    /// As [`register`](Self::register), with the certificate read from `current` whenever
    /// a client dials: a server whose certificate rotates stays trusted with the new one.
    pub fn register_with(
        &self,
        region: &str,
        server: ServerEndpoint,
        current: impl Fn() -> CertificateDer<'static> + Send + Sync + 'static,
    ) -> Registration {
        let addr = server.addr.clone();
        if let Ok(mut certs) = self.certificates.lock() {
            certs.push((addr.clone(), Arc::new(current)));
        }
        self.map.send_modify(|m| {
            m.add_server(region, server);
        });
        Registration { addr }
    }

    fn unregister(&self, addr: &ServerAddr) {
        if let Ok(mut certs) = self.certificates.lock() {
            certs.retain(|(a, _)| a != addr);
        }
        self.map.send_modify(|m| {
            m.remove_server(addr);
        });
    }

    /// The certificates of the servers registered now. They are end-entity certificates:
    /// as roots they make only self-signed ones trusted. To trust the servers of this
    /// process, pin each per address ([`certificate_of`](Self::certificate_of)), as
    /// [`RegionClient::local`](crate::region::RegionClient::local) does.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.certificates
            .lock()
            .map(|r| r.iter().map(|(_, c)| c()).collect())
            .unwrap_or_default()
    }

    /// The certificate the server at `addr` registered with, while it is registered.
    pub fn certificate_of(&self, addr: &ServerAddr) -> Option<CertificateDer<'static>> {
        self.certificates
            .lock()
            .ok()?
            .iter()
            .rev()
            .find(|(a, _)| a == addr)
            .map(|(_, c)| c())
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
