//! The FUSE filesystem: every request maps to one call on the branch's
//! [`Tree`](agentfs_core::Tree), so copy-up, whiteouts, path safety and
//! events are the core's. Opened files are real fds from the core (a
//! layer's file, or the active layer's copy for a writable open). With FUSE
//! passthrough the kernel reads and writes them itself (the server sees
//! only open, flush and release); otherwise reads and writes come here and
//! go straight to them.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    fs::File,
    os::{
        fd::BorrowedFd,
        unix::{ffi::OsStrExt, fs::FileExt},
    },
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime},
};

use agentfs_core::{
    BranchPath, CoreError, FileKind, OpenOptions, Special, Stat, Store, Tree, WriterLock,
};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::inodes::{Inodes, ROOT_INO};

/// One open file.
struct Handle {
    ino: u64,
    file: File,
    /// How the kernel serves it.
    io: OpenIo,
    writable: bool,
    /// Size and mtime when the branch last heard about this file's content:
    /// a flush that finds them changed publishes `Modified`.
    seen: Mutex<(u64, SystemTime)>,
    /// The branch's writer registration, held while the file may be
    /// written (a snapshot meanwhile is refused as busy, so it never
    /// captures later writes).
    _writer: Option<WriterLock>,
}

/// How the open files of one inode are served now. The kernel wants every
/// open of an inode that is open with passthrough to use the same backing
/// file, and refuses to mix passthrough and cached opens of one inode.
pub(crate) enum InodeIo {
    /// The kernel reads and writes `file` (device, inode) itself.
    Passthrough {
        backing: Arc<BackingId>,
        file: (u64, u64),
        opens: usize,
    },
    /// Reads and writes come to this process (page cache in the kernel).
    Cached { opens: usize },
}

/// How one open is served.
enum OpenIo {
    Passthrough(Arc<BackingId>),
    Cached,
    /// The inode is open with passthrough on another file (a lower file
    /// since copied up, or a file replaced through another path): the
    /// kernel would refuse any answer but that file, so the open is sent
    /// back to look the name up again under a new inode number.
    Conflict,
}

/// What the serving threads share with the [`Mount`](crate::Mount): whether
/// opens may use FUSE passthrough, and the kernel's caches to invalidate.
#[derive(Default)]
pub struct IoState {
    /// Sends invalidations to the kernel (set once mounted).
    pub(crate) notifier: std::sync::OnceLock<fuser::Notifier>,
    /// [`Store::outside_changes`] when the kernel's caches were last
    /// invalidated for them.
    pub(crate) swept: AtomicU64,
    /// The kernel agreed to passthrough at init (and we are privileged).
    pub(crate) offered: AtomicBool,
    /// Opens use passthrough (offered, and the probe worked).
    pub(crate) passthrough: AtomicBool,
    /// A fallback was logged already.
    said: AtomicBool,
    /// Names the kernel was told are missing, with a time to live: it
    /// keeps them as negative entries, forgotten at the next sweep
    /// (parent's inode number, name).
    pub(crate) negatives: Mutex<std::collections::HashSet<(u64, OsString)>>,
    /// Per inode with open files: how they are served.
    pub(crate) ios: Mutex<HashMap<u64, InodeIo>>,
}

/// The answer to a lookup of a missing name the kernel may cache.
const NEGATIVE: FileAttr = FileAttr {
    ino: INodeNo(0),
    size: 0,
    blocks: 0,
    atime: SystemTime::UNIX_EPOCH,
    mtime: SystemTime::UNIX_EPOCH,
    ctime: SystemTime::UNIX_EPOCH,
    crtime: SystemTime::UNIX_EPOCH,
    kind: FileType::RegularFile,
    perm: 0,
    nlink: 0,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 0,
    flags: 0,
};

/// At most this many missing names are cached by the kernel between two
/// sweeps; past it, lookups of missing names are answered uncached.
const MAX_NEGATIVES: usize = 1 << 16;

