//! The store: the graph of branches, snapshots and layers kept in the
//! backstore's metadata directory, and the entry point for every core
//! operation.
//!
//! Graph changes take the store lock exclusive; file operations take it
//! shared plus their branch's lock; reads take none (they check the shared
//! change counters instead, see `read_cache`). A process reloads the graph
//! when another one changed it, so several processes (CLI invocations, a
//! daemon) use one store safely. Changes to the graph are ordered so that a crash
//! at any point leaves a consistent store: new layers are created first and
//! only then named in the graph (an unnamed layer is an orphan, deleted at
//! the next open); layers are deleted only after the graph stops naming
//! them.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::{OsStr, OsString},
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    beneath, compact,
    copy_up::{CopyStats, Writer},
    diff::{self, DiffEntry},
    error::{CoreError, CoreResult},
    events::{self, Change, Event, EventBus, EventKind, Subscription, SubscriptionId},
    fault,
    generation::GENERATION_FILE,
    generation::{Generation, Stamp},
    graph::{
        now_secs, BranchRecord, LayerRecord, LayerState, SnapshotRecord, DEFAULT_COMPACT_THRESHOLD,
    },
    graph_db::{self, GraphDb, GraphTx, Settings},
    layer_names::WORK_DIR,
    metadata::{DirEntry, FileKind, Stat},
    open_file::{OpenOptions, OpenedFile},
    path::{validate_name, BranchPath},
    persist::{self, BranchLock, BranchLocks, LockMode, LockWait, Session, StoreLock},
    read_cache::{ReadCache, Target},
    view::{LayerDir, LayerKind, View},
    write_handles::{WriteHandle, WriteHandles},
};
use crate::layer_store::{LayerCaps, LayerError, LayerErrorKind, LayerStore};

mod graph_ops;
mod tree;

pub use tree::Tree;

/// Anything that can name a path in a branch.
pub trait AsBranchPath {
    /// Parses or clones into a [`BranchPath`].
    fn to_branch_path(&self) -> CoreResult<BranchPath>;
}

impl AsBranchPath for BranchPath {
    fn to_branch_path(&self) -> CoreResult<BranchPath> {
        Ok(self.clone())
    }
}
impl AsBranchPath for str {
    fn to_branch_path(&self) -> CoreResult<BranchPath> {
        BranchPath::parse(self)
    }
}
impl AsBranchPath for String {
    fn to_branch_path(&self) -> CoreResult<BranchPath> {
        BranchPath::parse(self)
    }
}
impl AsBranchPath for OsStr {
    fn to_branch_path(&self) -> CoreResult<BranchPath> {
        BranchPath::parse(self)
    }
}
impl AsBranchPath for Path {
    fn to_branch_path(&self) -> CoreResult<BranchPath> {
        BranchPath::parse(self.as_os_str())
    }
}

/// Settings for a new store.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Base of branches created without a snapshot or an explicit base.
    pub default_base: Option<PathBuf>,
    /// Committed-layer depth above which a snapshot compacts the branch
    /// (default [`DEFAULT_COMPACT_THRESHOLD`]).
    pub compact_threshold: Option<u32>,
}

/// A branch, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchInfo {
    /// Its name.
    pub name: String,
    /// Its active layer.
    pub layer: String,
    /// Number of committed layers under it.
    pub depth: usize,
    /// The base directory under its chain.
    pub base: Option<PathBuf>,
    /// The snapshot it was created from.
    pub from_snapshot: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// A snapshot, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The branch it was taken of.
    pub branch: String,
    /// Its committed layer.
    pub layer: String,
    /// True when the backstore's native snapshot made it.
    pub native: bool,
    /// The base directory under its chain.
    pub base: Option<PathBuf>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// The store's settings and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// The backstore's metadata directory, holding `graph.db` and `lock`.
    pub meta_dir: PathBuf,
    /// The default base.
    pub default_base: Option<PathBuf>,
    /// The compaction threshold.
    pub compact_threshold: u32,
    /// The backstore plugin's name.
    pub backstore: String,
    /// Its capabilities.
    pub capabilities: Vec<&'static str>,
}

struct State {
    /// The graph counter when this process last saw the graph (its caches
    /// of layer directories are valid for that graph).
    graph_gen: u64,
}

