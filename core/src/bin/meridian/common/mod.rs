//! What the subcommands share: errors and exit codes, connection and TLS flags, the dev
//! certificate directory behind `--insecure-dev`, JSON <-> `Value`, formatting.

mod dev;
mod errors;
mod etcd;
mod format;
mod ops;
mod parse;
mod signal;
mod target;
mod tls;

pub use dev::*;
pub use errors::*;
pub use etcd::*;
pub use format::*;
pub use ops::*;
pub use parse::*;
pub use signal::*;
pub use target::*;
pub use tls::*;
