//! The store's files in the backstore's metadata directory besides the
//! graph database (see `graph_db`): the lock file (`lock`, held with
//! `flock` for the length of each operation: shared for reads, exclusive
//! for changes), the per-branch locks, the sessions of the processes that
//! have the store open, and the reader of the earlier graph format.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rustix::fs::FlockOperation;

use super::{
    error::{CoreError, CoreResult},
    graph::Graph,
};

/// File name of the lock.
pub const LOCK_FILE: &str = "lock";
/// Prefix of the temporary files the earlier format wrote `store.json`
/// through (a crash could leave one).
const LEGACY_TEMP_PREFIX: &str = ".store.json.tmp-";

/// Removes temporary files of the earlier format a crash left in `dir`.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(LEGACY_TEMP_PREFIX)
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads a graph of the earlier format (`store.json`); `None` when there
/// is none.
pub fn load_legacy_graph(meta: &Path) -> CoreResult<Option<Graph>> {
    let path = meta.join(crate::graph_db::LEGACY_GRAPH_FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoreError::io(format!("read {}", path.display()), e)),
    };
    let g: Graph =
        serde_json::from_reader(io::BufReader::new(f)).map_err(|e| CoreError::Corrupt {
            file: path.clone(),
            why: e.to_string(),
        })?;
    g.check().map_err(|why| CoreError::Corrupt {
        file: path.clone(),
        why,
    })?;
    Ok(Some(g))
}

/// Directory of the session files in the metadata directory.
pub const SESSION_DIR: &str = "sessions";

static SESSION_SEQ: AtomicU64 = AtomicU64::new(0);

/// This process's mark that it has the store open: a file in `sessions/`
/// it holds an exclusive `flock` on, removed when the store is dropped. A
/// file nobody holds was left by a process that died with the store open
/// (killed, crashed): only then can debris exist (half-made layers, work
/// directories), so only then does opening the store look for it, which
/// costs a walk over every layer.
#[derive(Debug)]
pub struct Session {
    path: PathBuf,
    _file: File,
}

impl Session {
    /// Registers a session in the store whose metadata directory is `meta`.
    pub fn start(meta: &Path) -> CoreResult<Self> {
        let path = meta.join(SESSION_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            SESSION_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = open_lock_file(&path)?;
        flock_file(&file, &path, LockMode::Exclusive, LockWait::Fail)?;
        Ok(Self { path, _file: file })
    }

    /// The session files of dead processes in `meta` (none held).
    pub fn dead(meta: &Path) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(meta.join(SESSION_DIR)) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| {
                File::open(p).is_ok_and(|f| {
                    rustix::fs::flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).is_ok()
                })
            })
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether to wait for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Block until the lock is free (the default).
    #[default]
    Block,
    /// Fail at once with [`CoreError::StoreBusy`].
    Fail,
}

/// Shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many readers at once.
    Shared,
    /// One writer, no readers.
    Exclusive,
}

/// The store's lock file. Threads of one process share its open file
/// description, where `flock` is one lock, not one per thread: shared holds
/// are counted so that the last thread out releases it. (Exclusive holds
/// are taken only by a thread that excludes every other thread of the
/// process first: the store's graph write lock.)
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
    wait: LockWait,
    shared: std::sync::Mutex<usize>,
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a StoreLock,
    mode: LockMode,
}

impl StoreLock {
    /// Opens (creating) the lock file in `meta`.
    pub fn open(meta: &Path, wait: LockWait) -> CoreResult<Self> {
        let path = meta.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        Ok(Self {
            file,
            path,
            wait,
            shared: std::sync::Mutex::new(0),
        })
    }