/// Open directories of layers and bases, reused across operations.
#[derive(Default)]
struct Fds {
    layers: HashMap<String, (PathBuf, Arc<OwnedFd>)>,
    bases: HashMap<PathBuf, Arc<OwnedFd>>,
    /// Committed layers on read-only mounts (with read-only lower layers).
    committed: HashMap<String, (PathBuf, Arc<OwnedFd>)>,
    /// Bases and committed layers are opened on read-only mounts.
    read_only_lower: bool,
}

/// The directories one branch reads through ([`Store::branch_chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchChain {
    /// Layer roots, top first, each with `true` for the base (whose names
    /// are literal: no whiteouts, markers or escaping).
    pub layers: Vec<(PathBuf, bool)>,
    /// The store's graph database (readers follow the change counters,
    /// not this file's identity).
    pub graph_file: PathBuf,
    /// The store's shared change counters: 64-bit atomics mapped by every
    /// process, the graph counter in slot 0.
    pub generation_file: PathBuf,
    /// The slot of the branch's namespace counter in that file.
    pub namespace_slot: usize,
    /// The graph counter this chain is current for (read under the store
    /// lock the chain was made under: a later graph change moves it).
    pub graph: u64,
}

/// An AgentFS store over one backstore.
pub struct Store {
    backstore: Box<dyn LayerStore>,
    meta: PathBuf,
    lock: StoreLock,
    db: GraphDb,
    state: RwLock<State>,
    fds: Mutex<Fds>,
    branch_locks: BranchLocks,
    gen: Generation,
    cache: ReadCache,
    write_handles: WriteHandles,
    events: EventBus,
    stats: CopyStats,
    caps: LayerCaps,
    _session: Session,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("meta", &self.meta).finish()
    }
}

fn bs(context: impl Into<String>) -> impl FnOnce(LayerError) -> CoreError {
    let c = context.into();
    move |e| CoreError::backstore(c, e)
}

fn meta_dir(backstore: &dyn LayerStore) -> CoreResult<PathBuf> {
    let meta = backstore.metadata_dir().map_err(bs("metadata directory"))?;
    std::fs::create_dir_all(&meta)
        .map_err(|e| CoreError::io(format!("create {}", meta.display()), e))?;
    Ok(meta)
}

impl Store {
    /// Creates a store in the backstore (or opens it, when one exists with
    /// the same settings).
    pub fn init(
        backstore: impl LayerStore + 'static,
        opts: InitOptions,
        wait: LockWait,
    ) -> CoreResult<Self> {
        Self::init_boxed(Box::new(backstore), opts, wait)
    }

    /// [`Store::init`] over a boxed layer store.
    pub fn init_boxed(
        backstore: Box<dyn LayerStore>,
        opts: InitOptions,
        wait: LockWait,
    ) -> CoreResult<Self> {
        let meta = meta_dir(&*backstore)?;
        let lock = StoreLock::open(&meta, wait)?;
        let base = opts
            .default_base
            .as_deref()
            .map(|b| check_base(b, &*backstore))
            .transpose()?;
        {
            let _g = lock.lock(LockMode::Exclusive)?;
            graph_db::migrate(&meta)?;
            match GraphDb::open(&meta)? {
                Some(db) => {
                    let g = db.read(|g| g.settings())?;
                    let same_threshold = opts
                        .compact_threshold
                        .is_none_or(|t| t == g.compact_threshold);
                    if g.default_base != base || !same_threshold {
                        return Err(CoreError::AlreadyExists(format!(
                            "store in {} (default base {}, compact threshold {})",
                            meta.display(),
                            g.default_base
                                .as_ref()
                                .map(|b| b.display().to_string())
                                .unwrap_or_else(|| "none".into()),
                            g.compact_threshold
                        )));
                    }
                }
                None => {
                    let t = opts.compact_threshold.unwrap_or(DEFAULT_COMPACT_THRESHOLD);
                    if t == 0 {
                        return Err(CoreError::InvalidArgument(
                            "the compact threshold must be at least 1".into(),
                        ));
                    }
                    GraphDb::create(
                        &meta,
                        &Settings {
                            default_base: base,
                            compact_threshold: t,
                        },
                    )?;
                }
            }
        }
        drop(lock);
        Self::open_boxed(backstore, wait)
    }

