//! The read path: resolving a branch path over the branch's chain of layer
//! directories in process, without the daemon.
//!
//! Policy, as the core's merged view has it: lookup goes top-down through
//! the layers that make up the current directory; the first layer holding
//! the name wins; a whiteout hides the name in every layer below; a
//! directory merges with the same directory of lower layers until one of
//! them is opaque, is not a directory, or is whited out. Layer names are
//! stored in the core's reserved-name scheme; the base's are literal.
//!
//! Mechanism: plain `lstat`/`readlink`/`getdents` on physical paths
//! (layer root + stored names) through rustix's raw syscalls, so this
//! module never calls back into the interposed libc. When a directory's
//! merge has narrowed to the base alone, the rest of the path is looked up
//! with one `lstat` of the remaining path in the base: the kernel then
//! follows symlinks *inside the base* itself (a relative symlink in an
//! unchanged base directory that points into a changed part of the branch
//! is read from the base).
//!
//! Symlinks met in the branch are followed here: a target that lands
//! outside the branch's visible root makes the result [`Resolved::Outside`]
//! (a native path the caller uses as is).
//!
//! This is the boundary to switch to the core's own resolver when it
//! offers a lock-free, per-process one; the core's store has a lock and
//! a daemon-wide cache, which the shim cannot take per `stat`.

use std::{
    borrow::Cow,
    cell::{Cell, UnsafeCell},
    collections::{HashMap, HashSet},
    ffi::{CString, OsStr},
    hash::{BuildHasherDefault, Hasher},
    os::{
        fd::{BorrowedFd, RawFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    sync::{
        atomic::{AtomicI32, AtomicUsize, Ordering},
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use agentfs_core::{
    decode_name, encode_name, whiteout_name, Decoded, OPAQUE_MARKER, RESERVED_PREFIX,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};

use crate::{ids::Identity, paths};

/// An errno value.
pub type Errno = i32;

/// The longest name a directory entry has (Linux's `NAME_MAX`).
const NAME_MAX: usize = 255;

/// What the core puts before a name to make its whiteout (while the two
/// fit in [`NAME_MAX`]; a longer one is hashed), learned once from
/// [`whiteout_name`] itself.
fn whiteout_prefix() -> &'static [u8] {
    static PREFIX: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let (w, hashed) = whiteout_name(OsStr::new("x"));
        let w = w.as_bytes();
        match w.strip_suffix(b"x") {
            Some(p) if !hashed => p.to_vec(),
            // Not the plain form: no prefix any name's whiteout starts
            // with (every merged name then takes the full lookup).
            _ => vec![0; NAME_MAX + 1],
        }
    })
}

/// Most symlinks followed in one resolution (Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// One directory of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Absolute path of its root, without a trailing slash.
    pub root: Vec<u8>,
    /// The base: names literal, never whiteouts or markers.
    pub base: bool,
}

/// A branch's layers, top first, and where the branch is visible.
#[derive(Debug)]
pub struct Chain {
    /// Layers, top first; the base (if any) last.
    pub layers: Vec<Layer>,
    /// The absolute path at which processes see the branch root.
    pub visible_root: Vec<u8>,
    /// The identities its entries show (see [`crate::ids`]).
    pub ids: Identity,
    root_frame: Vec<(usize, Vec<u8>)>,
    dirs: ShardedLock<DirCache>,
    /// A directory fd on each layer's root, when the caller holds one (see
    /// [`Chain::use_root_fds`]); -1 in it once it may no longer be used.
    root_fds: Vec<Option<&'static AtomicI32>>,
}

/// A fast non-cryptographic hash: the cache's keys are short paths
/// hashed on every lookup, where SipHash's flooding resistance buys
/// nothing (the keys are the program's own paths) and costs more than the
/// lookup.
#[derive(Default)]
struct PathHasher(u64);

impl Hasher for PathHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Eight bytes a step (the multiply-rotate of rustc's FxHasher), a
        // byte at a time only for the tail: paths are tens of bytes.
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in words.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// A map keyed by paths or names, with [`PathHasher`].
type PathMap<V> = HashMap<Vec<u8>, V, BuildHasherDefault<PathHasher>>;

/// Frames of directories resolved before, by branch path as asked, valid
/// for one value of the store's namespace counter.
#[derive(Debug, Default)]
struct DirCache {
    stamp: u64,
    /// With each: whether the path's last name itself was found to be
    /// that directory (not reached through a symlink the kernel followed
    /// inside the base), so a lookup of the path itself may use it.
    frames: PathMap<(Vec<u8>, Frame, bool)>,
    /// Stored names (entries, whiteouts, markers) of layer directories
    /// above the base, by physical path; `None` for one too big to keep.
    names: PathMap<Option<Names>>,
    /// Merged listings, by canonical branch path.
    listings: PathMap<Arc<Listing>>,
    /// Some frame is kept under a path that is not its canonical one (a
    /// symlink on the way): a change cannot be matched to the frames it
    /// affects by path alone.
    aliased: bool,
    /// How often this process's own changes dropped the names of each
    /// layer directory (kept across counter moves): a directory the
    /// process keeps changing is not listed again after each change (a
    /// shell loop creating 2,000 files would read it 2,000 times), its
    /// names are looked up one `lstat` at a time instead.
    churn: PathMap<u32>,
}

/// Own changes after which a layer directory's names are no longer listed
/// into the cache.
const CHURN_LIMIT: u32 = 8;

impl DirCache {
    fn clear(&mut self, stamp: u64) {
        self.frames.clear();
        self.names.clear();
        self.listings.clear();
        self.aliased = false;
        self.stamp = stamp;
    }
}

/// Whether `key` is `path` or lies under it (`path` `""` is the root).
fn at_or_under(key: &[u8], path: &[u8]) -> bool {
    path.is_empty()
        || (key.starts_with(path) && (key.len() == path.len() || key[path.len()] == b'/'))
}

/// The stored names of one layer directory, with each entry's inode and
/// `DT_*` type (a merged listing reuses them instead of reading the
/// directory again).
type Names = Arc<PathMap<(u64, u8)>>;

/// Up to how many names a layer directory's names are compared one by
/// one in [`BaseDir::locate_part`] instead of looked up by hash.
const SCAN_NAMES: usize = 8;

/// Most merged listings kept (then the cache starts over).
const MAX_CACHED_LISTINGS: usize = 4096;

/// Layer directories with more names than this are not listed into the
/// cache (lookups in them cost syscalls instead).
const MAX_CACHED_NAMES: usize = 4096;

type Frame = Vec<(usize, Vec<u8>)>;

/// Most directory frames kept (then the cache starts over).
const MAX_CACHED_DIRS: usize = 65_536;

/// Shards of a [`ShardedLock`]: more than the cores a shim process
/// usually runs on at once.
const SHARDS: usize = 8;

/// One shard's lock, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Shard(RwLock<()>);

/// A reader-writer lock for a cache that every thread reads on every
/// call: a reader takes the read lock of its own thread's shard only, so
/// readers on different cores do not bounce one lock word between them
/// (git's preload threads stat in parallel); a writer takes every shard.
struct ShardedLock<T> {
    shards: [Shard; SHARDS],
    data: UnsafeCell<T>,
}

// SAFETY: `data` is only reached through the guards below: shared
// references while a shard's read lock is held, the one mutable reference
// while every shard's write lock is held, which excludes all readers.
unsafe impl<T: Send + Sync> Sync for ShardedLock<T> {}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_shard() -> usize {
    MY_SHARD
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            s.get()
        })
        .unwrap_or(0)
}

impl<T> ShardedLock<T> {
    fn new(data: T) -> Self {
        Self {
            shards: Default::default(),
            data: UnsafeCell::new(data),
        }
    }

    fn read(&self) -> ReadGuard<'_, T> {
        let g = self.shards[my_shard()]
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner());
        // SAFETY: a shard's read lock is held for the guard's life: no
        // writer (which needs every shard) can run.
        let data = unsafe { &*self.data.get() };
        ReadGuard { _g: g, data }
    }

    fn write(&self) -> WriteGuard<'_, T> {
        // All shards or none: a writer never sits on some shards while it
        // waits for a reader of another (readers of the shards it holds
        // would sleep meanwhile: with git's 20 preload threads on two
        // cores, a futex storm). Readers hold a shard for one lookup, so a
        // writer spins briefly, then yields.
        let mut tries = 0u32;
        loop {
            let mut gs = Vec::with_capacity(SHARDS);
            for s in &self.shards {
                match s.0.try_write() {
                    Ok(g) => gs.push(g),
                    Err(std::sync::TryLockError::Poisoned(p)) => gs.push(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => break,
                }
            }
            if gs.len() == SHARDS {
                // SAFETY: every shard's write lock is held for the
                // guard's life: no reader and no other writer can run.
                let data = unsafe { &mut *self.data.get() };
                return WriteGuard { _gs: gs, data };
            }
            drop(gs);
            tries += 1;
            if tries < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

struct ReadGuard<'a, T> {
    _g: RwLockReadGuard<'a, ()>,
    data: &'a T,
}

impl<T> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.data
    }
}

struct WriteGuard<'a, T> {
    _gs: Vec<RwLockWriteGuard<'a, ()>>,
    data: &'a mut T,
}

impl<T> std::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.data
    }
}

impl<T> std::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.data
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ShardedLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.read().fmt(f)
    }
}

/// A directory whose frame ends in the base, as the cache knew it at one
/// value of the namespace counter: the physical directories of its parts
/// above the base with their stored names, and the base's directory.
#[derive(Clone, Debug)]
pub struct BaseDir {
    above: Vec<(Vec<u8>, Names)>,
    base: Vec<u8>,
}

