//! Directory streams over merged listings, shared by the Linux and macOS
//! interposers. A `DIR *` the shim returns points to a [`ShimDir`]; the
//! registry tells them apart from libc's own, which every directory
//! function passes through untouched.

use std::{
    collections::HashSet,
    ffi::c_int,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::resolve::Listed;

/// The record `readdir` returns: `dirent64` on Linux (`dirent` shares its
/// layout on 64-bit Linux), `dirent` (64-bit inodes) on macOS.
#[cfg(target_os = "linux")]
pub(crate) type Dirent = libc::dirent64;
/// The record `readdir` returns: `dirent` (64-bit inodes) on macOS.
#[cfg(not(target_os = "linux"))]
pub(crate) type Dirent = libc::dirent;

/// The set of live shim directory streams (addresses).
pub(crate) type Registry = HashSet<usize>;

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Locks the registry (also for the fork handlers).
pub(crate) fn lock_registry() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory stream of the branch.
pub(crate) struct ShimDir {
    /// The directory's fd (in the branch's fd table).
    pub fd: c_int,
    /// Canonical branch path (for rewinding).
    pub path: Vec<u8>,
    /// The merged listing (shared with the cache).
    pub entries: Arc<Vec<Listed>>,
    /// Next entry.
    pub pos: usize,
    /// The record `readdir` returns.
    pub buf: Dirent,
}

impl ShimDir {
    /// A stream over `entries` for `fd`.
    pub(crate) fn new(fd: c_int, path: Vec<u8>, entries: Arc<Vec<Listed>>) -> Box<Self> {
        Box::new(Self {
            fd,
            path,
            entries,
            pos: 0,
            // SAFETY: a dirent is plain data; all zeroes is valid.
            buf: unsafe { std::mem::zeroed() },
        })
    }

    /// Fills `out` with entry `pos` and advances; false at the end.
    pub(crate) fn next_into(&mut self, out: *mut Dirent) -> bool {
        let Some(e) = self.entries.get(self.pos) else {
            return false;
        };
        self.pos += 1;
        // SAFETY: `out` points to a dirent (ours or the caller's).
        let d = unsafe { &mut *out };
        d.d_ino = if e.ino == 0 { 1 } else { e.ino };
        #[cfg(target_os = "linux")]
        {
            d.d_off = self.pos as i64;
        }
        #[cfg(not(target_os = "linux"))]
        {
            d.d_seekoff = self.pos as u64;
        }
        d.d_type = e.dtype;
        let n = e.name.len().min(d.d_name.len() - 1);
        for (dst, src) in d.d_name.iter_mut().zip(&e.name[..n]) {
            *dst = *src as libc::c_char;
        }
        d.d_name[n] = 0;
        #[cfg(not(target_os = "linux"))]
        {
            d.d_namlen = n as u16;
        }
        d.d_reclen = std::mem::size_of::<Dirent>() as u16;
        true
    }
}

/// Registers a stream; returns the `DIR *` to give the program.
pub(crate) fn register(d: Box<ShimDir>) -> *mut libc::DIR {
    let p = Box::into_raw(d);
    lock_registry()
        .get_or_insert_with(HashSet::new)
        .insert(p as usize);
    p.cast()
}

/// The shim stream behind `dirp`, if it is one.
pub(crate) fn lookup(dirp: *mut libc::DIR) -> Option<*mut ShimDir> {
    let g = lock_registry();
    g.as_ref()
        .filter(|r| r.contains(&(dirp as usize)))
        .map(|_| dirp.cast())
}

/// Unregisters and returns the stream behind `dirp`.
pub(crate) fn unregister(dirp: *mut libc::DIR) -> Option<Box<ShimDir>> {
    let mut g = lock_registry();
    let r = g.as_mut()?;
    if r.remove(&(dirp as usize)) {
        // SAFETY: registered pointers come from Box::into_raw in `register`
        // and are removed once.
        Some(unsafe { Box::from_raw(dirp.cast::<ShimDir>()) })
    } else {
        None
    }
}
