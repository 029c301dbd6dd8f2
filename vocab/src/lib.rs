//! The words AgentFS's plugin ABI (`agentfs-plugin-api`), wire protocol
//! (`agentfs-proto`) and host share, in plain Rust with no ABI machinery, so
//! that a preloaded shim can link the protocol without abi_stable:
//!
//! - [`codes`]: the error codes (numbers, stable names, errno mapping) that
//!   both plugin errors and wire errors carry;
//! - [`api`]: the watch APIs by number (kqueue, FSEvents, inotify);
//! - [`native`]: the native watch-API constants of each platform, and their
//!   names for printing;
//! - [`watch_path`]: branch-relative watch paths (normalisation, prefixes,
//!   where a watch points after a rename).

pub mod api;
pub mod codes;
pub mod native;
pub mod watch_path;
