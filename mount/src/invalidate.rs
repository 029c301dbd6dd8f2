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

use crate::{
    fs::IoState,
    inodes::{Inodes, ROOT_INO},
};

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

/// Tells the kernel to forget every name and attribute of the mount it
/// may cache. False once the mount is gone.
fn sweep(inodes: &Mutex<Inodes>, io: &IoState) -> bool {
    let Some(n) = io.notifier.get() else {
        return true;
    };
    // Copied out: the kernel may wait on a request that waits on the table.
    let entries = inodes.lock().unwrap_or_else(|e| e.into_inner()).entries();
    tracing::debug!(
        entries = entries.len(),
        "branch changed elsewhere: invalidating the kernel's caches"
    );
    let gone = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ENODEV) | Some(libc::EBADF)
        )
    };
    // Attributes, and the cached data: a directory's listing (kept across
    // opens), a file's pages.
    if let Err(e) = n.inval_inode(INodeNo(ROOT_INO), 0, 0) {
        if gone(&e) {
            return false;
        }
    }
    // Names cached as missing: forgotten (a later lookup asks again).
    let negatives = std::mem::take(&mut *io.negatives.lock().unwrap_or_else(|e| e.into_inner()));
    for (parent, name) in negatives {
        if let Err(e) = n.inval_entry(INodeNo(parent), &name) {
            if gone(&e) {
                return false;
            }
        }
    }
    for (parent, name, ino) in entries {
        // ENOENT: the kernel holds nothing for it.
        if let Err(e) = n.inval_entry(INodeNo(parent), &name) {
            if gone(&e) {
                return false;
            }
        }
        if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
            if gone(&e) {
                return false;
            }
        }
    }
    true
}