    /// Opens the store in the backstore, finishing or undoing whatever a
    /// crashed process left half done.
    pub fn open(backstore: impl LayerStore + 'static, wait: LockWait) -> CoreResult<Self> {
        Self::open_boxed(Box::new(backstore), wait)
    }

    /// [`Store::open`] over a boxed layer store.
    pub fn open_boxed(backstore: Box<dyn LayerStore>, wait: LockWait) -> CoreResult<Self> {
        let meta = meta_dir(&*backstore)?;
        let lock = StoreLock::open(&meta, wait)?;
        let caps = backstore.capabilities();
        let gen = Generation::open(&meta).map_err(|e| {
            CoreError::io(format!("map {}", meta.join(GENERATION_FILE).display()), e)
        })?;
        // A store of the earlier format becomes a database first (once).
        if !meta.join(graph_db::GRAPH_FILE).exists()
            && meta.join(graph_db::LEGACY_GRAPH_FILE).exists()
        {
            let _g = lock.lock(LockMode::Exclusive)?;
            if graph_db::migrate(&meta)? {
                gen.bump_graph();
            }
        }
        let session = Session::start(&meta)?;
        // Finishing what a crashed process left needs the store to itself:
        // when other processes are at work, recovery is left to a later,
        // quieter open (their half-done work is not debris). And it is
        // needed only when a process died with the store open: it left its
        // session behind.
        let (db, graph_gen) = {
            let exclusive = lock.try_exclusive()?;
            let _g = match exclusive {
                Some(g) => g,
                None => lock.lock(LockMode::Shared)?,
            };
            let alone = _g.is_exclusive();
            let graph_gen = gen.graph();
            let db = GraphDb::open(&meta)?.ok_or_else(|| CoreError::NotInitialized {
                meta_dir: meta.clone(),
            })?;
            if alone {
                graph_db::remove_legacy(&meta);
                let dead = Session::dead(&meta);
                if !dead.is_empty() {
                    recover(&*backstore, &meta, &db)?;
                    for d in dead {
                        let _ = std::fs::remove_file(d);
                    }
                }
            }
            (db, graph_gen)
        };
        Ok(Self {
            backstore,
            branch_locks: BranchLocks::new(&meta, wait),
            meta,
            lock,
            db,
            state: RwLock::new(State { graph_gen }),
            fds: Mutex::new(Fds::default()),
            gen,
            cache: ReadCache::default(),
            write_handles: WriteHandles::default(),
            events: EventBus::default(),
            stats: CopyStats::default(),
            caps,
            _session: session,
        })
    }

    /// True when the backstore's metadata directory holds a store.
    pub fn exists(backstore: &dyn LayerStore) -> CoreResult<bool> {
        let meta = meta_dir(backstore)?;
        Ok(graph_db::exists(&meta))
    }

