//! What a dial to one server checks: whom to trust, which name the certificate must
//! carry, and whether its SHA-256 must match what the map published. Decided here, from
//! the client's own settings first and the map second, so a registry never chooses
//! alone what is verified when the client says otherwise.

use std::collections::HashMap;
use std::sync::Mutex;

use rustls::pki_types::CertificateDer;

use super::routing::Router;
use crate::discovery::{LocalRegistry, ServerAddr, ServerEndpoint};
use crate::transport::ClientTls;

/// Whom a region client trusts.
pub(super) enum DialTrust {
    /// The settings given to the builder, for every server.
    Tls(ClientTls),
    /// The servers of this process: each address's registered end-entity certificate,
    /// pinned for that address alone (looked up at each dial, so servers registered after
    /// the client was built are trusted too). Cached per address with the certificate it
    /// was made for, so reconnections share sockets and session tickets.
    Local(Mutex<HashMap<ServerAddr, (CertificateDer<'static>, ClientTls)>>),
}

/// Client-side checks of servers, set on the builder.
#[derive(Debug, Clone, Default)]
pub(super) struct ServerChecks {
    /// Per region: the name every server of the region must prove.
    pub(super) names: HashMap<String, String>,
    /// Every server must present the certificate its map entry's `cert_sha256` names.
    pub(super) pin_all: bool,
}

/// How to dial one server.
pub(super) struct DialPlan {
    pub(super) tls: ClientTls,
    pub(super) server_name: String,
    pub(super) cert_sha256: Option<[u8; 32]>,
}

impl Router {
    /// The trust, name and pin for a dial of `ep` (at `addr` in the routing table), or why
    /// it must not be dialled at all.
    pub(super) fn dial_plan(
        &self,
        addr: &ServerAddr,
        ep: &ServerEndpoint,
    ) -> Result<DialPlan, String> {
        let region = self.lock().servers.get(addr).map(|r| r.region.clone());
        let (region_name, region_pin, through_proxy) = {
            let map = self.map.borrow();
            let r = region
                .as_deref()
                .and_then(|name| map.regions.iter().find(|r| r.name == name));
            (
                r.and_then(|r| r.server_name.clone()),
                r.is_some_and(|r| r.pin_cert_sha256),
                r.is_some_and(|r| self.via_proxies && !r.proxies.is_empty()),
            )
        };
        // A region's expected name is for its servers; a proxy has a certificate of its
        // own, named in its own entry.
        let server_name = match (&region, through_proxy) {
            (Some(region), false) => self
                .checks
                .names
                .get(region)
                .cloned()
                .or(region_name)
                .unwrap_or_else(|| ep.server_name.clone()),
            _ => ep.server_name.clone(),
        };
        let cert_sha256 =
            if self.checks.pin_all || region_pin {
                let hash =
                    ep.cert_sha256.ok_or_else(|| {
                        format!(
                    "refused: certificate pinning is on, and no cert_sha256 is published for \
                     {addr}{}",
                    region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default()
                )
                    })?;
                Some(hash)
            } else {
                None
            };
        let tls = match &self.trust {
            DialTrust::Tls(tls) => tls.clone(),
            DialTrust::Local(cache) => local_tls(cache, addr)?,
        };
        Ok(DialPlan {
            tls,
            server_name,
            cert_sha256,
        })
    }
}

/// The settings that trust exactly the certificate registered in this process for `addr`.
fn local_tls(
    cache: &Mutex<HashMap<ServerAddr, (CertificateDer<'static>, ClientTls)>>,
    addr: &ServerAddr,
) -> Result<ClientTls, String> {
    let cert = LocalRegistry::global()
        .certificate_of(addr)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("no certificate is registered in this process for {addr}"))?;
    let mut cache = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((known, tls)) = cache.get(addr) {
        if *known == cert {
            return Ok(tls.clone());
        }
    }
    let tls = ClientTls::pinned(cert.clone());
    // Servers that left the registry are forgotten, so the cache stays as small as it.
    let registry = LocalRegistry::global();
    cache.retain(|a, _| registry.certificate_of(a).is_some());
    cache.insert(addr.clone(), (cert, tls.clone()));
    Ok(tls)
}
