//! Keeps the kernel's name and attribute caches of a mount true when the
//! branch changes through another path (the daemon, the CLI, another
//! mount): a thread watches the store's shared change counters and, when
//! they moved for a change this process did not make, tells the kernel to
//! forget the names and attributes it may hold for what changed. The
//! thread sleeps on the branch's counter word (writers wake it), and after
//! each sweep records in the store's mount registry how far it has swept,
//! so a writer can wait for it before handing its change back
//! ([`Store::settle_mounts`]).
//!
//! Which names changed comes from the store's change ring (writers log
//! the paths of each change while a mount is registered, see
//! [`agentfs_core::Generation::log_change`]): a sweep then forgets those
//! names and their directories only. When the ring cannot vouch for every
//! change (it went round, a change did not say what it touched, or the
//! counter moved by more bumps than the logged changes explain: a writer
//! that logs nothing) the sweep forgets every name the server knows.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use std::{collections::HashSet, ffi::OsString};

use agentfs_core::{BranchPath, LoggedChanges, Store};
use fuser::INodeNo;

use crate::{fs::IoState, inodes::Inodes};

/// The longest sleep between two readings of the counters (writers wake
/// the thread sooner): how soon a stop is noticed.
const TICK: Duration = Duration::from_millis(200);

/// The invalidating thread; stops when dropped.
pub(crate) struct Sweeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Wakes the thread (sleeping on the branch's counter) to stop.
    waker: Arc<Store>,
    branch: String,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.generation().wake_namespace(&self.branch);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sweeper {
    /// Starts watching `branch` of `store` for changes made elsewhere.
    pub(crate) fn start(
        store: Arc<Store>,
        branch: String,
        inodes: Arc<Mutex<Inodes>>,
        io: Arc<IoState>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let seat = store.generation().claim(&branch);
        let (waker, watched) = (store.clone(), branch.clone());
        if seat.is_none() {
            tracing::warn!(
                "the store's mount registry is full: writers elsewhere will not wait for this mount's invalidations"
            );
        }
        let thread = std::thread::Builder::new()
            .name("agentfs-inval".into())
            .spawn(move || {
                let g = store.generation();
                let mut published = None;
                let mut log = ChangeLog::new(g.ring_head(), g.namespace(&branch));
                while !s.load(Ordering::Relaxed) {
                    // Read before the sweep: everything up to it is swept
                    // when the sweep ends (this process's own changes need
                    // none).
                    let counter = g.namespace(&branch);
                    let now = store.outside_changes(&branch);
                    // Read after the counter: every change the counter
                    // counts as done has logged its paths.
                    let logged = g.read_changes(&branch, &mut log.cursor);
                    let verdict = log.explains(counter, &logged);
                    if now != io.swept.load(Ordering::Acquire) || verdict == Verdict::EveryNow {
                        let only = (verdict == Verdict::Paths).then_some(logged.paths.as_slice());
                        if !sweep(&inodes, &io, only) {
                            break;
                        }
                        // Recorded once done (until then, opens do not
                        // trust the caches); a change during the sweep
                        // moved the counter past `now` and gets its own.
                        io.swept.store(now, Ordering::Release);
                    }
                    if let Some(seat) = seat.filter(|_| published != Some(counter)) {
                        g.swept(seat, counter);
                        published = Some(counter);
                    }
                    g.wait_namespace(&branch, counter, TICK);
                }
                if let Some(seat) = seat {
                    g.release(seat);
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if let Some(seat) = seat {
                    waker.generation().release(seat);
                }
                return Err(e);
            }
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            waker,
            branch: watched,
        })
    }
}

/// A sweeper's place in the change ring, and its check that the logged
/// changes account for the counter's moves.
#[derive(Debug)]
struct ChangeLog {
    /// Ring position read up to.
    cursor: u64,
    /// The branch counter's value at the last look.
    counter: u64,
    /// Bumps the logged changes did not explain yet (each change bumps
    /// twice, once before and once after; one change may be half way).
    unexplained: u64,
    /// No look yet: changes made between the mount's start and the
    /// thread's first look are in no log it read.
    fresh: bool,
}

impl ChangeLog {
    fn new(cursor: u64, counter: u64) -> Self {
        Self {
            cursor,
            counter,
            unexplained: 0,
            fresh: true,
        }
    }

    /// How to sweep after a look that read `counter`, then `logged`:
    /// the logged paths when they name every change the counter moved for
    /// since the last look (at most one change may be half way: its first
    /// bump counted, its paths not logged yet).
    fn explains(&mut self, counter: u64, logged: &LoggedChanges) -> Verdict {
        let moved = counter.wrapping_sub(self.counter);
        // Still half way a whole look later (the thread wakes at every
        // bump, else after `TICK`): its writer may have died in it, after
        // changing names it never logged.
        let stalled = moved == 0 && logged.changes == 0 && self.unexplained == 1;
        self.counter = counter;
        self.unexplained = (self.unexplained + moved).saturating_sub(2 * logged.changes);
        if std::mem::take(&mut self.fresh) {
            self.unexplained = 0;
            return Verdict::Every;
        }
        if stalled {
            self.unexplained = 0;
            return Verdict::EveryNow;
        }
        if logged.unknown || self.unexplained > 1 {
            // Every name is forgotten: nothing is owed any more.
            self.unexplained = 0;
            return Verdict::Every;
        }
        Verdict::Paths
    }
}

/// What a sweep must forget, from [`ChangeLog::explains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The logged paths.
    Paths,
    /// Every name (if another process changed any).
    Every,
    /// Every name, whoever made the change.
    EveryNow,
}