impl BaseDir {
    /// The physical directory whose entry name `name` in the directory is
    /// (as [`Chain::resolve_at`] with `lazy` finds for a call that does
    /// not follow a final symlink): the first part above the base that
    /// holds it, else the base's when no part above hides it. `None` when
    /// it is hidden, or not answered here (a name in the reserved
    /// namespace, stored escaped in a layer, or whose whiteout would be
    /// hashed). `scratch` is a buffer for the name's whiteout.
    pub fn locate(&self, name: &[u8], scratch: &mut Vec<u8>) -> Option<&[u8]> {
        self.locate_part(name, scratch).map(|i| self.part(i))
    }

    /// [`BaseDir::locate`] as the index of the part (see
    /// [`BaseDir::part`]).
    pub fn locate_part(&self, name: &[u8], scratch: &mut Vec<u8>) -> Option<usize> {
        if self.above.is_empty() {
            return Some(0);
        }
        let prefix = whiteout_prefix();
        if name.starts_with(RESERVED_PREFIX) || prefix.len() + name.len() > NAME_MAX {
            return None;
        }
        scratch.clear();
        for (i, (_, names)) in self.above.iter().enumerate() {
            // A layer's copy of a directory usually holds a few names (the
            // files changed in it): comparing them costs less than hashing
            // the name and its whiteout's.
            if names.len() <= SCAN_NAMES {
                let whiteout_len = prefix.len() + name.len();
                for stored in names.keys() {
                    if stored.as_slice() == name {
                        return Some(i);
                    }
                    if stored.len() == whiteout_len
                        && stored.starts_with(prefix)
                        && &stored[prefix.len()..] == name
                    {
                        return None;
                    }
                }
                continue;
            }
            if names.contains_key(name) {
                return Some(i);
            }
            if scratch.is_empty() {
                scratch.extend_from_slice(prefix);
                scratch.extend_from_slice(name);
            }
            if names.contains_key(scratch.as_slice()) {
                return None;
            }
        }
        Some(self.above.len())
    }

    /// How many parts the directory has (those above the base, then the
    /// base's).
    pub fn parts(&self) -> usize {
        self.above.len() + 1
    }

    /// The physical directory of part `i` (those above the base first, top
    /// one first; then the base's).
    pub fn part(&self, i: usize) -> &[u8] {
        self.above.get(i).map_or(&self.base, |(dir, _)| dir)
    }
}

/// Whether physical directory `dir` is `start` (joined with `sub` when
/// that is not empty).
pub fn dir_is(dir: &[u8], start: &[u8], sub: &[u8]) -> bool {
    let Some(rest) = dir.strip_prefix(start) else {
        return false;
    };
    if sub.is_empty() {
        rest.is_empty()
    } else {
        rest.len() == sub.len() + 1 && rest[0] == b'/' && &rest[1..] == sub
    }
}

/// What a path is in the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// It exists.
    Found(Entry),
    /// Nothing is there, but its parent is a directory of the branch: the
    /// name may be created. Carries the canonical branch path.
    Absent(Vec<u8>),
    /// Resolution left the branch through a symlink: this native path.
    Outside(Vec<u8>),
}

/// An existing entry of the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical branch path (symlinks in it resolved; `""` for the root).
    pub path: Vec<u8>,
    /// Physical path of the entry in the topmost layer that holds it (for
    /// a directory merged over several layers, the top one: its mode and
    /// times are the branch's).
    pub phys: CString,
    /// Index of that layer.
    pub layer: usize,
    /// Its `lstat` (the target's when a final symlink was followed).
    pub kind: FileType,
}

/// What [`Chain::lookup`] found.
enum Lookup {
    /// (position in the frame, physical path, its kind as `lstat` shows
    /// it).
    Hit((usize, Vec<u8>, FileType)),
    /// Nothing, or hidden by a whiteout.
    Missing,
    /// Only the base, below, may have it.
    BaseBelow,
    /// (position in the frame, physical path, `DT_*` type): held there as
    /// its cached names say, not checked (see [`Chain::lookup`]).
    Unchecked((usize, Vec<u8>, u8)),
}

/// One entry of a merged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Name.
    pub name: Vec<u8>,
    /// Inode as programs see it (the layer's, or its rewritten number: see
    /// [`crate::ids`]).
    pub ino: u64,
    /// `DT_*` type.
    pub dtype: u8,
}

/// One entry of a [`Listing`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedRef<'a> {
    /// Name.
    pub name: &'a [u8],
    /// Inode as programs see it (see [`Listed::ino`]).
    pub ino: u64,
    /// `DT_*` type.
    pub dtype: u8,
}

/// Where an entry's name lies in its [`Listing`]'s bytes, with the first
/// eight bytes of the name as a big-endian number (names compare by it
/// first: most differ there).
#[derive(Debug, Clone, Copy)]
struct Slot {
    prefix: u64,
    start: u32,
    len: u32,
    ino: u64,
    dtype: u8,
}

/// A merged listing: every name in one buffer (one allocation for the
/// directory, not one a name), sorted by name, `.` and `..` first.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    bytes: Vec<u8>,
    slots: Vec<Slot>,
}

impl Listing {
    fn push(&mut self, name: &[u8], ino: u64, dtype: u8) {
        let mut head = [0u8; 8];
        let n = name.len().min(8);
        head[..n].copy_from_slice(&name[..n]);
        self.slots.push(Slot {
            prefix: u64::from_be_bytes(head),
            // Names are at most NAME_MAX bytes, and a listing this large
            // (4 GiB of names) is not made: its directory would not fit.
            start: self.bytes.len() as u32,
            len: name.len() as u32,
            ino,
            dtype,
        });
        self.bytes.extend_from_slice(name);
    }

    fn name_of(&self, s: &Slot) -> &[u8] {
        &self.bytes[s.start as usize..(s.start + s.len) as usize]
    }

    /// Sorts the entries from `from` on by name; of equal names the first
    /// pushed is kept.
    fn sort_dedup_from(&mut self, from: usize) {
        let (bytes, slots) = (&self.bytes, &mut self.slots[from..]);
        if slots.iter().all(|s| s.len <= 8) {
            // Each name is its prefix (a shorter one padded with zeroes,
            // which no name holds, sorts first): numbers alone compare.
            slots.sort_unstable_by_key(|s| (s.prefix, s.start));
        } else {
            let name = |s: &Slot| &bytes[s.start as usize..(s.start + s.len) as usize];
            slots.sort_unstable_by(|a, b| {
                a.prefix
                    .cmp(&b.prefix)
                    .then_with(|| name(a).cmp(name(b)))
                    .then(a.start.cmp(&b.start))
            });
        }
        let mut keep = from;
        for i in from..self.slots.len() {
            let dup = keep > from && {
                let (a, b) = (&self.slots[keep - 1], &self.slots[i]);
                a.prefix == b.prefix && self.name_of(a) == self.name_of(b)
            };
            if !dup {
                self.slots[keep] = self.slots[i];
                keep += 1;
            }
        }
        self.slots.truncate(keep);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<ListedRef<'_>> {
        self.slots.get(i).map(|s| ListedRef {
            name: self.name_of(s),
            ino: s.ino,
            dtype: s.dtype,
        })
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = ListedRef<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The entries, owned.
    pub fn to_vec(&self) -> Vec<Listed> {
        self.iter()
            .map(|e| Listed {
                name: e.name.to_vec(),
                ino: e.ino,
                dtype: e.dtype,
            })
            .collect()
    }
}

fn cstr(v: &[u8]) -> Result<CString, Errno> {
    CString::new(v).map_err(|_| libc::EINVAL)
}

fn cstr_of(v: Vec<u8>) -> Result<CString, Errno> {
    CString::new(v).map_err(|_| libc::EINVAL)
}

fn lstat(path: &[u8]) -> Result<Option<Stat>, Errno> {
    let c = cstr(path)?;
    match rustix::fs::statat(CWD, &c, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) if e == rustix::io::Errno::NOTDIR => Ok(None),
        Err(e) => Err(e.raw_os_error()),
    }
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    // Room for the NUL a CString of it adds.
    let mut v = Vec::with_capacity(dir.len() + name.len() + 2);
    v.extend_from_slice(dir);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn kind_of(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

impl Chain {
    /// A chain over `layers` (top first), visible at `visible_root`.
    pub fn new(layers: Vec<Layer>, visible_root: Vec<u8>) -> Result<Self, Errno> {
        let mut root_frame = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            root_frame.push((i, l.root.clone()));
            if !l.base && lstat(&child(&l.root, OPAQUE_MARKER.as_bytes()))?.is_some() {
                break;
            }
        }
        let roots = layers
            .iter()
            .map(|l| cstr(&l.root))
            .collect::<Result<Vec<_>, _>>()?;
        let roots: Vec<&std::ffi::CStr> = roots.iter().map(CString::as_c_str).collect();
        let ids = crate::ids::of_roots(&roots, layers.last().is_some_and(|l| l.base));
        Ok(Self {
            layers,
            visible_root,
            ids,
            root_frame,
            dirs: ShardedLock::new(DirCache::default()),
            root_fds: Vec::new(),
        })
    }

    /// The same chain with an empty cache, made without a syscall (for a
    /// forked child: a thread of the parent may have held the cache's lock
    /// at the fork, and that thread does not exist in the child).
    pub fn fresh_copy(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            visible_root: self.visible_root.clone(),
            ids: self.ids.clone(),
            root_frame: self.root_frame.clone(),
            dirs: ShardedLock::new(DirCache::default()),
            root_fds: self.root_fds.clone(),
        }
    }

    /// Hands the resolver a directory fd on each layer's root (by layer,
    /// `None` for a layer without one), which the caller keeps open for
    /// the life of the process and sets to -1 when it must no longer be
    /// used: a physical path under a root then reaches the kernel as that
    /// fd and the part under the root (the kernel walks only that part).
    pub fn use_root_fds(&mut self, fds: Vec<Option<&'static AtomicI32>>) {
        self.root_fds = fds;
    }

