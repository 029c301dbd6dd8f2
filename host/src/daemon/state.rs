//! The daemon's shared state: the store, the watch service, the client
//! sessions and the records of files opened for writing through `fd_open`.
//!
//! Every mutation goes through [`Daemon::mutate`], which runs the store
//! operation acting for the client (`agentfs_core::acting_for`: every event
//! it publishes, branch and snapshot events included, carries the client's
//! pid). The store hands each event to the watch service the moment it is
//! published (`Store::set_event_hook`), inside the operation, before its
//! locks are let go: a watcher is woken as soon as the data is in the
//! file. Mutations of different clients run at once (the core serialises
//! only what must be: one branch's file operations, and graph changes);
//! publications are serialised, so no event overtakes an earlier one.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
};

use agentfs_proto::WireError;

use super::{
    limits::{ConnLimits, DEFAULT_MAX_CONNECTIONS_PER_UID},
    watch_service::WatchService,
    ConnId,
};
use agentfs_core::Store;

/// What a client's connection is.
#[derive(Debug, Clone)]
pub struct Session {
    /// Connection id (also the `Welcome.session`).
    pub conn: ConnId,
    /// The client's pid (from the kernel where it tells, else its hello).
    pub pid: u32,
    /// The branch its hello named.
    pub branch: Option<String>,
    /// The protocol version agreed.
    pub version: u32,
}

/// A file open for writing through `fd_open`: what it looked like then.
#[derive(Debug, Clone)]
pub struct FdRecord {
    /// The connection that opened it.
    pub conn: ConnId,
    /// The pid that opened it.
    pub pid: u32,
    /// Its branch.
    pub branch: String,
    /// Its canonical path.
    pub path: String,
    /// Size, modification time (ns) and inode when opened.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// The branch's writer registration, held until the record closes (a
    /// snapshot that would capture the fd's writes is refused meanwhile,
    /// whichever process asks).
    pub writer: Option<std::sync::Arc<agentfs_core::WriterLock>>,
}

/// Facts about this daemon for `status`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    /// Where the configuration came from.
    pub config: String,
    /// The socket path.
    pub socket: PathBuf,
}

/// The daemon's shared state.
pub struct Daemon {
    store: RwLock<Option<Store>>,
    /// The watch registry and fan-out.
    pub watch: Arc<WatchService>,
    pub(super) records: Mutex<HashMap<u64, FdRecord>>,
    pub(super) next_record: AtomicU64,
    clients: AtomicU64,
    next_conn: AtomicU64,
    /// Facts for `status`.
    pub info: DaemonInfo,
    /// Connections per uid.
    pub limits: Arc<ConnLimits>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.info.socket)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// The daemon over an open store and a watch service.
    pub fn new(store: Store, watch: WatchService, info: DaemonInfo) -> Self {
        let watch = Arc::new(watch);
        let fan_out = watch.clone();
        store.set_event_hook(move |e| fan_out.dispatch(&crate::loader::abi_event(e)));
        Self {
            store: RwLock::new(Some(store)),
            watch,
            records: Mutex::new(HashMap::new()),
            next_record: AtomicU64::new(1),
            clients: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            info,
            limits: ConnLimits::new(DEFAULT_MAX_CONNECTIONS_PER_UID),
        }
    }

    /// The same daemon admitting at most `n` connections per uid at once.
    pub fn with_max_connections_per_uid(mut self, n: usize) -> Self {
        self.limits = ConnLimits::new(n);
        self
    }

    /// Waits until the mounts of `branch` in other processes dropped what
    /// their kernels cache of the changes so far (see
    /// `Store::settle_mounts`): call it with the store's locks released,
    /// before a change's requester hears back.
    pub fn settle_mounts(&self, branch: &str) {
        let _ = self.with_store(|st| {
            st.settle_mounts(branch);
            Ok(())
        });
    }

    /// Runs `f` on the store; an error once the daemon is shutting down.
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        let g = self.store.read().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(s) => f(s),
            None => Err(WireError::from_io(
                "the daemon is shutting down",
                &std::io::Error::from_raw_os_error(libc::ESHUTDOWN),
            )),
        }
    }

    /// Runs mutation `f` for the client with `pid`; the events it publishes
    /// (stamped with that pid) reach the watch service as they are
    /// published.
    pub fn mutate<T>(
        &self,
        pid: u32,
        f: impl FnOnce(&Store) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        self.with_store(|store| agentfs_core::acting_for(pid, || f(store)))
    }

    /// A new connection id, counted as a client until [`Daemon::end_session`].
    pub fn begin_session(&self) -> ConnId {
        self.clients.fetch_add(1, Ordering::Relaxed);
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Releases everything a connection registered: its watches, doorbells
    /// and subscriptions, and its fd records (publishing `Modified` for
    /// files changed through them, as their writer is gone).
    pub fn end_session(&self, s: &Session) {
        self.watch.disconnect(s.conn);
        let mine: Vec<FdRecord> = {
            let mut recs = lock(&self.records);
            let ids: Vec<u64> = recs
                .iter()
                .filter(|(_, r)| r.conn == s.conn)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| recs.remove(&id)).collect()
        };
        for r in mine {
            if let Err(e) = self.close_record(&r) {
                tracing::debug!(path = %r.path, error = %e, "fd record of a closed connection");
            }
        }
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connected clients.
    pub fn clients(&self) -> u64 {
        self.clients.load(Ordering::Relaxed)
    }

    /// Open fd records.
    pub fn open_fds(&self) -> u64 {
        lock(&self.records).len() as u64
    }

    /// Takes the store out (waiting for requests in progress) so the caller
    /// can drop it, which runs the backstore's cleanup. Later requests fail
    /// with "shutting down".
    pub fn take_store(&self) -> Option<Store> {
        self.store.write().unwrap_or_else(|p| p.into_inner()).take()
    }
}
