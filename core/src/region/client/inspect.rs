//! Read-only views for tools: a server's channel, the region a call would go to.

use std::net::SocketAddr;
use std::time::Instant;

use super::handle::RegionClient;
use crate::client::Channel;

/// Read-only views for tools such as the `meridian` command-line tool (`probe`,
/// `call --describe`). Neither sends anything nor changes a routing decision.
impl RegionClient {
    /// The open channel to the server at `addr`, if it is connected: its
    /// [`stats`](Channel::stats) give QUIC's RTT estimate to that one server and its
    /// [`server_info`](Channel::server_info) the server's HELLO (region, method catalog).
    /// Send calls through [`RegionClient::call`], not through this channel, or the
    /// balancer will not see them.
    pub fn server_channel(&self, addr: SocketAddr) -> Option<Channel> {
        self.inner.lock().servers.get(&addr)?.link.clone()
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
}
