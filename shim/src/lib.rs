//! The AgentFS shim: a shared library injected with `LD_PRELOAD` (by
//! `agentfs run`) that makes a branch appear at the base's own path (or at
//! another path) to unmodified programs.
//!
//! It interposes libc's file API for paths under the branch's visible
//! root. Reads (`stat`, `open` for reading, directory listings,
//! `readlink`, `realpath`, `getcwd`) are resolved in process over the
//! branch's chain of layer directories ([`resolve`]); everything that
//! changes the branch (opening for writing, creating, renaming, deleting,
//! attributes) goes to the daemon, which copies up, publishes events and
//! hands back real file descriptors. Paths outside the root pass through
//! untouched. See `docs/shim.md` for the whole contract, what is
//! interposed and what is not.
//!
//! The library reads its configuration from the environment `agentfs run`
//! sets: `AGENTFS_SHIM_SOCKET` (the daemon), `AGENTFS_SHIM_BRANCH`,
//! `AGENTFS_SHIM_ROOT` (the visible root) and, optionally,
//! `AGENTFS_SHIM_STORE` (the store's root, to recognise a working
//! directory inherited inside a layer) and `AGENTFS_SHIM_CHAIN` (the
//! branch's chain as `agentfs run` got it, taken while the store's graph
//! counter holds: a process that only reads never connects to the
//! daemon). Without them it does nothing.
//!
//! The interposition is per platform: on Linux `LD_PRELOAD` and glibc's
//! entry points (`linux`), on macOS `DYLD_INSERT_LIBRARIES` and
//! `__DATA,__interpose` tuples (`macos`). Both share the resolver
//! ([`resolve`]), the path logic ([`paths`]) and the process state
//! (`state`). The event bookkeeping of the macOS hooks ([`kq`] for
//! `kevent`, [`fse`] for FSEvents) is plain logic that compiles and is
//! tested everywhere.

pub mod fse;
pub mod ids;
pub mod kq;
pub mod paths;
pub mod resolve;

#[cfg(all(any(target_os = "linux", target_os = "macos"), not(test)))]
mod dirs;
#[cfg(all(any(target_os = "linux", target_os = "macos"), not(test)))]
mod dispatch;
#[cfg(all(any(target_os = "linux", target_os = "macos"), not(test)))]
mod state;

#[cfg(all(target_os = "linux", not(test)))]
mod linux;
#[cfg(all(target_os = "linux", not(test)))]
use linux as platform;

#[cfg(all(target_os = "macos", not(test)))]
mod macos;
#[cfg(all(target_os = "macos", not(test)))]
use macos as platform;
