//! Directory streams over merged listings, shared by the Linux and macOS
//! interposers. A `DIR *` the shim returns points to a [`ShimDir`]; the
//! registry tells them apart from libc's own, which every directory
//! function passes through untouched.

use std::{
    cell::Cell,
    collections::HashSet,
    ffi::c_int,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use crate::resolve::Listing;

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
    pub entries: Arc<Listing>,
    /// Next entry.
    pub pos: usize,
    /// The record `readdir` returns.
    pub buf: Dirent,
    /// libc's own stream on `fd`, for a directory only the base holds
    /// (its listing is the base directory's own: read by libc, without a
    /// merged copy); closed with the stream. Null for a merged listing.
    #[cfg(target_os = "linux")]
    pub native: *mut libc::DIR,
    /// Whether `readdir` reads `native` (until a rewind finds the
    /// directory no longer the base's alone).
    #[cfg(target_os = "linux")]
    pub use_native: bool,
    /// For a stream `opendir` made on a merged directory without opening
    /// it (`fd` is -1): the physical directory `dirfd` opens when the
    /// program asks for the stream's fd.
    #[cfg(target_os = "linux")]
    pub lazy: Option<std::ffi::CString>,
}

impl ShimDir {
    /// A stream over `entries` for `fd`.
    pub(crate) fn new(fd: c_int, path: Vec<u8>, entries: Arc<Listing>) -> Box<Self> {
        Box::new(Self {
            fd,
            path,
            entries,
            pos: 0,
            // SAFETY: a dirent is plain data; all zeroes is valid.
            buf: unsafe { std::mem::zeroed() },
            #[cfg(target_os = "linux")]
            native: std::ptr::null_mut(),
            #[cfg(target_os = "linux")]
            use_native: false,
            #[cfg(target_os = "linux")]
            lazy: None,
        })
    }

    /// A stream of directory `fd` (branch path `path`), which only the base
    /// holds, read through libc's own stream `native` on it.
    #[cfg(target_os = "linux")]
    pub(crate) fn over_native(fd: c_int, path: Vec<u8>, native: *mut libc::DIR) -> Box<Self> {
        let mut d = Self::new(fd, path, Arc::default());
        d.native = native;
        d.use_native = true;
        d
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

/// Moves (under the registry's lock) whenever a stream is registered or
/// unregistered: a thread's memory of its last answer is current while it
/// stays.
static REGISTRY_GEN: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    /// The last stream this thread asked about: (address, registry
    /// generation, whether it was the shim's). A program reading one
    /// stream calls `readdir` for each entry: one lock per entry is saved.
    static LAST: Cell<(usize, u64, bool)> = const { Cell::new((0, u64::MAX, false)) };
}

/// Registers a stream; returns the `DIR *` to give the program.
pub(crate) fn register(d: Box<ShimDir>) -> *mut libc::DIR {
    let p = Box::into_raw(d);
    let mut g = lock_registry();
    g.get_or_insert_with(HashSet::new).insert(p as usize);
    REGISTRY_GEN.fetch_add(1, Ordering::AcqRel);
    p.cast()
}

/// The shim stream behind `dirp`, if it is one.
pub(crate) fn lookup(dirp: *mut libc::DIR) -> Option<*mut ShimDir> {
    let now = REGISTRY_GEN.load(Ordering::Acquire);
    if let Ok((addr, gen, ours)) = LAST.try_with(Cell::get) {
        if addr == dirp as usize && gen == now {
            return ours.then_some(dirp.cast());
        }
    }
    let g = lock_registry();
    // Read under the lock its writers hold.
    let now = REGISTRY_GEN.load(Ordering::Acquire);
    let ours = g.as_ref().is_some_and(|r| r.contains(&(dirp as usize)));
    let _ = LAST.try_with(|l| l.set((dirp as usize, now, ours)));
    ours.then_some(dirp.cast())
}

/// Unregisters and returns the stream behind `dirp`.
pub(crate) fn unregister(dirp: *mut libc::DIR) -> Option<Box<ShimDir>> {
    let mut g = lock_registry();
    let r = g.as_mut()?;
    if r.remove(&(dirp as usize)) {
        REGISTRY_GEN.fetch_add(1, Ordering::AcqRel);
        // SAFETY: registered pointers come from Box::into_raw in `register`
        // and are removed once.
        Some(unsafe { Box::from_raw(dirp.cast::<ShimDir>()) })
    } else {
        None
    }
}
