//! Change counters every process that opens a store shares, in a small
//! file mapped into memory (`generation` in the metadata directory): one
//! counts graph changes (branches, snapshots, compaction), the others count
//! namespace changes per branch (510 slots; a branch's slot is a hash of
//! its name, so two branches may share one and see each other's changes
//! as spurious invalidations, never as missed ones). Writers bump them after a change is on
//! disk; readers compare them before and after a lock-free read, so a read
//! sees every committed change at once without taking the store lock or
//! stat-ing the graph file (an inode number, which ext4 reuses, cannot
//! tell two versions apart; a counter can).
//!
//! The counters are 64-bit atomics in a `MAP_SHARED` mapping: the kernel
//! keeps one page for all processes, and atomic operations on it are
//! coherent across them.

use std::{
    fs::OpenOptions,
    io,
    os::fd::AsRawFd,
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// File name of the counters in the metadata directory.
pub const GENERATION_FILE: &str = "generation";

/// Bytes mapped: one page holds both counters and room to grow.
const LEN: usize = 4096;

/// The shared counters of one store.
#[derive(Debug)]
pub struct Generation {
    base: NonNull<AtomicU64>,
    /// Per slot, the namespace bumps this process made (so it can tell
    /// other processes' changes from its own).
    own: Box<[AtomicU64]>,
}

// SAFETY: the mapping is only accessed through atomics, which are safe to
// share between threads; the pointer stays valid until `Drop` unmaps it.
unsafe impl Send for Generation {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Generation {}

/// Number of per-branch namespace slots (after the graph counter and one
/// reserved slot).
const SLOTS: usize = 510;

/// A reading of the graph counter and one branch's namespace counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Graph changes so far.
    pub graph: u64,
    /// Namespace changes so far in the branch's slot (0 for snapshots,
    /// which never change).
    pub namespace: u64,
}

/// The slot of `branch`'s namespace counter (FNV-1a of the name): the
/// index of its 64-bit counter in the file (slot 0 is the graph counter).
pub fn namespace_slot(branch: &str) -> usize {
    slot(branch)
}

/// The slot of `branch`'s namespace counter (FNV-1a of the name).
fn slot(branch: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in branch.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    2 + (h % SLOTS as u64) as usize
}

impl Generation {
    /// Maps the counters of the store whose metadata directory is `meta`,
    /// creating the file (zeroed) on first use.
    pub fn open(meta: &Path) -> io::Result<Self> {
        let path = meta.join(GENERATION_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if f.metadata()?.len() < LEN as u64 {
            // Growing with zeroes is atomic with respect to other openers:
            // both see zeroes until someone bumps.
            f.set_len(LEN as u64)?;
        }
        // SAFETY: a fresh shared read-write mapping of LEN bytes of an open
        // file of at least LEN bytes; the kernel picks the address. The fd
        // may be closed afterwards: the mapping keeps the file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap"))?;
        let own = (0..2 + SLOTS).map(|_| AtomicU64::new(0)).collect();
        Ok(Self { base, own })
    }

    fn counter(&self, i: usize) -> &AtomicU64 {
        assert!(i < 2 + SLOTS);
        // SAFETY: the mapping is LEN (4096) bytes, page-aligned, and
        // 2 + SLOTS = 512 slots of 8 bytes fit it exactly, each aligned for
        // AtomicU64; it lives as long as self.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// The graph counter now.
    pub fn graph(&self) -> u64 {
        self.counter(0).load(Ordering::Acquire)
    }

    /// The graph counter and `branch`'s namespace counter now (`None`: a
    /// snapshot, whose names never change).
    pub fn stamp(&self, branch: Option<&str>) -> Stamp {
        Stamp {
            graph: self.graph(),
            namespace: branch.map_or(0, |b| self.counter(slot(b)).load(Ordering::Acquire)),
        }
    }

    /// Records a graph change.
    pub fn bump_graph(&self) {
        self.counter(0).fetch_add(1, Ordering::AcqRel);
    }

    /// Records a change of names in `branch`.
    pub fn bump_namespace(&self, branch: &str) {
        let i = slot(branch);
        // Shared first: a reader between the two sees one change too many
        // from elsewhere (a spurious invalidation), never one too few.
        self.counter(i).fetch_add(1, Ordering::AcqRel);
        self.own[i].fetch_add(1, Ordering::AcqRel);
    }

    /// Namespace changes in `branch`'s slot made by other processes (and
    /// branches sharing the slot) since this mapping was made, plus those
    /// before it: the shared counter less this process's own bumps. It
    /// moves exactly when someone else changed names.
    pub fn others(&self, branch: &str) -> u64 {
        let i = slot(branch);
        let own = self.own[i].load(Ordering::Acquire);
        self.counter(i).load(Ordering::Acquire).wrapping_sub(own)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing
        // borrows it any more (borrows are tied to &self).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_store_see_each_others_bumps() {
        let t = tempfile::tempdir().unwrap();
        let a = Generation::open(t.path()).unwrap();
        let b = Generation::open(t.path()).unwrap();
        let s0 = b.stamp(Some("x"));
        a.bump_namespace("x");
        let s1 = b.stamp(Some("x"));
        assert_eq!((s1.graph, s1.namespace), (s0.graph, s0.namespace + 1));
        a.bump_graph();
        let s2 = b.stamp(Some("x"));
        assert_eq!((s2.graph, s2.namespace), (s0.graph + 1, s0.namespace + 1));
        assert_eq!(b.stamp(None).namespace, 0);
        drop(a);
        // The counters live in the file, not in a mapping.
        let c = Generation::open(t.path()).unwrap();
        assert_eq!(c.stamp(Some("x")), s2);
    }

    #[test]
    fn others_moves_only_with_changes_made_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let a = Generation::open(t.path()).unwrap();
        let b = Generation::open(t.path()).unwrap();
        let (a0, b0) = (a.others("x"), b.others("x"));
        a.bump_namespace("x");
        a.bump_namespace("x");
        assert_eq!(a.others("x"), a0, "a's own bumps");
        assert_eq!(b.others("x"), b0 + 2, "a's bumps, seen by b");
        b.bump_namespace("x");
        assert_eq!(b.others("x"), b0 + 2);
        assert_eq!(a.others("x"), a0 + 1);
    }

    #[test]
    fn branches_have_their_own_slots_mostly() {
        let slots: std::collections::HashSet<_> =
            (0..100).map(|i| slot(&format!("agent-{i}"))).collect();
        assert!(slots.len() > 85, "{} distinct slots of 100", slots.len());
        assert!(slots.iter().all(|s| (2..2 + SLOTS).contains(s)));
    }

    #[test]
    fn bumps_from_another_process_are_seen() {
        let t = tempfile::tempdir().unwrap();
        let g = Generation::open(t.path()).unwrap();
        let before = g.stamp(None);
        // SAFETY: the child only bumps an atomic in the inherited shared
        // mapping and exits with _exit: no allocation, no lock.
        match unsafe { libc::fork() } {
            0 => {
                g.bump_graph();
                // SAFETY: ends the child without running the parent's
                // atexit handlers or destructors.
                unsafe { libc::_exit(0) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(g.stamp(None).graph, before.graph + 1);
            }
            _ => panic!("fork failed"),
        }
    }
}
