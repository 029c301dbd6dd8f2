//! The `agentfs` command line: one module per command group. Commands on
//! branches, snapshots and files build protocol requests and send them
//! through [`backend::Backend`]: to the daemon when one serves, else to the
//! same handler in process.

pub mod backend;
pub mod branch;
pub mod fs;
pub mod install;
pub mod mount;
pub mod plugins;
pub mod run;
pub mod run_fuse;
pub mod sip;
pub mod snapshot;
pub mod store;
pub mod watch;
