//! The write side of a branch: its active layer, copy-up of entries from
//! lower layers, and the whiteout and opaque markers.
//!
//! Copy-up brings an entry into the active layer before it is changed:
//! parent directories first (each as an empty directory with the lower
//! one's mode, times and xattrs), then the entry itself. A regular file is
//! cloned with the backstore's `reflink` when the backstore has the
//! capability (it answers `Unsupported` or `CrossDevice` when it cannot,
//! e.g. from a base on another filesystem), otherwise copied. Every new
//! entry is built under a temporary name in the layer's work directory
//! (`.agentfs~work`) and renamed into place, so a crash never leaves a
//! half-copied entry visible; recovery empties the work directory.
//! Nothing here ever writes to any layer but the active one (index 0).

use std::{
    cell::OnceCell,
    ffi::{OsStr, OsString},
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::{
    beneath::{self, RawStat},
    error::{CoreError, CoreResult},
    fault,
    layer_names::{encode, whiteout_name, OPAQUE_MARKER, WORK_DIR},
    metadata::FileKind,
    path::BranchPath,
    view::{DirFrame, Hit, LayerDir, LayerKind, Resolved, View},
    xattrs,
};
use crate::layer_store::LayerStore;

/// How copy-ups were done, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// Files cloned with the backstore's reflink.
    pub reflinked: AtomicU64,
    /// Files copied byte by byte.
    pub copied: AtomicU64,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name for the work directory.
pub fn temp_name() -> OsString {
    OsString::from(format!(
        "t{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Converts an rustix error to `io::Error`.
fn ioe(e: rustix::io::Errno) -> io::Error {
    e.into()
}

pub(crate) fn timespec(t: (i64, i64)) -> Timespec {
    Timespec {
        tv_sec: t.0 as _,
        tv_nsec: t.1 as _,
    }
}

/// The branch's write side over a view whose layer 0 is active.
pub struct Writer<'a> {
    /// The merged view.
    pub view: &'a View,
    backstore: &'a dyn LayerStore,
    reflink: bool,
    stats: &'a CopyStats,
    work: OnceCell<Arc<OwnedFd>>,
}

impl<'a> Writer<'a> {
    /// A writer; fails on a read-only view (a snapshot).
    pub fn new(
        view: &'a View,
        backstore: &'a dyn LayerStore,
        reflink: bool,
        stats: &'a CopyStats,
    ) -> CoreResult<Self> {
        if !view.is_writable() {
            return Err(CoreError::InvalidArgument(
                "this view is read-only (a snapshot)".into(),
            ));
        }
        Ok(Self {
            view,
            backstore,
            reflink,
            stats,
            work: OnceCell::new(),
        })
    }

    /// The active layer.
    pub fn active(&self) -> &LayerDir {
        let l = &self.view.layers[0];
        debug_assert_eq!(l.kind, LayerKind::Active);
        l
    }

    /// The active layer's work directory, created on first use.
    pub fn work(&self) -> CoreResult<Arc<OwnedFd>> {
        if let Some(w) = self.work.get() {
            return Ok(w.clone());
        }
        let root = self.active().root.as_fd();
        match rustix::fs::mkdirat(root, WORK_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(CoreError::io("create work directory", e.into())),
        }
        let fd = beneath::open_subdir(root, OsStr::new(WORK_DIR))
            .map_err(|e| CoreError::io("open work directory", e))?;
        let fd = Arc::new(fd);
        let _ = self.work.set(fd.clone());
        Ok(fd)
    }

    /// Absolute path of the work directory.
    pub fn work_path(&self) -> PathBuf {
        self.active().root_path.join(WORK_DIR)
    }

    /// The active layer's copy of merged directory `path`, creating the
    /// missing directories along it (copy-up of directories).
    pub fn active_dir(&self, path: &BranchPath) -> CoreResult<Arc<OwnedFd>> {
        let stored: Vec<OsString> = path
            .components()
            .iter()
            .map(|c| encode(c))
            .collect::<CoreResult<_>>()?;
        let root = &self.active().root;
        match beneath::open_dir_beneath(root.as_fd(), &stored) {
            Ok(fd) => return Ok(Arc::new(fd)),
            Err(e) if errno(&e) == libc::ENOENT => {}
            Err(e) => return Err(CoreError::from_errno(&path.to_string(), "open", e)),
        }
        let mut cur = root.clone();
        let mut prefix = BranchPath::root();
        for (c, s) in path.components().iter().zip(&stored) {
            prefix = prefix.join(c);
            match beneath::open_subdir(cur.as_fd(), s) {
                Ok(fd) => cur = Arc::new(fd),
                Err(e) if errno(&e) == libc::ENOENT => {
                    let r = self.view.existing(&prefix, false)?;
                    let hit = match &r.hit {
                        Some(h) if h.st.kind == FileKind::Dir => h,
                        _ => return Err(CoreError::NotDirectory(prefix.to_string())),
                    };
                    self.copy_up_dir(cur.as_fd(), s, hit)?;
                    cur = Arc::new(
                        beneath::open_subdir(cur.as_fd(), s)
                            .map_err(|e| CoreError::from_errno(&prefix.to_string(), "open", e))?,
                    );
                }
                Err(e) => return Err(CoreError::from_errno(&prefix.to_string(), "open", e)),
            }
        }
        Ok(cur)
    }

    /// Copies lower directory `hit` up as an empty directory `stored` in
    /// active directory `parent`.
    fn copy_up_dir(&self, parent: BorrowedFd<'_>, stored: &OsStr, hit: &Hit) -> CoreResult<()> {
        let work = self.work()?;
        let tmp = temp_name();
        self.new_dir_like(work.as_fd(), &tmp, hit)?;
        self.place(work.as_fd(), &tmp, parent, stored)
    }

    /// Makes directory `name` in `dir` with the mode, xattrs and times of
    /// `like` (a directory in some layer).
    fn new_dir_like(&self, dir: BorrowedFd<'_>, name: &OsStr, like: &Hit) -> CoreResult<()> {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
            .map_err(|e| CoreError::io("create directory", e.into()))?;
        if let (Ok(src), Ok(dst)) = (
            beneath::open_dir_readable(like.dir.as_fd(), Some(&like.stored)),
            beneath::open_dir_readable(dir, Some(name)),
        ) {
            xattrs::copy_all(src.as_fd(), dst.as_fd());
        }
        set_mode_and_times(dir, name, &like.st)
    }

    /// Renames `from` (in the work directory) to `to` in `dir`, removing
    /// the temporary entry if that fails.
    pub fn place(
        &self,
        work: BorrowedFd<'_>,
        from: &OsStr,
        dir: BorrowedFd<'_>,
        to: &OsStr,
    ) -> CoreResult<()> {
        if let Err(e) = rustix::fs::renameat(work, from, dir, to) {
            self.discard(from);
            return Err(CoreError::io(format!("rename into place {:?}", to), ioe(e)));
        }
        Ok(())
    }

    /// Removes a work-directory entry, best effort.
    pub fn discard(&self, name: &OsStr) {
        let p = self.work_path().join(name);
        let r = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(path = %p.display(), error = %e, "could not remove temporary entry");
        }
    }

    /// Moves entry `stored` of active directory `dir` into the work
    /// directory and deletes it there.
    pub fn trash(&self, dir: BorrowedFd<'_>, stored: &OsStr) -> CoreResult<()> {
        let work = self.work()?;
        let tmp = temp_name();
        rustix::fs::renameat(dir, stored, work.as_fd(), &tmp)
            .map_err(|e| CoreError::io(format!("remove {:?}", stored), ioe(e)))?;
        self.discard(&tmp);
        Ok(())
    }

    /// Brings resolved entry `r` into the active layer (if it is not there
    /// yet) and returns its active directory and stored name. Not for the
    /// root, which every layer has.
    pub fn copy_up(&self, r: &Resolved) -> CoreResult<(Arc<OwnedFd>, OsString)> {
        let hit = r
            .hit
            .as_ref()
            .ok_or_else(|| CoreError::NotFound(r.path.to_string()))?;
        if hit.layer == 0 {
            return Ok((hit.dir.clone(), hit.stored.clone()));
        }
        let parent = self.active_dir(&r.path.parent().expect("not the root"))?;
        let stored = encode(r.name())?;
        match hit.st.kind {
            FileKind::Dir => self.copy_up_dir(parent.as_fd(), &stored, hit)?,
            FileKind::File => {
                let work = self.work()?;
                let tmp = temp_name();
                self.clone_file(hit, &r.path, work.as_fd(), &self.work_path(), &tmp)?;
                fault::point("copyup-after-temp-write");
                self.place(work.as_fd(), &tmp, parent.as_fd(), &stored)?;
            }
            FileKind::Symlink => {
                let work = self.work()?;
                let tmp = temp_name();
                self.copy_symlink(hit, work.as_fd(), &tmp)?;
                self.place(work.as_fd(), &tmp, parent.as_fd(), &stored)?;
            }
            FileKind::Other => {
                return Err(CoreError::Unsupported(format!(
                    "{}: copy-up of a special file",
                    r.path
                )))
            }
        }
        Ok((parent, stored))
    }

    /// Clones regular file `hit` (at merged path `path`) to the new file
    /// `name` in `dir` (whose absolute path is `dir_path`): reflink through
    /// the backstore when possible, else a copy. Mode, times and xattrs
    /// follow the source.
    pub fn clone_file(
        &self,
        hit: &Hit,
        path: &BranchPath,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &OsStr,
    ) -> CoreResult<()> {
        if hit.st.kind != FileKind::File {
            return Err(CoreError::Unsupported(format!(
                "{path}: not a regular file"
            )));
        }
        if self.reflink {
            let src = self.view.physical_path(hit.layer, path);
            let dst = dir_path.join(name);
            match self.backstore.reflink(&src, &dst) {
                Ok(()) => {
                    self.stats.reflinked.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.after_reflink(hit, &src, dir, name) {
                        let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(e) if e.is_fallback() => {
                    tracing::debug!(error = %e, "reflink not possible; copying");
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                }
                Err(e) => {
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                    return Err(CoreError::backstore(format!("reflink {path}"), e));
                }
            }
        }
        let r = self.copy_file(hit, dir, name);
        if r.is_err() {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
        r
    }

    /// Makes a fresh clone carry the source's xattrs, mode and times
    /// (plugins are asked for content only), touching only what differs.
    fn after_reflink(
        &self,
        hit: &Hit,
        src_path: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> CoreResult<()> {
        let ctx = |e| CoreError::io(format!("copy-up {:?}", hit.stored), e);
        // The clone was made from this path; one llistxattr on it says
        // whether there is anything to copy (usually not).
        if xattr::list(src_path).is_ok_and(|mut names| names.next().is_some()) {
            let src = beneath::open_file_at(hit.dir.as_fd(), &hit.stored, OFlags::RDONLY, 0)
                .map_err(ctx)?;
            let dst = beneath::open_file_at(dir, name, OFlags::RDONLY, 0).map_err(ctx)?;
            xattrs::copy_all(src.as_fd(), dst.as_fd());
        }
        let now = beneath::lstat_at(dir, name)
            .map_err(ctx)?
            .ok_or_else(|| CoreError::io("copy-up", io::ErrorKind::NotFound.into()))?;
        if now.perm() != hit.st.perm() || now.mtime != hit.st.mtime || now.atime != hit.st.atime {
            set_mode_and_times(dir, name, &hit.st)?;
        }
        Ok(())
    }

    fn copy_file(&self, hit: &Hit, dir: BorrowedFd<'_>, name: &OsStr) -> CoreResult<()> {
        let ctx = |e| CoreError::io(format!("copy-up {:?}", hit.stored), e);
        let src =
            beneath::open_file_at(hit.dir.as_fd(), &hit.stored, OFlags::RDONLY, 0).map_err(ctx)?;
        let dst = beneath::open_file_at(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            0o600,
        )
        .map_err(ctx)?;
        copy_sparse(&src, &dst, hit.st.size).map_err(ctx)?;
        xattrs::copy_all(src.as_fd(), dst.as_fd());
        drop(dst);
        self.stats.copied.fetch_add(1, Ordering::Relaxed);
        set_mode_and_times(dir, name, &hit.st)
    }

    /// Re-creates symlink `hit` as `name` in `dir`.
    pub fn copy_symlink(&self, hit: &Hit, dir: BorrowedFd<'_>, name: &OsStr) -> CoreResult<()> {
        let target = beneath::readlink_at(hit.dir.as_fd(), &hit.stored)
            .map_err(|e| CoreError::io("read symlink", e))?;
        rustix::fs::symlinkat(target.as_bytes(), dir, name)
            .map_err(|e| CoreError::io("create symlink", e.into()))?;
        let ts = Timestamps {
            last_access: timespec(hit.st.atime),
            last_modification: timespec(hit.st.mtime),
        };
        // Not every platform can set a symlink's times; that is cosmetic.
        let _ = rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    /// Builds a complete copy of merged directory `frame` (at merged path
    /// `path`, itself `like`) as new directory `name` in `dir` (absolute
    /// path `dir_path`): every file cloned, every subdirectory recursed.
    pub fn materialise(
        &self,
        path: &BranchPath,
        frame: &DirFrame,
        like: &Hit,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &OsStr,
    ) -> CoreResult<()> {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
            .map_err(|e| CoreError::io(format!("copy directory {path}"), e.into()))?;
        let here = beneath::open_subdir(dir, name)
            .map_err(|e| CoreError::io(format!("copy directory {path}"), e))?;
        let here_path = dir_path.join(name);
        for entry in self.view.list_frame(frame)? {
            let child = path.join(&entry.name);
            let Some(hit) = self.view.lookup_in(frame, &entry.name, false)? else {
                continue;
            };
            let stored = encode(&entry.name)?;
            match hit.st.kind {
                FileKind::File => {
                    self.clone_file(&hit, &child, here.as_fd(), &here_path, &stored)?
                }
                FileKind::Symlink => self.copy_symlink(&hit, here.as_fd(), &stored)?,
                FileKind::Dir => {
                    let sub = self.view.frame_of(frame, &hit, &entry.name)?;
                    self.materialise(&child, &sub, &hit, here.as_fd(), &here_path, &stored)?
                }
                FileKind::Other => {
                    return Err(CoreError::Unsupported(format!(
                        "{child}: not a regular file"
                    )))
                }
            }
        }
        if let (Ok(src), Ok(dst)) = (
            beneath::open_dir_readable(like.dir.as_fd(), Some(&like.stored)),
            beneath::open_dir_readable(dir, Some(name)),
        ) {
            xattrs::copy_all(src.as_fd(), dst.as_fd());
        }
        set_mode_and_times(dir, name, &like.st)
    }

    /// Creates the whiteout for user name `name` in active directory `dir`
    /// (idempotent).
    pub fn make_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> CoreResult<()> {
        let (w, hashed) = whiteout_name(name);
        if !hashed {
            return beneath::open_file_at(dir, &w, OFlags::WRONLY | OFlags::CREATE, 0o600)
                .map(drop)
                .map_err(|e| CoreError::io(format!("create whiteout for {:?}", name), e));
        }
        if self.view.has_whiteout(dir, name)? {
            return Ok(());
        }
        // The hashed form carries the name: write it fully, then rename.
        let work = self.work()?;
        let tmp = temp_name();
        let mut f = beneath::open_file_at(
            work.as_fd(),
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            0o600,
        )
        .map_err(|e| CoreError::io("create whiteout", e))?;
        std::io::Write::write_all(&mut f, name.as_bytes())
            .map_err(|e| CoreError::io("write whiteout", e))?;
        drop(f);
        self.place(work.as_fd(), &tmp, dir, &w)
    }

    /// Removes the whiteout for `name` in active directory `dir`, if any.
    pub fn remove_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> CoreResult<()> {
        let (w, _) = whiteout_name(name);
        match rustix::fs::unlinkat(dir, &w, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(CoreError::io("remove whiteout", e.into())),
        }
    }

    /// Marks directory `name` in `dir` opaque.
    pub fn make_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> CoreResult<()> {
        let d = beneath::open_subdir(dir, name).map_err(|e| CoreError::io("open directory", e))?;
        beneath::open_file_at(
            d.as_fd(),
            OsStr::new(OPAQUE_MARKER),
            OFlags::WRONLY | OFlags::CREATE,
            0o600,
        )
        .map(drop)
        .map_err(|e| CoreError::io("create opaque marker", e))
    }
}

/// Copies the first `len` bytes of `src` into the empty file `dst`, keeping
/// holes: only the ranges `SEEK_DATA`/`SEEK_HOLE` report as data are
/// copied (in bounded chunks), and the length is set at the end, so a
/// sparse file stays sparse. Where the filesystem cannot say, everything
/// is data. A full disk is an `ENOSPC` error; the caller removes `dst`.
pub(crate) fn copy_sparse(src: &std::fs::File, dst: &std::fs::File, len: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => pos,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => len,
            Err(e) => return Err(e.into()),
        };
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = match src.read_at(&mut buf[..want], at) {
                Ok(0) => break, // the source shrank: what is left reads as zeros
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = hole.max(data + 1);
    }
    dst.set_len(len)
}

/// Sets the permission bits and times of `name` in `dir` to those of `st`.
pub(crate) fn set_mode_and_times(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &RawStat,
) -> CoreResult<()> {
    rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(st.perm() as _),
        AtFlags::empty(),
    )
    .map_err(|e| CoreError::io(format!("chmod {:?}", name), e.into()))?;
    let ts = Timestamps {
        last_access: timespec(st.atime),
        last_modification: timespec(st.mtime),
    };
    rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| CoreError::io(format!("set times of {:?}", name), e.into()))
}