impl IoState {
    /// `"passthrough"` or `"fuse"`.
    pub fn mode(&self) -> &'static str {
        if self.passthrough.load(Ordering::Relaxed) {
            crate::IO_PASSTHROUGH
        } else {
            crate::IO_MODE
        }
    }

    /// Turns passthrough off, saying why once (a warning when it was
    /// expected to work).
    pub(crate) fn fall_back(&self, why: &str, unexpected: bool) {
        self.passthrough.store(false, Ordering::Relaxed);
        if self.said.swap(true, Ordering::Relaxed) {
            return;
        }
        if unexpected {
            tracing::warn!("FUSE passthrough unavailable ({why}): reads and writes go through the mount server");
        } else {
            tracing::info!("FUSE passthrough unavailable ({why}): reads and writes go through the mount server");
        }
    }
}

/// What a `setattr` asks to change.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// A directory's listing, made at a read from offset 0 and kept for the
/// reads that continue it (stable offsets).
type DirListing = Vec<(u64, FileType, OsString)>;

/// Listings kept at most, and names in them: past either they are all
/// dropped (a continued read then lists again). A program may read the
/// start of many large directories and never their end.
const MAX_LISTINGS: usize = 4096;
const MAX_LISTED_NAMES: usize = 1 << 20;

/// A branch of a store as a FUSE filesystem.
pub struct BranchFs {
    store: Arc<Store>,
    branch: String,
    ttl: Duration,
    inodes: Arc<Mutex<Inodes>>,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Listings being read, by directory inode: dropped when a read
    /// reaches the end.
    listings: Mutex<HashMap<u64, Arc<DirListing>>>,
    /// The kernel opens directories without asking (it said it can at
    /// init): no `opendir`/`releasedir` round trip per listing.
    no_opendir: bool,
    next_fh: AtomicU64,
    meta_dir: std::path::PathBuf,
    /// Per inode: the identity (device, inode, size, mtime) of the file its
    /// last open got. An open that finds the same one keeps the kernel's
    /// page cache (the content cannot have changed); any other drops it.
    opened: Mutex<HashMap<u64, FileId>>,
    /// Passthrough on or off.
    io: Arc<IoState>,
}

/// Device, inode, size and mtime of a layer file.
type FileId = (u64, u64, u64, SystemTime);

