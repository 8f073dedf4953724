//! A channel as the routing table's link to a server.

use std::time::Duration;

use crate::client::Channel;
use crate::region::table::{Link, RoutingTable};

/// The region client's routing table: one channel per connected server.
pub(super) type State = RoutingTable<Channel>;

impl Link for Channel {
    fn serves(&self, method: &str) -> Option<bool> {
        self.server_info()?;
        Some(self.catalog().serves(method))
    }

    fn is_connected(&self) -> bool {
        Channel::is_connected(self)
    }

    fn heard(&self) -> (u64, Option<(Duration, Duration)>) {
        let stats = self.stats();
        let rtt = stats.min_rtt.zip(stats.rtt);
        (stats.datagrams_received, rtt)
    }
}
