//! What the daemon does for each request: the dispatch, store requests
//! (through the one handler, `crate::handler`), status and subscriptions;
//! watch registration and doorbells are in `watch_requests.rs`, `fd_open`
//! and `FdClose` in `fd_requests.rs`. Handlers block (they call the core) and
//! run on the connection's own thread, one request of a connection at a
//! time.

use std::os::fd::OwnedFd;

use agentfs_plugin_api::{ErrorCode, PluginError};
use agentfs_proto::{BackstoreInfo, DaemonStatus, Request, Response, WireError};
use agentfs_vocab::watch_path::normalize;

use crate::handler;

use super::{
    convert::wire_error,
    state::{Daemon, Session},
};
use agentfs_core::CoreError;

pub(super) fn plugin_err(e: PluginError) -> WireError {
    super::abi_wire::wire_error(e)
}

pub(super) fn invalid(msg: impl Into<String>) -> WireError {
    WireError {
        code: ErrorCode::INVALID_ARGUMENT.0,
        errno: libc::EINVAL,
        message: msg.into(),
    }
}

pub(super) fn core(e: CoreError) -> WireError {
    wire_error(&e)
}

/// The result of a request and the fds to send with it.
pub type Handled = (Result<Response, WireError>, Vec<OwnedFd>);

impl Daemon {
    /// Handles one request of session `s`; `fd` is the one that came with
    /// it (a doorbell's).
    pub fn handle(&self, s: &Session, req: Request, fd: Option<OwnedFd>) -> Handled {
        match req {
            Request::FdOpen(o) => self.fd_open_answer(s, o, false),
            // A client that did not negotiate protocol 2 could not know
            // what to do with the second fd.
            Request::FdOpenWithWriter(o) => self.fd_open_answer(s, o, s.version >= 2),
            Request::Doorbell(d) => (self.doorbell(s, d, fd), Vec::new()),
            other => (self.control(s, other), Vec::new()),
        }
    }

    pub(super) fn branch_of(
        &self,
        s: &Session,
        branch: Option<String>,
    ) -> Result<String, WireError> {
        branch.or_else(|| s.branch.clone()).ok_or_else(|| {
            invalid("no branch: name one in the request, or in the connection's Hello")
        })
    }

    fn control(&self, s: &Session, req: Request) -> Result<Response, WireError> {
        match req {
            r if handler::is_store_request(&r) => {
                let branch = s.branch.as_deref();
                if handler::modifies(&r) {
                    let changed = match &r {
                        Request::Fs { branch: b, .. } => b.clone().or_else(|| s.branch.clone()),
                        _ => None,
                    };
                    let reply =
                        self.mutate(s.pid, |st| handler::handle(st, branch, r).map_err(core));
                    if let (Ok(_), Some(b)) = (&reply, changed) {
                        // With the store's locks released: mounts of the
                        // branch drop what their kernels cache before the
                        // requester hears back.
                        self.settle_mounts(&b);
                    }
                    reply
                } else {
                    self.with_store(|st| handler::handle(st, branch, r).map_err(core))
                }
            }
            Request::Status => self.status(s).map(|st| Response::Status(Box::new(st))),
            Request::WatchRegister(reg) => self.watch_register(s, reg),
            Request::WatchUnregister { watch_id } => self
                .watch
                .unregister(s.conn, watch_id)
                .map(|()| Response::Done)
                .map_err(plugin_err),
            Request::Subscribe { branch, path } => {
                let branch = self.branch_of(s, branch)?;
                let path = path.to_str().ok_or_else(|| {
                    invalid(format!("{path}: a subscription prefix must be UTF-8"))
                })?;
                let prefix = normalize(path).map_err(|e| invalid(e.to_string()))?;
                self.with_store(|st| st.branch(&branch).lstat("").map_err(core))?;
                let subscription = self
                    .watch
                    .subscribe(s.conn, &branch, &prefix)
                    .map_err(plugin_err)?;
                Ok(Response::Subscribed { subscription })
            }
            Request::Unsubscribe { subscription } => {
                if self.watch.unsubscribe(s.conn, subscription) {
                    Ok(Response::Done)
                } else {
                    Err(plugin_err(PluginError::new(
                        ErrorCode::NOT_FOUND,
                        format!(
                            "subscription {subscription}: no such subscription on this connection"
                        ),
                    )))
                }
            }
            Request::FdClose { record } => self.fd_close(s, record).map(|()| Response::Done),
            Request::BranchChain { branch } => self.branch_chain(s, branch).map(Response::Chain),
            Request::PublishEvents { events } => {
                let events = events
                    .into_iter()
                    .map(|e| crate::daemon::abi_wire::core_event(e).map_err(core))
                    .collect::<Result<Vec<_>, _>>()?;
                self.mutate(s.pid, |st| {
                    for e in events {
                        st.publish_foreign(e);
                    }
                    Ok(Response::Done)
                })
            }
            Request::FdOpen(_) | Request::FdOpenWithWriter(_) | Request::Doorbell(_) => {
                Err(invalid("internal: fd requests are handled apart"))
            }
            other => Err(invalid(format!(
                "internal: {} has no daemon handler",
                handler::request_name(&other)
            ))),
        }
    }

    fn status(&self, s: &Session) -> Result<DaemonStatus, WireError> {
        self.with_store(|st| {
            let info = st.info().map_err(core)?;
            let b = st.layer_store();
            let bs = b
                .status()
                .map_err(|e| core(CoreError::backstore("status", e)))?;
            let counts = self.watch.counts();
            Ok(DaemonStatus {
                daemon: format!("agentfs {}", env!("CARGO_PKG_VERSION")),
                protocol: s.version,
                base: info
                    .default_base
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                backstore: BackstoreInfo {
                    plugin: b.name().to_string(),
                    fs_type: bs.fs_type,
                    capacity: bs.capacity_bytes,
                    used: bs.used_bytes,
                    capabilities: info.capabilities.iter().map(|c| c.to_string()).collect(),
                    root: bs.root.to_string_lossy().into_owned(),
                },
                branches: st.list_branches().map_err(core)?.len() as u64,
                snapshots: st.list_snapshots().map_err(core)?.len() as u64,
                watches: counts.watches,
                clients: self.clients(),
                open_fds: self.open_fds(),
                subscriptions: counts.subscriptions,
                doorbells: counts.doorbells,
                last_seq: counts.last_seq,
                pid: std::process::id(),
                config: self.info.config.clone(),
                socket: self.info.socket.to_string_lossy().into_owned(),
                watch_providers: self.watch.apis().into_iter().map(|(_, n)| n).collect(),
                read_only_fds: st.lower_layers_protected(),
            })
        })
    }
}