fn file_id(m: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, u32)`.
const BACKING_CLOSE: libc::c_ulong = (1 << 30) | (4 << 16) | (229 << 8) | 2;

/// Registers `file` as a passthrough backing file on the session's
/// `/dev/fuse` and closes the registration again: proves that opens can
/// use passthrough.
pub(crate) fn probe_backing(dev: &impl std::os::fd::AsFd, file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let id = BackingId::create_raw(dev.as_fd(), file)?;
    // SAFETY: the ioctl reads one u32 (the id just registered) from a
    // valid pointer to a live local; the fd is the session's /dev/fuse.
    let r = unsafe { libc::ioctl(dev.as_fd().as_raw_fd(), BACKING_CLOSE, &id as *const u32) };
    if r < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "closing the probe's backing id");
    }
    Ok(())
}

fn errno(e: &CoreError) -> Errno {
    Errno::from_i32(e.errno())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File | FileKind::Other => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

/// The kind of an entry whose metadata is known: a fifo, socket or device
/// node is shown as what it is (the kernel then serves a fifo itself and
/// opens a device node on its own).
fn stat_kind(st: &Stat) -> FileType {
    match st.special {
        Some(Special::Fifo) => FileType::NamedPipe,
        Some(Special::Socket) => FileType::Socket,
        Some(Special::CharDevice) => FileType::CharDevice,
        Some(Special::BlockDevice) => FileType::BlockDevice,
        None => kind(st.kind),
    }
}

fn attr(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.size,
        blocks: st.size.div_ceil(512),
        atime: st.atime,
        mtime: st.mtime,
        ctime: st.mtime,
        crtime: st.mtime,
        kind: stat_kind(st),
        perm: (st.mode & 0o7777) as u16,
        nlink: if st.kind == FileKind::Dir {
            2
        } else {
            st.nlink.clamp(1, u64::from(u32::MAX)) as u32
        },
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes of an open file from its fd (after it was unlinked).
fn fd_attr(ino: u64, f: &File) -> std::io::Result<FileAttr> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: m.accessed().unwrap_or(SystemTime::UNIX_EPOCH),
        mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        ctime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        crtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        kind: FileType::RegularFile,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink().max(1) as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

fn size_mtime(f: &File) -> Option<(u64, SystemTime)> {
    let m = f.metadata().ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl BranchFs {
    /// Serves branch `branch` of `store`; the kernel may cache entries and
    /// attributes for `ttl`.
    pub fn new(store: Arc<Store>, branch: &str, ttl: Duration) -> Result<Self, CoreError> {
        let meta_dir = store.info()?.meta_dir;
        // The branch must exist (and be a branch: snapshots are read-only).
        store.branch(branch).lstat("")?;
        let store_outside = store.outside_changes(branch);
        Ok(Self {
            store,
            branch: branch.to_string(),
            ttl,
            inodes: Arc::new(Mutex::new(Inodes::default())),
            files: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            no_opendir: false,
            next_fh: AtomicU64::new(1),
            meta_dir,
            opened: Mutex::new(HashMap::new()),
            io: Arc::new(IoState {
                swept: AtomicU64::new(store_outside),
                ..IoState::default()
            }),
        })
    }

    /// True when the branch changed through another path since the
    /// kernel's caches were last invalidated.
    fn outside_unswept(&self) -> bool {
        self.store.outside_changes(&self.branch) != self.io.swept.load(Ordering::Acquire)
    }

    /// The listing of directory `ino` for a read at `offset`: made now at
    /// offset 0 (a first read, or a rewind), else the one made then.
    fn open_listing(
        &self,
        req: &Request,
        ino: INodeNo,
        offset: u64,
    ) -> Result<Arc<DirListing>, Errno> {
        if offset > 0 {
            let kept = self
                .listings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ino.0)
                .cloned();
            if let Some(list) = kept {
                return Ok(list);
            }
        }
        let list = Arc::new(self.listing(req, ino)?);
        let mut kept = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let names: usize = kept.values().map(|l| l.len()).sum();
        if kept.len() >= MAX_LISTINGS || names + list.len() > MAX_LISTED_NAMES {
            kept.clear();
        }
        kept.insert(ino.0, list.clone());
        Ok(list)
    }

    /// A read of directory `ino` found nothing past its offset: the
    /// listing is done with.
    fn listing_done(&self, ino: INodeNo) {
        self.listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino.0);
    }

    /// The listing of directory `ino`: `.`, `..` and its merged entries.
    fn listing(&self, req: &Request, ino: INodeNo) -> Result<DirListing, Errno> {
        let path = self.path(ino)?;
        let tree = self.tree(req);
        let entries = tree.read_dir(&path).map_err(|e| errno(&e))?;
        let parent = path.parent().unwrap_or_else(BranchPath::root);
        let mut inodes = self.inodes();
        let mut list: DirListing = Vec::with_capacity(entries.len() + 2);
        list.push((ino.0, FileType::Directory, ".".into()));
        let pino = if ino.0 == ROOT_INO {
            ROOT_INO
        } else {
            inodes.ino(&parent)
        };
        list.push((pino, FileType::Directory, "..".into()));
        for e in entries {
            let p = path.join(&e.name);
            let i = inodes.ino(&p);
            if e.kind == FileKind::Dir {
                inodes.mark_dir(i);
            }
            // A listing says only "other" for a fifo, socket or device
            // node; `find -type p` trusts the type a listing gives.
            let t = match e.kind {
                FileKind::Other => tree
                    .lstat(&p)
                    .map_or(FileType::RegularFile, |st| stat_kind(&st)),
                k => kind(k),
            };
            list.push((i, t, e.name));
        }
        Ok(list)
    }

    /// True when the kernel may cache `name` in `parent` as missing: the
    /// name is then recorded for the next sweep to forget. Not while a
    /// change made elsewhere is unswept (the answer may be old already).
    fn negative(&self, parent: INodeNo, name: &OsStr) -> bool {
        if self.ttl.is_zero() || self.outside_unswept() {
            return false;
        }
        let mut n = self.io.negatives.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() >= MAX_NEGATIVES {
            return false;
        }
        n.insert((parent.0, name.to_os_string()));
        true
    }

    /// The inode table, for the invalidating thread.
    pub(crate) fn inode_table(&self) -> Arc<Mutex<Inodes>> {
        self.inodes.clone()
    }

    /// The store and branch served.
    pub(crate) fn target(&self) -> (Arc<Store>, String) {
        (self.store.clone(), self.branch.clone())
    }

    /// The passthrough switch, for the [`Mount`](crate::Mount) to probe and report.
    pub(crate) fn io_state(&self) -> Arc<IoState> {
        self.io.clone()
    }

    /// A regular file on the store's filesystem (the layers'), to probe
    /// passthrough with.
    pub(crate) fn probe_file(&self) -> std::io::Result<File> {
        File::open(self.meta_dir.join(agentfs_core::GENERATION_FILE))
    }

    /// Decides how an open of `ino` that got `file` is served: passthrough
    /// when the kernel allows it (through `backing`, registering the file
    /// with the kernel), else through this process.
    fn open_io(
        &self,
        ino: u64,
        file: &File,
        meta: Option<&std::fs::Metadata>,
        backing: &dyn Fn(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> OpenIo {
        use std::os::{fd::AsFd, unix::fs::MetadataExt};
        let Some(m) = meta else {
            return OpenIo::Conflict;
        };
        let id = (m.dev(), m.ino());
        let mut ios = self.io.ios.lock().unwrap_or_else(|e| e.into_inner());
        match ios.get_mut(&ino) {
            Some(InodeIo::Passthrough {
                backing,
                file,
                opens,
            }) => {
                if *file == id {
                    *opens += 1;
                    OpenIo::Passthrough(backing.clone())
                } else {
                    OpenIo::Conflict
                }
            }
            Some(InodeIo::Cached { opens }) => {
                *opens += 1;
                OpenIo::Cached
            }
            None => {
                if self.io.passthrough.load(Ordering::Relaxed) {
                    match backing(file.as_fd()) {
                        Ok(b) => {
                            let b = Arc::new(b);
                            ios.insert(
                                ino,
                                InodeIo::Passthrough {
                                    backing: b.clone(),
                                    file: id,
                                    opens: 1,
                                },
                            );
                            return OpenIo::Passthrough(b);
                        }
                        // This file cannot (a filesystem stacked too deep):
                        // served here.
                        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
                        Err(e) => self.io.fall_back(&e.to_string(), true),
                    }
                }
                ios.insert(ino, InodeIo::Cached { opens: 1 });
                OpenIo::Cached
            }
        }
    }

    /// An open of `ino` served as `io` was closed.
    fn close_io(&self, ino: u64, io: &OpenIo) {
        if matches!(io, OpenIo::Conflict) {
            return;
        }
        let mut ios = self.io.ios.lock().unwrap_or_else(|e| e.into_inner());
        let last = match ios.get_mut(&ino) {
            Some(InodeIo::Passthrough { opens, .. } | InodeIo::Cached { opens }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if last {
            // Dropping the last backing id closes it in the kernel.
            ios.remove(&ino);
        }
    }

    fn tree(&self, req: &Request) -> Tree<'_> {
        self.store.branch(&self.branch).on_behalf_of(req.pid())
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, ino: INodeNo) -> Result<BranchPath, Errno> {
        self.inodes().path(ino.0).ok_or(Errno::ENOENT)
    }

    /// `parent`'s path joined with `name` (a single plain component).
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<BranchPath, Errno> {
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        if b.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The entry at `path` with its (possibly new) inode number.
    fn entry(&self, tree: &Tree<'_>, path: &BranchPath) -> Result<FileAttr, Errno> {
        let st = tree.lstat(path).map_err(|e| errno(&e))?;
        let mut inodes = self.inodes();
        let ino = inodes.ino(path);
        if st.kind == FileKind::Dir {
            inodes.mark_dir(ino);
        }
        Ok(attr(ino, &st))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    /// Opens `path`; returns the handle, the open's flags and, for
    /// passthrough, the backing file's id to answer with. `backing`
    /// registers a file with the kernel for passthrough.
    fn open_handle(
        &self,
        tree: &Tree<'_>,
        ino: u64,
        path: &BranchPath,
        opts: &OpenOptions,
        backing: &dyn Fn(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Result<(u64, FopenFlags, Option<Arc<BackingId>>), Errno> {
        let o = tree.open(path, opts).map_err(|e| errno(&e))?;
        // One `statx` for everything below.
        let meta = o.file.metadata().ok();
        let seen = meta
            .as_ref()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
            .unwrap_or((0, SystemTime::UNIX_EPOCH));
        if self.outside_unswept() {
            // Changed through another path and not yet swept: the kernel's
            // size for this inode may be old (reads stop at it).
            if let Some(n) = self.io.notifier.get() {
                let _ = n.inval_inode(INodeNo(ino), -1, 0);
            }
        }
        let io = self.open_io(ino, &o.file, meta.as_ref(), backing);
        let (flags, pass) = match &io {
            OpenIo::Passthrough(b) => (FopenFlags::empty(), Some(b.clone())),
            OpenIo::Conflict => {
                // The inode is open with passthrough on another file (a
                // lower file before this open copied it up, or a file
                // replaced through another path since): the kernel takes
                // no other file, and no open without passthrough, for that
                // inode. So the path gets a new inode number and the open
                // fails with ESTALE, which makes the kernel look the name
                // up again (the new number: a new inode without a backing
                // file) and retry the open once. Opens held on the old
                // number keep the file they had.
                let mut inodes = self.inodes();
                if inodes.is_current(path, ino) {
                    let new = inodes.renumber(path);
                    tracing::debug!(%path, old = ino, new, "renumbered for a new backing file");
                }
                return Err(Errno::from_i32(libc::ESTALE));
            }
            OpenIo::Cached => {
                let id = meta.as_ref().and_then(file_id);
                let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
                let same = id.is_some() && opened.get(&ino) == id.as_ref();
                match id {
                    Some(id) => opened.insert(ino, id),
                    None => opened.remove(&ino),
                };
                let flags = if same {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                (flags, None)
            }
        };
        // A read-only open has nothing to report at close: the kernel need
        // not wait for a flush (one round trip less per close).
        let flags = if opts.write {
            flags
        } else {
            flags | FopenFlags::FOPEN_NOFLUSH
        };
        if pass.is_some() {
            // The page cache of the next cached open must not trust pages
            // from before writes it did not see.
            self.opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
        }
        let fh = self.add_handle(Handle {
            ino,
            file: o.file,
            io,
            writable: opts.write,
            seen: Mutex::new(seen),
            _writer: o.writer,
        });
        Ok((fh, flags, pass))
    }

    /// Forgets an open that could not be answered.
    fn drop_handle(&self, fh: u64) {
        let h = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        if let Some(h) = h {
            self.close_io(h.ino, &h.io);
        }
    }

    /// Publishes `Modified` when the file's size or mtime changed since the
    /// branch last heard about it.
    fn report(&self, req: &Request, h: &Handle) {
        if !h.writable {
            return;
        }
        let Some(now) = size_mtime(&h.file) else {
            return;
        };
        let mut seen = h.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        let before = seen.0;
        *seen = now;
        drop(seen);
        let Some(path) = self.inodes().path(h.ino) else {
            // Unlinked while open: nothing in the branch to report.
            return;
        };
        if let Err(e) = self.tree(req).report_modified(&path, Some(before)) {
            tracing::debug!(%path, error = %e, "could not publish a modification");
        }
    }

    fn reply_entry(&self, r: Result<FileAttr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr_inner(
        &self,
        req: &Request,
        ino: INodeNo,
        s: SetAttr,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = s;
        let tree = self.tree(req);
        let path = self.path(ino)?;
        let st = tree.lstat(&path).map_err(|e| errno(&e))?;
        // Ownership cannot change (the branch keeps its files' owners); a
        // chown to the current owner, as `cp -a` does, succeeds.
        if uid.is_some_and(|u| u != st.uid) || gid.is_some_and(|g| g != st.gid) {
            return Err(Errno::EPERM);
        }
        if let Some(len) = size {
            let h = fh.and_then(|fh| self.handle(fh).ok());
            match h {
                Some(h) if h.writable => {
                    h.file.set_len(len).map_err(|e| io_errno(&e))?;
                    self.report(req, &h);
                }
                _ => tree.truncate(&path, len).map_err(|e| errno(&e))?,
            }
        }
        if let Some(m) = mode {
            tree.chmod(&path, m & 0o7777).map_err(|e| errno(&e))?;
        }
        if atime.is_some() || mtime.is_some() {
            tree.set_times(&path, atime.map(time), mtime.map(time))
                .map_err(|e| errno(&e))?;
        }
        self.entry(&tree, &path)
    }
}

impl Filesystem for BranchFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger writes mean fewer round trips; refused values keep the default.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Listings with attributes, always (a cold `find` or `git status`
        // then asks one question per directory, not one per name: 20
        // requests instead of 1,811 for 2,000 files; the kernel's adaptive
        // mode did not use them with listings cached across opens).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // Without it the kernel asks for `security.capability` before every
        // write (a round trip per write syscall, passthrough ones included)
        // to know whether the write must drop privileges. With it the kernel
        // remembers a file without setuid/setgid bits (SB_NOSEC) and leaves
        // dropping them to the server, which writes the layer file with the
        // caller's rights where they matter: the only user the mount lets in
        // is the one who mounted it, and a write or truncate by a user
        // without CAP_FSETID drops the bits on the layer file itself.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Linux 5.1 and later open directories without the server when it
        // answers `opendir` with ENOSYS.
        self.no_opendir = config
            .capabilities()
            .contains(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        // Passthrough: registering a backing file takes CAP_SYS_ADMIN, and a
        // stacking depth of 1 (layers on a plain filesystem) keeps the mount
        // usable below an overlayfs.
        if !nix::unistd::geteuid().is_root() {
            self.io
                .fall_back("registering backing files needs root", false);
        } else if config
            .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
            .is_err()
        {
            self.io.fall_back(
                "the kernel does not offer it (Linux 6.9 or later has it)",
                false,
            );
        } else if config.set_max_stack_depth(1).is_ok() {
            self.io.offered.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self
            .child(parent, name)
            .and_then(|p| self.entry(&self.tree(req), &p));
        if r == Err(Errno::ENOENT) && self.negative(parent, name) {
            // A missing name, cached by the kernel like a present one (git
            // asks every directory for a `.gitignore` at every run): inode
            // number 0 with a time to live is a negative entry.
            return reply.entry(&self.ttl, &NEGATIVE, Generation(0));
        }
        self.reply_entry(r, reply);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .path(ino)
            .and_then(|p| self.entry(&self.tree(req), &p))
            .or_else(|e| {
                // An unlinked file that is still open answers from its fd.
                match fh.and_then(|fh| self.handle(fh).ok()) {
                    Some(h) => fd_attr(ino.0, &h.file).map_err(|e| io_errno(&e)),
                    None => Err(e),
                }
            });
        match r {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.setattr_inner(req, ino, s, fh) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path(ino)
            .and_then(|p| self.tree(req).read_link(&p).map_err(|e| errno(&e)))
        {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if FileKind::from_mode(mode) != FileKind::File {
            // FIFOs, sockets and devices have no place in a branch.
            reply.error(Errno::ENOTSUP);
            return;
        }
        let tree = self.tree(req);
        let r = self.child(parent, name).and_then(|p| {
            tree.create(&p, mode & !umask & 0o7777)
                .map_err(|e| errno(&e))?;
            self.entry(&tree, &p)
        });
        self.reply_entry(r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let tree = self.tree(req);
        let r = self.child(parent, name).and_then(|p| {
            tree.mkdir(&p, mode & !umask & 0o7777)
                .map_err(|e| errno(&e))?;
            self.entry(&tree, &p)
        });
        self.reply_entry(r, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            self.tree(req).unlink(&p).map_err(|e| errno(&e))?;
            self.inodes().remove(&p);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|p| {
            self.tree(req).rmdir(&p).map_err(|e| errno(&e))?;
            self.inodes().remove(&p);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let tree = self.tree(req);
        let r = self.child(parent, link_name).and_then(|p| {
            tree.symlink(target.as_os_str(), &p)
                .map_err(|e| errno(&e))?;
            self.entry(&tree, &p)
        });
        self.reply_entry(r, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            let tree = self.tree(req);
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                // The core has no atomic exchange: say so rather than fake one.
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                match tree.lstat(&to) {
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(CoreError::NotFound(_)) => {}
                    Err(e) => return Err(errno(&e)),
                }
            }
            tree.rename(&from, &to).map_err(|e| errno(&e))?;
            self.inodes().rename(&from, &to);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let tree = self.tree(req);
        let r = (|| {
            let from = self.path(ino)?;
            let to = self.child(newparent, newname)?;
            tree.link(&from, &to).map_err(|e| errno(&e))?;
            self.entry(&tree, &to)
        })();
        self.reply_entry(r, reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.acc_mode();
        let opts = OpenOptions {
            read: acc != OpenAccMode::O_WRONLY,
            write: acc != OpenAccMode::O_RDONLY,
            truncate: flags.0 & libc::O_TRUNC != 0 && acc != OpenAccMode::O_RDONLY,
            append: flags.0 & libc::O_APPEND != 0,
            ..OpenOptions::default()
        };
        let tree = self.tree(req);
        let backing = |fd: BorrowedFd<'_>| reply.open_backing(fd);
        match self
            .path(ino)
            .and_then(|p| self.open_handle(&tree, ino.0, &p, &opts, &backing))
        {
            Ok((fh, flags, Some(b))) => reply.opened_passthrough(FileHandle(fh), flags, &b),
            Ok((fh, flags, None)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let tree = self.tree(req);
        let r = (|| {
            let path = self.child(parent, name)?;
            let acc = OpenFlags(flags).acc_mode();
            let opts = OpenOptions {
                read: acc != OpenAccMode::O_WRONLY,
                write: true,
                create: true,
                exclusive: flags & libc::O_EXCL != 0,
                truncate: flags & libc::O_TRUNC != 0,
                append: flags & libc::O_APPEND != 0,
                nofollow: false,
                mode: mode & !umask & 0o7777,
            };
            let ino = self.inodes().ino(&path);
            let backing = |fd: BorrowedFd<'_>| reply.open_backing(fd);
            let (fh, flags, pass) = self.open_handle(&tree, ino, &path, &opts, &backing)?;
            match self.entry(&tree, &path) {
                Ok(a) => Ok((a, fh, flags, pass)),
                Err(e) => {
                    self.drop_handle(fh);
                    Err(e)
                }
            }
        })();
        match r {
            Ok((a, fh, flags, Some(b))) => {
                reply.created_passthrough(&self.ttl, &a, Generation(0), FileHandle(fh), flags, &b)
            }
            Ok((a, fh, flags, None)) => {
                reply.created(&self.ttl, &a, Generation(0), FileHandle(fh), flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match h.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let h = match self.handle(fh) {
            Ok(h) if h.writable => h,
            Ok(_) => return reply.error(Errno::EBADF),
            Err(e) => return reply.error(e),
        };
        match h.file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh) {
            Ok(h) => {
                self.report(req, &h);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        if let Some(h) = h {
            self.report(req, &h);
            self.close_io(h.ino, &h.io);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        self.report(req, &h);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        use std::os::fd::AsRawFd;
        let (src, dst) = match (self.handle(fh_in), self.handle(fh_out)) {
            (Ok(s), Ok(d)) if d.writable => (s, d),
            (Ok(_), Ok(_)) => return reply.error(Errno::EBADF),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (Ok(mut off_in), Ok(mut off_out)) =
            (i64::try_from(offset_in), i64::try_from(offset_out))
        else {
            return reply.error(Errno::EINVAL);
        };
        // Between the layer files themselves: a reflink where the
        // filesystem shares extents (btrfs, XFS), an in-kernel copy
        // elsewhere; the content change is reported at flush.
        let len = len.min(u64::from(u32::MAX) & !0xfff) as usize;
        // SAFETY: both fds are open files this process owns (kept alive by
        // the handles), and the offsets are valid pointers to locals.
        let n = unsafe {
            libc::copy_file_range(
                src.file.as_raw_fd(),
                &mut off_in,
                dst.file.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        if n < 0 {
            return reply.error(io_errno(&std::io::Error::last_os_error()));
        }
        reply.written(n as u32);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            // The kernel then opens every directory without asking, keeping
            // listings across opens (`FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`),
            // and sends no `releasedir`: two round trips fewer per listing
            // (`git status` opens each directory of the tree). A change made
            // through another path drops the listings it touches (see
            // `invalidate`).
            return reply.error(Errno::ENOSYS);
        }
        // The listing is made at the first readdir: with the kernel
        // keeping listings across opens, most opens read none.
        if let Err(e) = self.path(ino) {
            return reply.error(e);
        }
        // The kernel may keep the listing across opens: changes through
        // the mount reset it, changes elsewhere are swept (see
        // `invalidate`); until the sweep, an open drops it.
        let keep = if self.outside_unswept() {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | keep);
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.open_listing(req, ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        if list.len() <= offset as usize {
            self.listing_done(ino);
        }
        for (i, (child, k, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.open_listing(req, ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        if list.len() <= offset as usize {
            self.listing_done(ino);
        }
        let Ok(dir) = self.path(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let tree = self.tree(req);
        for (i, (child, _, name)) in list.iter().enumerate().skip(offset as usize) {
            // Each entry comes with its attributes: one reply instead of a
            // lookup per name (`.` and `..` are not looked up by the kernel;
            // they get the directory's own).
            let path = match name.as_bytes() {
                b"." | b".." => dir.clone(),
                _ => dir.join(name),
            };
            let Ok(st) = tree.lstat(&path) else {
                // Gone since the listing was made.
                continue;
            };
            if reply.add(
                INodeNo(*child),
                i as u64 + 1,
                name,
                &self.ttl,
                &attr(*child, &st),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every change is on disk in the layer when the call returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.meta_dir) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name.as_bytes().starts_with(b"system.posix_acl_") {
            // No POSIX ACLs: programs fall back to chmod (which the kernel's
            // attribute cache sees; an ACL set beneath it would not be).
            return reply.error(Errno::ENOTSUP);
        }
        let tree = self.tree(req);
        let r = (|| {
            let path = self.path(ino)?;
            if flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
                let has = tree
                    .get_xattr(&path, name)
                    .map_err(|e| errno(&e))?
                    .is_some();
                if flags & libc::XATTR_CREATE != 0 && has {
                    return Err(Errno::EEXIST);
                }
                if flags & libc::XATTR_REPLACE != 0 && !has {
                    return Err(Errno::NO_XATTR);
                }
            }
            tree.set_xattr(&path, name, value).map_err(|e| errno(&e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.path(ino).and_then(|p| {
            self.tree(req)
                .get_xattr(&p, name)
                .map_err(|e| errno(&e))?
                .ok_or(Errno::NO_XATTR)
        });
        match r {
            Ok(v) => sized(v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self
            .path(ino)
            .and_then(|p| self.tree(req).list_xattr(&p).map_err(|e| errno(&e)));
        match r {
            Ok(names) => {
                let mut v = Vec::new();
                for n in names {
                    v.extend_from_slice(n.as_bytes());
                    v.push(0);
                }
                sized(v, size, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let tree = self.tree(req);
        let r = self.path(ino).and_then(|p| {
            if tree.get_xattr(&p, name).map_err(|e| errno(&e))?.is_none() {
                return Err(Errno::NO_XATTR);
            }
            tree.remove_xattr(&p, name).map_err(|e| errno(&e))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Answers an xattr read: its size when `size` is 0, the bytes when they
/// fit, else ERANGE.
fn sized(v: Vec<u8>, size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() <= size as usize {
        reply.data(&v);
    } else {
        reply.error(Errno::ERANGE);
    }
}
