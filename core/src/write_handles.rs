//! What makes a repeated write cheap: per branch, the active-layer file
//! that branch's last [`crate::Tree::write_at`] wrote, kept open, so the
//! next write of the same path is one `fstat` and one `pwrite` instead of
//! a resolution, an `openat` and a `close`.
//!
//! An entry is trusted only while the graph counter and the branch's
//! namespace counter are exactly what they were when the write that made
//! it settled its names (read under the branch's lock, after its own
//! bumps). Every name change in a branch, in any process, bumps that
//! counter under the same lock, and every graph change (a snapshot
//! committing the active layer, compaction, deleting the branch) bumps
//! the graph counter: equal counters mean the path still names the same
//! file in the same active layer. Entries are dropped when the graph
//! changes ([`WriteHandles::clear`]) so no fd outlives the layer it is in
//! for long, and the table is bounded.

use std::{
    collections::HashMap,
    fs::File,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{generation::Stamp, path::BranchPath};

/// Most branches with a kept file at once (one file each).
const MAX_BRANCHES: usize = 64;

/// A kept write handle.
#[derive(Debug, Clone)]
pub struct WriteHandle {
    /// The path as the writer asked for it.
    key: BranchPath,
    /// Its canonical path (what the event names).
    pub path: BranchPath,
    /// The file, open for writing, in the active layer.
    pub file: Arc<File>,
    /// The counters when the names were last settled.
    stamp: Stamp,
}

/// The kept handles of one store, per branch.
#[derive(Debug, Default)]
pub struct WriteHandles {
    map: Mutex<HashMap<String, WriteHandle>>,
}

impl WriteHandles {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, WriteHandle>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle kept for `key` in `branch` if the counters are still
    /// `now`; a stale one is dropped. The caller holds the branch's lock.
    pub fn get(&self, branch: &str, key: &BranchPath, now: Stamp) -> Option<WriteHandle> {
        let mut map = self.lock();
        let h = map.get(branch)?;
        if h.stamp != now {
            map.remove(branch);
            return None;
        }
        (h.key == *key).then(|| h.clone())
    }

    /// Keeps `file` (canonical `path`, asked for as `key`) as `branch`'s
    /// handle, valid while the counters stay `now`. The caller holds the
    /// branch's lock and has settled its names.
    pub fn put(
        &self,
        branch: &str,
        key: BranchPath,
        path: BranchPath,
        file: Arc<File>,
        now: Stamp,
    ) {
        let mut map = self.lock();
        if map.len() >= MAX_BRANCHES && !map.contains_key(branch) {
            map.clear();
        }
        map.insert(
            branch.to_string(),
            WriteHandle {
                key,
                path,
                file,
                stamp: now,
            },
        );
    }

    /// Drops `branch`'s handle (its write failed, or another change may
    /// remove its file).
    pub fn forget(&self, branch: &str) {
        let mut map = self.lock();
        // Most changes find nothing kept: no hashing then.
        if !map.is_empty() {
            map.remove(branch);
        }
    }

    /// Drops every handle (the graph changed: their layers may be gone).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
