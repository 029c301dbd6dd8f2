//! Differences between two views of the same base (a branch and a
//! snapshot, or a branch and its base): added, modified and deleted paths.
//!
//! Only paths that a layer present in one chain but not the other touches
//! can differ, so the comparison walks those layers' own trees (which hold
//! only changes) and compares the two merged views at those paths. Under a
//! directory that one of those layers makes opaque, whites out or shadows
//! with a non-directory, or that exists in only one view, the whole merged
//! subtree is compared. Files are equal when they
//! are the same file in a shared layer, or have the same kind, mode and
//! content.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::Read,
    os::fd::{AsFd, BorrowedFd},
};

use rustix::fs::OFlags;
use serde::Serialize;

use super::{
    beneath,
    error::{CoreError, CoreResult},
    layer_names::{decode, Decoded},
    metadata::FileKind,
    path::BranchPath,
    view::{DirFrame, Hit, View},
};

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// Only in the newer view.
    Added,
    /// In both, with different kind, mode, content or target.
    Modified,
    /// Only in the older view.
    Deleted,
}

impl ChangeType {
    /// `A`, `M` or `D`.
    pub fn letter(self) -> char {
        match self {
            Self::Added => 'A',
            Self::Modified => 'M',
            Self::Deleted => 'D',
        }
    }
}

/// One differing path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// The path (branch-relative; in JSON, `path` has U+FFFD for bytes
    /// that are not UTF-8, and `path_bytes` then gives the exact bytes).
    #[serde(flatten, serialize_with = "ser_path")]
    pub path: BranchPath,
    /// How it differs.
    pub change: ChangeType,
    /// Its kind in the newer view (the older one for deletions).
    pub kind: FileKind,
}

fn ser_path<S: serde::Serializer>(p: &BranchPath, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    use std::os::unix::ffi::OsStrExt;
    let raw = p.components().join(std::ffi::OsStr::new("/"));
    let exact = raw.to_str().is_none();
    let mut m = s.serialize_map(Some(1 + usize::from(exact)))?;
    m.serialize_entry("path", &p.to_string())?;
    if exact {
        m.serialize_entry("path_bytes", raw.as_bytes())?;
    }
    m.end()
}

/// The tree of paths some differing layer touches.
#[derive(Debug, Default)]
struct Touched {
    children: BTreeMap<OsString, Touched>,
    /// A differing layer makes this directory opaque: compare it all.
    full: bool,
}

fn collect(dir: BorrowedFd<'_>, node: &mut Touched) -> CoreResult<()> {
    for (stored, kind) in
        beneath::list_dir(dir).map_err(|e| CoreError::io("list layer directory", e))?
    {
        match decode(&stored) {
            Decoded::Entry(name) => {
                let child = node.children.entry(name).or_default();
                let is_dir = match kind {
                    Some(k) => k == FileKind::Dir,
                    None => beneath::lstat_at(dir, &stored)
                        .map_err(|e| CoreError::io("stat layer entry", e))?
                        .is_some_and(|s| s.kind == FileKind::Dir),
                };
                if is_dir {
                    let sub = beneath::open_subdir(dir, &stored)
                        .map_err(|e| CoreError::io("open layer directory", e))?;
                    collect(sub.as_fd(), child)?;
                } else {
                    // A non-directory here cuts off any directory of this
                    // name below: where one view has a directory, its
                    // whole content may differ.
                    child.full = true;
                }
            }
            Decoded::Whiteout(name) => {
                // Likewise: a directory re-created above a whiteout shows
                // none of what is below it.
                node.children.entry(name).or_default().full = true;
            }
            Decoded::HashedWhiteout => {
                // The name is in the file; comparing the whole directory
                // is simpler than reading it and always correct.
                node.full = true;
            }
            Decoded::Opaque => node.full = true,
            Decoded::Reserved => {}
        }
    }
    Ok(())
}

/// Compares `old` and `new`; `old_only`/`new_only` are the indices of the
/// layers each view does not share with the other.
pub fn diff(
    old: &View,
    new: &View,
    old_only: &[usize],
    new_only: &[usize],
) -> CoreResult<Vec<DiffEntry>> {
    let mut touched = Touched::default();
    for &i in old_only {
        collect(old.layers[i].root.as_fd(), &mut touched)?;
    }
    for &i in new_only {
        collect(new.layers[i].root.as_fd(), &mut touched)?;
    }
    let mut out = Vec::new();
    let mut d = Differ {
        old,
        new,
        out: &mut out,
    };
    d.dir(
        &BranchPath::root(),
        &old.root_frame()?,
        &new.root_frame()?,
        Some(&touched),
        touched.full,
    )?;
    Ok(out)
}

struct Differ<'a> {
    old: &'a View,
    new: &'a View,
    out: &'a mut Vec<DiffEntry>,
}

