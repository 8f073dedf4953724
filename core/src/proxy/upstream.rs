//! What the proxy knows of its upstream: the merged catalog it announces and each method's kind and idempotency.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use crate::region::{RegionCallBuilder, RegionClient};
use crate::server::CallContext;
use crate::wire::{MethodInfo, MethodKind};

/// What the forwarding handlers share: the region client, counters, and the upstream
/// catalog as of the last refresh (so a call looks its method up in a map instead of
/// scanning every server's catalog under the region client's lock).
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) client: RegionClient,
    pub(super) calls: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) catalog: RwLock<Arc<HashMap<String, MethodInfo>>>,
}

impl Upstream {
    /// The last refreshed catalog.
    fn catalog(&self) -> Arc<HashMap<String, MethodInfo>> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Keeps `methods` as the catalog calls look up, if it changed.
    pub(super) fn remember(&self, methods: &[MethodInfo]) {
        let current = self.catalog();
        let same = current.len() == methods.len()
            && methods.iter().all(|m| current.get(&m.name) == Some(m));
        if !same {
            let map = methods
                .iter()
                .map(|m| (m.name.clone(), m.clone()))
                .collect();
            match self.catalog.write() {
                Ok(mut c) => *c = Arc::new(map),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(map),
            }
        }
    }

    /// The kind and flags of `name` as the upstream catalogs give them (the live catalogs
    /// when the last refresh did not list it yet). A method no catalog lists is forwarded
    /// as a stream each way, which carries every call kind.
    pub(super) fn resolve(&self, name: &str) -> MethodInfo {
        self.catalog()
            .get(name)
            .cloned()
            .or_else(|| self.client.method_info(name))
            .unwrap_or_else(|| MethodInfo {
                name: name.to_string(),
                kind: MethodKind::Bidi,
                idempotent: false,
            })
    }

    /// The upstream call for `ctx`: same method, codec, metadata, routing key and
    /// idempotency, and the time the caller has left.
    pub(super) fn call(&self, ctx: &CallContext) -> RegionCallBuilder {
        let mut call = self
            .client
            .call(ctx.method())
            .forwarding(ctx.codec(), ctx.metadata().clone());
        if let Some(left) = ctx.remaining() {
            call = call.timeout(left);
        }
        // The caller's flag, else the catalog's; a method the refreshed catalog does not
        // list yet is left to the region client's own lookup.
        let listed = self.catalog().get(ctx.method()).map(|m| m.idempotent);
        match (ctx.is_idempotent(), listed) {
            (true, _) => call = call.idempotent(true),
            (false, Some(idempotent)) => call = call.idempotent(idempotent),
            (false, None) => {}
        }
        if let Some(key) = ctx.routing_key() {
            call = call.routing_key(key.clone());
        }
        call
    }
}
