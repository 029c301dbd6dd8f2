//! What makes reads cheap: per process, the open view of each branch and
//! snapshot (valid while the graph counter is unchanged) and where each
//! recently resolved path lives (valid while the graph and the branch's
//! namespace counter are unchanged). A cached resolution answers `stat` with one `fstatat` and an
//! open with one `openat`, the same system calls as the native ones.
//!
//! Only hits are cached; an entry whose kind changed on disk (the base is
//! another program's to change) or that vanished is not trusted: the
//! caller falls back to a full resolution. Directory fds held by entries
//! are shared per (directory, layer) and bounded: when either table is
//! full, both are emptied.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::fd::OwnedFd,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{
    generation::Stamp,
    metadata::FileKind,
    path::BranchPath,
    view::{Resolved, View},
};

/// Largest number of cached resolutions.
const MAX_ENTRIES: usize = 16_384;
/// Largest number of distinct directory fds the entries may hold.
const MAX_DIRS: usize = 512;

/// What a tree shows: a branch or a snapshot, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A branch (writable).
    Branch(String),
    /// A snapshot (read-only).
    Snapshot(String),
}

/// A cached resolution: the final entry's layer, its directory there, the
/// name it is stored under, and its kind when resolved.
#[derive(Debug)]
pub struct CachedHit {
    target: Target,
    key: BranchPath,
    follow: bool,
    /// The view the resolution was made in.
    pub view: Arc<View>,
    /// The canonical path.
    pub path: BranchPath,
    /// Index of the layer holding the entry.
    pub layer: usize,
    /// Its directory in that layer.
    pub dir: Arc<OwnedFd>,
    /// The name as stored there.
    pub stored: OsString,
    /// Kind at resolution time.
    pub kind: FileKind,
    stamp: Stamp,
}

#[derive(Default)]
struct Inner {
    views_graph: u64,
    views: HashMap<Target, Arc<View>>,
    /// By hash of (target, path, follow); a colliding entry replaces the
    /// older one (a miss, never a wrong answer: lookups compare the key).
    hits: HashMap<u64, Arc<CachedHit>>,
    dirs: HashMap<(Target, BranchPath, usize), (Stamp, Arc<OwnedFd>)>,
}

/// The per-process read cache of one store.
#[derive(Default)]
pub struct ReadCache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

impl Target {
    /// The branch whose namespace counter covers this tree (`None` for a
    /// snapshot: it never changes).
    pub fn branch(&self) -> Option<&str> {
        match self {
            Target::Branch(b) => Some(b),
            Target::Snapshot(_) => None,
        }
    }
}

impl ReadCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything (after the way layers are opened changed).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.views.clear();
        g.hits.clear();
        g.dirs.clear();
    }

    /// The view of `target` if cached for graph generation `graph`.
    pub fn view(&self, target: &Target, graph: u64) -> Option<Arc<View>> {
        let g = self.lock();
        (g.views_graph == graph)
            .then(|| g.views.get(target).cloned())
            .flatten()
    }

    /// Remembers the view of `target` at graph generation `graph`.
    pub fn put_view(&self, target: &Target, graph: u64, view: Arc<View>) {
        let mut g = self.lock();
        if g.views_graph != graph {
            g.views.clear();
            g.views_graph = graph;
        }
        g.views.insert(target.clone(), view);
    }

    /// The cached resolution of `path` in `target` (final symlink followed
    /// with `follow`), if made at `stamp`.
    pub fn hit(
        &self,
        target: &Target,
        path: &BranchPath,
        follow: bool,
        stamp: Stamp,
    ) -> Option<Arc<CachedHit>> {
        let k = key(target, path, follow);
        let g = self.lock();
        g.hits
            .get(&k)
            .filter(|h| {
                h.stamp == stamp && h.follow == follow && h.key == *path && h.target == *target
            })
            .cloned()
    }

    /// Remembers resolution `r` of `path` (made in `view` at `stamp`).
    pub fn put_hit(
        &self,
        target: &Target,
        path: &BranchPath,
        follow: bool,
        stamp: Stamp,
        view: &Arc<View>,
        r: &Resolved,
    ) {
        let Some(h) = &r.hit else { return };
        let Some(parent) = r.path.parent() else {
            return;
        };
        let mut g = self.lock();
        if g.hits.len() >= MAX_ENTRIES || g.dirs.len() >= MAX_DIRS {
            g.hits.clear();
            g.dirs.clear();
        }
        // Entries of one directory share its fd, as long as it was opened
        // in the same state of the namespace.
        let slot = g
            .dirs
            .entry((target.clone(), parent, h.layer))
            .or_insert_with(|| (stamp, h.dir.clone()));
        if slot.0 != stamp {
            *slot = (stamp, h.dir.clone());
        }
        let dir = slot.1.clone();
        g.hits.insert(
            key(target, path, follow),
            Arc::new(CachedHit {
                target: target.clone(),
                key: path.clone(),
                follow,
                view: view.clone(),
                path: r.path.clone(),
                layer: h.layer,
                dir,
                stored: h.stored.clone(),
                kind: h.st.kind,
                stamp,
            }),
        );
    }
}

fn key(target: &Target, path: &BranchPath, follow: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    path.hash(&mut h);
    follow.hash(&mut h);
    h.finish()
}