    /// The exclusive lock if no other process holds the lock now, else
    /// `None` (never waits).
    pub fn try_exclusive(&self) -> CoreResult<Option<LockGuard<'_>>> {
        match flock_file(&self.file, &self.path, LockMode::Exclusive, LockWait::Fail) {
            Ok(()) => Ok(Some(LockGuard {
                lock: self,
                mode: LockMode::Exclusive,
            })),
            Err(CoreError::StoreBusy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock in `mode`, waiting or failing as configured.
    pub fn lock(&self, mode: LockMode) -> CoreResult<LockGuard<'_>> {
        if mode == LockMode::Shared {
            let mut n = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if *n == 0 {
                flock_file(&self.file, &self.path, mode, self.wait)?;
            }
            *n += 1;
        } else {
            flock_file(&self.file, &self.path, mode, self.wait)?;
        }
        Ok(LockGuard { lock: self, mode })
    }
}

impl LockGuard<'_> {
    /// True for the exclusive lock.
    pub fn is_exclusive(&self) -> bool {
        self.mode == LockMode::Exclusive
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.mode == LockMode::Shared {
            let mut n = self.lock.shared.lock().unwrap_or_else(|p| p.into_inner());
            *n -= 1;
            if *n > 0 {
                return;
            }
        }
        let _ = rustix::fs::flock(self.lock.file.as_fd(), FlockOperation::Unlock);
    }
}

/// Opens (creating, with its directory) lock file `path`.
fn open_lock_file(path: &Path) -> CoreResult<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| CoreError::io(format!("create {}", dir.display()), e))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| CoreError::io(format!("open lock {}", path.display()), e))
}

/// `flock`s `file` in `mode`: at once if free, else waiting (with a log
/// line) or failing with [`CoreError::StoreBusy`] as `wait` says.
fn flock_file(file: &File, path: &Path, mode: LockMode, wait: LockWait) -> CoreResult<()> {
    {
        let (try_op, block_op) = match mode {
            LockMode::Shared => (
                FlockOperation::NonBlockingLockShared,
                FlockOperation::LockShared,
            ),
            LockMode::Exclusive => (
                FlockOperation::NonBlockingLockExclusive,
                FlockOperation::LockExclusive,
            ),
        };
        match rustix::fs::flock(file.as_fd(), try_op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(CoreError::io(format!("lock {}", path.display()), e.into())),
        }
        if wait == LockWait::Fail {
            return Err(CoreError::StoreBusy {
                lock: path.to_path_buf(),
            });
        }
        tracing::info!(lock = %path.display(), "waiting for another agentfs process to release the lock");
        loop {
            match rustix::fs::flock(file.as_fd(), block_op) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(CoreError::io(format!("lock {}", path.display()), e.into())),
            }
        }
    }
}

/// Directory of the per-branch lock files in the metadata directory.
pub const BRANCH_LOCK_DIR: &str = "branch-locks";

/// The per-branch locks of one store: file operations in one branch run
/// one at a time (across threads and processes); different branches do
/// not wait for each other. Lock files are never removed (removing one
/// while another process holds it open would split the lock in two); a
/// branch created again under the same name reuses its file.
#[derive(Debug)]
pub struct BranchLocks {
    dir: PathBuf,
    wait: LockWait,
    open: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<BranchLock>>>,
}

impl BranchLocks {
    /// The locks of the store whose metadata directory is `meta`.
    pub fn new(meta: &Path, wait: LockWait) -> Self {
        Self {
            dir: meta.join(BRANCH_LOCK_DIR),
            wait,
            open: Default::default(),
        }
    }

    /// The lock of branch `name` (a validated branch name), opened on
    /// first use.
    pub fn get(&self, name: &str) -> CoreResult<std::sync::Arc<BranchLock>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = open.get(name) {
            return Ok(l.clone());
        }
        let path = self.dir.join(name);
        let file = open_lock_file(&path)?;
        let l = std::sync::Arc::new(BranchLock {
            file,
            path,
            wait: self.wait,
            threads: std::sync::Mutex::new(()),
        });
        open.insert(name.to_string(), l.clone());
        Ok(l)
    }
}

/// Directory of the per-branch writer locks in the metadata directory.
pub const WRITER_LOCK_DIR: &str = "writer-locks";

/// Held (a shared `flock` on `writer-locks/<branch>`) while a file of the
/// branch is open for writing through an fd handed out by
/// [`crate::Tree::open`]: a snapshot that commits the branch's active layer
/// (no native snapshots) would capture that fd's later writes, so it is
/// refused while any process holds one. Released when dropped.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// The registration as an fd, to hand to another process: `flock`
    /// belongs to the open file description, so the registration holds
    /// while any copy of the fd (in any process) is open, and the kernel
    /// releases it when the last one is closed, even if the holder is
    /// killed.
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        self._file.into()
    }
}

