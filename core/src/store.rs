//! The store: the graph of branches, snapshots and layers kept in the
//! backstore's metadata directory, and the entry point for every core
//! operation.
//!
//! Every operation takes the store lock (shared to read, exclusive to
//! change), reloads the graph if another process changed it, works, and
//! releases the lock; so several processes (CLI invocations, a daemon) can
//! use one store safely. Changes to the graph are ordered so that a crash
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
    events::{self, Change, EventBus, EventKind, Subscription, SubscriptionId},
    fault,
    generation::GENERATION_FILE,
    generation::{Generation, Stamp},
    graph::{
        now_secs, BranchRecord, Graph, LayerRecord, LayerState, SnapshotRecord,
        DEFAULT_COMPACT_THRESHOLD,
    },
    layer_names::WORK_DIR,
    metadata::{DirEntry, FileKind, Stat},
    open_file::{OpenOptions, OpenedFile},
    path::{validate_name, BranchPath},
    persist::{self, BranchLock, BranchLocks, LockMode, LockWait, StoreLock},
    read_cache::{ReadCache, Target},
    view::{LayerDir, LayerKind, View},
};
use crate::layer_store::{LayerCaps, LayerError, LayerErrorKind, LayerStore};

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
    /// The backstore's metadata directory, holding `store.json` and `lock`.
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
    graph: Graph,
    /// The graph counter when `graph` was read.
    graph_gen: u64,
}

/// Open directories of layers and bases, reused across operations.
#[derive(Default)]
struct Fds {
    layers: HashMap<String, (PathBuf, Arc<OwnedFd>)>,
    bases: HashMap<PathBuf, Arc<OwnedFd>>,
}

/// The directories one branch reads through ([`Store::branch_chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchChain {
    /// Layer roots, top first, each with `true` for the base (whose names
    /// are literal: no whiteouts, markers or escaping).
    pub layers: Vec<(PathBuf, bool)>,
    /// The store's graph file: its identity changes on every graph edit.
    pub graph_file: PathBuf,
    /// The store's shared change counters: 64-bit atomics mapped by every
    /// process, the graph counter in slot 0.
    pub generation_file: PathBuf,
    /// The slot of the branch's namespace counter in that file.
    pub namespace_slot: usize,
}