    /// Removes the store's graph, leaving the backstore as before `init`.
    /// Refused (`Busy`) while any branch or snapshot exists.
    pub fn destroy(self) -> CoreResult<Box<dyn LayerStore>> {
        {
            let mut st = self.write_state();
            let _g = self.lock.lock(LockMode::Exclusive)?;
            self.refresh(&mut st);
            let dead = self.db.read(|g| {
                if !g.is_empty()? {
                    return Err(CoreError::Busy {
                        what: format!("store {}", self.meta.display()),
                        why: "it still has branches or snapshots".into(),
                    });
                }
                g.layer_ids()
            })?;
            self.delete_layers(&dead);
            let graph = self.db.path().to_path_buf();
            std::fs::remove_file(&graph)
                .map_err(|e| CoreError::io(format!("remove {}", graph.display()), e))?;
            for suffix in ["-wal", "-shm"] {
                let mut f = graph.clone().into_os_string();
                f.push(suffix);
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(self.backstore)
    }

    /// The layer store (backstore) under this store.
    pub fn layer_store(&self) -> &dyn LayerStore {
        &*self.backstore
    }

    /// Consumes the store, giving back its layer store.
    pub fn into_layer_store(self) -> Box<dyn LayerStore> {
        self.backstore
    }

    /// Publishes to this store's subscribers an event another process
    /// made to the same store (a FUSE mount server's, forwarded through
    /// the daemon): its content and pid stay, the sequence number is this
    /// bus's next.
    pub fn publish_foreign(&self, event: Event) {
        self.events.publish(event);
    }

    /// A counter of the name changes other processes made in `branch`
    /// (through the shared change counters): it moves exactly when a
    /// change did not come through this `Store`, so a process that caches
    /// what it served (a FUSE mount's kernel caches) knows when to drop it.
    /// Branches sharing a counter slot move it too (a spurious change).
    pub fn outside_changes(&self, branch: &str) -> u64 {
        self.gen.others(branch)
    }

    /// The shared change counters and the registry of mounts (see
    /// [`Generation`]).
    pub fn generation(&self) -> &Generation {
        &self.gen
    }

    /// Waits (at most 2 s, then warns) until every FUSE mount of `branch`
    /// in another process has dropped what its kernel caches of changes
    /// made so far: call it, with no store lock held, before handing a
    /// change back to its requester. One atomic read when no mount runs.
    pub fn settle_mounts(&self, branch: &str) {
        if !self.gen.settle(branch, std::time::Duration::from_secs(2)) {
            tracing::warn!(
                branch,
                "a mount did not invalidate its caches within 2 s: it may serve old names briefly"
            );
        }
    }

    /// Settings and location.
    pub fn info(&self) -> CoreResult<StoreInfo> {
        self.with_shared(|_| {
            let settings = self.db.read(|g| g.settings())?;
            Ok(StoreInfo {
                meta_dir: self.meta.clone(),
                default_base: settings.default_base,
                compact_threshold: settings.compact_threshold,
                backstore: self.backstore.name().to_string(),
                capabilities: self.caps.names(),
            })
        })
    }

    /// Gives every event to `hook` the moment it is published: inside the
    /// operation that made it, after its last change to the files and
    /// before the operation lets go of its locks (a daemon uses it to wake
    /// watchers as early as possible). The hook must be quick and must not
    /// call into the store. Set once; false if a hook is set already.
    pub fn set_event_hook(&self, hook: impl Fn(&events::Event) + Send + Sync + 'static) -> bool {
        self.events.set_hook(Box::new(hook))
    }

    /// Subscribes to change events of every branch.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe()
    }

    /// Ends a subscription; true if it existed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.events.unsubscribe(id)
    }

