//! What the proxy knows of its upstream: the merged catalog it announces and each method's kind and idempotency.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use crate::discovery::Catalog;
use crate::region::{RegionCallBuilder, RegionClient};
use crate::server::CallContext;
use crate::telemetry::trace::{TraceContext, TRACEPARENT};
use crate::wire::{MethodInfo, MethodKind};

/// What the forwarding handlers share: the region client, counters, and the upstream
/// catalog as of the last refresh (so a call looks its method up in a map instead of
/// scanning every server's catalog under the region client's lock).
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) client: RegionClient,
    pub(super) calls: AtomicU64,
    pub(super) failed: AtomicU64,
    /// Log one line per forwarded call (target `meridian::access`).
    pub(super) access_log: bool,
    pub(super) catalog: RwLock<Arc<Catalog>>,
}

impl Upstream {
    /// The last refreshed catalog.
    fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Keeps `catalog` as the one calls look up, if it changed.
    pub(super) fn remember(&self, catalog: Catalog) {
        if *self.catalog() != catalog {
            let catalog = Arc::new(catalog);
            match self.catalog.write() {
                Ok(mut c) => *c = catalog,
                Err(poisoned) => *poisoned.into_inner() = catalog,
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
    /// idempotency, and the time the caller has left; `trace` (this hop's position in the
    /// caller's trace) replaces the caller's `traceparent`.
    pub(super) fn call(
        &self,
        ctx: &CallContext,
        trace: Option<&TraceContext>,
    ) -> RegionCallBuilder {
        // The caller's codec byte goes on with its already-encoded messages.
        let mut call = self.client.call(ctx.method()).codec(ctx.codec());
        for (key, value) in ctx.metadata().iter() {
            if trace.is_some() && key == TRACEPARENT {
                continue;
            }
            call = call.metadata(key, value.clone());
        }
        if let Some(t) = trace {
            call = call.metadata(TRACEPARENT, t.to_string());
        }
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
