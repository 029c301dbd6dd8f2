//! What the daemon does for each request: control (branches, snapshots,
//! status), file operations, watch registration, doorbells, core-event
//! subscriptions and `fd_open`. Handlers block (they call the core) and
//! run on smol's blocking pool, one request of a connection at a time.

use std::{os::fd::OwnedFd, sync::atomic::Ordering};

use agentfs_plugin_api::{
    watch::{WatchApi, WatchSpec},
    ErrorCode, PluginError,
};
use agentfs_proto::{
    BackstoreInfo, DaemonStatus, FdOpen, FdOpened, FsOp, Request, Response, WatchRegistration,
    WireError,
};
use agentfs_vocab::{native::inotify::IN_DONT_FOLLOW, watch_path::normalize};

use crate::handler::{self, is_read};

use super::{
    convert::{self, wire_error},
    doorbell,
    state::{Daemon, FdRecord, Session},
};
use agentfs_core::{CoreError, FileKind};

fn plugin_err(e: PluginError) -> WireError {
    super::abi_wire::wire_error(e)
}

fn invalid(msg: impl Into<String>) -> WireError {
    WireError {
        code: ErrorCode::INVALID_ARGUMENT.0,
        errno: libc::EINVAL,
        message: msg.into(),
    }
}

fn core(e: CoreError) -> WireError {
    wire_error(&e)
}

/// The result of a request and the fd to send with it.
pub type Handled = (Result<Response, WireError>, Option<OwnedFd>);

impl Daemon {
    /// Handles one request of session `s`; `fd` is the one that came with
    /// it (a doorbell's).
    pub fn handle(&self, s: &Session, req: Request, fd: Option<OwnedFd>) -> Handled {
        match req {
            Request::FdOpen(o) => match self.fd_open(s, o) {
                Ok((opened, fd)) => (Ok(Response::FdOpened(opened)), Some(fd)),
                Err(e) => (Err(e), None),
            },
            Request::Doorbell(d) => (self.doorbell(s, d, fd), None),
            other => (self.control(s, other), None),
        }
    }

    fn branch_of(&self, s: &Session, branch: Option<String>) -> Result<String, WireError> {
        branch.or_else(|| s.branch.clone()).ok_or_else(|| {
            invalid("no branch: name one in the request, or in the connection's Hello")
        })
    }

