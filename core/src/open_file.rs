//! Opening a branch file for a real file descriptor (the daemon's
//! `fd_open`): data I/O then goes straight to the kernel.
//!
//! A read-only open of a file the branch has not changed gets the file in
//! the layer (or base) that holds it. Any open that may change the file
//! (write access, create, truncate) works in the active layer: a file from
//! a lower layer is copied up first (reflink through the backstore when
//! possible), a missing one is created there. Resolution is the core's, so
//! the path never leads outside the branch. Directories are refused (a
//! layer's directory fd would show that layer only, not the merged view).

use std::{fs::File, os::fd::AsFd};

use rustix::fs::OFlags;

use super::{
    beneath,
    copy_up::Writer,
    error::{CoreError, CoreResult},
    events::{Change, EventKind},
    layer_names::encode,
    metadata::FileKind,
    path::BranchPath,
    view::{Resolved, View},
};

/// How to open a file: the portable part of `open(2)`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open for reading.
    pub read: bool,
    /// Open for writing (copies the file up first).
    pub write: bool,
    /// Create the file if missing (`O_CREAT`).
    pub create: bool,
    /// With `create`: fail if it exists (`O_EXCL`).
    pub exclusive: bool,
    /// Truncate to 0 (`O_TRUNC`).
    pub truncate: bool,
    /// Append (`O_APPEND`).
    pub append: bool,
    /// Refuse a final symlink (`O_NOFOLLOW`).
    pub nofollow: bool,
    /// Permission bits of a created file.
    pub mode: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            read: true,
            write: false,
            create: false,
            exclusive: false,
            truncate: false,
            append: false,
            nofollow: false,
            mode: 0o644,
        }
    }
}

impl OpenOptions {
    /// True when the open may change the branch (it then takes the write
    /// path: copy-up or create in the active layer).
    pub fn modifies(&self) -> bool {
        self.write || self.create || self.truncate
    }

    fn access(&self) -> OFlags {
        let mut f = match (self.read, self.write) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            _ => OFlags::RDONLY,
        };
        if self.append && self.write {
            f |= OFlags::APPEND;
        }
        f
    }
}

/// An open file and what opening it took.
#[derive(Debug)]
pub struct OpenedFile {
    /// The file (a real fd in a layer or the base).
    pub file: File,
    /// It was copied up into the branch's active layer first.
    pub copied_up: bool,
    /// The copy-up was a reflink (no data copied).
    pub reflinked: bool,
    /// It was created.
    pub created: bool,
    /// The canonical branch path it was opened at (symlinks followed).
    pub path: BranchPath,
    /// For an open that may write: the branch's writer registration. Keep
    /// it as long as the fd may be written through: while any process
    /// holds one, a snapshot that would commit the branch's active layer
    /// (and so capture later writes) is refused as busy.
    pub writer: Option<crate::persist::WriterLock>,
}

/// Refuses what cannot be opened as a regular file.
fn regular(r: &Resolved, nofollow: bool) -> CoreResult<()> {
    match r.kind() {
        Some(FileKind::File) => Ok(()),
        Some(FileKind::Dir) => Err(CoreError::IsDirectory(r.path.to_string())),
        Some(FileKind::Symlink) if nofollow => Err(CoreError::SymlinkLoop(r.path.to_string())),
        Some(_) => Err(CoreError::Unsupported(format!(
            "{}: opening a special file",
            r.path
        ))),
        None => Err(CoreError::NotFound(r.path.to_string())),
    }
}

impl View {
    /// Opens resolved entry `r` read-only where it lives (it must be a
    /// regular file).
    pub fn open_resolved(&self, r: Resolved, nofollow: bool) -> CoreResult<(File, BranchPath)> {
        regular(&r, nofollow)?;
        let h = r.hit.as_ref().expect("a regular file was found");
        let f = beneath::open_file_at(h.dir.as_fd(), &h.stored, OFlags::RDONLY, 0)
            .map_err(|e| CoreError::from_errno(&r.path.to_string(), "open", e))?;
        Ok((f, r.path))
    }
}

/// What [`Writer::open_file`] did.
pub struct WriteOpen {
    /// The file.
    pub file: File,
    /// It was copied up.
    pub copied_up: bool,
    /// It was created.
    pub created: bool,
    /// Its canonical path.
    pub path: BranchPath,
}

impl Writer<'_> {
    /// Opens regular file `path` in the active layer with `o` (which
    /// [modifies](OpenOptions::modifies)): created if missing and asked
    /// for, copied up if it lives below, truncated if asked. Returns the
    /// change to publish: `Created`, `Modified` for a truncation, or none
    /// (a copy-up changes nothing visible).
    pub fn open_file(
        &self,
        path: &BranchPath,
        o: &OpenOptions,
    ) -> CoreResult<(WriteOpen, Option<Change>)> {
        let r = self.view.resolve(path, !o.nofollow)?;
        if r.path.is_root() {
            return Err(CoreError::IsDirectory(r.path.to_string()));
        }
        let io = |what: &'static str| {
            let p = r.path.to_string();
            move |e| CoreError::from_errno(&p, what, e)
        };
        let Some(hit) = &r.hit else {
            if !o.create {
                return Err(CoreError::NotFound(r.path.to_string()));
            }
            let change = self.create(&r.path, o.mode)?;
            let dir = self.active_dir(&r.path.parent().expect("not the root"))?;
            let file = beneath::open_file_at(dir.as_fd(), &encode(r.name())?, o.access(), 0)
                .map_err(io("open"))?;
            let open = WriteOpen {
                file,
                copied_up: false,
                created: true,
                path: r.path.clone(),
            };
            return Ok((open, Some(change)));
        };
        if o.create && o.exclusive {
            return Err(CoreError::AlreadyExists(r.path.to_string()));
        }
        regular(&r, o.nofollow)?;
        let before = hit.st.size;
        let truncated =
            Change::new(EventKind::Modified, r.path.clone(), false).sizes(Some(before), Some(0));
        let (file, copied_up, change) = if o.truncate && hit.layer != 0 {
            // Nothing of the old content survives: make an empty file
            // instead of copying.
            self.write_file(&r.path, b"", hit.st.perm())?;
            let dir = self.active_dir(&r.path.parent().expect("not the root"))?;
            let f = beneath::open_file_at(dir.as_fd(), &encode(r.name())?, o.access(), 0)
                .map_err(io("open"))?;
            (f, false, Some(truncated))
        } else {
            let (dir, stored) = self.copy_up(&r)?;
            let f =
                beneath::open_file_at(dir.as_fd(), &stored, o.access(), 0).map_err(io("open"))?;
            if o.truncate {
                f.set_len(0).map_err(io("truncate"))?;
            }
            (f, hit.layer != 0, o.truncate.then_some(truncated))
        };
        let open = WriteOpen {
            file,
            copied_up,
            created: false,
            path: r.path.clone(),
        };
        Ok((open, change))
    }

    /// The change for content of regular file `path` that was modified
    /// through an fd handed out earlier (`size_before`: its size then).
    pub fn modified_through_fd(
        &self,
        path: &BranchPath,
        size_before: Option<u64>,
    ) -> CoreResult<Change> {
        let r = self.view.existing(path, true)?;
        regular(&r, false)?;
        let now = r.hit.as_ref().expect("a regular file was found").st.size;
        Ok(Change::new(EventKind::Modified, r.path, false).sizes(size_before, Some(now)))
    }
}