    /// The root fd physical path `path` lies under, and the part under it.
    fn under_root<'p>(&self, path: &'p [u8]) -> Option<(&'static AtomicI32, RawFd, &'p [u8])> {
        for (l, fd) in self.layers.iter().zip(&self.root_fds) {
            let Some(fd) = fd else {
                continue;
            };
            let r = &l.root;
            if path.len() > r.len() + 1 && path[r.len()] == b'/' && path.starts_with(r) {
                let raw = fd.load(Ordering::Acquire);
                if raw >= 0 {
                    return Some((fd, raw, &path[r.len() + 1..]));
                }
            }
        }
        None
    }

    /// `f` on physical path `path`, relative to its layer root's fd when
    /// there is one (again on the whole path if that fd turned out bad:
    /// `EBADF` stops its use, `ENOTDIR` may be the path's own answer).
    fn at_phys<T>(
        &self,
        path: &[u8],
        f: impl Fn(BorrowedFd<'_>, &std::ffi::CStr) -> rustix::io::Result<T>,
    ) -> Result<rustix::io::Result<T>, Errno> {
        if let Some((slot, raw, rest)) = self.under_root(path) {
            // SAFETY: the caller keeps the root fd open while it is not
            // -1; a number the program closed behind the shim's back
            // fails with EBADF, handled below.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            match f(fd, &cstr(rest)?) {
                Err(e) if e == rustix::io::Errno::BADF => {
                    let _ = slot.compare_exchange(raw, -1, Ordering::AcqRel, Ordering::Relaxed);
                }
                Err(e) if e == rustix::io::Errno::NOTDIR => {}
                r => return Ok(r),
            }
        }
        Ok(f(CWD, &cstr(path)?))
    }

    /// `lstat` of physical path `path`: `None` when nothing is there.
    fn lstat(&self, path: &[u8]) -> Result<Option<Stat>, Errno> {
        if let Some((slot, raw, rest)) = self.under_root(path) {
            // SAFETY: as in `at_phys`.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            match rustix::fs::statat(fd, cstr(rest)?.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => return Ok(Some(st)),
                Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
                Err(e) if e == rustix::io::Errno::BADF => {
                    let _ = slot.compare_exchange(raw, -1, Ordering::AcqRel, Ordering::Relaxed);
                }
                // ENOTDIR may be the path's own answer: the whole path tells.
                Err(e) if e == rustix::io::Errno::NOTDIR => {}
                Err(e) => return Err(e.raw_os_error()),
            }
        }
        lstat(path)
    }

    /// Calls `f(name, inode, DT_* type)` for every entry of directory
    /// `dir` but `.` and `..`, until it returns false (raw syscalls). On
    /// Linux, `open` (an fd on `dir`) is read instead of opening `dir`, and
    /// rewound.
    fn read_dir(
        &self,
        dir: &[u8],
        open: Option<BorrowedFd<'_>>,
        mut f: impl FnMut(&[u8], u64, u8) -> bool,
    ) -> Result<(), Errno> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = open {
            let r = read_raw(fd, &mut f);
            let _ = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0));
            return r;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = open;
        let fd = self
            .at_phys(dir, |at, p| {
                rustix::fs::openat(
                    at,
                    p,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            })?
            .map_err(|e| e.raw_os_error())?;
        #[cfg(target_os = "linux")]
        {
            read_raw(std::os::fd::AsFd::as_fd(&fd), &mut f)
        }
        #[cfg(not(target_os = "linux"))]
        {
            // `Dir::new` reads this fd; `Dir::read_from` would open it again.
            let mut d = rustix::fs::Dir::new(fd).map_err(|e| e.raw_os_error())?;
            while let Some(ent) = d.read() {
                let ent = ent.map_err(|e| e.raw_os_error())?;
                let name = ent.file_name().to_bytes();
                if name != b"." && name != b".." && !f(name, ent.ino(), dtype(ent.file_type())) {
                    break;
                }
            }
            Ok(())
        }
    }

    /// Every stored name of directory `dir`, with its inode and type;
    /// `None` when it has more than [`MAX_CACHED_NAMES`] or cannot be read.
    fn list_names(&self, dir: &[u8]) -> Option<PathMap<(u64, u8)>> {
        let mut names = PathMap::default();
        let mut big = false;
        self.read_dir(dir, None, |name, ino, dtype| {
            names.insert(name.to_vec(), (ino, dtype));
            big = names.len() > MAX_CACHED_NAMES;
            !big
        })
        .ok()?;
        (!big).then_some(names)
    }

    fn stored<'n>(&self, idx: usize, name: &'n [u8]) -> Option<Cow<'n, [u8]>> {
        if self.layers[idx].base || !name.starts_with(RESERVED_PREFIX) {
            // Stored as it is (the base's names are literal; a layer
            // escapes only names in the reserved namespace).
            Some(Cow::Borrowed(name))
        } else {
            encode_name(OsStr::from_bytes(name))
                .ok()
                .map(|s| Cow::Owned(s.into_vec()))
        }
    }

    fn has_whiteout(&self, stamp: Option<u64>, dir: &[u8], name: &[u8]) -> Result<bool, Errno> {
        let (w, hashed) = whiteout_name(OsStr::from_bytes(name));
        if let Some(names) = self.layer_names(stamp, dir) {
            if !names.contains_key(w.as_bytes()) {
                return Ok(false);
            }
        }
        let p = child(dir, w.as_bytes());
        match self.lstat(&p)? {
            None => Ok(false),
            Some(_) if !hashed => Ok(true),
            Some(_) => Ok(std::fs::read(OsStr::from_bytes(&p)).ok().as_deref() == Some(name)),
        }
    }

    fn is_opaque(&self, stamp: Option<u64>, idx: usize, dir: &[u8]) -> Result<bool, Errno> {
        if self.layers[idx].base {
            return Ok(false);
        }
        if let Some(names) = self.layer_names(stamp, dir) {
            return Ok(names.contains_key(OPAQUE_MARKER.as_bytes()));
        }
        Ok(self.lstat(&child(dir, OPAQUE_MARKER.as_bytes()))?.is_some())
    }

    /// May layer directory `dir` (above the base) hold stored name
    /// `stored`? From its cached listing while the namespace counter stays
    /// `stamp` (one `getdents` per directory instead of an `lstat` per
    /// name looked up in it); true when nothing is cached.
    fn may_hold(&self, stamp: Option<u64>, dir: &[u8], stored: &[u8]) -> bool {
        self.layer_names(stamp, dir)
            .is_none_or(|names| names.contains_key(stored))
    }

    /// The stored names of layer directory `dir`, listed once per value of
    /// the namespace counter; `None` without a counter, or for a directory
    /// too big to keep or that cannot be read.
    fn layer_names(&self, stamp: Option<u64>, dir: &[u8]) -> Option<Names> {
        let stamp = stamp?;
        {
            let c = self.dirs.read();
            if c.stamp == stamp {
                if let Some(known) = c.names.get(dir) {
                    return known.clone();
                }
            }
            if c.churn.get(dir).is_some_and(|&n| n >= CHURN_LIMIT) {
                return None;
            }
        }
        let listed = self.list_names(dir).map(Arc::new);
        let mut c = self.dirs.write();
        if c.stamp != stamp || c.names.len() >= MAX_CACHED_DIRS {
            c.clear(stamp);
        }
        c.names.insert(dir.to_vec(), listed.clone());
        listed
    }

    /// `name` in the merged directory `frame`. With `BaseBelow`, no layer
    /// above a base that is not the frame's only part holds or hides it
    /// (the caller looks in the base itself, with the rest of its path).
    /// With `unchecked` (the caller runs its own `lstat`-like call on the
    /// answer), a name that a layer directory's cached names list as
    /// neither a directory nor a symlink is answered from them, without an
    /// `lstat` of its own.
    fn lookup(
        &self,
        stamp: Option<u64>,
        frame: &[(usize, Vec<u8>)],
        name: &[u8],
        unchecked: bool,
    ) -> Result<Lookup, Errno> {
        for (pos, (idx, dir)) in frame.iter().enumerate() {
            let base = self.layers[*idx].base;
            if pos > 0 && base {
                return Ok(Lookup::BaseBelow);
            }
            if let Some(stored) = self.stored(*idx, name) {
                let held = if base {
                    Some(None)
                } else {
                    // May it hold the name (its cached names, when listed),
                    // and as what?
                    match self.layer_names(stamp, dir) {
                        Some(names) => names.get(stored.as_ref()).map(|&(_, t)| Some(t)),
                        None => Some(None),
                    }
                };
                if let (true, Some(Some(t))) = (unchecked, held) {
                    if !matches!(t, libc::DT_DIR | libc::DT_LNK | libc::DT_UNKNOWN) {
                        return Ok(Lookup::Unchecked((pos, child(dir, &stored), t)));
                    }
                }
                // A directory a layer's cached names list (under the
                // counter they were read at, as they say which names
                // exist): no `lstat` to learn what they say.
                if let Some(Some(libc::DT_DIR)) = held {
                    return Ok(Lookup::Hit((pos, child(dir, &stored), FileType::Directory)));
                }
                if held.is_some() {
                    let p = child(dir, &stored);
                    if let Some(st) = self.lstat(&p)? {
                        return Ok(Lookup::Hit((pos, p, kind_of(&st))));
                    }
                }
            }
            if !base && self.has_whiteout(stamp, dir, name)? {
                return Ok(Lookup::Missing);
            }
        }
        Ok(Lookup::Missing)
    }

    /// The merged directory `name`, found at `pos` of `frame` as `phys`.
    fn frame_of(
        &self,
        stamp: Option<u64>,
        frame: &[(usize, Vec<u8>)],
        pos: usize,
        phys: Vec<u8>,
        name: &[u8],
    ) -> Result<Vec<(usize, Vec<u8>)>, Errno> {
        let top = frame[pos].0;
        let stop = self.is_opaque(stamp, top, &phys)?;
        let mut parts = vec![(top, phys)];
        if stop {
            return Ok(parts);
        }
        for (idx, dir) in &frame[pos + 1..] {
            let Some(stored) = self.stored(*idx, name) else {
                if self.has_whiteout(stamp, dir, name)? {
                    break;
                }
                continue;
            };
            let p = child(dir, &stored);
            let held = self.layers[*idx].base || self.may_hold(stamp, dir, &stored);
            match if held { self.lstat(&p)? } else { None } {
                Some(st) if kind_of(&st) == FileType::Directory => {
                    let opaque = self.is_opaque(stamp, *idx, &p)?;
                    parts.push((*idx, p));
                    if opaque {
                        break;
                    }
                }
                Some(_) => break,
                None if !self.layers[*idx].base && self.has_whiteout(stamp, dir, name)? => break,
                None => {}
            }
        }
        Ok(parts)
    }

    fn dir_entry(&self, path: Vec<u8>, frame: &[(usize, Vec<u8>)]) -> Result<Entry, Errno> {
        let (layer, phys) = frame.first().cloned().ok_or(libc::ENOENT)?;
        Ok(Entry {
            path,
            phys: cstr(&phys)?,
            layer,
            kind: FileType::Directory,
        })
    }

    /// Where a symlink's target leads: the branch path to resolve next, or
    /// the native path it leaves the branch for.
    fn follow(&self, dir: &[u8], target: &[u8], rest: &[&[u8]]) -> Result<Vec<u8>, Vec<u8>> {
        let base = paths::visible(&self.visible_root, dir);
        let mut abs = paths::join(&base, target);
        for r in rest {
            abs.push(b'/');
            abs.extend_from_slice(r);
        }
        let abs = paths::normalize(&abs);
        match paths::under(&self.visible_root, &abs) {
            Some(rel) => Ok(rel.to_vec()),
            None => Err(abs),
        }
    }

    fn cached(&self, stamp: Option<u64>, key: &[u8]) -> Option<(Vec<u8>, Frame)> {
        let stamp = stamp?;
        let c = self.dirs.read();
        if c.stamp != stamp {
            return None;
        }
        c.frames
            .get(key)
            .map(|(canon, frame, _)| (canon.clone(), frame.clone()))
    }

    /// What the cache alone answers for a path: the directory `full` when
    /// its own name was resolved to it before; with `in_base`, name `name`
    /// in directory `parent` when that directory's cached frame ends in
    /// the base and the cached names of its parts above the base neither
    /// hold nor hide it (its base path, unchecked: what the lazy
    /// resolution answers, without copying the frame).
    fn answer_cached(
        &self,
        stamp: Option<u64>,
        full: &[u8],
        parent: &[u8],
        name: &[u8],
        in_base: bool,
    ) -> Option<Result<Resolved, Errno>> {
        let stamp = stamp?;
        let c = self.dirs.read();
        if c.stamp != stamp {
            return None;
        }
        // The name in its parent first: for a program's lstat of a file
        // (most calls) that is the one look it takes. A directory found
        // this way is its own base path, as its exact frame would say.
        if in_base && name != b"." && name != b".." {
            if let Some(r) = self.answer_in_base(&c, parent, name) {
                return Some(r);
            }
        }
        if let Some((canon, frame, true)) = c.frames.get(full) {
            return Some(self.dir_entry(canon.clone(), frame).map(Resolved::Found));
        }
        None
    }

    /// Name `name` in directory `parent` when that directory's cached
    /// frame ends in the base and the cached names of its parts above the
    /// base neither hold nor hide it: its base path, unchecked.
    fn answer_in_base(
        &self,
        c: &DirCache,
        parent: &[u8],
        name: &[u8],
    ) -> Option<Result<Resolved, Errno>> {
        let (canon, frame, _) = c.frames.get(parent)?;
        let ((idx, dir), above) = frame.split_last()?;
        if !self.layers[*idx].base {
            return None;
        }
        if !above.is_empty() {
            // A merged directory. A name in the reserved namespace is
            // stored escaped in a layer: the full lookup handles it.
            if name.starts_with(RESERVED_PREFIX) {
                return None;
            }
            let (w, _) = whiteout_name(OsStr::from_bytes(name));
            for (_, part) in above {
                let names = c.names.get(part.as_slice())?.as_ref()?;
                if names.contains_key(name) || names.contains_key(w.as_bytes()) {
                    return None;
                }
            }
        }
        let mut path = Vec::with_capacity(canon.len() + name.len() + 1);
        path.extend_from_slice(canon);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Some(cstr_of(child(dir, name)).map(|phys| {
            Resolved::Found(Entry {
                path,
                phys,
                layer: *idx,
                kind: FileType::Unknown,
            })
        }))
    }

    fn remember(&self, stamp: Option<u64>, key: &[u8], canon: &[u8], frame: &Frame, exact: bool) {
        let Some(stamp) = stamp else {
            return;
        };
        {
            // Most calls find it there already: no write lock for them.
            let c = self.dirs.read();
            if c.stamp == stamp && c.frames.get(key).is_some_and(|e| e.2 || !exact) {
                return;
            }
        }
        let mut c = self.dirs.write();
        if c.stamp != stamp || c.frames.len() >= MAX_CACHED_DIRS {
            c.clear(stamp);
        }
        c.aliased |= key != canon;
        c.frames
            .insert(key.to_vec(), (canon.to_vec(), frame.clone(), exact));
    }

    /// What the cache, at namespace counter `stamp`, knows of directory
    /// `key` (a branch path as asked) when its cached frame ends in the
    /// base: the base's directory and the cached names of its parts above
    /// the base (see [`BaseDir::locate`]). `None` when it does not
    /// know that much (no frame, a part above whose names are not listed).
    pub fn base_dir_cached(&self, stamp: u64, key: &[u8]) -> Option<BaseDir> {
        let c = self.dirs.read();
        if c.stamp != stamp {
            return None;
        }
        let frame = if key.is_empty() {
            &self.root_frame
        } else {
            &c.frames.get(key)?.1
        };
        let ((idx, phys), above) = frame.split_last()?;
        if !self.layers[*idx].base {
            return None;
        }
        let above = above
            .iter()
            .map(|(_, part)| Some((part.clone(), c.names.get(part.as_slice())?.clone()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(BaseDir {
            above,
            base: phys.clone(),
        })
    }

    /// Remembers directory `name` of directory `parent` (a branch path as
    /// asked, whose frame the cache holds at `stamp`, ending in the base,
    /// with parts above the base whose cached names neither hold nor hide
    /// `name`: see [`BaseDir::locate`]) as the base's own directory, its
    /// frame exact: the caller's `lstat` of it, from the base's directory
    /// of `parent`, showed a directory. Nothing is done for a `parent`
    /// reached through a symlink, or a name known exactly already.
    pub fn note_base_dir(&self, stamp: u64, parent: &[u8], name: &[u8]) {
        let (key, frame) = {
            let c = self.dirs.read();
            if c.stamp != stamp {
                return;
            }
            let frame = if parent.is_empty() {
                &self.root_frame
            } else {
                match c.frames.get(parent) {
                    Some((canon, frame, _)) if canon.as_slice() == parent => frame,
                    _ => return,
                }
            };
            let Some(&(idx, ref dir)) = frame.last() else {
                return;
            };
            if !self.layers[idx].base {
                return;
            }
            let mut key = Vec::with_capacity(parent.len() + 1 + name.len());
            key.extend_from_slice(parent);
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(name);
            if c.frames.get(&key).is_some_and(|e| e.2) {
                return;
            }
            (key, vec![(idx, child(dir, name))])
        };
        self.remember(Some(stamp), &key, &key, &frame, true);
    }

    /// Drops every cached directory frame.
    pub fn forget(&self) {
        let mut c = self.dirs.write();
        let stamp = c.stamp;
        c.clear(stamp);
    }

    /// Keeps the cache across a change of names this process made itself:
    /// when the namespace counter went from `before` to `after` by exactly
    /// the two steps one change takes (so no other change happened in
    /// between), only what lies on the way to the canonical branch paths
    /// in `touched` (their parents may have gained a directory in the
    /// active layer, a whiteout, a name) and under them is dropped, and
    /// the rest stays valid at `after`. Otherwise nothing is done: the
    /// next lookup finds the counter moved and starts over.
    pub fn own_change(&self, before: u64, after: u64, touched: &[&[u8]]) {
        if after != before.wrapping_add(2) {
            return;
        }
        let mut c = self.dirs.write();
        if c.stamp != before {
            return;
        }
        if c.aliased {
            c.clear(after);
            return;
        }
        // Physical directories in each layer above the base that a change
        // of `p` may touch: its ancestors' and its own (and what is under
        // it, for a directory renamed or removed).
        let mut phys: Vec<(Vec<u8>, bool)> = Vec::new();
        for p in touched {
            for (idx, l) in self.layers.iter().enumerate() {
                if l.base {
                    continue;
                }
                let mut dir = l.root.clone();
                phys.push((dir.clone(), false));
                for name in p.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
                    let Some(stored) = self.stored(idx, name) else {
                        c.clear(after);
                        return;
                    };
                    dir.push(b'/');
                    dir.extend_from_slice(&stored);
                    phys.push((dir.clone(), false));
                }
                if let Some(last) = phys.last_mut() {
                    last.1 = true;
                }
            }
        }
        let touches = |key: &[u8]| {
            touched
                .iter()
                .any(|p| at_or_under(key, p) || at_or_under(p, key))
        };
        c.frames.retain(|k, _| !touches(k));
        c.listings.retain(|k, _| !touches(k));
        let DirCache { names, churn, .. } = &mut *c;
        names.retain(|k, _| {
            let gone = phys
                .iter()
                .any(|(d, subtree)| k == d || (*subtree && at_or_under(k, d)));
            if gone {
                if churn.len() >= MAX_CACHED_DIRS {
                    churn.clear();
                }
                *churn.entry(k.clone()).or_default() += 1;
            }
            !gone
        });
        c.stamp = after;
    }

    /// Resolves branch path `rel` without the directory cache.
    pub fn resolve(&self, rel: &[u8], follow: bool) -> Result<Resolved, Errno> {
        self.resolve_at(rel, follow, None, false)
    }

    /// Resolves branch path `rel` (no `.`/`..`, no leading slash); a final
    /// symlink is followed with `follow`. With `stamp` (the store's
    /// namespace counter, read before), directory frames found on the way
    /// are remembered and reused while the counter stays the same: the
    /// caller must [`Chain::forget`] them when the counter moved during the
    /// call. With `lazy` (and not `follow`), a path only the base can hold
    /// is answered with its base path without checking that it exists
    /// (`kind` is then `Unknown`): for callers that run their own `lstat`
    /// or `O_NOFOLLOW` open on it, which then fails as the kernel would.
    pub fn resolve_at(
        &self,
        rel: &[u8],
        follow: bool,
        stamp: Option<u64>,
        lazy: bool,
    ) -> Result<Resolved, Errno> {
        // What the cache alone answers, before any copy of the path.
        let mut asked = false;
        if paths::is_clean_relative(rel) {
            let (parent, last) = match rel.iter().rposition(|&b| b == b'/') {
                Some(p) => (&rel[..p], &rel[p + 1..]),
                None => (&b""[..], rel),
            };
            let in_base = lazy && !follow && !parent.is_empty();
            if let Some(r) = self.answer_cached(stamp, rel, parent, last, in_base) {
                return r;
            }
            asked = true;
        }
        let mut path = rel.to_vec();
        let mut links = 0;
        'restart: loop {
            let comps: Vec<&[u8]> = path
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .collect();
            // Normalised already (as callers pass it): keys are parts of it.
            let clean = comps.len() == path.split(|&b| b == b'/').count();
            let parent_key = match comps.len() {
                0 | 1 => Cow::Borrowed(&b""[..]),
                n if clean => {
                    let last = comps[n - 1];
                    Cow::Borrowed(&path[..path.len() - last.len() - 1])
                }
                n => Cow::Owned(comps[..n - 1].join(&b'/')),
            };
            if let (Some(last), false) = (comps.last(), std::mem::take(&mut asked)) {
                let full = if clean {
                    Cow::Borrowed(&path[..])
                } else {
                    Cow::Owned(comps.join(&b'/'))
                };
                // A directory resolved before, or (for a program's lstat)
                // a name in a directory only the base has: no syscall, one
                // look at the cache.
                let in_base = lazy && !follow && comps.len() >= 2;
                if let Some(r) = self.answer_cached(stamp, &full, &parent_key, last, in_base) {
                    return r;
                }
            }
            let (mut frame, mut canon, start, mut key) = match comps.len() {
                0 | 1 => (self.root_frame.clone(), Vec::new(), 0, Vec::new()),
                n => match self.cached(stamp, &parent_key) {
                    Some((canon, frame)) => (frame, canon, n - 1, parent_key.to_vec()),
                    None => (self.root_frame.clone(), Vec::new(), 0, Vec::new()),
                },
            };
            for (i, name) in comps.iter().enumerate().skip(start) {
                if !key.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(name);
                if *name == b"." || *name == b".." {
                    return Err(libc::EINVAL); // callers normalise first
                }
                let last = i + 1 == comps.len();
                let mut here = canon.clone();
                if !here.is_empty() {
                    here.push(b'/');
                }
                here.extend_from_slice(name);
                let base_only = frame.len() == 1 && self.layers[frame[0].0].base;
                let hit = if base_only {
                    Lookup::BaseBelow
                } else {
                    self.lookup(stamp, &frame, name, lazy && !follow && last)?
                };
                if let Lookup::Unchecked((pos, phys, t)) = hit {
                    return Ok(Resolved::Found(Entry {
                        path: here,
                        phys: cstr_of(phys)?,
                        layer: frame[pos].0,
                        kind: kind_of_dtype(t),
                    }));
                }
                if let Lookup::BaseBelow = hit {
                    // No layer above the base has the name (nor hides it):
                    // what is under it is the base's alone.
                    frame.drain(..frame.len() - 1);
                }
                if frame.len() == 1 && self.layers[frame[0].0].base {
                    // Only the base below: one lstat of the rest.
                    let rest = comps[i..].join(&b'/');
                    let phys = child(&frame[0].1, &rest);
                    let mut full = canon.clone();
                    if !full.is_empty() {
                        full.push(b'/');
                    }
                    full.extend_from_slice(&rest);
                    if lazy && !follow {
                        // The caller's own syscall on the base path gives
                        // the answer (and the error) the kernel would.
                        if i + 1 < comps.len() || base_only {
                            if let (Some(pp), Some(cp)) = (
                                phys.iter().rposition(|&b| b == b'/'),
                                full.iter().rposition(|&b| b == b'/'),
                            ) {
                                let parent = vec![(frame[0].0, phys[..pp].to_vec())];
                                self.remember(stamp, &parent_key, &full[..cp], &parent, false);
                            }
                        }
                        return Ok(Resolved::Found(Entry {
                            path: full,
                            phys: cstr(&phys)?,
                            layer: frame[0].0,
                            kind: FileType::Unknown,
                        }));
                    }
                    return match self.lstat(&phys)? {
                        Some(st) if kind_of(&st) == FileType::Symlink && follow => {
                            links += 1;
                            if links > MAX_SYMLINKS {
                                return Err(libc::ELOOP);
                            }
                            let target = read_link(&phys)?;
                            let dir = match full.iter().rposition(|&b| b == b'/') {
                                Some(p) => full[..p].to_vec(),
                                None => Vec::new(),
                            };
                            match self.follow(&dir, &target, &[]) {
                                Ok(next) => {
                                    path = next;
                                    continue 'restart;
                                }
                                Err(native) => Ok(Resolved::Outside(native)),
                            }
                        }
                        Some(st) => {
                            // The parent is the base's alone when it lies
                            // below the name narrowed to the base, or when
                            // the directory was already (not when only this
                            // name was narrowed out of a merged one).
                            let parent_base_only = base_only || i + 1 < comps.len();
                            if let (true, Some(pp), Some(cp)) = (
                                parent_base_only,
                                phys.iter().rposition(|&b| b == b'/'),
                                full.iter().rposition(|&b| b == b'/'),
                            ) {
                                let parent = vec![(frame[0].0, phys[..pp].to_vec())];
                                self.remember(stamp, &parent_key, &full[..cp], &parent, false);
                            }
                            if kind_of(&st) == FileType::Directory && last {
                                // The name itself, not a path the kernel
                                // may have followed symlinks along.
                                let frame = vec![(frame[0].0, phys.clone())];
                                self.remember(stamp, &key, &full, &frame, true);
                            }
                            Ok(Resolved::Found(Entry {
                                path: full,
                                phys: cstr(&phys)?,
                                layer: frame[0].0,
                                kind: kind_of(&st),
                            }))
                        }
                        None => {
                            // Free name, or a missing/non-directory parent?
                            let parent = match phys.iter().rposition(|&b| b == b'/') {
                                Some(p) => &phys[..p],
                                None => &phys[..],
                            };
                            let parent_dir =
                                rustix::fs::statat(CWD, cstr(parent)?.as_c_str(), AtFlags::empty())
                                    .map(|st| kind_of(&st) == FileType::Directory)
                                    .unwrap_or(false);
                            if parent_dir {
                                Ok(Resolved::Absent(full))
                            } else {
                                Err(libc::ENOENT)
                            }
                        }
                    };
                }
                let hit = match hit {
                    Lookup::Hit(h) => Some(h),
                    Lookup::Missing => None,
                    Lookup::BaseBelow => unreachable!("narrowed to the base above"),
                    Lookup::Unchecked(_) => unreachable!("answered above"),
                };
                match hit {
                    None if last => return Ok(Resolved::Absent(here)),
                    None => return Err(libc::ENOENT),
                    Some((_, phys, st)) if st == FileType::Symlink && (!last || follow) => {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(libc::ELOOP);
                        }
                        let target = read_link(&phys)?;
                        match self.follow(&canon, &target, &comps[i + 1..]) {
                            Ok(next) => {
                                path = next;
                                continue 'restart;
                            }
                            Err(native) => return Ok(Resolved::Outside(native)),
                        }
                    }
                    Some((pos, phys, FileType::Directory)) => {
                        frame = self.frame_of(stamp, &frame, pos, phys, name)?;
                        canon = here;
                        self.remember(stamp, &key, &canon, &frame, true);
                        if last {
                            return self.dir_entry(canon, &frame).map(Resolved::Found);
                        }
                    }
                    Some((pos, phys, st)) if last => {
                        return Ok(Resolved::Found(Entry {
                            path: here,
                            phys: cstr(&phys)?,
                            layer: frame[pos].0,
                            kind: st,
                        }))
                    }
                    Some(_) => return Err(libc::ENOTDIR),
                }
            }
            return self.dir_entry(canon, &frame).map(Resolved::Found);
        }
    }

    /// The merged directory frame of canonical directory `canon`.
    fn frame_at(&self, stamp: Option<u64>, canon: &[u8]) -> Result<Vec<(usize, Vec<u8>)>, Errno> {
        if let Some((_, frame)) = self.cached(stamp, canon) {
            return Ok(frame);
        }
        let mut frame = self.root_frame.clone();
        for name in canon.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let hit = match self.lookup(stamp, &frame, name, false)? {
                Lookup::BaseBelow => {
                    frame.drain(..frame.len() - 1);
                    self.lookup(stamp, &frame, name, false)?
                }
                other => other,
            };
            match hit {
                Lookup::Hit((pos, phys, FileType::Directory)) => {
                    frame = self.frame_of(stamp, &frame, pos, phys, name)?;
                }
                Lookup::Hit(_) => return Err(libc::ENOTDIR),
                _ => return Err(libc::ENOENT),
            }
        }
        Ok(frame)
    }

    /// The merged listing of directory `rel` (symlinks followed), sorted by
    /// name, with `.` and `..` first; whiteouts and markers hidden.
    pub fn list(&self, rel: &[u8]) -> Result<Vec<Listed>, Errno> {
        self.list_at(rel, None, None).map(|l| l.to_vec())
    }

    /// [`Chain::list`], with the listing kept (and reused) while the
    /// namespace counter stays `stamp`, under the same contract as
    /// [`Chain::resolve_at`]. `top`, an fd open on the directory's top
    /// physical part (the one `resolve` names), is read instead of opening
    /// that part again when it is the base's (on Linux; its offset is
    /// rewound after); a layer's part is read from the cached names.
    pub fn list_at(
        &self,
        rel: &[u8],
        stamp: Option<u64>,
        top: Option<BorrowedFd<'_>>,
    ) -> Result<Arc<Listing>, Errno> {
        let canon = match self.resolve_at(rel, true, stamp, false)? {
            Resolved::Found(e) if e.kind == FileType::Directory => e.path,
            Resolved::Found(_) => return Err(libc::ENOTDIR),
            Resolved::Absent(_) => return Err(libc::ENOENT),
            Resolved::Outside(_) => return Err(libc::EXDEV),
        };
        if let Some(stamp) = stamp {
            let c = self.dirs.read();
            if c.stamp == stamp {
                if let Some(l) = c.listings.get(&canon) {
                    return Ok(l.clone());
                }
            }
        }
        let listed = Arc::new(self.merged_listing(stamp, &canon, top)?);
        if let (Some(stamp), true) = (stamp, listed.len() <= MAX_CACHED_NAMES * 16) {
            let mut c = self.dirs.write();
            if c.stamp != stamp || c.listings.len() >= MAX_CACHED_LISTINGS {
                c.clear(stamp);
            }
            c.listings.insert(canon, listed.clone());
        }
        Ok(listed)
    }

    fn merged_listing(
        &self,
        stamp: Option<u64>,
        canon: &[u8],
        top: Option<BorrowedFd<'_>>,
    ) -> Result<Listing, Errno> {
        let frame = self.frame_at(stamp, canon)?;
        // Every part's names, top part first, into one buffer; sorted
        // below, and the first of each name kept.
        let mut out = Listing::default();
        out.bytes.reserve(64 * 16);
        out.slots.reserve(64);
        for dot in [&b"."[..], b".."] {
            out.push(dot, 0, libc::DT_DIR);
        }
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        for (pos, (idx, dir)) in frame.iter().enumerate() {
            let base = self.layers[*idx].base;
            let mut whiteouts = Vec::new();
            let mut add = |stored: &[u8], ino: u64, dtype: u8| {
                let decoded;
                // A layer's name outside the reserved namespace is stored
                // as it is (no decoding, no copy).
                let name = if base || !stored.starts_with(RESERVED_PREFIX) {
                    stored
                } else {
                    match decode_name(OsStr::from_bytes(stored)) {
                        Decoded::Entry(n) => {
                            decoded = n;
                            decoded.as_bytes()
                        }
                        Decoded::Whiteout(n) => {
                            whiteouts.push(n.as_bytes().to_vec());
                            return;
                        }
                        Decoded::HashedWhiteout => {
                            if let Ok(n) = std::fs::read(OsStr::from_bytes(&child(dir, stored))) {
                                whiteouts.push(n);
                            }
                            return;
                        }
                        Decoded::Opaque | Decoded::Reserved => return,
                    }
                };
                if hidden.is_empty() || !hidden.contains(name) {
                    out.push(name, self.ids.layer_ino(*idx, ino), dtype);
                }
            };
            // A layer directory's names are usually listed already (by
            // the lookups that led here): no second read of it.
            match (!base).then(|| self.layer_names(stamp, dir)).flatten() {
                Some(names) => {
                    for (stored, &(ino, dtype)) in names.iter() {
                        add(stored, ino, dtype);
                    }
                }
                None => self.read_dir(
                    dir,
                    top.filter(|_| pos == 0 && base),
                    |stored, ino, dtype| {
                        add(stored, ino, dtype);
                        true
                    },
                )?,
            }
            hidden.extend(whiteouts);
        }
        out.sort_dedup_from(2);
        Ok(out)
    }

    /// The base's own directory for canonical branch directory `canon`,
    /// when the merged directory includes it (not hidden by an opaque
    /// layer or a whiteout, not a symlink in the base).
    pub fn base_dir_of(&self, canon: &[u8]) -> Option<Vec<u8>> {
        let frame = self.frame_at(None, canon).ok()?;
        frame
            .into_iter()
            .find(|(idx, _)| self.layers[*idx].base)
            .map(|(_, dir)| dir)
    }

    /// The branch path of physical path `phys` when it lies in a layer of
    /// this chain (for a working directory inherited across `exec`).
    pub fn branch_path_of(&self, phys: &[u8]) -> Option<Vec<u8>> {
        for l in &self.layers {
            let Some(rest) = paths::under(&l.root, phys) else {
                continue;
            };
            if l.base {
                return Some(rest.to_vec());
            }
            let mut out = Vec::new();
            for c in rest.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                match decode_name(OsStr::from_bytes(c)) {
                    Decoded::Entry(n) => {
                        if !out.is_empty() {
                            out.push(b'/');
                        }
                        out.extend_from_slice(n.as_bytes());
                    }
                    _ => return None,
                }
            }
            return Some(out);
        }
        None
    }
}

