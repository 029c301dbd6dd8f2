//! The file operations that change a branch, with overlay semantics. Each
//! returns the one [`Change`] it made, which the store publishes.
//!
//! Every step that changes what the branch shows is a single atomic
//! syscall in the active layer, ordered so that a crash between two steps
//! leaves either the old view, the new view, or (for renames of entries
//! from lower layers) both names visible, never neither:
//! - new entries are built in the work directory and renamed into place,
//!   then any stale whiteout for the name is removed (an entry wins over a
//!   whiteout in the same layer);
//! - a whiteout is created *before* the active entry it replaces goes
//!   away, so the name disappears in one step;
//! - a directory made where a lower one was deleted is opaque.

use std::{
    ffi::{OsStr, OsString},
    io::Write,
    os::{fd::AsFd, unix::ffi::OsStrExt, unix::fs::FileExt},
    time::SystemTime,
};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps, UTIME_OMIT};

use super::{
    beneath,
    copy_up::{temp_name, Writer},
    error::{CoreError, CoreResult},
    events::{Change, EventKind},
    fault,
    layer_names::encode,
    metadata::FileKind,
    path::{BranchPath, PATH_MAX},
    view::{regular_file, xattr_err, Hit, Resolved},
    xattrs,
};

fn is_dir(r: &Resolved) -> bool {
    r.kind() == Some(FileKind::Dir)
}

fn not_root(r: &Resolved, what: &str) -> CoreResult<()> {
    if r.path.is_root() {
        Err(CoreError::InvalidArgument(format!(
            "cannot {what} the branch root"
        )))
    } else {
        Ok(())
    }
}

/// The permission bits of a mode a caller gave: bits outside 07777 (a
/// file type, or garbage) are refused, never silently dropped.
pub(crate) fn perm_bits(mode: u32) -> CoreResult<u32> {
    if mode & !0o7777 != 0 {
        return Err(CoreError::InvalidArgument(format!(
            "invalid mode {mode:#o}: only permission bits (at most 07777) may be given"
        )));
    }
    Ok(mode)
}

/// Refuses a file size or end offset past the largest a file can have
/// (`i64::MAX`): `EFBIG`, "file too large".
/// Refuses a write that would end past the largest file size.
pub(crate) fn check_write_size(path: &BranchPath, offset: u64, data: &[u8]) -> CoreResult<()> {
    check_size(path, "write", offset.checked_add(data.len() as u64)).map(|_| ())
}

/// The event of `data` written at `offset` into `path`, `before` bytes long.
pub(crate) fn written(path: BranchPath, before: u64, offset: u64, data: &[u8]) -> Change {
    let after = if data.is_empty() {
        before // a write of nothing extends nothing
    } else {
        before.max(offset + data.len() as u64)
    };
    Change::new(EventKind::Modified, path, false).sizes(Some(before), Some(after))
}

fn check_size(path: &BranchPath, what: &str, end: Option<u64>) -> CoreResult<u64> {
    match end {
        Some(n) if n <= i64::MAX as u64 => Ok(n),
        _ => Err(CoreError::io(
            format!("{what} {path}"),
            std::io::Error::from_raw_os_error(libc::EFBIG),
        )),
    }
}

fn ts(t: Option<SystemTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(t) => {
            let (s, n) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut s = -(d.as_secs() as i64);
                    let mut n = d.subsec_nanos() as i64;
                    if n > 0 {
                        s -= 1;
                        n = 1_000_000_000 - n;
                    }
                    (s, n)
                }
            };
            Timespec {
                tv_sec: s as _,
                tv_nsec: n as _,
            }
        }
    }
}