    /// Files copied up by reflink and by copy, since this store was opened.
    pub fn copy_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.reflinked.load(Relaxed),
            self.stats.copied.load(Relaxed),
        )
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_fds(&self) -> MutexGuard<'_, Fds> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on an up-to-date graph that nobody changes meanwhile: the
    /// store lock shared (other processes) and the graph read-locked (this
    /// one). Many run at once, in any branches.
    fn with_shared<T>(&self, f: impl FnOnce(&State) -> CoreResult<T>) -> CoreResult<T> {
        self.shared_then(None, f)
    }

    /// [`Store::with_shared`], also holding the lock of `branch` (its file
    /// operations run one at a time, across processes).
    fn with_branch<T>(
        &self,
        branch: &str,
        f: impl FnOnce(&State) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let lock = self.branch_locks.get(branch)?;
        self.shared_then(Some(&lock), f)
    }

    fn shared_then<T>(
        &self,
        branch: Option<&BranchLock>,
        f: impl FnOnce(&State) -> CoreResult<T>,
    ) -> CoreResult<T> {
        loop {
            {
                let st = self.read_state();
                let _g = self.lock.lock(LockMode::Shared)?;
                if st.graph_gen == self.gen.graph() {
                    let _b = branch.map(BranchLock::lock).transpose()?;
                    return f(&st);
                }
            }
            // Stale: reload under the write lock, then start over (the
            // store lock is released first: a graph change in this process
            // holds the write lock while it waits for the store lock).
            let mut st = self.write_state();
            let _g = self.lock.lock(LockMode::Shared)?;
            self.refresh(&mut st);
        }
    }

    /// Runs graph change `f` alone: the graph write-locked in this process
    /// and the store lock exclusive across processes.
    fn with_exclusive<T>(&self, f: impl FnOnce(&mut State) -> CoreResult<T>) -> CoreResult<T> {
        let mut st = self.write_state();
        let _g = self.lock.lock(LockMode::Exclusive)?;
        self.refresh(&mut st);
        f(&mut st)
    }

    /// Notes a graph change by another process (the shared graph counter
    /// moved since this one last looked): layer directories it holds open
    /// may have been deleted, so they are let go. Called under the store
    /// lock.
    fn refresh(&self, st: &mut State) {
        let now = self.gen.graph();
        if now != st.graph_gen {
            let mut fds = self.lock_fds();
            fds.layers.clear();
            fds.committed.clear();
            drop(fds);
            self.write_handles.clear();
            st.graph_gen = now;
        }
    }

    fn layer_dir(&self, id: &str, kind: LayerKind) -> CoreResult<LayerDir> {
        if kind == LayerKind::Committed && self.lock_fds().read_only_lower {
            return self.committed_dir(id);
        }
        if let Some((path, fd)) = self.lock_fds().layers.get(id) {
            return Ok(LayerDir {
                kind,
                id: id.to_string(),
                root_path: path.clone(),
                root: fd.clone(),
            });
        }
        let path = self
            .backstore
            .layer_path(id)
            .map_err(bs(format!("layer {id}")))?;
        let fd = Arc::new(
            beneath::open_root(&path)
                .map_err(|e| CoreError::io(format!("open layer {}", path.display()), e))?,
        );
        self.lock_fds()
            .layers
            .insert(id.to_string(), (path.clone(), fd.clone()));
        Ok(LayerDir {
            kind,
            id: id.to_string(),
            root_path: path,
            root: fd,
        })
    }

    /// Committed layer `id` on a read-only mount.
    fn committed_dir(&self, id: &str) -> CoreResult<LayerDir> {
        let cached = self.lock_fds().committed.get(id).cloned();
        let (path, fd) = match cached {
            Some(x) => x,
            None => {
                let path = self
                    .backstore
                    .layer_path(id)
                    .map_err(bs(format!("layer {id}")))?;
                let fd = Arc::new(beneath::open_root_read_only(&path).map_err(|e| {
                    CoreError::io(format!("open layer {} read-only", path.display()), e)
                })?);
                self.lock_fds()
                    .committed
                    .insert(id.to_string(), (path.clone(), fd.clone()));
                (path, fd)
            }
        };
        Ok(LayerDir {
            kind: LayerKind::Committed,
            id: id.to_string(),
            root_path: path,
            root: fd,
        })
    }

    /// Serves the base and committed layers from private read-only mounts
    /// from now on (Linux, with the privilege to clone mounts): an fd
    /// handed out for reading then cannot be reopened for writing through
    /// `/proc/self/fd`, so nothing AgentFS hands out can change a base or a
    /// snapshot. Errs, changing nothing, where that is not possible.
    pub fn protect_lower_layers(&self) -> CoreResult<()> {
        beneath::open_root_read_only(&self.meta).map_err(|e| {
            CoreError::Unsupported(format!("read-only mounts for handed-out fds: {e}"))
        })?;
        let mut fds = self.lock_fds();
        fds.read_only_lower = true;
        fds.bases.clear();
        drop(fds);
        self.cache.clear();
        Ok(())
    }

    /// Refuses `dir` as the place to show a branch to every process (a
    /// mountpoint) when it is, lies inside or contains the store's own
    /// directories or the base of a branch: every other process (the
    /// daemon, the other branches of that base) would read the mounted
    /// branch there instead.
    pub fn check_shared_view_dir(&self, dir: &Path) -> CoreResult<()> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        for own in own_dirs(self.layer_store()) {
            if let Some(why) = overlap(&dir, &own) {
                return Err(CoreError::InvalidArgument(format!(
                    "{} {why} the store's own directory {}",
                    dir.display(),
                    own.display()
                )));
            }
        }
        for b in self.list_branches()? {
            let Some(base) = &b.base else { continue };
            if let Some(why) = overlap(&dir, base) {
                return Err(CoreError::InvalidArgument(format!(
                    "{} {why} the base of branch {} ({}): every other process \
                     (the daemon, the other branches of that base) would read \
                     the mounted branch there (`agentfs run --frontend fuse` \
                     shows a branch at its base's path for one command)",
                    dir.display(),
                    b.name,
                    base.display()
                )));
            }
        }
        Ok(())
    }

    /// True once [`Store::protect_lower_layers`] succeeded.
    pub fn lower_layers_protected(&self) -> bool {
        self.lock_fds().read_only_lower
    }

    fn base_dir(&self, base: &Path) -> CoreResult<LayerDir> {
        let (cached, read_only) = {
            let f = self.lock_fds();
            (f.bases.get(base).cloned(), f.read_only_lower)
        };
        let fd = match cached {
            Some(fd) => fd,
            None => {
                let open = if read_only {
                    beneath::open_root_read_only
                } else {
                    beneath::open_root
                };
                let fd = Arc::new(
                    open(base)
                        .map_err(|e| CoreError::io(format!("open base {}", base.display()), e))?,
                );
                self.lock_fds().bases.insert(base.to_path_buf(), fd.clone());
                fd
            }
        };
        Ok(LayerDir {
            kind: LayerKind::Base,
            id: String::new(),
            root_path: base.to_path_buf(),
            root: fd,
        })
    }

    /// The view of the chain from `top` down, the top layer as `top_kind`.
    fn chain_view(&self, top: &str, top_kind: LayerKind) -> CoreResult<View> {
        let (chain, base) = self
            .db
            .read(|g| Ok((g.chain(top)?, g.need_layer(top)?.base)))?;
        self.view_of(&chain, base, top_kind)
    }

    /// The view of layers `chain` (top first) over `base`.
    fn view_of(
        &self,
        chain: &[String],
        base: Option<PathBuf>,
        top_kind: LayerKind,
    ) -> CoreResult<View> {
        let mut layers = Vec::with_capacity(chain.len() + 1);
        for (i, id) in chain.iter().enumerate() {
            let kind = if i == 0 {
                top_kind.clone()
            } else {
                LayerKind::Committed
            };
            layers.push(self.layer_dir(id, kind)?);
        }
        if let Some(b) = base {
            layers.push(self.base_dir(&b)?);
        }
        Ok(View { layers })
    }

    /// The top layer of `target` and its kind.
    fn target_layer(&self, target: &Target) -> CoreResult<(String, LayerKind)> {
        self.db.read(|g| match target {
            Target::Branch(name) => Ok((
                g.branch(name)?
                    .ok_or_else(|| CoreError::NotFound(format!("branch {name}")))?
                    .layer,
                LayerKind::Active,
            )),
            Target::Snapshot(name) => Ok((
                g.snapshot(name)?
                    .ok_or_else(|| CoreError::NotFound(format!("snapshot {name}")))?
                    .layer,
                LayerKind::Committed,
            )),
        })
    }

    fn target_view(&self, target: &Target) -> CoreResult<View> {
        let (layer, kind) = self.target_layer(target)?;
        self.chain_view(&layer, kind)
    }

    /// Creates layer `id`, trying later ids if a stale one is in the way.
    fn create_layer(&self, graph: &mut GraphTx<'_>) -> CoreResult<(String, PathBuf)> {
        for _ in 0..100 {
            let id = graph.alloc_layer_id()?;
            match self.backstore.create_layer(&id) {
                Ok(p) => return Ok((id, p)),
                Err(e) if e.kind == LayerErrorKind::AlreadyExists => {
                    tracing::warn!(layer = %id, "a stale layer is in the way; using the next id")
                }
                Err(e) => return Err(CoreError::backstore(format!("create layer {id}"), e)),
            }
        }
        Err(CoreError::Corrupt {
            file: self.db.path().to_path_buf(),
            why: "100 consecutive layer ids are taken by stale layers".into(),
        })
    }

    fn delete_layers(&self, ids: &[String]) {
        for id in ids {
            crate::layer_gc::delete_unused(&*self.backstore, id, "deleting an unused layer");
        }
    }

    /// Changes the graph under the exclusive lock, in one transaction:
    /// `f` edits it, recording in `created` every layer it makes; then
    /// layers nothing uses any more are dropped from the graph, the change
    /// is committed, and only then are those layers deleted. If `f` or the
    /// commit fails, the graph on disk is unchanged and the layers `f` made
    /// are deleted.
    ///
    /// The graph counter moves just before the commit, so lock-free readers
    /// stop trusting their views (and wait for the lock) even if this
    /// process dies half way, and after it, so they reload what was saved.
    fn edit_graph<T>(
        &self,
        f: impl FnOnce(&mut GraphTx<'_>, &mut Vec<String>) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let (v, dead) = self.with_exclusive(|st| {
            let mut created = Vec::new();
            let r = self
                .db
                .edit(|g| f(g, &mut created), || self.gen.bump_graph());
            match &r {
                Ok(_) => {
                    self.gen.bump_graph();
                    st.graph_gen = self.gen.graph();
                }
                Err(_) => self.delete_layers(&created),
            }
            r
        })?;
        let mut fds = self.lock_fds();
        for id in &dead {
            fds.layers.remove(id);
            fds.committed.remove(id);
        }
        drop(fds);
        self.delete_layers(&dead);
        Ok(v)
    }

    fn publish(&self, branch: &str, pid: u32, change: Change) {
        let pid = if pid == 0 { events::acting_pid() } else { pid };
        self.events.publish(change.into_event(branch, pid));
    }
}