impl Differ<'_> {
    fn dir(
        &mut self,
        path: &BranchPath,
        of: &DirFrame,
        nf: &DirFrame,
        node: Option<&Touched>,
        full: bool,
    ) -> CoreResult<()> {
        let names: Vec<OsString> = if full {
            let mut all: Vec<OsString> = self
                .old
                .list_frame(of)?
                .into_iter()
                .chain(self.new.list_frame(nf)?)
                .map(|e| e.name)
                .collect();
            all.sort();
            all.dedup();
            all
        } else {
            node.map(|n| n.children.keys().cloned().collect())
                .unwrap_or_default()
        };
        for name in names {
            let child = node.and_then(|n| n.children.get(&name));
            let p = path.join(&name);
            let o = self.old.lookup_in(of, &name, false)?;
            let n = self.new.lookup_in(nf, &name, false)?;
            match (o, n) {
                (None, None) => {}
                (None, Some(n)) => self.subtree(self.new, nf, &p, &n, ChangeType::Added)?,
                (Some(o), None) => self.subtree(self.old, of, &p, &o, ChangeType::Deleted)?,
                (Some(o), Some(n)) => {
                    let (ok, nk) = (o.st.kind, n.st.kind);
                    if ok == FileKind::Dir && nk == FileKind::Dir {
                        let sof = self.old.frame_of(of, &o, &name)?;
                        let snf = self.new.frame_of(nf, &n, &name)?;
                        let full = full || child.is_some_and(|c| c.full);
                        self.dir(&p, &sof, &snf, child, full)?;
                    } else if ok != nk {
                        if ok == FileKind::Dir {
                            let sof = self.old.frame_of(of, &o, &name)?;
                            self.below(self.old, &p, &sof, ChangeType::Deleted)?;
                        }
                        self.push(&p, ChangeType::Modified, nk);
                        if nk == FileKind::Dir {
                            let snf = self.new.frame_of(nf, &n, &name)?;
                            self.below(self.new, &p, &snf, ChangeType::Added)?;
                        }
                    } else if !same_content(&o, &n)? {
                        self.push(&p, ChangeType::Modified, nk);
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, path: &BranchPath, change: ChangeType, kind: FileKind) {
        self.out.push(DiffEntry {
            path: path.clone(),
            change,
            kind,
        });
    }

    /// Reports `hit` (at `path` in `frame` of `view`) and, for a directory,
    /// everything below it.
    fn subtree(
        &mut self,
        view: &View,
        frame: &DirFrame,
        path: &BranchPath,
        hit: &Hit,
        change: ChangeType,
    ) -> CoreResult<()> {
        self.push(path, change, hit.st.kind);
        if hit.st.kind == FileKind::Dir {
            let sub = view.frame_of(frame, hit, path.file_name().expect("not root"))?;
            self.below(view, path, &sub, change)?;
        }
        Ok(())
    }

    fn below(
        &mut self,
        view: &View,
        path: &BranchPath,
        frame: &DirFrame,
        change: ChangeType,
    ) -> CoreResult<()> {
        for e in view.list_frame(frame)? {
            if let Some(h) = view.lookup_in(frame, &e.name, false)? {
                self.subtree(view, frame, &path.join(&e.name), &h, change)?;
            }
        }
        Ok(())
    }
}

/// True when two non-directory entries of the same kind are equal.
fn same_content(a: &Hit, b: &Hit) -> CoreResult<bool> {
    if a.st.dev == b.st.dev && a.st.ino == b.st.ino {
        return Ok(true);
    }
    match a.st.kind {
        FileKind::Symlink => {
            let ta = beneath::readlink_at(a.dir.as_fd(), &a.stored)
                .map_err(|e| CoreError::io("readlink", e))?;
            let tb = beneath::readlink_at(b.dir.as_fd(), &b.stored)
                .map_err(|e| CoreError::io("readlink", e))?;
            Ok(ta == tb)
        }
        FileKind::File => {
            if a.st.size != b.st.size || a.st.perm() != b.st.perm() {
                return Ok(false);
            }
            let open = |h: &Hit| {
                beneath::open_file_at(h.dir.as_fd(), &h.stored, OFlags::RDONLY, 0)
                    .map_err(|e| CoreError::io("open for diff", e))
            };
            let (mut fa, mut fb) = (open(a)?, open(b)?);
            let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
            loop {
                let na = read_full(&mut fa, &mut ba)?;
                let nb = read_full(&mut fb, &mut bb)?;
                if na != nb || ba[..na] != bb[..nb] {
                    return Ok(false);
                }
                if na == 0 {
                    return Ok(true);
                }
            }
        }
        _ => Ok(a.st.perm() == b.st.perm() && a.st.mode == b.st.mode),
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> CoreResult<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CoreError::io("read for diff", e)),
        }
    }
    Ok(n)
}
