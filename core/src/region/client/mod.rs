//! [`RegionClient`]: calls routed across regions. This file only moves data: it owns the
//! channels, feeds samples into the decision structs of the sibling modules, and asks them
//! where each call goes.

mod builder;
mod call;
mod dial;
mod handle;
mod inspect;
mod metrics;
mod prober;
mod routing;
mod stats;
mod table;

pub use builder::RegionClientBuilder;
pub use call::RegionCallBuilder;
pub use handle::RegionClient;
pub use stats::{RegionStat, RegionStats, ServerStat};
