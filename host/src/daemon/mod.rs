//! The daemon, `agentfs serve`: the host's store served on a
//! UNIX socket to the CLI, `agentfs watch` and the shim, with the watch
//! service that turns core events into native watch records.
//! See `docs/daemon.md`.
//!
//! - [`socket_path`]: where the socket lives; binding it with mode 0600;
//! - [`peer_cred`]: the peer's uid and pid from the kernel (connections
//!   from another uid are refused);
//! - [`limits`]: connections per uid;
//! - [`server`]: lifecycle, accept loop, SIGTERM/SIGINT shutdown;
//! - `connection`: one task per client: handshake, requests, deliveries;
//! - [`state`]: the shared state, and the mutation path that stamps core
//!   events with the requesting client's pid;
//! - [`requests`]: what each request does, including `fd_open`;
//! - [`watch_service`]: the watch registry, matching through the
//!   providers, per-watcher queues with coalescing and flow control;
//! - [`doorbell`]: waking a process in its own `kevent()` or `read()`;
//! - [`convert`]: core <-> wire types.

pub mod abi_wire;
mod chain;
mod connection;
pub mod convert;
pub mod doorbell;
pub mod fd_requests;
pub mod limits;
pub mod peer_cred;
pub mod requests;
pub mod server;
pub mod socket_path;
pub mod state;
mod watch_requests;
pub mod watch_service;

use std::path::PathBuf;

use agentfs_plugin_api::PluginError;

pub use server::{serve, ServeOptions, DEFAULT_SHUTDOWN_TIMEOUT};
pub use socket_path::{default_socket_path, SOCKET_ENV};
pub use state::{Daemon, Session};
pub use watch_service::{ConnId, WatchService};

use agentfs_core::CoreError;

use crate::loader::LoadError;

/// Why the daemon could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket could not be set up.
    #[error("socket {}: {why}", path.display())]
    Socket {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A daemon already serves on the socket.
    #[error("another agentfs daemon is serving on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The store could not be opened.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The watch providers do not fit together.
    #[error("watch providers: {0}")]
    Watch(PluginError),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl DaemonError {
    fn io(context: &str, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }
}
