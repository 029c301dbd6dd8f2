//! Keeps the kernel's name and attribute caches of a mount true when the
//! branch changes through another path (the daemon, the CLI, another
//! mount): a thread watches the store's shared change counters and, when
//! they moved for a change this process did not make, tells the kernel to
//! forget every name and attribute it may hold for the mount. The thread
//! sleeps on the branch's counter word (writers wake it), and after each
//! sweep records in the store's mount registry how far it has swept, so a
//! writer can wait for it before handing its change back
//! ([`Store::settle_mounts`]).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use agentfs_core::Store;
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
                while !s.load(Ordering::Relaxed) {
                    // Read before the sweep: everything up to it is swept
                    // when the sweep ends (this process's own changes need
                    // none).
                    let counter = g.namespace(&branch);
                    let now = store.outside_changes(&branch);
                    if now != io.swept.load(Ordering::Acquire) {
                        if !sweep(&inodes, &io) {
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

/// Tells the kernel to forget every name of the mount it may cache, and
/// the attributes and data of what it can reach without a lookup. False
/// once the mount is gone.
///
/// Every known name is invalidated, so the next path walk through it asks
/// the server again, and the reply refreshes the inode's attributes. The
/// kernel uses an inode's cached attributes or data without a lookup only
/// where it holds the inode otherwise: a directory (its kept listing; `.`,
/// `..`, a working directory) and an open file (`fstat`, its pages). Those
/// are invalidated as inodes too; other inodes need not be (an invalidation
/// is a system call, and a mount that knows 10,000 names would make every
/// outside change pay 10,000 more).
fn sweep(inodes: &Mutex<Inodes>, io: &IoState) -> bool {
    let Some(n) = io.notifier.get() else {
        return true;
    };
    // Copied out: the kernel may wait on a request that waits on the table.
    let (entries, mut held) = {
        let t = inodes.lock().unwrap_or_else(|e| e.into_inner());
        (t.entries(), t.dirs())
    };
    held.extend(io.ios.lock().unwrap_or_else(|e| e.into_inner()).keys());
    tracing::debug!(
        entries = entries.len(),
        held = held.len(),
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
    for (parent, name, _) in entries {
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
