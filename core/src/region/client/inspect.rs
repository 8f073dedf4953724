//! Read-only views for tools: a server's channel, the region a call would go to.

use std::collections::HashSet;
use std::time::Instant;

use super::handle::RegionClient;
use crate::client::Channel;
use crate::discovery::{Catalog, ServerAddr};

/// Read-only views for tools such as the `meridian` command-line tool (`probe`,
/// `call --describe`). Neither sends anything nor changes a routing decision.
impl RegionClient {
    /// The open channel to the server at `addr`, if it is connected: its
    /// [`stats`](Channel::stats) give QUIC's RTT estimate to that one server and its
    /// [`server_info`](Channel::server_info) the server's HELLO (region, method catalog).
    /// Send calls through [`RegionClient::call`], not through this channel, or the
    /// balancer will not see them.
    pub fn server_channel(&self, addr: impl Into<ServerAddr>) -> Option<Channel> {
        let addr = addr.into();
        self.inner.lock().servers.get(&addr)?.link.clone()
    }

    /// The most recent failed dial of a server, as `ADDR in REGION: why` (an untrusted
    /// certificate, a pinned hash that does not match, a host name that does not resolve,
    /// ...), until that server is dialled successfully. `None` when no dial failed.
    pub fn last_connect_error(&self) -> Option<String> {
        let text = self.inner.last_connect_error();
        let inner = text.strip_prefix(" (last connect error from ")?;
        Some(inner.strip_suffix(')').unwrap_or(inner).to_string())
    }

    /// The region a call to `method` (any method, with `None`) would be sent to now: the
    /// region selector's answer on a copy of its state, among the regions with a usable
    /// server that serves the method (or whose catalog is not known yet). `None` when no
    /// region can take the call. The selector's real state is left untouched, so asking
    /// moves nothing; during a ramp between two regions the answer is the region traffic
    /// is moving to.
    pub fn preview_region(&self, method: Option<&str>) -> Option<String> {
        let now = Instant::now();
        let st = self.inner.lock();
        let mut regions: Vec<&str> = st
            .servers
            .values()
            .filter(|s| s.usable(now))
            .filter(|s| method.is_none_or(|m| s.serves(m) != Some(false)))
            .map(|s| s.region.as_str())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let mut selector = st.selector.clone();
        selector.choose(&regions, now, 0)
    }

    /// The hedged methods (see [`RegionClientBuilder::hedge`]) that can never be hedged,
    /// by the catalogs of the servers connected now, each with why: no server lists it,
    /// or it is not idempotent. Empty while no catalog is known.
    ///
    /// [`RegionClientBuilder::hedge`]: super::RegionClientBuilder::hedge
    pub fn hedge_problems(&self) -> Vec<String> {
        hedge_problems(&self.inner.hedged, &self.merged_catalog())
    }
}

/// What [`RegionClient::hedge_problems`] says of `hedged` methods and a merged catalog.
fn hedge_problems(hedged: &HashSet<String>, catalog: &Catalog) -> Vec<String> {
    if catalog.is_empty() {
        return Vec::new();
    }
    let mut problems: Vec<String> = hedged
        .iter()
        .filter_map(|m| match catalog.get(m) {
            None => Some(format!(
                "hedged method {m:?} is served by no connected server: it is never hedged"
            )),
            Some(info) if !info.idempotent => Some(format!(
                "hedged method {m:?} is not idempotent: it is never hedged \
                 (only idempotent calls may run twice)"
            )),
            Some(_) => None,
        })
        .collect();
    problems.sort();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MethodInfo, MethodKind};

    #[test]
    fn hedging_a_missing_or_non_idempotent_method_is_a_problem() {
        let method = |name: &str, idempotent| MethodInfo {
            name: name.into(),
            kind: MethodKind::Unary,
            idempotent,
        };
        let catalog = Catalog::new([method("get", true), method("put", false)]);
        let hedged: HashSet<String> = ["get", "put", "nosuch"].map(String::from).into();
        let problems = hedge_problems(&hedged, &catalog);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"nosuch\" is served by no connected server"));
        assert!(problems[1].contains("\"put\" is not idempotent"));
        // Nothing is known before a catalog arrives.
        assert!(hedge_problems(&hedged, &Catalog::default()).is_empty());
    }
}