impl Writer<'_> {
    fn io(&self, path: &BranchPath, what: &str) -> impl Fn(std::io::Error) -> CoreError {
        let p = path.to_string();
        let w = what.to_string();
        move |e| CoreError::from_errno(&p, &w, e)
    }

    /// Creates an empty regular file; fails if the name is taken.
    pub fn create(&self, path: &BranchPath, mode: u32) -> CoreResult<Change> {
        let mode = perm_bits(mode)?;
        let r = self.view.resolve(path, false)?;
        not_root(&r, "create")?;
        if r.hit.is_some() {
            return Err(CoreError::AlreadyExists(r.path.to_string()));
        }
        self.place_new_file(&r, b"", mode, None)?;
        Ok(Change::new(EventKind::Created, r.path, false).sizes(None, Some(0)))
    }

    /// Builds a file holding `data` with permission bits `mode` (and the
    /// xattrs of `like`, if given) in the work directory, and renames it to
    /// `r`'s name in the active layer (replacing what the active layer has
    /// there, and removing a stale whiteout).
    fn place_new_file(
        &self,
        r: &Resolved,
        data: &[u8],
        mode: u32,
        like: Option<&Hit>,
    ) -> CoreResult<()> {
        let parent = self.active_dir(&r.path.parent().expect("not the root"))?;
        let stored = encode(r.name())?;
        let work = self.work()?;
        let tmp = temp_name();
        let built = (|| {
            let mut f = beneath::open_file_at(
                work.as_fd(),
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o600,
            )?;
            f.write_all(data)?;
            if let Some(h) = like {
                let src = beneath::open_file_at(h.dir.as_fd(), &h.stored, OFlags::RDONLY, 0)?;
                xattrs::copy_all(src.as_fd(), f.as_fd());
            }
            rustix::fs::fchmod(f.as_fd(), Mode::from_raw_mode((mode & 0o7777) as _))?;
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = built {
            self.discard(&tmp);
            return Err(self.io(&r.path, "write")(e));
        }
        self.place(work.as_fd(), &tmp, parent.as_fd(), &stored)?;
        self.remove_whiteout(parent.as_fd(), r.name())
    }

    /// Replaces the whole content of regular file `path`, creating it
    /// (with `mode`) if it does not exist. A final symlink is followed.
    pub fn write_file(&self, path: &BranchPath, data: &[u8], mode: u32) -> CoreResult<Change> {
        let r = self.view.resolve(path, true)?;
        not_root(&r, "write")?;
        let Some(hit) = &r.hit else {
            self.place_new_file(&r, data, mode, None)?;
            return Ok(
                Change::new(EventKind::Created, r.path, false).sizes(None, Some(data.len() as u64))
            );
        };
        let before = regular_file(&r)?.st.size;
        if hit.layer == 0 {
            let mut f = beneath::open_file_at(
                hit.dir.as_fd(),
                &hit.stored,
                OFlags::WRONLY | OFlags::TRUNC,
                0,
            )
            .map_err(self.io(&r.path, "open"))?;
            f.write_all(data).map_err(self.io(&r.path, "write"))?;
        } else {
            // No need to copy content that is replaced: build the new file
            // with the old one's mode and xattrs, and rename it over.
            self.place_new_file(&r, data, hit.st.perm(), Some(hit))?;
        }
        Ok(Change::new(EventKind::Modified, r.path, false)
            .sizes(Some(before), Some(data.len() as u64)))
    }

    /// Writes `data` at `offset` into existing regular file `path`
    /// (copying it up first). A final symlink is followed.
    pub fn write_at(&self, path: &BranchPath, offset: u64, data: &[u8]) -> CoreResult<Change> {
        self.write_at_keep(path, offset, data).map(|(c, _, _)| c)
    }

    /// [`Writer::write_at`], also returning the file written (open for
    /// writing, in the active layer) for the caller to keep.
    pub fn write_at_keep(
        &self,
        path: &BranchPath,
        offset: u64,
        data: &[u8],
    ) -> CoreResult<(Change, BranchPath, std::fs::File)> {
        check_write_size(path, offset, data)?;
        let r = self.view.existing(path, true)?;
        let before = regular_file(&r)?.st.size;
        let (dir, stored) = self.copy_up(&r)?;
        // The fd never leaves this function and is a regular file (checked
        // by the open), where O_NONBLOCK changes nothing: left set, it
        // saves the two fcntl calls that would clear it.
        let f = beneath::open_file_at(dir.as_fd(), &stored, OFlags::WRONLY | OFlags::NONBLOCK, 0)
            .map_err(self.io(&r.path, "open"))?;
        f.write_all_at(data, offset)
            .map_err(self.io(&r.path, "write"))?;
        let change = written(r.path.clone(), before, offset, data);
        Ok((change, r.path, f))
    }

    /// Sets the length of regular file `path`. A final symlink is followed.
    pub fn truncate(&self, path: &BranchPath, len: u64) -> CoreResult<Change> {
        check_size(path, "truncate", Some(len))?;
        let r = self.view.existing(path, true)?;
        let hit = regular_file(&r)?;
        let before = hit.st.size;
        if len == 0 && hit.layer != 0 {
            // Nothing of the old content survives: do not copy it.
            return self
                .write_file(&r.path, b"", hit.st.perm())
                .map(|c| c.sizes(Some(before), Some(0)));
        }
        let (dir, stored) = self.copy_up(&r)?;
        // As in `write_at`: a regular file's fd used here only.
        let f = beneath::open_file_at(dir.as_fd(), &stored, OFlags::WRONLY | OFlags::NONBLOCK, 0)
            .map_err(self.io(&r.path, "open"))?;
        f.set_len(len).map_err(self.io(&r.path, "truncate"))?;
        Ok(Change::new(EventKind::Modified, r.path, false).sizes(Some(before), Some(len)))
    }

    /// Creates directory `path`.
    pub fn mkdir(&self, path: &BranchPath, mode: u32) -> CoreResult<Change> {
        let mode = perm_bits(mode)?;
        let r = self.view.resolve(path, false)?;
        if r.path.is_root() || r.hit.is_some() {
            return Err(CoreError::AlreadyExists(r.path.to_string()));
        }
        let parent = self.active_dir(&r.path.parent().expect("not the root"))?;
        let stored = encode(r.name())?;
        // Something of this name was deleted below: hide its content.
        let opaque = self.view.has_whiteout(parent.as_fd(), r.name())?
            || self
                .view
                .lookup_in(r.parent.as_ref().expect("not the root"), r.name(), true)?
                .is_some();
        let work = self.work()?;
        let tmp = temp_name();
        let built = (|| {
            rustix::fs::mkdirat(work.as_fd(), &tmp, Mode::from_raw_mode(0o700))
                .map_err(|e| CoreError::io("mkdir", e.into()))?;
            if opaque {
                self.make_opaque(work.as_fd(), &tmp)?;
            }
            rustix::fs::chmodat(
                work.as_fd(),
                &tmp,
                Mode::from_raw_mode((mode & 0o7777) as _),
                AtFlags::empty(),
            )
            .map_err(|e| CoreError::io("chmod", e.into()))
        })();
        if let Err(e) = built {
            self.discard(&tmp);
            return Err(e);
        }
        self.place(work.as_fd(), &tmp, parent.as_fd(), &stored)?;
        self.remove_whiteout(parent.as_fd(), r.name())?;
        Ok(Change::new(EventKind::Created, r.path, true))
    }

    /// Removes empty directory `path`.
    pub fn rmdir(&self, path: &BranchPath) -> CoreResult<Change> {
        let r = self.view.existing(path, false)?;
        not_root(&r, "remove")?;
        if !is_dir(&r) {
            return Err(CoreError::NotDirectory(r.path.to_string()));
        }
        let frame = self.view.dir_frame(&r)?;
        if !self.view.list_frame(&frame)?.is_empty() {
            return Err(CoreError::NotEmpty(r.path.to_string()));
        }
        self.remove_entry(&r)?;
        Ok(Change::new(EventKind::Removed, r.path, true))
    }

    /// Removes non-directory `path` (a final symlink is removed, not followed).
    pub fn unlink(&self, path: &BranchPath) -> CoreResult<Change> {
        let r = self.view.existing(path, false)?;
        not_root(&r, "remove")?;
        if is_dir(&r) {
            return Err(CoreError::IsDirectory(r.path.to_string()));
        }
        let hit = r.hit.as_ref().expect("existing");
        let size = (hit.st.kind == FileKind::File).then_some(hit.st.size);
        self.remove_entry(&r)?;
        Ok(Change::new(EventKind::Removed, r.path, false).sizes(size, None))
    }

    /// Makes existing entry `r` disappear from the branch: whiteout first
    /// (if a lower layer has the name), then the active entry goes.
    fn remove_entry(&self, r: &Resolved) -> CoreResult<()> {
        let hit = r.hit.as_ref().expect("existing");
        let parent_frame = r.parent.as_ref().expect("not the root");
        let lower = self.view.lookup_in(parent_frame, r.name(), true)?.is_some();
        if hit.layer == 0 {
            if lower {
                self.make_whiteout(hit.dir.as_fd(), r.name())?;
            }
            if hit.st.kind == FileKind::Dir {
                self.trash(hit.dir.as_fd(), &hit.stored)
            } else {
                rustix::fs::unlinkat(hit.dir.as_fd(), &hit.stored, AtFlags::empty())
                    .map_err(|e| self.io(&r.path, "unlink")(e.into()))
            }
        } else {
            let parent = self.active_dir(&r.path.parent().expect("not the root"))?;
            self.make_whiteout(parent.as_fd(), r.name())
        }
    }

    /// Creates symlink `path` pointing to `target` (stored verbatim).
    pub fn symlink(&self, target: &OsStr, path: &BranchPath) -> CoreResult<Change> {
        let t = target.as_bytes();
        if t.is_empty() || t.contains(&0) || t.len() > PATH_MAX {
            return Err(CoreError::InvalidArgument(format!(
                "invalid symlink target {:?}",
                target
            )));
        }
        let r = self.view.resolve(path, false)?;
        if r.path.is_root() || r.hit.is_some() {
            return Err(CoreError::AlreadyExists(r.path.to_string()));
        }
        let parent = self.active_dir(&r.path.parent().expect("not the root"))?;
        let stored = encode(r.name())?;
        let work = self.work()?;
        let tmp = temp_name();
        rustix::fs::symlinkat(t, work.as_fd(), &tmp)
            .map_err(|e| self.io(&r.path, "symlink")(e.into()))?;
        self.place(work.as_fd(), &tmp, parent.as_fd(), &stored)?;
        self.remove_whiteout(parent.as_fd(), r.name())?;
        Ok(Change::new(EventKind::Created, r.path, false))
    }

    /// Hard links are not supported: a later copy-up of either name would
    /// silently split them.
    pub fn link(&self, from: &BranchPath, to: &BranchPath) -> CoreResult<Change> {
        Err(CoreError::Unsupported(format!(
            "hard link {from} -> {to}: the overlay does not support hard links (copy-up would split them)"
        )))
    }

    /// Runs `f` on the active copy of `path` (symlinks followed), copying
    /// it up first; the root is changed in place.
    fn with_active<T>(
        &self,
        path: &BranchPath,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, &OsStr) -> std::io::Result<T>,
    ) -> CoreResult<(Resolved, T)> {
        let r = self.view.existing(path, true)?;
        if r.path.is_root() {
            let root = self.active().root.clone();
            let v = f(root.as_fd(), OsStr::new(".")).map_err(self.io(&r.path, "change"))?;
            return Ok((r, v));
        }
        let (dir, stored) = self.copy_up(&r)?;
        let v = f(dir.as_fd(), &stored).map_err(self.io(&r.path, "change"))?;
        Ok((r, v))
    }

    /// Sets the permission bits of `path` (symlinks followed).
    pub fn chmod(&self, path: &BranchPath, mode: u32) -> CoreResult<Change> {
        let mode = perm_bits(mode)?;
        let (r, ()) = self.with_active(path, |dir, name| {
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode((mode & 0o7777) as _),
                AtFlags::empty(),
            )
            .map_err(Into::into)
        })?;
        let d = is_dir(&r);
        Ok(Change::new(EventKind::AttributesChanged, r.path, d))
    }

    /// Sets access and/or modification time of `path` (symlinks followed);
    /// `None` leaves that time unchanged.
    pub fn set_times(
        &self,
        path: &BranchPath,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> CoreResult<Change> {
        let t = Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        };
        let (r, ()) = self.with_active(path, |dir, name| {
            rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
        })?;
        let d = is_dir(&r);
        Ok(Change::new(EventKind::AttributesChanged, r.path, d))
    }

    fn xattr_fd(&self, path: &BranchPath) -> CoreResult<(Resolved, std::os::fd::OwnedFd)> {
        let r = self.view.existing(path, true)?;
        if !r.path.is_root() {
            self.copy_up(&r)?;
        }
        let r = self.view.existing(&r.path, true)?;
        let fd = self.view.open_for_xattr(&r)?;
        Ok((r, fd))
    }

    /// Sets extended attribute `name` of `path` (symlinks followed).
    pub fn set_xattr(&self, path: &BranchPath, name: &OsStr, value: &[u8]) -> CoreResult<Change> {
        let (r, fd) = self.xattr_fd(path)?;
        xattrs::set(fd.as_fd(), name, value).map_err(|e| xattr_err(&r.path, e))?;
        let d = is_dir(&r);
        Ok(Change::new(EventKind::AttributesChanged, r.path, d))
    }

    /// Removes extended attribute `name` of `path` (symlinks followed).
    pub fn remove_xattr(&self, path: &BranchPath, name: &OsStr) -> CoreResult<Change> {
        let (r, fd) = self.xattr_fd(path)?;
        xattrs::remove(fd.as_fd(), name).map_err(|e| xattr_err(&r.path, e))?;
        let d = is_dir(&r);
        Ok(Change::new(EventKind::AttributesChanged, r.path, d))
    }

    /// Renames `from` to `to` with POSIX semantics (an existing
    /// non-directory `to` is replaced; an existing empty directory `to` is
    /// replaced by a directory). Returns `None` when both name the same
    /// entry (nothing to do).
    ///
    /// Method: an entry that lives only in the active layer (a file, or a
    /// directory with no lower part) is renamed in place. Anything else
    /// (a file from a lower layer, a directory merged with lower layers)
    /// is first materialised in the work directory (files reflinked or
    /// copied, the directory tree rebuilt and marked opaque), then renamed
    /// into place, then the old name is whited out. Moved directories are
    /// always opaque at their new name, so nothing below them merges in.
    pub fn rename(&self, from: &BranchPath, to: &BranchPath) -> CoreResult<Option<Change>> {
        let rf = self.view.existing(from, false)?;
        not_root(&rf, "rename")?;
        if rf.kind() == Some(FileKind::Other) && rf.hit.as_ref().is_some_and(|h| h.layer != 0) {
            // Moving it would mean copying it up: a special file (FIFO,
            // device, socket) is never opened, so it cannot be.
            return Err(CoreError::Unsupported(format!(
                "{}: not a regular file",
                rf.path
            )));
        }
        let rt = self.view.resolve(to, false)?;
        if rt.path.is_root() {
            return Err(CoreError::Busy {
                what: "the branch root".into(),
                why: "it cannot be replaced".into(),
            });
        }
        if rf.path == rt.path {
            return Ok(None);
        }
        let src_dir = is_dir(&rf);
        if src_dir && rt.path.starts_with(&rf.path) {
            return Err(CoreError::InvalidArgument(format!(
                "cannot move directory {} into itself ({})",
                rf.path, rt.path
            )));
        }
        match (src_dir, rt.kind()) {
            (_, None) => {}
            (true, Some(FileKind::Dir)) => {
                let frame = self.view.dir_frame(&rt)?;
                if !self.view.list_frame(&frame)?.is_empty() {
                    return Err(CoreError::NotEmpty(rt.path.to_string()));
                }
            }
            (true, Some(_)) => return Err(CoreError::NotDirectory(rt.path.to_string())),
            (false, Some(FileKind::Dir)) => {
                return Err(CoreError::IsDirectory(rt.path.to_string()))
            }
            (false, Some(_)) => {}
        }
        // Copy up the destination's parents, then look both up afresh (the
        // copy-up may have created the active copy of a shared parent).
        let to_parent = self.active_dir(&rt.path.parent().expect("not the root"))?;
        let rf = self.view.existing(&rf.path, false)?;
        let rt = self.view.resolve(&rt.path, false)?;
        let src = rf.hit.clone().expect("existing");
        let from_lower = self
            .view
            .lookup_in(rf.parent.as_ref().expect("not the root"), rf.name(), true)?
            .is_some();
        let direct = src.layer == 0 && (!src_dir || self.view.dir_frame(&rf)?.parts.len() == 1);
        let work = self.work()?;
        let to_stored = encode(rt.name())?;

        // 1. The object to move: the active entry itself, or a complete copy.
        let (m_dir, m_name): (std::sync::Arc<std::os::fd::OwnedFd>, OsString) = if direct {
            (src.dir.clone(), src.stored.clone())
        } else {
            let tmp = temp_name();
            let built = if src_dir {
                let frame = self.view.dir_frame(&rf)?;
                self.materialise(
                    &rf.path,
                    &frame,
                    &src,
                    work.as_fd(),
                    &self.work_path(),
                    &tmp,
                )
            } else if src.st.kind == FileKind::Symlink {
                let target = self.view.read_link(&rf.path)?;
                rustix::fs::symlinkat(target.as_bytes(), work.as_fd(), &tmp)
                    .map_err(|e| CoreError::io("copy symlink", e.into()))
            } else {
                self.clone_file(&src, &rf.path, work.as_fd(), &self.work_path(), &tmp)
            };
            if let Err(e) = built {
                self.discard(&tmp);
                return Err(e);
            }
            (work.clone(), tmp)
        };
        if src_dir {
            // Invisible where it is (it has no lower part, or it is a copy).
            self.make_opaque(m_dir.as_fd(), &m_name)?;
        }
        // 2. A direct move leaves a whiteout behind; made now, it stays
        // hidden behind the entry until the entry moves.
        if direct && from_lower {
            self.make_whiteout(m_dir.as_fd(), rf.name())?;
        }
        // 3. Into place.
        let replaces_active_dir =
            matches!(&rt.hit, Some(h) if h.layer == 0 && h.st.kind == FileKind::Dir);
        if replaces_active_dir {
            // The old directory holds only markers; swap it out atomically.
            match rustix::fs::renameat_with(
                m_dir.as_fd(),
                &m_name,
                to_parent.as_fd(),
                &to_stored,
                RenameFlags::EXCHANGE,
            ) {
                Ok(()) => self.trash(m_dir.as_fd(), &m_name)?,
                // No exchange on this filesystem: move the old one out first.
                Err(
                    rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP,
                ) => {
                    self.trash(to_parent.as_fd(), &to_stored)?;
                    rustix::fs::renameat(m_dir.as_fd(), &m_name, to_parent.as_fd(), &to_stored)
                        .map_err(|e| self.io(&rt.path, "rename")(e.into()))?;
                }
                Err(e) => return Err(self.io(&rt.path, "rename")(e.into())),
            }
        } else if let Err(e) =
            rustix::fs::renameat(m_dir.as_fd(), &m_name, to_parent.as_fd(), &to_stored)
        {
            if !direct {
                self.discard(&m_name);
            }
            return Err(self.io(&rt.path, "rename")(e.into()));
        }
        self.remove_whiteout(to_parent.as_fd(), rt.name())?;
        fault::point("rename-after-place");
        // 4. The old name goes (the copy case): whiteout, then any active part.
        if !direct {
            if src.layer == 0 {
                if from_lower {
                    self.make_whiteout(src.dir.as_fd(), rf.name())?;
                }
                self.trash(src.dir.as_fd(), &src.stored)?;
            } else {
                let from_parent = self.active_dir(&rf.path.parent().expect("not the root"))?;
                self.make_whiteout(from_parent.as_fd(), rf.name())?;
            }
        }
        Ok(Some(Change::new(
            EventKind::Renamed {
                to: rt.path.clone(),
            },
            rf.path,
            src_dir,
        )))
    }
}