impl BranchLocks {
    fn writer_file(&self, name: &str) -> CoreResult<(File, PathBuf)> {
        let path = self.dir.with_file_name(WRITER_LOCK_DIR).join(name);
        Ok((open_lock_file(&path)?, path))
    }

    /// Registers a writer of branch `name` until the lock is dropped.
    pub fn writer(&self, name: &str) -> CoreResult<WriterLock> {
        let (file, path) = self.writer_file(name)?;
        flock_file(&file, &path, LockMode::Shared, self.wait)?;
        Ok(WriterLock { _file: file })
    }

    /// True when no process holds a writer of branch `name`; the answer
    /// stands while the caller holds the store lock exclusive (writers
    /// register under the shared one).
    pub fn no_writers(&self, name: &str) -> CoreResult<bool> {
        let (file, path) = self.writer_file(name)?;
        match flock_file(&file, &path, LockMode::Exclusive, LockWait::Fail) {
            Ok(()) => Ok(true),
            Err(CoreError::StoreBusy { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One branch's lock: a mutex for this process's threads, then `flock`
/// for other processes.
#[derive(Debug)]
pub struct BranchLock {
    file: File,
    path: PathBuf,
    wait: LockWait,
    threads: std::sync::Mutex<()>,
}

/// Holds a branch lock until dropped.
#[derive(Debug)]
pub struct BranchGuard<'a> {
    lock: &'a BranchLock,
    _threads: std::sync::MutexGuard<'a, ()>,
}

impl BranchLock {
    /// Takes the lock, waiting or failing as the store was opened.
    pub fn lock(&self) -> CoreResult<BranchGuard<'_>> {
        let threads = match self.wait {
            LockWait::Block => self.threads.lock().unwrap_or_else(|p| p.into_inner()),
            LockWait::Fail => match self.threads.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(CoreError::StoreBusy {
                        lock: self.path.clone(),
                    })
                }
            },
        };
        flock_file(&self.file, &self.path, LockMode::Exclusive, self.wait)?;
        Ok(BranchGuard {
            lock: self,
            _threads: threads,
        })
    }
}

impl Drop for BranchGuard<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.lock.file.as_fd(), FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_legacy_graphs_are_named() {
        let t = tempfile::tempdir().unwrap();
        assert!(load_legacy_graph(t.path()).unwrap().is_none());
        fs::write(t.path().join("store.json"), b"{not json").unwrap();
        let e = load_legacy_graph(t.path()).unwrap_err();
        assert!(matches!(e, CoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("store.json"));
    }

    #[test]
    fn sessions_of_live_holders_are_not_dead() {
        let t = tempfile::tempdir().unwrap();
        let a = Session::start(t.path()).unwrap();
        assert!(Session::dead(t.path()).is_empty());
        // A file nobody holds: what a killed process leaves.
        fs::write(t.path().join(SESSION_DIR).join("1-0"), b"").unwrap();
        assert_eq!(
            Session::dead(t.path()),
            [t.path().join(SESSION_DIR).join("1-0")]
        );
        drop(a);
        assert_eq!(fs::read_dir(t.path().join(SESSION_DIR)).unwrap().count(), 1);
    }

    #[test]
    fn exclusive_lock_excludes_and_fail_mode_says_busy() {
        let t = tempfile::tempdir().unwrap();
        let a = StoreLock::open(t.path(), LockWait::Fail).unwrap();
        let b = StoreLock::open(t.path(), LockWait::Fail).unwrap();
        let g = a.lock(LockMode::Exclusive).unwrap();
        let e = b.lock(LockMode::Shared).unwrap_err();
        assert!(e.to_string().starts_with("store busy"), "{e}");
        drop(g);
        let _s1 = a.lock(LockMode::Shared).unwrap();
        let _s2 = b.lock(LockMode::Shared).unwrap();
    }
}
