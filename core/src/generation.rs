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
//!
//! The second page is a registry of the FUSE mounts serving the store
//! ([`Generation::claim`]): per mount its pid, its branch's slot and the
//! namespace counter value it has invalidated the kernel's caches up to.
//! A mount's invalidating thread sleeps on its slot's counter word (a
//! shared futex on Linux) and writers wake it when a mount is registered;
//! [`Generation::settle`] waits until every other live mount of a branch
//! has invalidated up to the counter now, so a change handed back to its
//! requester is never served stale through a mount. Processes that map
//! only the first page (older versions) are unaffected by it.
//!
//! The pages after it are a ring of the paths recent changes touched
//! ([`Generation::log_change`]), written only while a mount is registered:
//! a mount's invalidating thread reads them ([`Generation::read_changes`])
//! to forget only those names, and falls back to forgetting every name it
//! knows when the ring cannot vouch for every change since its last look
//! (it wrapped, a path was too long, a change did not say what it touched,
//! or the counter moved more than the records explain).

use std::{
    fs::OpenOptions,
    io,
    os::fd::AsRawFd,
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// File name of the counters in the metadata directory.
pub const GENERATION_FILE: &str = "generation";

/// Bytes mapped: the counters' page, the mount registry's, then the
/// change ring.
const LEN: usize = RING * 8 + RING_ENTRIES * ENTRY * 8;

/// Index of the change ring's head: entries written so far (in the
/// registry's page, after the records).
const RING_HEAD: usize = 1000;

/// Index of the change ring's first entry (the third page).
const RING: usize = 1024;

/// Entries in the change ring.
const RING_ENTRIES: usize = 128;

/// Words per ring entry: sequence (entry number + 1 once written), slot
/// and flags, path length, then the path's bytes.
const ENTRY: usize = 32;

/// Bytes of a path a ring entry holds; a longer one is logged as unknown.
const ENTRY_PATH: usize = (ENTRY - 3) * 8;

/// Entry flag: the change did not say which paths it touched.
const UNKNOWN: u64 = 1 << 32;

/// Entry flag: another path of the change logged by the entry before.
const MORE: u64 = 1 << 33;

/// An entry's sequence word while it is being written.
const WRITING: u64 = u64::MAX;

/// Index of the registry's count of records in use (the second page).
const IN_USE: usize = 512;

/// Index of the first mount record; each is [`RECORD`] words: owner pid
/// (0: free), branch slot (0: not set yet), counter value swept to.
const RECORDS: usize = 520;

/// Words per mount record.
const RECORD: usize = 4;

/// Mount records in the registry.
pub const MOUNTS: usize = 64;

/// A mount's record in the registry, from [`Generation::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSeat(usize);

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
        self.word(i)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < LEN / 8);
        // SAFETY: the mapping is LEN bytes, page-aligned, so LEN / 8 words
        // of 8 bytes fit it, each aligned for AtomicU64; it lives as long
        // as self.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// The `field` word of mount record `seat`.
    fn record(&self, seat: usize, field: usize) -> &AtomicU64 {
        assert!(seat < MOUNTS && field < RECORD);
        self.word(RECORDS + seat * RECORD + field)
    }

    /// `branch`'s namespace counter now (every change, this process's
    /// too).
    pub fn namespace(&self, branch: &str) -> u64 {
        self.counter(slot(branch)).load(Ordering::Acquire)
    }

    /// Sleeps until `branch`'s namespace counter is no longer `seen`, at
    /// most `timeout` (a signal or a spurious wake-up may end it sooner).
    pub fn wait_namespace(&self, branch: &str, seen: u64, timeout: Duration) {
        futex_wait(self.counter(slot(branch)), seen, timeout);
    }

    /// Wakes every thread sleeping in [`Generation::wait_namespace`] on
    /// `branch`'s counter (and on branches sharing its slot).
    pub fn wake_namespace(&self, branch: &str) {
        futex_wake(self.counter(slot(branch)));
    }

    /// Registers a mount of `branch` by this process; `None` when all
    /// [`MOUNTS`] records are held by live processes. Its swept value
    /// starts at 0: writers wait for its first [`Generation::swept`].
    pub fn claim(&self, branch: &str) -> Option<MountSeat> {
        let me = u64::from(std::process::id());
        for i in 0..MOUNTS {
            let pid = self.record(i, 0);
            let old = pid.load(Ordering::Acquire);
            let took = if old == 0 {
                let ok = pid
                    .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if ok {
                    self.word(IN_USE).fetch_add(1, Ordering::AcqRel);
                }
                ok
            } else {
                // A mount that died without releasing (SIGKILL): its record
                // is taken over, the count already includes it.
                !alive(old)
                    && pid
                        .compare_exchange(old, me, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            };
            if took {
                self.record(i, 2).store(0, Ordering::Release);
                self.record(i, 1)
                    .store(slot(branch) as u64, Ordering::Release);
                return Some(MountSeat(i));
            }
        }
        None
    }

    /// Records that mount `seat` has invalidated the kernel's caches up to
    /// namespace counter value `namespace`, and wakes writers waiting in
    /// [`Generation::settle`].
    pub fn swept(&self, seat: MountSeat, namespace: u64) {
        let w = self.record(seat.0, 2);
        w.store(namespace, Ordering::Release);
        futex_wake(w);
    }

    /// Frees mount record `seat` (the mount ends).
    pub fn release(&self, seat: MountSeat) {
        self.record(seat.0, 1).store(0, Ordering::Release);
        let me = u64::from(std::process::id());
        if self
            .record(seat.0, 0)
            .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.word(IN_USE).fetch_sub(1, Ordering::AcqRel);
        }
        futex_wake(self.record(seat.0, 2));
    }

    /// Frees record `seat` held by `pid`, a process that ended without
    /// releasing it (unless someone took it over meanwhile).
    fn free_dead(&self, seat: usize, pid: u64) {
        if self
            .record(seat, 0)
            .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.word(IN_USE).fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until every live mount of `branch`'s slot registered by
    /// another process has invalidated the kernel's caches up to the
    /// namespace counter now, at most `timeout`. False on timeout. One
    /// atomic read when no mount is registered. Call it with no store lock
    /// held: invalidating may wait on a request that waits on one.
    pub fn settle(&self, branch: &str, timeout: Duration) -> bool {
        if self.word(IN_USE).load(Ordering::Acquire) == 0 {
            return true;
        }
        let slot = slot(branch) as u64;
        let target = self.counter(slot as usize).load(Ordering::Acquire);
        let me = u64::from(std::process::id());
        let deadline = Instant::now() + timeout;
        for i in 0..MOUNTS {
            loop {
                let pid = self.record(i, 0).load(Ordering::Acquire);
                if pid == 0 || pid == me || self.record(i, 1).load(Ordering::Acquire) != slot {
                    break;
                }
                let w = self.record(i, 2);
                let swept = w.load(Ordering::Acquire);
                if swept >= target {
                    break;
                }
                if !alive(pid) {
                    // Freed for the next mount; writers stop waking.
                    self.free_dead(i, pid);
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                // Bounded so a mount that dies meanwhile is noticed.
                futex_wait(w, swept, left.min(Duration::from_millis(100)));
            }
        }
        true
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

    /// Records a change of names in `branch`, once it is done: mounts of
    /// the branch are woken to drop what their kernels cache.
    pub fn bump_namespace(&self, branch: &str) {
        let i = self.bump_namespace_begin(branch);
        // Mounts sleep on the counter word; no system call when none runs.
        if self.word(IN_USE).load(Ordering::Acquire) != 0 {
            futex_wake(self.counter(i));
        }
    }

    /// Records that names in `branch` are about to change: lock-free
    /// readers stop trusting what they cached, but mounts are not woken
    /// (a sweep now would be undone by lookups before the change lands;
    /// the bump after the change wakes them). Returns the slot.
    pub fn bump_namespace_begin(&self, branch: &str) -> usize {
        let i = slot(branch);
        // Shared first: a reader between the two sees one change too many
        // from elsewhere (a spurious invalidation), never one too few.
        self.counter(i).fetch_add(1, Ordering::AcqRel);
        self.own[i].fetch_add(1, Ordering::AcqRel);
        i
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

    /// Logs the paths (branch-relative, as bytes) a change of names in
    /// `branch` touched, `None` when it cannot say: call it once per
    /// change, after the change is on disk and before the bump that ends
    /// it. Nothing is written when no mount is registered.
    pub fn log_change(&self, branch: &str, paths: Option<&[&[u8]]>) {
        if !self.logging() {
            return;
        }
        let slot = slot(branch) as u64;
        match paths {
            Some(ps) if !ps.is_empty() && ps.iter().all(|p| p.len() <= ENTRY_PATH) => {
                for (i, p) in ps.iter().enumerate() {
                    let more = if i == 0 { 0 } else { MORE };
                    self.log_entry(slot | more, p);
                }
            }
            _ => self.log_entry(slot | UNKNOWN, b""),
        }
    }

    /// True while a mount is registered: changes are logged for it.
    pub(crate) fn logging(&self) -> bool {
        self.word(IN_USE).load(Ordering::Acquire) != 0
    }

    /// Writes one ring entry (a seqlock: readers that see it half written
    /// or overwritten ignore it or stop trusting the ring).
    fn log_entry(&self, head: u64, path: &[u8]) {
        let n = self.word(RING_HEAD).fetch_add(1, Ordering::AcqRel);
        let e = entry_word(n);
        let seq = self.word(e);
        seq.store(WRITING, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.word(e + 1).store(head, Ordering::Relaxed);
        self.word(e + 2).store(path.len() as u64, Ordering::Relaxed);
        for (i, chunk) in path.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(e + 3 + i)
                .store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        seq.store(n + 1, Ordering::Release);
    }

    /// The ring's position now: where a reader starts.
    pub fn ring_head(&self) -> u64 {
        self.word(RING_HEAD).load(Ordering::Acquire)
    }

    /// The paths changes in `branch`'s slot logged since `cursor` (a ring
    /// position from [`Generation::ring_head`] or an earlier call, moved
    /// on to where the next call starts). Entries still being written are
    /// read again next time.
    pub fn read_changes(&self, branch: &str, cursor: &mut u64) -> LoggedChanges {
        let slot = slot(branch) as u64;
        let head = self.ring_head();
        let mut out = LoggedChanges::default();
        if head.wrapping_sub(*cursor) > RING_ENTRIES as u64 {
            // More entries than the ring holds since the last look.
            out.unknown = true;
            *cursor = head;
            return out;
        }
        let mut next = None;
        for n in *cursor..head {
            let e = entry_word(n);
            let seq = self.word(e);
            let s1 = seq.load(Ordering::Acquire);
            if s1 == WRITING || s1 < n + 1 {
                // Claimed, not written yet (an entry for a change whose
                // ending bump has not happened): read it next time.
                next.get_or_insert(n);
                continue;
            }
            let head_word = self.word(e + 1).load(Ordering::Relaxed);
            let len = (self.word(e + 2).load(Ordering::Relaxed) as usize).min(ENTRY_PATH);
            let mut path = Vec::with_capacity(len);
            for i in 0..len.div_ceil(8) {
                let w = self.word(e + 3 + i).load(Ordering::Relaxed).to_le_bytes();
                path.extend_from_slice(&w[..(len - i * 8).min(8)]);
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if s1 != n + 1 || seq.load(Ordering::Relaxed) != s1 {
                // Overwritten: the ring went round since `cursor`.
                out.unknown = true;
                continue;
            }
            if head_word & 0xffff_ffff != slot {
                continue;
            }
            if head_word & MORE == 0 {
                out.changes += 1;
            }
            if head_word & UNKNOWN != 0 {
                out.unknown = true;
            } else {
                out.paths.push(path);
            }
        }
        *cursor = next.unwrap_or(head);
        out
    }
}

/// The index of the first word of ring entry number `n`.
fn entry_word(n: u64) -> usize {
    RING + (n as usize % RING_ENTRIES) * ENTRY
}

/// What [`Generation::read_changes`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoggedChanges {
    /// Changes logged (one per change, whatever the paths).
    pub changes: u64,
    /// The paths they touched.
    pub paths: Vec<Vec<u8>>,
    /// A change did not say what it touched, or entries were lost: the
    /// paths are not the whole story.
    pub unknown: bool,
}

/// Whether process `pid` runs (one of another user counts; a zombie, a
/// killed mount its parent has not reaped, does not).
fn alive(pid: u64) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is
    // sent.
    let r = unsafe { libc::kill(p, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        if let Some(i) = stat.iter().rposition(|&b| b == b')') {
            if matches!(stat.get(i + 2), Some(b'Z' | b'X')) {
                return false;
            }
        }
    }
    true
}

#[cfg(target_os = "linux")]
/// The low 32 bits of `w`, the part a futex watches (every increment
/// changes them).
fn low_half(w: &AtomicU64) -> &std::sync::atomic::AtomicU32 {
    let p = std::ptr::from_ref(w).cast::<std::sync::atomic::AtomicU32>();
    #[cfg(target_endian = "big")]
    // SAFETY: the second half of the 8-byte word, 4-aligned.
    let p = unsafe { p.add(1) };
    // SAFETY: half of a live, 8-aligned AtomicU64 with the same lifetime;
    // only accessed atomically.
    unsafe { &*p }
}

/// Sleeps while `w` holds `seen` (low 32 bits), at most `timeout`.
#[cfg(target_os = "linux")]
fn futex_wait(w: &AtomicU64, seen: u64, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT (shared: the word is in a MAP_SHARED file
    // mapping other processes wake) on a live 4-aligned word, with a valid
    // relative timeout; it only reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            low_half(w).as_ptr(),
            libc::FUTEX_WAIT,
            seen as u32,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every sleeper on `w`.
#[cfg(target_os = "linux")]
fn futex_wake(w: &AtomicU64) {
    // SAFETY: FUTEX_WAKE (shared) on a live 4-aligned word; it reads
    // nothing.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            low_half(w).as_ptr(),
            libc::FUTEX_WAKE,
            libc::c_int::MAX,
        );
    }
}

/// Elsewhere no futex: a short sleep, and the waiter polls.
#[cfg(not(target_os = "linux"))]
fn futex_wait(w: &AtomicU64, seen: u64, timeout: Duration) {
    if w.load(Ordering::Acquire) == seen {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }
}

/// Elsewhere no futex: waiters poll.
#[cfg(not(target_os = "linux"))]
fn futex_wake(_: &AtomicU64) {}

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
    fn the_change_ring_gives_a_mount_the_paths_of_changes_made_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let writer = Generation::open(t.path()).unwrap();
        let mount = Generation::open(t.path()).unwrap();
        // Nothing is logged while no mount is registered.
        let mut cursor = mount.ring_head();
        writer.log_change("x", Some(&[b"a.txt"]));
        assert_eq!(
            mount.read_changes("x", &mut cursor),
            LoggedChanges::default()
        );
        let seat = mount.claim("x").unwrap();
        writer.log_change("x", Some(&[b"dir/a.txt"]));
        writer.log_change("x", Some(&[b"old", b"new/name"]));
        writer.log_change("y", Some(&[b"other-branch"]));
        let got = mount.read_changes("x", &mut cursor);
        assert_eq!(got.changes, 2, "{got:?}");
        assert_eq!(
            got.paths,
            [b"dir/a.txt".to_vec(), b"old".to_vec(), b"new/name".to_vec()]
        );
        assert!(!got.unknown);
        // Read once: the next look starts after them.
        assert_eq!(
            mount.read_changes("x", &mut cursor),
            LoggedChanges::default()
        );
        // A change that cannot say what it touched, a path longer than an
        // entry holds, and more changes than the ring holds all make the
        // log incomplete.
        writer.log_change("x", None);
        assert!(mount.read_changes("x", &mut cursor).unknown);
        let long = vec![b'n'; ENTRY_PATH + 1];
        writer.log_change("x", Some(&[&long]));
        assert!(mount.read_changes("x", &mut cursor).unknown);
        let exact = vec![b'e'; ENTRY_PATH];
        writer.log_change("x", Some(&[&exact]));
        assert_eq!(mount.read_changes("x", &mut cursor).paths, [exact]);
        for _ in 0..=RING_ENTRIES {
            writer.log_change("x", Some(&[b"f"]));
        }
        let got = mount.read_changes("x", &mut cursor);
        assert!(got.unknown, "the ring went round: {got:?}");
        writer.log_change("x", Some(&[b"after"]));
        assert_eq!(
            mount.read_changes("x", &mut cursor).paths,
            [b"after".to_vec()]
        );
        mount.release(seat);
    }

    #[test]
    fn an_entry_claimed_but_not_written_is_read_on_a_later_look() {
        let t = tempfile::tempdir().unwrap();
        let g = Generation::open(t.path()).unwrap();
        let seat = g.claim("x").unwrap();
        let mut cursor = g.ring_head();
        // A writer between claiming its entry and finishing it.
        let n = g.word(RING_HEAD).fetch_add(1, Ordering::AcqRel);
        let e = entry_word(n);
        g.word(e).store(WRITING, Ordering::Release);
        g.log_change("x", Some(&[b"later"]));
        let got = g.read_changes("x", &mut cursor);
        assert_eq!(got.paths, [b"later".to_vec()]);
        assert_eq!(cursor, n, "the unfinished entry is read next time");
        // Finished: it is read then (the one after it again, which costs
        // only a repeated invalidation).
        g.word(e + 1).store(slot("x") as u64, Ordering::Relaxed);
        g.word(e + 2).store(1, Ordering::Relaxed);
        g.word(e + 3).store(u64::from(b'w'), Ordering::Relaxed);
        g.word(e).store(n + 1, Ordering::Release);
        let got = g.read_changes("x", &mut cursor);
        assert_eq!(got.paths, [b"w".to_vec(), b"later".to_vec()]);
        assert_eq!(cursor, g.ring_head());
        g.release(seat);
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

    /// Makes mount record `seat` look held by process `pid`.
    fn hold(g: &Generation, seat: MountSeat, pid: u32) {
        g.record(seat.0, 0).store(u64::from(pid), Ordering::Release);
    }

    /// The pid of a process that has ended (and been reaped).
    fn dead_pid() -> u32 {
        // SAFETY: the child exits at once with _exit.
        match unsafe { libc::fork() } {
            // SAFETY: ends the child without running the parent's atexit
            // handlers or destructors.
            0 => unsafe { libc::_exit(0) },
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: reaps the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                pid as u32
            }
            _ => panic!("fork failed"),
        }
    }

    #[test]
    fn mounts_claim_distinct_records_and_release_them() {
        let t = tempfile::tempdir().unwrap();
        let a = Generation::open(t.path()).unwrap();
        let b = Generation::open(t.path()).unwrap();
        assert_eq!(b.word(IN_USE).load(Ordering::Acquire), 0);
        let s1 = a.claim("x").unwrap();
        let s2 = b.claim("y").unwrap();
        assert_ne!(s1, s2);
        assert_eq!(a.word(IN_USE).load(Ordering::Acquire), 2);
        a.release(s1);
        b.release(s2);
        assert_eq!(a.word(IN_USE).load(Ordering::Acquire), 0);
        // Released records are claimed again.
        let s3 = a.claim("x").unwrap();
        assert!(s3 == s1 || s3 == s2);
        a.release(s3);
    }

    #[test]
    fn settle_waits_for_another_live_mount_of_the_branch_to_sweep() {
        let t = tempfile::tempdir().unwrap();
        let g = Generation::open(t.path()).unwrap();
        assert!(
            g.settle("x", Duration::ZERO),
            "no mount: nothing to wait for"
        );
        let seat = g.claim("x").unwrap();
        g.bump_namespace("x");
        // The caller's own mounts are not waited for.
        assert!(g.settle("x", Duration::ZERO));
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        hold(&g, seat, parent);
        assert!(
            !g.settle("x", Duration::from_millis(20)),
            "a live mount that has not swept"
        );
        // Another branch (in another slot) is not held up by it.
        assert_ne!(slot("x"), slot("y"));
        assert!(g.settle("y", Duration::ZERO));
        // Once the mount records its sweep, the waiter goes on.
        let now = g.namespace("x");
        std::thread::scope(|s| {
            s.spawn(|| g.swept(seat, now));
            assert!(g.settle("x", Duration::from_secs(60)));
        });
        hold(&g, seat, std::process::id());
        g.release(seat);
    }

    #[test]
    fn a_dead_mounts_record_is_ignored_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let g = Generation::open(t.path()).unwrap();
        let seat = g.claim("x").unwrap();
        hold(&g, seat, dead_pid());
        g.bump_namespace("x");
        assert!(
            g.settle("x", Duration::from_secs(60)),
            "a mount that died without releasing its record"
        );
        // The settle freed it: writers no longer wake anyone.
        assert_eq!(g.word(IN_USE).load(Ordering::Acquire), 0);
        // A dead holder's record is also taken over by the next mount.
        let seat = g.claim("x").unwrap();
        hold(&g, seat, dead_pid());
        let again = g.claim("x").unwrap();
        assert_eq!(again, seat);
        assert_eq!(g.word(IN_USE).load(Ordering::Acquire), 1);
        g.release(again);
        assert_eq!(g.word(IN_USE).load(Ordering::Acquire), 0);
    }

    #[test]
    fn older_one_page_files_grow_and_keep_their_counters() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(GENERATION_FILE);
        let mut page = vec![0u8; 4096];
        page[8 * slot("x")..8 * slot("x") + 8].copy_from_slice(&7u64.to_ne_bytes());
        std::fs::write(&path, &page).unwrap();
        let g = Generation::open(t.path()).unwrap();
        assert_eq!(g.namespace("x"), 7);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), LEN as u64);
        assert!(g.settle("x", Duration::ZERO));
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