/// Names (directory inode, name) and inodes for the kernel to forget.
type Forget = (Vec<(u64, OsString)>, HashSet<u64>);

/// What a sweep limited to `paths` (branch-relative, as logged) tells the
/// kernel to forget: each path's name and its ancestors' names in their
/// directories, and the inodes of the path and of its ancestors (the
/// directories whose listings and attributes a change touches). `None`
/// when a path does not parse (then every name is forgotten).
fn targets(t: &Inodes, paths: &[Vec<u8>]) -> Option<Forget> {
    use std::os::unix::ffi::OsStrExt;
    let mut entries = HashSet::new();
    let mut inodes = HashSet::new();
    for raw in paths {
        let mut p = BranchPath::parse(std::ffi::OsStr::from_bytes(raw)).ok()?;
        loop {
            if let Some(i) = t.get(&p) {
                inodes.insert(i);
            }
            let Some(parent) = p.parent() else { break };
            if let (Some(pi), Some(name)) = (t.get(&parent), p.file_name()) {
                entries.insert((pi, name.to_os_string()));
            }
            p = parent;
        }
    }
    Some((entries.into_iter().collect(), inodes))
}

/// Tells the kernel to forget the names of the mount it may cache (every
/// one, or with `only` those of the logged paths), and the attributes and
/// data of what it can reach without a lookup. False once the mount is
/// gone.
///
/// An invalidated name makes the next path walk through it ask the server
/// again, and the reply refreshes the inode's attributes. The kernel uses
/// an inode's cached attributes or data without a lookup only where it
/// holds the inode otherwise: a directory (its kept listing; `.`, `..`, a
/// working directory) and an open file (`fstat`, its pages). Those are
/// invalidated as inodes too (with `only`, the changed paths' own and their
/// directories', and every open file); other inodes need not be (an
/// invalidation is a system call, and a mount that knows 10,000 names would
/// make every outside change pay 10,000 more).
fn sweep(inodes: &Mutex<Inodes>, io: &IoState, only: Option<&[Vec<u8>]>) -> bool {
    let Some(n) = io.notifier.get() else {
        return true;
    };
    // Copied out: the kernel may wait on a request that waits on the table.
    let (entries, mut held, every_name): (Vec<(u64, OsString)>, Vec<u64>, bool) = {
        let t = inodes.lock().unwrap_or_else(|e| e.into_inner());
        match only.and_then(|paths| targets(&t, paths)) {
            Some((entries, inodes)) => (entries, inodes.into_iter().collect(), false),
            None => (
                t.entries()
                    .into_iter()
                    .map(|(parent, name, _)| (parent, name))
                    .collect(),
                t.dirs(),
                true,
            ),
        }
    };
    held.extend(io.ios.lock().unwrap_or_else(|e| e.into_inner()).keys());
    tracing::debug!(
        entries = entries.len(),
        held = held.len(),
        every_name,
        "branch changed elsewhere: invalidating the kernel's caches"
    );
    let gone = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ENODEV) | Some(libc::EBADF)
        )
    };
    // Names cached as missing: forgotten (a later lookup asks again).
    let negatives = std::mem::take(&mut *io.negatives.lock().unwrap_or_else(|e| e.into_inner()));
    for (parent, name) in negatives {
        if let Err(e) = n.inval_entry(INodeNo(parent), &name) {
            if gone(&e) {
                return false;
            }
        }
    }
    for (parent, name) in entries {
        // ENOENT: the kernel holds nothing for it.
        if let Err(e) = n.inval_entry(INodeNo(parent), &name) {
            if gone(&e) {
                return false;
            }
        }
    }
    // Attributes and cached data (a directory's listing, kept across
    // opens; an open file's pages) of what is held (the root is a
    // directory).
    for ino in held {
        if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
            if gone(&e) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(changes: u64, unknown: bool) -> LoggedChanges {
        LoggedChanges {
            changes,
            paths: Vec::new(),
            unknown,
        }
    }

    #[test]
    fn logged_changes_must_explain_the_counters_moves() {
        use Verdict::*;
        let mut log = ChangeLog::new(0, 10);
        // The first look cannot vouch for changes before it.
        assert_eq!(log.explains(10, &logged(0, false)), Every);
        // One change, both bumps and its record seen.
        assert_eq!(log.explains(12, &logged(1, false)), Paths);
        // A change half way (its first bump), then done.
        assert_eq!(log.explains(13, &logged(0, false)), Paths);
        assert_eq!(log.explains(14, &logged(1, false)), Paths);
        // Its record seen before its last bump.
        assert_eq!(log.explains(15, &logged(1, false)), Paths);
        assert_eq!(log.explains(16, &logged(0, false)), Paths);
        // A writer that logs nothing: two bumps, no record.
        assert_eq!(log.explains(18, &logged(0, false)), Every);
        // ... also when its bumps fall in two looks.
        assert_eq!(log.explains(19, &logged(0, false)), Paths);
        assert_eq!(log.explains(20, &logged(0, false)), Every);
        // Entries lost or a change that cannot say what it touched.
        assert_eq!(log.explains(22, &logged(1, true)), Every);
        // Nothing moved: nothing to explain.
        assert_eq!(log.explains(22, &logged(0, false)), Paths);
        // A change half way, still half way at the next look: its writer
        // may have died in it (once; then nothing is owed).
        assert_eq!(log.explains(23, &logged(0, false)), Paths);
        assert_eq!(log.explains(23, &logged(0, false)), EveryNow);
        assert_eq!(log.explains(23, &logged(0, false)), Paths);
    }

    #[test]
    fn a_limited_sweep_forgets_the_paths_their_ancestors_and_their_directories() {
        let mut t = Inodes::default();
        let root = t.ino(&BranchPath::root());
        let p = |s: &str| BranchPath::parse(s).unwrap();
        let a = t.ino(&p("a"));
        let b = t.ino(&p("a/b"));
        let f = t.ino(&p("a/b/f.txt"));
        let other = t.ino(&p("other"));
        let _ = t.ino(&p("other/g.txt"));
        let (mut entries, inodes) =
            targets(&t, &[b"a/b/f.txt".to_vec(), b"a/new/x".to_vec()]).unwrap();
        entries.sort();
        let mut want = vec![
            (root, OsString::from("a")),
            (a, OsString::from("b")),
            (b, OsString::from("f.txt")),
            (a, OsString::from("new")),
        ];
        want.sort();
        assert_eq!(entries, want);
        assert_eq!(inodes, HashSet::from([root, a, b, f]));
        assert!(!inodes.contains(&other));
        // A path that cannot be one: every name is forgotten instead.
        assert!(targets(&t, &[b"../x".to_vec()]).is_none());
    }
}