/// Reads directory fd `fd` from its offset with `getdents64` into one
/// 32 KiB buffer (as glibc's `readdir` does: a directory of a few hundred
/// names takes one call and the one that says the end; rustix's `Dir`
/// starts at 768 bytes and doubles).
#[cfg(target_os = "linux")]
fn read_raw(fd: BorrowedFd<'_>, f: &mut impl FnMut(&[u8], u64, u8) -> bool) -> Result<(), Errno> {
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut d = rustix::fs::RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(ent) = d.next() {
        let ent = ent.map_err(|e| e.raw_os_error())?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." && !f(name, ent.ino(), dtype(ent.file_type())) {
            break;
        }
    }
    Ok(())
}

fn read_link(phys: &[u8]) -> Result<Vec<u8>, Errno> {
    rustix::fs::readlinkat(CWD, cstr(phys)?.as_c_str(), Vec::new())
        .map(|c| c.into_bytes())
        .map_err(|e| e.raw_os_error())
}

/// The kind a `DT_*` type names (`Unknown` for a directory or symlink
/// too: callers only ask for the others).
fn kind_of_dtype(t: u8) -> FileType {
    match t {
        libc::DT_REG => FileType::RegularFile,
        libc::DT_FIFO => FileType::Fifo,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharacterDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::Unknown,
    }
}