/// Checks and canonicalises a base directory.
fn check_base(base: &Path, backstore: &dyn LayerStore) -> CoreResult<PathBuf> {
    let canon = std::fs::canonicalize(base)
        .map_err(|e| CoreError::io(format!("base {}", base.display()), e))?;
    if !canon.is_dir() {
        return Err(CoreError::NotDirectory(format!("base {}", canon.display())));
    }
    // A base inside the store's own directories would show the store's
    // layers; a base containing them would show the store to itself (and
    // every write would change what the branch's base holds).
    for dir in own_dirs(backstore) {
        if let Some(why) = overlap(&canon, &dir) {
            return Err(CoreError::InvalidArgument(format!(
                "base {} {why} the store's own directory {}",
                canon.display(),
                dir.display()
            )));
        }
    }
    Ok(canon)
}

/// The store's own directories, canonical: its metadata always, its root
/// when the backstore says where that is.
fn own_dirs(backstore: &dyn LayerStore) -> Vec<PathBuf> {
    let mut own = Vec::new();
    if let Ok(st) = backstore.status() {
        own.push(st.root);
    }
    if let Ok(m) = backstore.metadata_dir() {
        own.push(m);
    }
    own.into_iter()
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
        .collect()
}

/// How directory `dir` overlaps directory `other` ("is", "is inside",
/// "contains"), if it does: both absolute, compared by components.
pub fn overlap(dir: &Path, other: &Path) -> Option<&'static str> {
    if dir == other {
        Some("is")
    } else if dir.starts_with(other) {
        Some("is inside")
    } else if other.starts_with(dir) {
        Some("contains")
    } else {
        None
    }
}

/// Finishes what a process that died with the store open left: temporary
/// files, work directories of active layers, and layers the graph does not
/// name (made by an interrupted change, or dropped from the graph by a
/// change that died before deleting them).
fn recover(backstore: &dyn LayerStore, meta: &Path, db: &GraphDb) -> CoreResult<()> {
    persist::remove_stale_temps(meta);
    let (active, named) = db.read(|g| Ok((g.active_layers()?, g.layer_ids()?)))?;
    for layer in active {
        if let Ok(p) = backstore.layer_path(&layer) {
            let work = p.join(WORK_DIR);
            if work.exists() {
                if let Err(e) = std::fs::remove_dir_all(&work) {
                    tracing::warn!(path = %work.display(), error = %e, "could not clean work directory");
                }
            }
        }
    }
    let named: BTreeSet<String> = named.into_iter().collect();
    match backstore.list_layers() {
        Ok(present) => {
            for id in present {
                if !named.contains(&id) {
                    tracing::info!(layer = %id, "deleting a layer no branch or snapshot uses (left by an interrupted operation)");
                    crate::layer_gc::delete_unused(backstore, &id, "deleting an orphan layer");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list layers"),
    }
    Ok(())
}