/// An AgentFS store over one backstore.
pub struct Store {
    backstore: Box<dyn LayerStore>,
    meta: PathBuf,
    lock: StoreLock,
    state: RwLock<State>,
    fds: Mutex<Fds>,
    branch_locks: BranchLocks,
    gen: Generation,
    cache: ReadCache,
    events: EventBus,
    stats: CopyStats,
    caps: LayerCaps,
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
            match persist::load_graph(&meta)? {
                Some((g, _)) => {
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
                    persist::save_graph(&meta, &Graph::new(base, t))?;
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
        // Finishing what a crashed process left needs the store to itself:
        // when other processes are at work, the graph is read under the
        // shared lock and recovery is left to a later, quieter open (their
        // half-done work is not debris).
        let state = {
            let exclusive = lock.try_exclusive()?;
            let _g = match exclusive {
                Some(g) => g,
                None => lock.lock(LockMode::Shared)?,
            };
            let alone = _g.is_exclusive();
            let graph_gen = gen.graph();
            let (graph, _) =
                persist::load_graph(&meta)?.ok_or_else(|| CoreError::NotInitialized {
                    meta_dir: meta.clone(),
                })?;
            if alone {
                recover(&*backstore, &meta, &graph);
            }
            State { graph, graph_gen }
        };
        Ok(Self {
            backstore,
            branch_locks: BranchLocks::new(&meta, wait),
            meta,
            lock,
            state: RwLock::new(state),
            fds: Mutex::new(Fds::default()),
            gen,
            cache: ReadCache::default(),
            events: EventBus::default(),
            stats: CopyStats::default(),
            caps,
        })
    }

    /// True when the backstore's metadata directory holds a store.
    pub fn exists(backstore: &dyn LayerStore) -> CoreResult<bool> {
        let meta = meta_dir(backstore)?;
        Ok(persist::graph_version(&meta)?.is_some())
    }

    /// Removes the store's graph, leaving the backstore as before `init`.
    /// Refused (`Busy`) while any branch or snapshot exists.
    pub fn destroy(self) -> CoreResult<Box<dyn LayerStore>> {
        {
            let mut st = self.write_state();
            let _g = self.lock.lock(LockMode::Exclusive)?;
            self.refresh(&mut st)?;
            if !st.graph.branches.is_empty() || !st.graph.snapshots.is_empty() {
                return Err(CoreError::Busy {
                    what: format!("store {}", self.meta.display()),
                    why: "it still has branches or snapshots".into(),
                });
            }
            let dead: Vec<String> = st.graph.layers.keys().cloned().collect();
            self.delete_layers(&dead);
            let graph = self.meta.join(persist::GRAPH_FILE);
            std::fs::remove_file(&graph)
                .map_err(|e| CoreError::io(format!("remove {}", graph.display()), e))?;
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

    /// Settings and location.
    pub fn info(&self) -> CoreResult<StoreInfo> {
        self.with_shared(|st| {
            Ok(StoreInfo {
                meta_dir: self.meta.clone(),
                default_base: st.graph.default_base.clone(),
                compact_threshold: st.graph.compact_threshold,
                backstore: self.backstore.name().to_string(),
                capabilities: self.caps.names(),
            })
        })
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
            self.refresh(&mut st)?;
        }
    }

    /// Runs graph change `f` alone: the graph write-locked in this process
    /// and the store lock exclusive across processes.
    fn with_exclusive<T>(&self, f: impl FnOnce(&mut State) -> CoreResult<T>) -> CoreResult<T> {
        let mut st = self.write_state();
        let _g = self.lock.lock(LockMode::Exclusive)?;
        self.refresh(&mut st)?;
        f(&mut st)
    }

    /// Reloads the graph if another process changed it (the shared graph
    /// counter moved since it was read). Called under the store lock.
    fn refresh(&self, st: &mut State) -> CoreResult<()> {
        let now = self.gen.graph();
        if now != st.graph_gen {
            let (graph, _) =
                persist::load_graph(&self.meta)?.ok_or_else(|| CoreError::NotInitialized {
                    meta_dir: self.meta.clone(),
                })?;
            self.lock_fds()
                .layers
                .retain(|id, _| graph.layers.contains_key(id));
            st.graph = graph;
            st.graph_gen = now;
        }
        Ok(())
    }

    /// Saves `graph` (under the exclusive lock). The counter moves before
    /// the save, so lock-free readers stop trusting their views (and wait
    /// for the lock) even if this process dies half way, and after it, so
    /// they reload what was saved.
    fn save(&self, st: &mut State, graph: Graph) -> CoreResult<()> {
        self.gen.bump_graph();
        persist::save_graph(&self.meta, &graph)?;
        self.gen.bump_graph();
        st.graph_gen = self.gen.graph();
        self.lock_fds()
            .layers
            .retain(|id, _| graph.layers.contains_key(id));
        st.graph = graph;
        Ok(())
    }

    fn layer_dir(&self, id: &str, kind: LayerKind) -> CoreResult<LayerDir> {
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

    fn base_dir(&self, base: &Path) -> CoreResult<LayerDir> {
        let cached = self.lock_fds().bases.get(base).cloned();
        let fd = match cached {
            Some(fd) => fd,
            None => {
                let fd = Arc::new(
                    beneath::open_root(base)
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
    fn chain_view(&self, st: &State, top: &str, top_kind: LayerKind) -> CoreResult<View> {
        let chain = st.graph.chain(top);
        let base = st.graph.layers.get(top).and_then(|l| l.base.clone());
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

    fn target_view(&self, st: &State, target: &Target) -> CoreResult<View> {
        match target {
            Target::Branch(name) => {
                let layer = st
                    .graph
                    .branches
                    .get(name)
                    .ok_or_else(|| CoreError::NotFound(format!("branch {name}")))?
                    .layer
                    .clone();
                self.chain_view(st, &layer, LayerKind::Active)
            }
            Target::Snapshot(name) => {
                let layer = st
                    .graph
                    .snapshots
                    .get(name)
                    .ok_or_else(|| CoreError::NotFound(format!("snapshot {name}")))?
                    .layer
                    .clone();
                self.chain_view(st, &layer, LayerKind::Committed)
            }
        }
    }

    /// Creates layer `id`, trying later ids if a stale one is in the way.
    fn create_layer(&self, graph: &mut Graph) -> CoreResult<(String, PathBuf)> {
        for _ in 0..100 {
            let id = graph.alloc_layer_id();
            match self.backstore.create_layer(&id) {
                Ok(p) => return Ok((id, p)),
                Err(e) if e.kind == LayerErrorKind::AlreadyExists => {
                    tracing::warn!(layer = %id, "a stale layer is in the way; using the next id")
                }
                Err(e) => return Err(CoreError::backstore(format!("create layer {id}"), e)),
            }
        }
        Err(CoreError::Corrupt {
            file: self.meta.join(persist::GRAPH_FILE),
            why: "100 consecutive layer ids are taken by stale layers".into(),
        })
    }

    fn delete_layers(&self, ids: &[String]) {
        for id in ids {
            match self.backstore.delete_layer(id) {
                Ok(()) => {}
                Err(e) if e.kind == LayerErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(layer = %id, error = %e, "could not delete layer; it will be retried at the next open")
                }
            }
        }
    }

    /// Changes the graph under the exclusive lock: `f` edits a copy of it,
    /// recording in `created` every layer it makes; then layers nothing
    /// uses any more are dropped from the graph, the graph is saved, and
    /// only then are those layers deleted. If `f` or the save fails, the
    /// graph on disk is unchanged and the layers `f` made are deleted.
    fn edit_graph<T>(
        &self,
        f: impl FnOnce(&mut State, &mut Graph, &mut Vec<String>) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let (v, dead) = self.with_exclusive(|st| {
            let mut g = st.graph.clone();
            let mut created = Vec::new();
            let r = f(st, &mut g, &mut created).and_then(|v| {
                let dead = g.unreferenced_layers();
                for id in &dead {
                    g.layers.remove(id);
                }
                self.save(st, g)?;
                Ok((v, dead))
            });
            if r.is_err() {
                self.delete_layers(&created);
            }
            r
        })?;
        self.delete_layers(&dead);
        Ok(v)
    }

    fn publish(&self, branch: &str, pid: u32, change: Change) {
        let pid = if pid == 0 { events::acting_pid() } else { pid };
        self.events.publish(change.into_event(branch, pid));
    }

    // ----- branches -----

    /// Creates branch `name`: over snapshot `from`, else over `base`, else
    /// over the store's default base. O(1): one empty layer, no copying.
    pub fn create_branch(
        &self,
        name: &str,
        from: Option<&str>,
        base: Option<&Path>,
    ) -> CoreResult<BranchInfo> {
        validate_name("branch", name)?;
        if from.is_some() && base.is_some() {
            return Err(CoreError::InvalidArgument(
                "give a snapshot or a base, not both (a snapshot brings its own base)".into(),
            ));
        }
        let base = base.map(|b| check_base(b, &*self.backstore)).transpose()?;
        let info = self.edit_graph(|_, g, created| {
            if g.branches.contains_key(name) {
                return Err(CoreError::AlreadyExists(format!("branch {name}")));
            }
            let (parent, base) = match from {
                Some(s) => {
                    let snap = g
                        .snapshots
                        .get(s)
                        .ok_or_else(|| CoreError::NotFound(format!("snapshot {s}")))?;
                    (Some(snap.layer.clone()), g.layers[&snap.layer].base.clone())
                }
                None => (None, base.or_else(|| g.default_base.clone())),
            };
            let (id, _) = self.create_layer(g)?;
            created.push(id.clone());
            let now = now_secs();
            g.layers.insert(
                id.clone(),
                LayerRecord {
                    parent,
                    base,
                    state: LayerState::Active,
                    created: now,
                },
            );
            g.branches.insert(
                name.to_string(),
                BranchRecord {
                    layer: id,
                    created: now,
                    from_snapshot: from.map(str::to_string),
                },
            );
            Ok(branch_info(g, name))
        })?;
        self.publish(
            name,
            0,
            Change::new(EventKind::BranchCreated, BranchPath::root(), true),
        );
        Ok(info)
    }

    /// Every layer the graph names (all others in the backstore are
    /// orphans, deleted at the next open).
    pub fn layers_in_use(&self) -> CoreResult<Vec<String>> {
        self.with_shared(|st| Ok(st.graph.layers.keys().cloned().collect()))
    }

    /// The directories branch `name` reads through, top first: its active
    /// layer, its committed layers, then its base (if any). With them come
    /// the store's shared change counters and the branch's slot there: an
    /// in-process reader (the shim) keeps the chain while the graph counter
    /// stays, and its cached lookups while the branch's namespace counter
    /// does. Names in layers are stored as [`crate::encode_name`] says; the
    /// base's are literal.
    pub fn branch_chain(&self, name: &str) -> CoreResult<BranchChain> {
        self.with_shared(|st| {
            let view = self.target_view(st, &Target::Branch(name.to_string()))?;
            Ok(BranchChain {
                layers: view
                    .layers
                    .iter()
                    .map(|l| (l.root_path.clone(), l.kind == LayerKind::Base))
                    .collect(),
                graph_file: self.meta.join(persist::GRAPH_FILE),
                generation_file: self.meta.join(GENERATION_FILE),
                namespace_slot: crate::generation::namespace_slot(name),
            })
        })
    }

    /// Every branch, by name.
    pub fn list_branches(&self) -> CoreResult<Vec<BranchInfo>> {
        self.with_shared(|st| {
            let g = &st.graph;
            Ok(g.branches.keys().map(|n| branch_info(g, n)).collect())
        })
    }

    /// Deletes branch `name` and every layer only it used.
    pub fn delete_branch(&self, name: &str) -> CoreResult<()> {
        self.edit_graph(|_, g, _| {
            g.branches
                .remove(name)
                .map(drop)
                .ok_or_else(|| CoreError::NotFound(format!("branch {name}")))
        })
    }

    // ----- snapshots -----

    /// Takes snapshot `name` (or `<branch>.<n>` when `None`) of `branch`.
    /// With native snapshots the active layer is snapshotted and the chain
    /// stays flat; otherwise the active layer is committed as the snapshot
    /// and the branch gets a fresh active layer on top. When the branch's
    /// chain then exceeds the compaction threshold, it is compacted.
    pub fn create_snapshot(&self, branch: &str, name: Option<&str>) -> CoreResult<SnapshotInfo> {
        let info = self.edit_graph(|_, g, created| {
            let b = g
                .branches
                .get(branch)
                .ok_or_else(|| CoreError::NotFound(format!("branch {branch}")))?
                .clone();
            let name = match name {
                Some(n) => {
                    validate_name("snapshot", n)?;
                    if g.snapshots.contains_key(n) {
                        return Err(CoreError::AlreadyExists(format!("snapshot {n}")));
                    }
                    n.to_string()
                }
                None => (1..)
                    .map(|i| format!("{branch}.{i}"))
                    .find(|n| !g.snapshots.contains_key(n))
                    .expect("an unused name exists"),
            };
            let active = g.layers[&b.layer].clone();
            // The layer is about to be frozen: no temporaries go with it.
            let work = self
                .layer_dir(&b.layer, LayerKind::Active)?
                .root_path
                .join(WORK_DIR);
            match std::fs::remove_dir_all(&work) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(CoreError::io(format!("clean {}", work.display()), err)),
            }
            let now = now_secs();
            let native = self.caps.native_snapshots && {
                let id = g.alloc_layer_id();
                match self.backstore.snapshot_layer(&b.layer, &id, true) {
                    Ok(_) => {
                        created.push(id.clone());
                        fault::point("snapshot-after-layer-create");
                        g.layers.insert(
                            id.clone(),
                            LayerRecord {
                                parent: active.parent.clone(),
                                base: active.base.clone(),
                                state: LayerState::Committed,
                                created: now,
                            },
                        );
                        g.snapshots.insert(
                            name.clone(),
                            SnapshotRecord {
                                layer: id,
                                branch: branch.to_string(),
                                created: now,
                                native: true,
                            },
                        );
                        true
                    }
                    Err(e) if e.kind == LayerErrorKind::Unsupported => {
                        tracing::debug!(error = %e, "native snapshot unsupported; committing");
                        false
                    }
                    Err(e) => {
                        return Err(CoreError::backstore(
                            format!("snapshot layer {}", b.layer),
                            e,
                        ))
                    }
                }
            };
            if !native {
                let (id, _) = self.create_layer(g)?;
                created.push(id.clone());
                fault::point("snapshot-after-layer-create");
                g.layers.get_mut(&b.layer).expect("active layer").state = LayerState::Committed;
                g.layers.insert(
                    id.clone(),
                    LayerRecord {
                        parent: Some(b.layer.clone()),
                        base: active.base.clone(),
                        state: LayerState::Active,
                        created: now,
                    },
                );
                g.branches.get_mut(branch).expect("branch").layer = id;
                g.snapshots.insert(
                    name.clone(),
                    SnapshotRecord {
                        layer: b.layer.clone(),
                        branch: branch.to_string(),
                        created: now,
                        native: false,
                    },
                );
            }
            let active_now = g.branches[branch].layer.clone();
            if g.committed_depth(&active_now) > g.compact_threshold as usize {
                if let Some(id) = self.compact_in(g, branch)? {
                    created.push(id);
                }
            }
            Ok(snapshot_info(g, &name))
        })?;
        self.publish(
            branch,
            0,
            Change::new(
                EventKind::SnapshotCreated {
                    snapshot: info.name.clone(),
                },
                BranchPath::root(),
                true,
            ),
        );
        Ok(info)
    }

    /// Every snapshot, by name.
    pub fn list_snapshots(&self) -> CoreResult<Vec<SnapshotInfo>> {
        self.with_shared(|st| {
            let g = &st.graph;
            Ok(g.snapshots.keys().map(|n| snapshot_info(g, n)).collect())
        })
    }

    /// Deletes snapshot `name`; `Busy` (changing nothing) while a branch or
    /// another snapshot is built on it.
    pub fn delete_snapshot(&self, name: &str) -> CoreResult<()> {
        self.edit_graph(|_, g, _| {
            let snap = g
                .snapshots
                .get(name)
                .ok_or_else(|| CoreError::NotFound(format!("snapshot {name}")))?;
            let deps = g.dependents(&snap.layer, Some(name));
            if !deps.is_empty() {
                return Err(CoreError::Busy {
                    what: format!("snapshot {name}"),
                    why: format!("{} built on it", deps.join(", ")),
                });
            }
            g.snapshots.remove(name);
            Ok(())
        })
    }

    /// Compacts the committed layers under branch `name` into one; returns
    /// false when there was nothing to compact (at most one layer).
    pub fn compact_branch(&self, name: &str) -> CoreResult<bool> {
        self.edit_graph(|_, g, created| {
            if !g.branches.contains_key(name) {
                return Err(CoreError::NotFound(format!("branch {name}")));
            }
            let id = self.compact_in(g, name)?;
            let done = id.is_some();
            created.extend(id);
            Ok(done)
        })
    }

    /// Builds the compacted layer for `branch` and re-parents its active
    /// layer on it, in `g` (not saved). Returns the new layer's id.
    fn compact_in(&self, g: &mut Graph, branch: &str) -> CoreResult<Option<String>> {
        let active = g.branches[branch].layer.clone();
        let chain = g.chain(&active);
        if chain.len() <= 2 {
            return Ok(None);
        }
        let base = g.layers[&active].base.clone();
        let (id, path) = self.create_layer(g)?;
        let built = (|| {
            let mut layers = vec![LayerDir {
                kind: LayerKind::Active,
                id: id.clone(),
                root_path: path.clone(),
                root: Arc::new(
                    beneath::open_root(&path)
                        .map_err(|e| CoreError::io(format!("open layer {}", path.display()), e))?,
                ),
            }];
            for l in &chain[1..] {
                layers.push(self.layer_dir(l, LayerKind::Committed)?);
            }
            if let Some(b) = &base {
                layers.push(self.base_dir(b)?);
            }
            let view = View { layers };
            let w = Writer::new(&view, &*self.backstore, self.reflink(), &self.stats)?;
            compact::flatten_into(&w)
        })();
        if let Err(e) = built {
            self.delete_layers(&[id]);
            return Err(e);
        }
        g.layers.insert(
            id.clone(),
            LayerRecord {
                parent: None,
                base,
                state: LayerState::Committed,
                created: now_secs(),
            },
        );
        g.layers.get_mut(&active).expect("active").parent = Some(id.clone());
        Ok(Some(id))
    }

    fn reflink(&self) -> bool {
        self.caps.native_reflink
    }

    // ----- views and diffs -----

    /// The file tree of branch `name` (readable and writable).
    pub fn branch(&self, name: &str) -> Tree<'_> {
        Tree {
            store: self,
            target: Target::Branch(name.to_string()),
            pid: 0,
        }
    }

    /// The file tree of snapshot `name` (read-only).
    pub fn snapshot(&self, name: &str) -> Tree<'_> {
        Tree {
            store: self,
            target: Target::Snapshot(name.to_string()),
            pid: 0,
        }
    }

    /// What changed in `branch` since snapshot `from` (or since its base).
    pub fn diff(&self, branch: &str, from: Option<&str>) -> CoreResult<Vec<DiffEntry>> {
        self.with_shared(|st| {
            let new = self.target_view(st, &Target::Branch(branch.to_string()))?;
            let new_layer = st.graph.branches[branch].layer.clone();
            let new_base = st.graph.layers[&new_layer].base.clone();
            let old = match from {
                Some(s) => {
                    let old = self.target_view(st, &Target::Snapshot(s.to_string()))?;
                    let old_layer = &st.graph.snapshots[s].layer;
                    if st.graph.layers[old_layer].base != new_base {
                        return Err(CoreError::InvalidArgument(format!(
                            "snapshot {s} and branch {branch} have different bases"
                        )));
                    }
                    old
                }
                None => View {
                    layers: match &new_base {
                        Some(b) => vec![self.base_dir(b)?],
                        None => vec![],
                    },
                },
            };
            let ids = |v: &View| -> BTreeSet<String> {
                v.layers
                    .iter()
                    .filter(|l| l.kind != LayerKind::Base)
                    .map(|l| l.id.clone())
                    .collect()
            };
            let (oi, ni) = (ids(&old), ids(&new));
            let only = |v: &View, other: &BTreeSet<String>| -> Vec<usize> {
                v.layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.kind != LayerKind::Base && !other.contains(&l.id))
                    .map(|(i, _)| i)
                    .collect()
            };
            diff::diff(&old, &new, &only(&old, &ni), &only(&new, &oi))
        })
    }
}

/// Checks and canonicalises a base directory.
fn check_base(base: &Path, backstore: &dyn LayerStore) -> CoreResult<PathBuf> {
    let canon = std::fs::canonicalize(base)
        .map_err(|e| CoreError::io(format!("base {}", base.display()), e))?;
    if !canon.is_dir() {
        return Err(CoreError::NotDirectory(format!("base {}", canon.display())));
    }
    if let Ok(st) = backstore.status() {
        let root = std::fs::canonicalize(&st.root).unwrap_or(st.root);
        if canon.starts_with(&root) {
            return Err(CoreError::InvalidArgument(format!(
                "base {} is inside the backstore's own directory {}",
                canon.display(),
                root.display()
            )));
        }
    }
    Ok(canon)
}

fn branch_info(g: &Graph, name: &str) -> BranchInfo {
    let b = &g.branches[name];
    BranchInfo {
        name: name.to_string(),
        layer: b.layer.clone(),
        depth: g.committed_depth(&b.layer),
        base: g.layers[&b.layer].base.clone(),
        from_snapshot: b.from_snapshot.clone(),
        created: b.created,
    }
}

fn snapshot_info(g: &Graph, name: &str) -> SnapshotInfo {
    let s = &g.snapshots[name];
    SnapshotInfo {
        name: name.to_string(),
        branch: s.branch.clone(),
        layer: s.layer.clone(),
        native: s.native,
        base: g.layers[&s.layer].base.clone(),
        created: s.created,
    }
}

/// Finishes what a crashed process left: temporary graph files, work
/// directories of active layers, and layers the graph does not name.
fn recover(backstore: &dyn LayerStore, meta: &Path, graph: &Graph) {
    persist::remove_stale_temps(meta);
    for b in graph.branches.values() {
        if let Ok(p) = backstore.layer_path(&b.layer) {
            let work = p.join(WORK_DIR);
            if work.exists() {
                if let Err(e) = std::fs::remove_dir_all(&work) {
                    tracing::warn!(path = %work.display(), error = %e, "could not clean work directory");
                }
            }
        }
    }
    match backstore.list_layers() {
        Ok(present) => {
            for id in present {
                if !graph.layers.contains_key(&id) {
                    tracing::info!(layer = %id, "deleting a layer no branch or snapshot uses (left by an interrupted operation)");
                    if let Err(e) = backstore.delete_layer(&id) {
                        tracing::warn!(layer = %id, error = %e, "could not delete orphan layer");
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list layers"),
    }
}

/// The file tree of one branch or snapshot. Every call is one locked
/// operation on the store; changes publish exactly one event each.
#[derive(Debug, Clone)]
pub struct Tree<'s> {
    store: &'s Store,
    target: Target,
    pid: u32,
}

impl Tree<'_> {
    /// The same tree, with its changes' events attributed to process `pid`
    /// (a daemon acting for a client passes the client's pid; the default
    /// is 0, unknown).
    pub fn on_behalf_of(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// The branch or snapshot name.
    pub fn name(&self) -> &str {
        match &self.target {
            Target::Branch(n) | Target::Snapshot(n) => n,
        }
    }

    fn read<T>(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        f: impl Fn(&View, &BranchPath) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let p = path.to_branch_path()?;
        self.with_view(|v| f(v, &p))
    }

    /// Runs read `f` on the current view: lock-free on the cached view when
    /// the graph has not changed since it was made, and still unchanged
    /// when `f` is done (else `f`'s answer may mix two graphs: it runs
    /// again under the lock).
    fn with_view<T>(&self, f: impl Fn(&Arc<View>) -> CoreResult<T>) -> CoreResult<T> {
        let stamp = self.stamp();
        if let Some(view) = self.store.cache.view(&self.target, stamp.graph) {
            let r = f(&view);
            if self.stamp() == stamp {
                return r;
            }
        }
        // Under the branch's lock the names do not change meanwhile.
        let locked = |g: &dyn Fn(&State) -> CoreResult<T>| match self.target.branch() {
            Some(b) => self.store.with_branch(b, g),
            None => self.store.with_shared(g),
        };
        locked(&|st: &State| {
            let view = Arc::new(self.store.target_view(st, &self.target)?);
            self.store
                .cache
                .put_view(&self.target, st.graph_gen, view.clone());
            f(&view)
        })
    }

    fn stamp(&self) -> Stamp {
        self.store.gen.stamp(self.target.branch())
    }

    /// Metadata through the resolution cache: one `fstatat` when `path`
    /// was resolved since the last namespace change, else a full
    /// resolution that is then remembered.
    fn cached_stat(&self, path: &(impl AsBranchPath + ?Sized), follow: bool) -> CoreResult<Stat> {
        let p = path.to_branch_path()?;
        let stamp = self.stamp();
        if let Some(h) = self.store.cache.hit(&self.target, &p, follow, stamp) {
            if let Ok(Some(raw)) = beneath::lstat_at(h.dir.as_fd(), &h.stored) {
                if raw.kind == h.kind && self.stamp() == stamp {
                    return Ok(h.view.stat_of(h.layer, &raw));
                }
            }
        }
        self.with_view(|v| {
            let r = v.existing(&p, follow)?;
            self.store
                .cache
                .put_hit(&self.target, &p, follow, stamp, v, &r);
            v.stat_resolved(&r)
        })
    }

    /// A read-only open through the resolution cache (see
    /// [`Tree::cached_stat`]).
    fn cached_open(&self, p: &BranchPath, nofollow: bool) -> CoreResult<(File, BranchPath)> {
        let follow = !nofollow;
        let stamp = self.stamp();
        if let Some(h) = self.store.cache.hit(&self.target, p, follow, stamp) {
            if h.kind == FileKind::File {
                if let Ok(f) =
                    beneath::open_file_at(h.dir.as_fd(), &h.stored, rustix::fs::OFlags::RDONLY, 0)
                {
                    if self.stamp() == stamp {
                        return Ok((f, h.path));
                    }
                }
            }
        }
        self.with_view(|v| {
            let r = v.existing(p, follow)?;
            self.store
                .cache
                .put_hit(&self.target, p, follow, stamp, v, &r);
            v.open_resolved(r, nofollow)
        })
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> CoreResult<(T, Option<Change>)>,
    ) -> CoreResult<T> {
        let Target::Branch(branch) = &self.target else {
            return Err(CoreError::ReadOnly(format!("snapshot {}", self.name())));
        };
        self.store.with_branch(branch, |st| {
            let view = self.store.target_view(st, &self.target)?;
            // Lock-free readers stop trusting cached resolutions before the
            // first name changes (even if this process dies half way) and
            // again once all have.
            self.store.gen.bump_namespace(branch);
            let _after = BumpOnDrop(&self.store.gen, branch);
            let w = Writer::new(
                &view,
                &*self.store.backstore,
                self.store.reflink(),
                &self.store.stats,
            )?;
            let (v, change) = f(&w)?;
            if let Some(c) = change {
                self.store.publish(branch, self.pid, c);
            }
            Ok(v)
        })
    }

    fn mutate(&self, f: impl FnOnce(&Writer<'_>) -> CoreResult<Change>) -> CoreResult<()> {
        self.change(|w| f(w).map(|c| ((), Some(c))))
    }

    /// Metadata, following a final symlink.
    pub fn stat(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Stat> {
        self.cached_stat(path, true)
    }

    /// Metadata of the entry itself (a final symlink is not followed).
    pub fn lstat(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Stat> {
        self.cached_stat(path, false)
    }

    /// True when something exists at `path` (a dangling symlink counts).
    pub fn exists(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<bool> {
        match self.lstat(path) {
            Ok(_) => Ok(true),
            Err(CoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The merged listing of a directory, sorted by name.
    pub fn read_dir(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<DirEntry>> {
        self.read(path, |v, p| v.read_dir(p))
    }

    /// The whole content of a regular file.
    pub fn read_file(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<u8>> {
        self.read(path, |v, p| v.read(p))
    }

    /// The canonical form of existing entry `path`: symlinks in its
    /// directories resolved, and a final one too with `follow`.
    pub fn canonical(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        follow: bool,
    ) -> CoreResult<BranchPath> {
        self.read(path, |v, p| v.existing(p, follow).map(|r| r.path))
    }

    /// Opens a regular file for reading (a real fd from its layer).
    pub fn open_read(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<File> {
        self.read(path, |v, p| v.open_read(p))
    }

    /// The target of a symlink.
    pub fn read_link(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<OsString> {
        self.read(path, |v, p| v.read_link(p))
    }

    /// An extended attribute's value, or `None`.
    pub fn get_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
    ) -> CoreResult<Option<Vec<u8>>> {
        self.read(path, |v, p| v.get_xattr(p, name))
    }

    /// Extended attribute names.
    pub fn list_xattr(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<OsString>> {
        self.read(path, |v, p| v.list_xattr(p))
    }

    /// Creates an empty file (fails if the name is taken).
    pub fn create(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.create(&p, mode))
    }

    /// Replaces a file's content, creating it (mode 0644) if needed.
    pub fn write_file(&self, path: &(impl AsBranchPath + ?Sized), data: &[u8]) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.write_file(&p, data, 0o644))
    }

    /// Writes `data` at `offset` into an existing file.
    pub fn write_at(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        offset: u64,
        data: &[u8],
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.write_at(&p, offset, data))
    }

    /// Sets a file's length.
    pub fn truncate(&self, path: &(impl AsBranchPath + ?Sized), len: u64) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.truncate(&p, len))
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.mkdir(&p, mode))
    }

    /// Creates a directory and any missing parents (mode 0755); existing
    /// directories are fine.
    pub fn mkdir_all(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        let mut cur = BranchPath::root();
        for c in p.components() {
            cur = cur.join(c);
            match self.lstat(&cur) {
                Ok(s) if s.kind == FileKind::Dir => continue,
                Ok(s) if s.kind == FileKind::Symlink && self.stat(&cur)?.kind == FileKind::Dir => {
                    continue
                }
                Ok(_) => return Err(CoreError::NotDirectory(cur.to_string())),
                Err(CoreError::NotFound(_)) => match self.mkdir(&cur, 0o755) {
                    Ok(()) | Err(CoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.rmdir(&p))
    }

    /// Removes a non-directory.
    pub fn unlink(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.unlink(&p))
    }

    /// Removes `path` and, for a directory, everything under it (one event
    /// per removed entry, children first).
    pub fn remove_all(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        let st = self.lstat(&p)?;
        if st.kind == FileKind::Dir {
            for e in self.read_dir(&p)? {
                self.remove_all(&p.join(&e.name))?;
            }
            self.rmdir(&p)
        } else {
            self.unlink(&p)
        }
    }

    /// Renames an entry (POSIX semantics); a no-op when both paths name
    /// the same entry.
    pub fn rename(
        &self,
        from: &(impl AsBranchPath + ?Sized),
        to: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let (f, t) = (from.to_branch_path()?, to.to_branch_path()?);
        self.change(|w| Ok(((), w.rename(&f, &t)?)))
    }

    /// Creates a symlink to `target` (stored verbatim).
    pub fn symlink(
        &self,
        target: impl AsRef<OsStr>,
        path: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.symlink(target.as_ref(), &p))
    }

    /// Hard links: always `Unsupported` (see [`Writer::link`]).
    pub fn link(
        &self,
        from: &(impl AsBranchPath + ?Sized),
        to: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let (f, t) = (from.to_branch_path()?, to.to_branch_path()?);
        self.mutate(|w| w.link(&f, &t))
    }

    /// Sets permission bits.
    pub fn chmod(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.chmod(&p, mode))
    }

    /// Sets access and/or modification time (`None` keeps it).
    pub fn set_times(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.set_times(&p, atime, mtime))
    }

    /// Sets an extended attribute.
    pub fn set_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
        value: &[u8],
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.set_xattr(&p, name, value))
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.remove_xattr(&p, name))
    }

    /// Opens regular file `path` for a real fd (see [`OpenOptions`]): a
    /// read-only open gets the file where it lives; an open that may
    /// change it copies it up (reflink when possible) or creates it in the
    /// active layer first, publishing `Created` or, for a truncation,
    /// `Modified`. Writes through the fd publish nothing: report them with
    /// [`Tree::report_modified`].
    pub fn open(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        opts: &OpenOptions,
    ) -> CoreResult<OpenedFile> {
        let p = path.to_branch_path()?;
        if !opts.modifies() {
            let (file, path) = self.cached_open(&p, opts.nofollow)?;
            return Ok(OpenedFile {
                file,
                copied_up: false,
                reflinked: false,
                created: false,
                path,
            });
        }
        let reflinks = &self.store.stats.reflinked;
        self.change(|w| {
            use std::sync::atomic::Ordering::Relaxed;
            let before = reflinks.load(Relaxed);
            let (o, change) = w.open_file(&p, opts)?;
            let opened = OpenedFile {
                reflinked: o.copied_up && reflinks.load(Relaxed) > before,
                file: o.file,
                copied_up: o.copied_up,
                created: o.created,
                path: o.path,
            };
            Ok((opened, change))
        })
    }

    /// Publishes `Modified` for regular file `path`, whose content changed
    /// through an fd from [`Tree::open`] (`size_before`: its size when
    /// opened). Changes nothing on disk.
    pub fn report_modified(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        size_before: Option<u64>,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.modified_through_fd(&p, size_before))
    }
}

/// Bumps the namespace counter when dropped (after a change, whether it
/// succeeded or not).
struct BumpOnDrop<'a>(&'a Generation, &'a str);

impl Drop for BumpOnDrop<'_> {
    fn drop(&mut self) {
        self.0.bump_namespace(self.1);
    }
}