fn dtype(t: FileType) -> u8 {
    match t {
        FileType::RegularFile => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::CharacterDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink, path::Path};

    use super::*;

    /// base: a.txt, d/x, d/y, link -> d/x, out -> /etc
    /// active: a.txt (changed), whiteout of d/x, d/new, opaque o/ over base o/
    fn chain(t: &Path) -> Chain {
        let (base, top) = (t.join("base"), t.join("top"));
        for d in ["d", "o"] {
            fs::create_dir_all(base.join(d)).unwrap();
            fs::create_dir_all(top.join(d)).unwrap();
        }
        fs::write(base.join("a.txt"), "base").unwrap();
        fs::write(base.join("d/x"), "x").unwrap();
        fs::write(base.join("d/y"), "y").unwrap();
        fs::write(base.join("o/hidden"), "h").unwrap();
        fs::write(base.join(".agentfs~wh.literal"), "a base file").unwrap();
        symlink("d/y", base.join("link")).unwrap();
        symlink("/etc", base.join("out")).unwrap();
        fs::write(top.join("a.txt"), "top").unwrap();
        fs::write(top.join("d/new"), "n").unwrap();
        let (wh, _) = whiteout_name(OsStr::new("x"));
        fs::write(top.join("d").join(wh), "").unwrap();
        fs::write(top.join("o").join(OPAQUE_MARKER), "").unwrap();
        fs::write(top.join("o/mine"), "m").unwrap();
        let layer = |p: &Path, base| Layer {
            root: p.as_os_str().as_bytes().to_vec(),
            base,
        };
        Chain::new(
            vec![layer(&top, false), layer(&base, true)],
            b"/visible".to_vec(),
        )
        .unwrap()
    }

    fn names(c: &Chain, rel: &str) -> Vec<String> {
        c.list(rel.as_bytes())
            .unwrap()
            .into_iter()
            .map(|l| String::from_utf8(l.name).unwrap())
            .collect()
    }

    fn found(c: &Chain, rel: &str, follow: bool) -> Entry {
        match c.resolve(rel.as_bytes(), follow).unwrap() {
            Resolved::Found(e) => e,
            other => panic!("{rel}: {other:?}"),
        }
    }

    #[test]
    fn the_top_layer_wins_and_whiteouts_hide() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let a = found(&c, "a.txt", false);
        assert_eq!(
            fs::read(OsStr::from_bytes(a.phys.as_bytes())).unwrap(),
            b"top"
        );
        assert_eq!(a.layer, 0);
        assert_eq!(
            c.resolve(b"d/x", false).unwrap(),
            Resolved::Absent(b"d/x".to_vec())
        );
        assert_eq!(found(&c, "d/y", false).layer, 1);
        assert_eq!(c.resolve(b"nope/deeper", false), Err(libc::ENOENT));
        assert_eq!(c.resolve(b"a.txt/x", false), Err(libc::ENOTDIR));
    }

    #[test]
    fn listings_merge_layers_and_hide_whiteouts_and_markers() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        assert_eq!(names(&c, "d"), [".", "..", "new", "y"]);
        assert_eq!(names(&c, "o"), [".", "..", "mine"], "opaque hides the base");
        assert_eq!(
            names(&c, ""),
            [
                ".",
                "..",
                ".agentfs~wh.literal",
                "a.txt",
                "d",
                "link",
                "o",
                "out"
            ],
            "base names are literal"
        );
        assert_eq!(
            c.resolve(b"o/hidden", false).unwrap(),
            Resolved::Absent(b"o/hidden".to_vec())
        );
    }

    #[test]
    fn symlinks_resolve_in_the_branch_or_leave_it() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        assert_eq!(found(&c, "link", false).kind, FileType::Symlink);
        let e = found(&c, "link", true);
        assert_eq!(
            (e.path.as_slice(), e.kind),
            (&b"d/y"[..], FileType::RegularFile)
        );
        assert_eq!(
            c.resolve(b"out", true).unwrap(),
            Resolved::Outside(b"/etc".to_vec())
        );
        // Below a name only the base has, the kernel follows the base's
        // own symlinks (documented): the entry reads as the target.
        let e = found(&c, "out/hostname", true);
        assert_eq!(e.layer, 1);
    }

    #[test]
    fn layer_listings_are_kept_while_the_counter_stays() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let r = c.resolve_at(b"d/fresh", false, Some(1), false).unwrap();
        assert_eq!(r, Resolved::Absent(b"d/fresh".to_vec()));
        // Every change goes through the daemon, which moves the counter; a
        // name that appears without it is not looked for.
        fs::write(t.path().join("top/d/fresh"), "n").unwrap();
        let r = c.resolve_at(b"d/fresh", false, Some(1), false).unwrap();
        assert_eq!(r, Resolved::Absent(b"d/fresh".to_vec()));
        let r = c.resolve_at(b"d/fresh", false, Some(2), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        // A whiteout listed under the counter hides the base's name.
        assert_eq!(found(&c, "d/y", false).layer, 1);
        let (w, _) = whiteout_name(OsStr::new("y"));
        fs::write(t.path().join("top/d").join(&w), "").unwrap();
        let r = c.resolve_at(b"d/y", false, Some(3), false).unwrap();
        assert_eq!(r, Resolved::Absent(b"d/y".to_vec()));
        // Without a counter nothing is cached: every lookup asks the disk.
        fs::remove_file(t.path().join("top/d").join(&w)).unwrap();
        assert_eq!(found(&c, "d/y", false).layer, 1);
    }

    #[test]
    fn a_directory_in_a_layers_cached_names_is_trusted_until_the_counter_moves() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let r = c.resolve_at(b"o/mine", false, Some(1), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        // The layer's o becomes a file behind the cache's back: at a new
        // counter value the names are read again and say so.
        fs::remove_dir_all(t.path().join("top/o")).unwrap();
        fs::write(t.path().join("top/o"), "now a file").unwrap();
        assert_eq!(
            c.resolve_at(b"o/mine", false, Some(2), false),
            Err(libc::ENOTDIR)
        );
        let r = c.resolve_at(b"o", false, Some(2), false).unwrap();
        assert!(
            matches!(r, Resolved::Found(ref e) if e.kind == FileType::RegularFile),
            "{r:?}"
        );
    }

    #[test]
    fn a_base_directory_the_caller_saw_is_remembered_exactly() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let base = t.path().join("base");
        fs::create_dir_all(base.join("only")).unwrap();
        // The cache at counter value 1 (a lookup made there).
        c.resolve_at(b"a.txt", false, Some(1), false).unwrap();
        assert!(c.cached(Some(1), b"only").is_none());
        c.note_base_dir(1, b"", b"only");
        let (canon, frame) = c.cached(Some(1), b"only").expect("noted");
        assert_eq!(canon, b"only");
        let only = base.join("only").as_os_str().as_bytes().to_vec();
        assert_eq!(frame, vec![(1, only)]);
        // Exact: a lookup of the directory itself answers from the cache
        // (it does not see the symlink put there behind its back).
        fs::remove_dir(base.join("only")).unwrap();
        symlink("d", base.join("only")).unwrap();
        let r = c.resolve_at(b"only", true, Some(1), false).unwrap();
        assert!(
            matches!(r, Resolved::Found(ref e) if e.kind == FileType::Directory && e.path == b"only"),
            "{r:?}"
        );
        // At another counter value nothing is known, nor noted.
        c.note_base_dir(1, b"", b"only");
        assert!(c.cached(Some(2), b"only").is_none());
        let r = c.resolve_at(b"only", true, Some(2), false).unwrap();
        assert!(
            matches!(r, Resolved::Found(ref e) if e.path == b"d"),
            "the symlink followed: {r:?}"
        );
    }

    #[test]
    fn a_listing_sorts_by_name_and_keeps_the_first_of_equal_names() {
        let mut l = Listing::default();
        l.push(b".", 0, libc::DT_DIR);
        l.push(b"..", 0, libc::DT_DIR);
        // The top part's names, then the base's: long names that share
        // their first eight bytes, a short one, a name in both parts.
        for (name, ino) in [
            (&b"prefix-long-b"[..], 1),
            (b"shared", 2),
            (b"prefix-long-a", 3),
            (b"z", 4),
        ] {
            l.push(name, ino, libc::DT_REG);
        }
        for (name, ino) in [(&b"shared"[..], 20), (b"prefix-long", 21), (b"a", 22)] {
            l.push(name, ino, libc::DT_DIR);
        }
        l.sort_dedup_from(2);
        let got: Vec<(&[u8], u64)> = l.iter().map(|e| (e.name, e.ino)).collect();
        let want: Vec<(&[u8], u64)> = vec![
            (b".", 0),
            (b"..", 0),
            (b"a", 22),
            (b"prefix-long", 21),
            (b"prefix-long-a", 3),
            (b"prefix-long-b", 1),
            (b"shared", 2),
            (b"z", 4),
        ];
        assert_eq!(got, want);
        assert_eq!(l.len(), 8);
        assert_eq!(
            l.get(6).map(|e| e.dtype),
            Some(libc::DT_REG),
            "the top part's"
        );
        assert!(l.get(8).is_none());
        // Names of at most eight bytes only (compared as numbers).
        let mut l = Listing::default();
        for (name, ino) in [
            (&b"ab"[..], 1),
            (b"a", 2),
            (b"abcdefgh", 3),
            (b"b", 4),
            (b"ab", 5),
            (b"abcdefg", 6),
        ] {
            l.push(name, ino, libc::DT_REG);
        }
        l.sort_dedup_from(0);
        let got: Vec<(&[u8], u64)> = l.iter().map(|e| (e.name, e.ino)).collect();
        let want: Vec<(&[u8], u64)> = vec![
            (b"a", 2),
            (b"ab", 1),
            (b"abcdefg", 6),
            (b"abcdefgh", 3),
            (b"b", 4),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn merged_listings_are_kept_while_the_counter_stays() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let names = |l: Vec<Listed>| -> Vec<String> {
            l.into_iter()
                .map(|e| String::from_utf8(e.name).unwrap())
                .collect()
        };
        let first = names(c.list_at(b"d", Some(1), None).unwrap().to_vec());
        assert_eq!(first, [".", "..", "new", "y"]);
        fs::write(t.path().join("top/d/later"), "l").unwrap();
        assert_eq!(
            names(c.list_at(b"d", Some(1), None).unwrap().to_vec()),
            first
        );
        assert_eq!(
            names(c.list_at(b"d", Some(2), None).unwrap().to_vec()),
            [".", "..", "later", "new", "y"]
        );
        // Without a counter the listing is always read afresh.
        fs::remove_file(t.path().join("top/d/later")).unwrap();
        assert_eq!(names(c.list(b"d").unwrap()), first);
    }

    #[test]
    fn cached_frames_keep_merged_directories_merged() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        fs::write(t.path().join("top/d/later"), "l").unwrap();
        // d/y is the base's: only that name narrows to the base, not d.
        assert_eq!(found(&c, "d/y", false).layer, 1);
        let r = c.resolve_at(b"d/y", false, Some(1), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 1), "{r:?}");
        let r = c.resolve_at(b"d/later", false, Some(1), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        // Below a base-only directory the frame is cached as the base's.
        fs::create_dir_all(t.path().join("base/only/deep")).unwrap();
        fs::write(t.path().join("base/only/deep/f"), "f").unwrap();
        let r = c.resolve_at(b"only/deep/f", false, Some(2), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 1), "{r:?}");
        assert!(c.cached(Some(2), b"only/deep").is_some());
        assert!(
            c.cached(Some(3), b"only/deep").is_none(),
            "a new stamp drops it"
        );
    }

    #[test]
    fn an_own_change_drops_only_what_lies_on_its_way() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let base = t.path().join("base");
        for d in ["p/q", "other"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::write(base.join("p/q/f"), "f").unwrap();
        fs::write(base.join("other/g"), "g").unwrap();
        let lazy = |rel: &[u8], stamp| c.resolve_at(rel, false, Some(stamp), true).unwrap();
        lazy(b"p/q/f", 10);
        lazy(b"other/g", 10);
        assert_eq!(names(&c, "d"), [".", "..", "new", "y"]);
        c.list_at(b"d", Some(10), None).unwrap();
        assert!(c.cached(Some(10), b"p/q").is_some());
        // The daemon copies p/q/f up (making p and p/q in the active
        // layer) and creates d/fresh: two changes, two steps each.
        fs::create_dir_all(t.path().join("top/p/q")).unwrap();
        fs::write(t.path().join("top/p/q/f"), "changed").unwrap();
        c.own_change(10, 12, &[b"p/q/f"]);
        assert!(c.cached(Some(12), b"p/q").is_none(), "on its way");
        assert!(c.cached(Some(12), b"other").is_some(), "elsewhere: kept");
        let r = lazy(b"p/q/f", 12);
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        fs::write(t.path().join("top/d/fresh"), "n").unwrap();
        c.own_change(12, 14, &[b"d/fresh"]);
        let listed: Vec<Vec<u8>> = c
            .list_at(b"d", Some(14), None)
            .unwrap()
            .iter()
            .map(|l| l.name.to_vec())
            .collect();
        assert!(listed.contains(&b"fresh".to_vec()), "listing dropped");
        let r = lazy(b"d/fresh", 14);
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        // A counter that moved by more than one change (another process's
        // too) keeps nothing: the next lookup starts over.
        c.own_change(14, 17, &[b"d/fresh"]);
        assert!(c.cached(Some(14), b"other").is_some());
        assert!(c.cached(Some(17), b"other").is_none());
        // A directory renamed: what lies under it goes.
        lazy(b"p/q/f", 20);
        lazy(b"other/g", 20);
        assert!(c.cached(Some(20), b"p/q").is_some());
        c.own_change(20, 22, &[b"p", b"moved"]);
        assert!(c.cached(Some(22), b"p/q").is_none());
        assert!(c.cached(Some(22), b"other").is_some());
    }

    #[test]
    fn a_directory_the_process_keeps_changing_is_no_longer_listed() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let top_d = t.path().join("top/d");
        let top_d = top_d.as_os_str().as_bytes();
        let mut stamp = 100;
        for i in 0..CHURN_LIMIT {
            let r = c.resolve_at(format!("d/f{i}").as_bytes(), false, Some(stamp), false);
            assert!(matches!(r, Ok(Resolved::Absent(_))), "{r:?}");
            assert!(c.layer_names(Some(stamp), top_d).is_some(), "listed");
            fs::write(t.path().join(format!("top/d/f{i}")), "n").unwrap();
            c.own_change(stamp, stamp + 2, &[format!("d/f{i}").as_bytes()]);
            stamp += 2;
        }
        assert!(c.layer_names(Some(stamp), top_d).is_none(), "not listed");
        // Lookups and listings stay right, one lstat at a time.
        let r = c.resolve_at(b"d/f0", false, Some(stamp), false).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        assert_eq!(
            c.resolve_at(b"d/x", false, Some(stamp), false).unwrap(),
            Resolved::Absent(b"d/x".to_vec()),
            "the whiteout still hides the base's x"
        );
        let listed = c.list_at(b"d", Some(stamp), None).unwrap();
        assert_eq!(listed.len(), 2 + 2 + CHURN_LIMIT as usize, "{listed:?}");
    }

    #[test]
    fn a_merged_directory_answers_base_names_from_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        // d merges the layer (new, a whiteout of x) over the base (x, y).
        let r = c.resolve_at(b"d/new", false, Some(1), true).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        let r = c.resolve_at(b"d/y", false, Some(1), true).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 1), "{r:?}");
        assert_eq!(
            c.resolve_at(b"d/x", false, Some(1), true).unwrap(),
            Resolved::Absent(b"d/x".to_vec()),
            "a whiteout in the layer's cached names hides the base's"
        );
        let r = c.resolve_at(b"d/new", false, Some(1), true).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
    }

    #[test]
    fn the_cached_directory_locates_names_as_the_full_lookup_does() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let (top, base) = (t.path().join("top"), t.path().join("base"));
        let p = |d: &Path| d.as_os_str().as_bytes().to_vec();
        assert!(
            c.base_dir_cached(1, b"d").is_none(),
            "nothing is known before a lookup under it"
        );
        // A lookup under d caches its frame and the layer part's names.
        let r = c.resolve_at(b"d/y", false, Some(1), true).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 1), "{r:?}");
        let d = c.base_dir_cached(1, b"d").expect("d is known now");
        assert!(
            c.base_dir_cached(2, b"d").is_none(),
            "another counter value"
        );
        let mut w = Vec::new();
        assert_eq!(d.locate(b"y", &mut w), Some(&p(&base.join("d"))[..]));
        assert_eq!(d.locate(b"new", &mut w), Some(&p(&top.join("d"))[..]));
        assert_eq!(d.locate(b"x", &mut w), None, "whited out in the layer");
        assert_eq!(
            d.locate(b".agentfs~x", &mut w),
            None,
            "a reserved name is stored escaped: the full lookup's"
        );
        assert_eq!(
            d.locate(&[b'n'; 250], &mut w),
            None,
            "a long name's whiteout is hashed: the full lookup's"
        );
        // Each answer is where the full lookup finds the entry.
        for (name, dir) in [("y", base.join("d")), ("new", top.join("d"))] {
            let e = found(&c, &format!("d/{name}"), false);
            assert_eq!(
                e.phys.as_bytes(),
                [p(&dir), b"/".to_vec(), name.into()].concat()
            );
        }
        // The root: its frame is known from the start.
        let root = c.base_dir_cached(1, b"").expect("the root's frame");
        assert_eq!(root.locate(b"a.txt", &mut w), Some(&p(&top)[..]));
        assert_eq!(root.locate(b"link", &mut w), Some(&p(&base)[..]));
        // A layer part with more names than are compared one by one: the
        // hashed lookups answer the same.
        fs::create_dir_all(base.join("many")).unwrap();
        fs::create_dir_all(top.join("many")).unwrap();
        for name in ["keep", "gone"] {
            fs::write(base.join("many").join(name), "b").unwrap();
        }
        for i in 0..=SCAN_NAMES {
            fs::write(top.join("many").join(format!("n{i}")), "n").unwrap();
        }
        let (wh, _) = whiteout_name(OsStr::new("gone"));
        fs::write(top.join("many").join(wh), "").unwrap();
        // (At a new counter value: the cache lists the top's root anew.)
        c.resolve_at(b"many/keep", false, Some(2), true).unwrap();
        let many = c.base_dir_cached(2, b"many").expect("many is known now");
        assert_eq!(
            many.locate(b"keep", &mut w),
            Some(&p(&base.join("many"))[..])
        );
        assert_eq!(many.locate(b"n3", &mut w), Some(&p(&top.join("many"))[..]));
        assert_eq!(
            many.locate(b"gone", &mut w),
            None,
            "whited out in the layer"
        );
        assert_eq!(
            many.locate(b"none", &mut w),
            Some(&p(&base.join("many"))[..])
        );
        assert!(dir_is(&p(&base.join("d")), &p(&base), b"d"));
        assert!(dir_is(&p(&base), &p(&base), b""));
        assert!(!dir_is(&p(&base.join("d")), &p(&base), b""));
        assert!(!dir_is(&p(&base.join("dd")), &p(&base), b"d"));
    }

    #[test]
    fn a_file_in_a_layer_is_answered_from_its_listed_names_for_an_lstat() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        // d's layer part lists new (a file): an lstat-like caller gets
        // its layer path, with the kind the listing gave.
        let _ = c.resolve_at(b"d/y", false, Some(1), true).unwrap();
        let top = t.path().join("top/d/new");
        let r = c.resolve_at(b"d/new", false, Some(1), true).unwrap();
        let Resolved::Found(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!((e.layer, e.kind), (0, FileType::RegularFile));
        assert_eq!(e.phys.as_bytes(), top.as_os_str().as_bytes());
        // Removed behind the cache's back: the answer stays what the names
        // said at that counter value (the caller's own lstat then fails,
        // as the kernel would); at the next value the layer is listed
        // again, no longer holds it, and the name is the base's (answered
        // unchecked, for the caller's lstat to find nothing there).
        fs::remove_file(&top).unwrap();
        let r = c.resolve_at(b"d/new", false, Some(1), true).unwrap();
        assert!(matches!(r, Resolved::Found(ref e) if e.layer == 0), "{r:?}");
        let r = c.resolve_at(b"d/new", false, Some(2), true).unwrap();
        assert!(
            matches!(r, Resolved::Found(ref e) if e.layer == 1 && e.kind == FileType::Unknown),
            "{r:?}"
        );
    }

    #[test]
    fn the_base_part_of_a_directory_only_where_it_is_merged_in() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let base = t.path().join("base");
        let b = |p: &Path| Some(p.as_os_str().as_bytes().to_vec());
        assert_eq!(c.base_dir_of(b"d"), b(&base.join("d")));
        assert_eq!(c.base_dir_of(b""), b(&base));
        assert_eq!(c.base_dir_of(b"o"), None, "an opaque layer hides it");
        fs::create_dir_all(t.path().join("top/mine")).unwrap();
        assert_eq!(c.base_dir_of(b"mine"), None, "the layer's alone");
    }

    #[test]
    fn a_physical_path_in_a_layer_maps_back_to_the_branch() {
        let t = tempfile::tempdir().unwrap();
        let c = chain(t.path());
        let top = t.path().join("top/d");
        assert_eq!(
            c.branch_path_of(top.as_os_str().as_bytes()),
            Some(b"d".to_vec())
        );
        let base = t.path().join("base");
        assert_eq!(
            c.branch_path_of(base.as_os_str().as_bytes()),
            Some(Vec::new())
        );
        assert_eq!(c.branch_path_of(b"/elsewhere"), None);
    }
}