    fn control(&self, s: &Session, req: Request) -> Result<Response, WireError> {
        match req {
            r if handler::is_store_request(&r) => {
                if let Request::SnapshotCreate { branch, .. } = &r {
                    self.check_no_writers(branch)?;
                }
                let branch = s.branch.as_deref();
                if handler::modifies(&r) {
                    self.mutate(s.pid, |st| handler::handle(st, branch, r).map_err(core))
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
                let prefix = normalize(&path).map_err(|e| invalid(e.to_string()))?;
                self.with_store(|st| st.branch(&branch).lstat("").map_err(core))?;
                Ok(Response::Subscribed {
                    subscription: self.watch.subscribe(s.conn, &branch, &prefix),
                })
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
            Request::FdOpen(_) | Request::Doorbell(_) => {
                Err(invalid("internal: fd requests are handled apart"))
            }
            other => Err(invalid(format!(
                "internal: {} has no daemon handler",
                handler::request_name(&other)
            ))),
        }
    }

    /// Without native snapshots, a snapshot commits the branch's active
    /// layer, where files opened for writing through `fd_open` live: later
    /// writes through those fds would land in the snapshot. So it is
    /// refused (`busy`) while any is open.
    fn check_no_writers(&self, branch: &str) -> Result<(), WireError> {
        let open = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| r.branch == branch)
            .count();
        if open == 0 {
            return Ok(());
        }
        let native = self.with_store(|st| Ok(st.layer_store().capabilities().native_snapshots))?;
        if native {
            return Ok(());
        }
        Err(WireError {
            code: ErrorCode::BUSY.0,
            errno: libc::EBUSY,
            message: format!(
                "branch {branch}: {open} file(s) open for writing through fd_open; \
                 without native snapshots a snapshot would capture their later writes: \
                 close them (FdClose) first"
            ),
        })
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
            })
        })
    }

    fn watch_register(&self, s: &Session, reg: WatchRegistration) -> Result<Response, WireError> {
        let api = WatchApi(reg.api());
        let pid_or = |p: u32| if p == 0 { s.pid } else { p };
        let spec = match reg {
            WatchRegistration::FsEvents {
                pid,
                stream_id,
                path_prefixes,
                flags,
                latency: _,
                visible_root,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                // Prefixes that exist are watched at their canonical path
                // (where the core reports events); others as given.
                let prefixes: Vec<String> = self.with_store(|st| {
                    let t = st.branch(&branch);
                    t.lstat("").map_err(core)?;
                    Ok(path_prefixes
                        .iter()
                        .map(|p| {
                            t.canonical(p.as_str(), true)
                                .map_or_else(|_| p.clone(), |c| c.to_string())
                        })
                        .collect())
                })?;
                let template = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance: stream_id,
                    handle: stream_id,
                    branch: branch.as_str().into(),
                    path: "".into(),
                    visible_root: visible_root.as_str().into(),
                    is_dir: true,
                    flags: u64::from(flags),
                };
                self.watch
                    .register_stream(s.conn, template, &prefixes)
                    .map_err(plugin_err)?
            }
            WatchRegistration::Kqueue {
                pid,
                kqueue_id,
                fd,
                vnode_flags,
                path,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                let (path, is_dir) = self.resolve_watched(&branch, &path, true)?;
                let spec = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance: kqueue_id,
                    handle: u64::from(fd as u32),
                    branch: branch.as_str().into(),
                    path: path.as_str().into(),
                    visible_root: "".into(),
                    is_dir,
                    flags: u64::from(vnode_flags),
                };
                self.watch.register(s.conn, api, spec).map_err(plugin_err)?
            }
            WatchRegistration::Inotify {
                pid,
                instance,
                wd,
                path,
                mask,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                let follow = mask & IN_DONT_FOLLOW == 0;
                let (path, is_dir) = self.resolve_watched(&branch, &path, follow)?;
                let spec = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance,
                    handle: u64::from(wd as u32),
                    branch: branch.as_str().into(),
                    path: path.as_str().into(),
                    visible_root: "".into(),
                    is_dir,
                    flags: u64::from(mask),
                };
                self.watch.register(s.conn, api, spec).map_err(plugin_err)?
            }
        };
        Ok(Response::WatchRegistered {
            watch_id: spec.watch_id,
            handle: spec.handle,
        })
    }

    /// The canonical path of an existing entry a watch names, and whether
    /// it is a directory. A path hidden by a whiteout is `not-found`.
    fn resolve_watched(
        &self,
        branch: &str,
        path: &str,
        follow: bool,
    ) -> Result<(String, bool), WireError> {
        self.with_store(|st| {
            let t = st.branch(branch);
            let canon = t.canonical(path, follow).map_err(core)?;
            let kind = if follow {
                t.stat(&canon).map_err(core)?.kind
            } else {
                t.lstat(&canon).map_err(core)?.kind
            };
            Ok((canon.to_string(), kind == FileKind::Dir))
        })
    }

    fn doorbell(
        &self,
        s: &Session,
        d: agentfs_proto::Doorbell,
        fd: Option<OwnedFd>,
    ) -> Result<Response, WireError> {
        let fd = fd.ok_or_else(|| {
            WireError::new(WireError::PROTOCOL, "a Doorbell request must carry an fd")
        })?;
        let target = doorbell::make(&d.kind, fd).map_err(plugin_err)?;
        self.watch
            .set_doorbell(s.conn, doorbell::api_of(&d.kind), d.instance, target);
        Ok(Response::Done)
    }

    fn fd_open(&self, s: &Session, o: FdOpen) -> Result<(FdOpened, OwnedFd), WireError> {
        let branch = self.branch_of(s, o.branch)?;
        let opts = convert::open_options(o.flags, o.mode);
        let opened = if opts.modifies() {
            self.mutate(s.pid, |st| {
                st.branch(&branch)
                    .open(o.path.as_str(), &opts)
                    .map_err(core)
            })?
        } else {
            self.with_store(|st| {
                st.branch(&branch)
                    .open(o.path.as_str(), &opts)
                    .map_err(core)
            })?
        };
        let mut out = FdOpened {
            copied_up: opened.copied_up,
            reflinked: opened.reflinked,
            created: opened.created,
            record: 0,
        };
        if opts.modifies() {
            let md = opened
                .file
                .metadata()
                .map_err(|e| WireError::from_io("fstat", &e))?;
            use std::os::unix::fs::MetadataExt;
            let id = self.next_record.fetch_add(1, Ordering::Relaxed);
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id,
                    FdRecord {
                        conn: s.conn,
                        pid: s.pid,
                        branch,
                        path: opened.path.to_string(),
                        size: md.size(),
                        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        ino: md.ino(),
                    },
                );
            out.record = id;
        }
        Ok((out, opened.file.into()))
    }

    fn fd_close(&self, s: &Session, record: u64) -> Result<(), WireError> {
        let r = {
            let mut recs = self.records.lock().unwrap_or_else(|p| p.into_inner());
            match recs.get(&record) {
                Some(r) if r.conn == s.conn => recs.remove(&record),
                _ => None,
            }
        };
        let r = r.ok_or_else(|| {
            plugin_err(PluginError::new(
                ErrorCode::NOT_FOUND,
                format!("fd record {record}: no such record on this connection"),
            ))
        })?;
        self.close_record(&r)
    }

    /// Publishes `Modified` if the file of record `r` changed since it was
    /// opened.
    pub(super) fn close_record(&self, r: &FdRecord) -> Result<(), WireError> {
        let now = self.with_store(|st| st.branch(&r.branch).stat(r.path.as_str()).map_err(core))?;
        let mtime_ns = convert::time_ns(now.mtime);
        if now.ino == r.ino && now.size == r.size && mtime_ns == r.mtime_ns {
            return Ok(());
        }
        self.mutate(r.pid, |st| {
            st.branch(&r.branch)
                .report_modified(r.path.as_str(), Some(r.size))
                .map_err(core)
        })
    }
}

/// True for requests that only read metadata or open a file read-only
/// (no copy-up, no data read): quick enough to answer without leaving the
/// executor.
pub fn is_quick_read(r: &Request) -> bool {
    match r {
        Request::Fs { op, .. } => is_read(op) && !matches!(op, FsOp::Read { .. }),
        Request::FdOpen(o) => !crate::daemon::convert::open_options(o.flags, o.mode).modifies(),
        _ => false,
    }
}
