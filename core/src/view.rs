//! The merged view of a chain of layers over a base, and every read
//! operation on it.
//!
//! Lookup goes top-down through the layers that make up the current
//! directory; the first layer with the name wins; a whiteout hides the name
//! in every layer below; a directory continues to merge with the same
//! directory in lower layers until one of them is opaque, is a non-directory
//! or is whited out. Symlinks are resolved here, in the merged view, one
//! component at a time: a target that is absolute or climbs above the
//! branch root is refused ([`CoreError::Escapes`]), so resolution never
//! leaves the branch. Each layer is only ever touched through directory
//! fds and single plain components (see [`super::beneath`]).

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    ffi::{OsStr, OsString},
    fs::File,
    io::Read,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
    sync::Arc,
};

use rustix::fs::OFlags;

use super::{
    beneath::{self, RawStat},
    error::{CoreError, CoreResult},
    layer_names::{decode, encode, whiteout_name, Decoded, OPAQUE_MARKER},
    metadata::{DirEntry, FileKind, Origin, Special, Stat},
    path::{is_plain_component, BranchPath, NAME_MAX},
};

/// Most symlinks followed while resolving one path (Linux's MAXSYMLINKS).
pub const MAX_SYMLINKS: usize = 40;

/// What a layer of a view is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// The branch's writable layer (always at index 0 when present).
    Active,
    /// An immutable layer.
    Committed,
    /// The base directory: names taken literally, no markers, never written.
    Base,
}

/// One directory of a chain, open.
#[derive(Debug, Clone)]
pub struct LayerDir {
    /// Active, committed or base.
    pub kind: LayerKind,
    /// The layer id (empty for the base).
    pub id: String,
    /// Absolute path of its root (for reflink, which takes paths).
    pub root_path: PathBuf,
    /// Its root directory, open.
    pub root: Arc<OwnedFd>,
}

impl LayerDir {
    fn is_base(&self) -> bool {
        self.kind == LayerKind::Base
    }

    fn origin(&self) -> Origin {
        match self.kind {
            LayerKind::Active => Origin::Active,
            LayerKind::Committed => Origin::Committed(self.id.clone()),
            LayerKind::Base => Origin::Base,
        }
    }

    /// The name `name` has in this layer: literal in the base, encoded in
    /// layers. `None` when it cannot be stored here (so it is absent).
    fn stored(&self, name: &OsStr) -> Option<OsString> {
        if self.is_base() {
            Some(name.to_os_string())
        } else {
            encode(name).ok()
        }
    }
}

/// The directory fds, top first, of the layers making up one merged
/// directory: `(layer index, fd)`.
#[derive(Debug, Clone)]
pub struct DirFrame {
    /// Contributing layers, top first.
    pub parts: Vec<(usize, Arc<OwnedFd>)>,
}

/// Where a name was found: the layer, its directory there, the stored name
/// and its lstat.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Layer index in the view.
    pub layer: usize,
    /// The containing directory in that layer.
    pub dir: Arc<OwnedFd>,
    /// The name as stored in that layer.
    pub stored: OsString,
    /// Lstat of the entry.
    pub st: RawStat,
}

/// A resolved path: its canonical form (symlinks in directories
/// followed), the merged directory holding it, and what is there.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Canonical branch path.
    pub path: BranchPath,
    /// The merged parent directory (`None` for the root).
    pub parent: Option<DirFrame>,
    /// The entry, or `None` when the name is free (never for the root).
    pub hit: Option<Hit>,
}

impl Resolved {
    /// The last component (panics for the root; callers check first).
    pub fn name(&self) -> &OsStr {
        self.path.file_name().expect("not the root")
    }

    /// The kind of what is there, if anything.
    pub fn kind(&self) -> Option<FileKind> {
        if self.path.is_root() {
            Some(FileKind::Dir)
        } else {
            self.hit.as_ref().map(|h| h.st.kind)
        }
    }
}

enum Step {
    Name(OsString),
    Up,
}

/// A merged, read-only view of a chain: index 0 is the top layer.
#[derive(Debug, Clone)]
pub struct View {
    /// The layers, top first; the base (if any) is last.
    pub layers: Vec<LayerDir>,
}

fn io_err(path: &dyn std::fmt::Display, what: &str) -> impl FnOnce(std::io::Error) -> CoreError {
    let p = path.to_string();
    let what = what.to_string();
    move |e| CoreError::from_errno(&p, &what, e)
}

impl View {
    /// True when the top layer is a branch's active layer.
    pub fn is_writable(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|l| l.kind == LayerKind::Active)
    }

    /// The frame of the root directory.
    pub fn root_frame(&self) -> CoreResult<DirFrame> {
        let mut parts = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            parts.push((i, l.root.clone()));
            if !l.is_base() && self.is_opaque(l.root.as_fd())? {
                break;
            }
        }
        Ok(DirFrame { parts })
    }

    fn is_opaque(&self, dir: std::os::fd::BorrowedFd<'_>) -> CoreResult<bool> {
        Ok(beneath::lstat_at(dir, OsStr::new(OPAQUE_MARKER))
            .map_err(|e| CoreError::io("check opaque marker", e))?
            .is_some())
    }

    /// True when `dir` (a layer directory) holds a whiteout for `name`.
    pub fn has_whiteout(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> CoreResult<bool> {
        let (w, hashed) = whiteout_name(name);
        let st = beneath::lstat_at(dir, &w).map_err(|e| CoreError::io("check whiteout", e))?;
        match st {
            None => Ok(false),
            Some(_) if !hashed => Ok(true),
            Some(_) => Ok(read_small(dir, &w)?.as_deref() == Some(name.as_bytes())),
        }
    }

    /// Looks `name` up in a merged directory. With `skip_top`, layer 0 is
    /// ignored (what would show if the active layer had nothing there).
    pub fn lookup_in(
        &self,
        frame: &DirFrame,
        name: &OsStr,
        skip_top: bool,
    ) -> CoreResult<Option<Hit>> {
        for (idx, dir) in &frame.parts {
            if skip_top && *idx == 0 {
                continue;
            }
            let layer = &self.layers[*idx];
            if let Some(stored) = layer.stored(name) {
                let st = beneath::lstat_at(dir.as_fd(), &stored)
                    .map_err(|e| CoreError::io(format!("lookup {:?}", name), e))?;
                if let Some(st) = st {
                    return Ok(Some(Hit {
                        layer: *idx,
                        dir: dir.clone(),
                        stored,
                        st,
                    }));
                }
            }
            if !layer.is_base() && self.has_whiteout(dir.as_fd(), name)? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The merged directory for directory `hit` named `name` in `frame`.
    pub fn frame_of(&self, frame: &DirFrame, hit: &Hit, name: &OsStr) -> CoreResult<DirFrame> {
        let open = |dir: &Arc<OwnedFd>, stored: &OsStr| {
            beneath::open_subdir(dir.as_fd(), stored)
                .map(Arc::new)
                .map_err(|e| CoreError::io(format!("open directory {:?}", name), e))
        };
        let mut parts = Vec::new();
        let start = frame
            .parts
            .iter()
            .position(|(i, _)| *i == hit.layer)
            .expect("a hit comes from a part of its frame");
        let first = open(&hit.dir, &hit.stored)?;
        let stop = !self.layers[hit.layer].is_base() && self.is_opaque(first.as_fd())?;
        parts.push((hit.layer, first));
        if !stop {
            for (idx, dir) in &frame.parts[start + 1..] {
                let layer = &self.layers[*idx];
                let Some(stored) = layer.stored(name) else {
                    if self.has_whiteout(dir.as_fd(), name)? {
                        break;
                    }
                    continue;
                };
                let st = beneath::lstat_at(dir.as_fd(), &stored)
                    .map_err(|e| CoreError::io(format!("lookup {:?}", name), e))?;
                match st {
                    Some(st) if st.kind == FileKind::Dir => {
                        let fd = open(dir, &stored)?;
                        let opaque = !layer.is_base() && self.is_opaque(fd.as_fd())?;
                        parts.push((*idx, fd));
                        if opaque {
                            break;
                        }
                    }
                    Some(_) => break,
                    None if !layer.is_base() && self.has_whiteout(dir.as_fd(), name)? => break,
                    None => {}
                }
            }
        }
        Ok(DirFrame { parts })
    }

    /// Resolves `path`: directories' symlinks are always followed, the last
    /// component's only with `follow_last`.
    pub fn resolve(&self, path: &BranchPath, follow_last: bool) -> CoreResult<Resolved> {
        let mut todo: VecDeque<Step> = path
            .components()
            .iter()
            .map(|c| Step::Name(c.clone()))
            .collect();
        let mut frames = vec![self.root_frame()?];
        let mut names: Vec<OsString> = Vec::new();
        let mut links = 0;
        let here = |names: &[OsString], name: &OsStr| {
            let mut v = names.to_vec();
            v.push(name.to_os_string());
            BranchPath::from_components(v)
        };
        while let Some(step) = todo.pop_front() {
            let name = match step {
                Step::Up => {
                    if names.pop().is_none() {
                        return Err(CoreError::Escapes {
                            path: path.to_string(),
                            target: "..".into(),
                        });
                    }
                    frames.pop();
                    continue;
                }
                Step::Name(n) => n,
            };
            let last = todo.is_empty();
            let frame = frames.last().expect("root frame stays");
            let hit = self.lookup_in(frame, &name, false)?;
            match hit {
                None if last => {
                    return Ok(Resolved {
                        path: here(&names, &name),
                        parent: Some(frame.clone()),
                        hit: None,
                    })
                }
                None => return Err(CoreError::NotFound(here(&names, &name).to_string())),
                Some(h) if h.st.kind == FileKind::Symlink && (!last || follow_last) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(CoreError::SymlinkLoop(path.to_string()));
                    }
                    let target = beneath::readlink_at(h.dir.as_fd(), &h.stored)
                        .map_err(io_err(&here(&names, &name), "readlink"))?;
                    let steps = target_steps(&target).ok_or_else(|| CoreError::Escapes {
                        path: here(&names, &name).to_string(),
                        target: target.to_string_lossy().into_owned(),
                    })?;
                    for s in steps.into_iter().rev() {
                        todo.push_front(s);
                    }
                }
                Some(h) if last => {
                    return Ok(Resolved {
                        path: here(&names, &name),
                        parent: Some(frame.clone()),
                        hit: Some(h),
                    })
                }
                Some(h) if h.st.kind == FileKind::Dir => {
                    let f = self.frame_of(frame, &h, &name)?;
                    frames.push(f);
                    names.push(name);
                }
                Some(_) => return Err(CoreError::NotDirectory(here(&names, &name).to_string())),
            }
        }
        // The path ended on a directory reached by walking (it was empty, or
        // a symlink target ended in `..`): report that directory.
        let Some(name) = names.pop() else {
            return Ok(Resolved {
                path: BranchPath::root(),
                parent: None,
                hit: None,
            });
        };
        frames.pop();
        let frame = frames.last().expect("root frame stays");
        let hit = self.lookup_in(frame, &name, false)?;
        Ok(Resolved {
            path: here(&names, &name),
            parent: Some(frame.clone()),
            hit,
        })
    }

    /// Resolves `path` and requires it to exist.
    pub fn existing(&self, path: &BranchPath, follow_last: bool) -> CoreResult<Resolved> {
        let r = self.resolve(path, follow_last)?;
        if r.path.is_root() || r.hit.is_some() {
            Ok(r)
        } else {
            Err(CoreError::NotFound(r.path.to_string()))
        }
    }

    /// The merged directory of a resolved directory.
    pub fn dir_frame(&self, r: &Resolved) -> CoreResult<DirFrame> {
        match (&r.parent, &r.hit) {
            (None, _) => self.root_frame(),
            (Some(parent), Some(h)) if h.st.kind == FileKind::Dir => {
                self.frame_of(parent, h, r.name())
            }
            (Some(_), Some(_)) => Err(CoreError::NotDirectory(r.path.to_string())),
            (Some(_), None) => Err(CoreError::NotFound(r.path.to_string())),
        }
    }

    /// Metadata of a resolved entry.
    pub fn stat_resolved(&self, r: &Resolved) -> CoreResult<Stat> {
        let (raw, layer) = match &r.hit {
            Some(h) => (h.st, h.layer),
            None if r.path.is_root() => {
                let top = &self.layers[0];
                (
                    beneath::fstat(top.root.as_fd()).map_err(|e| CoreError::io("stat root", e))?,
                    0,
                )
            }
            None => return Err(CoreError::NotFound(r.path.to_string())),
        };
        Ok(self.stat_of(layer, &raw))
    }

    /// Metadata of an entry found in layer `layer` with lstat `raw`.
    pub fn stat_of(&self, layer: usize, raw: &RawStat) -> Stat {
        Stat {
            kind: raw.kind,
            mode: raw.perm(),
            size: raw.size,
            uid: raw.uid,
            gid: raw.gid,
            nlink: raw.nlink,
            ino: raw.ino,
            dev: raw.dev,
            special: Special::from_mode(raw.mode),
            rdev: raw.rdev,
            atime: raw.atime(),
            mtime: raw.mtime(),
            origin: self.layers[layer].origin(),
        }
    }

    /// The merged listing of a directory frame, sorted by name.
    pub fn list_frame(&self, frame: &DirFrame) -> CoreResult<Vec<DirEntry>> {
        let mut seen: BTreeMap<OsString, FileKind> = BTreeMap::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        for (idx, dir) in &frame.parts {
            let base = self.layers[*idx].is_base();
            let entries =
                beneath::list_dir(dir.as_fd()).map_err(|e| CoreError::io("list directory", e))?;
            let mut whiteouts = Vec::new();
            for (stored, kind) in entries {
                let name = if base {
                    stored.clone()
                } else {
                    match decode(&stored) {
                        Decoded::Entry(n) => n,
                        Decoded::Whiteout(n) => {
                            whiteouts.push(n);
                            continue;
                        }
                        Decoded::HashedWhiteout => {
                            if let Some(n) = read_small(dir.as_fd(), &stored)? {
                                whiteouts.push(OsStr::from_bytes(&n).to_os_string());
                            }
                            continue;
                        }
                        Decoded::Opaque | Decoded::Reserved => continue,
                    }
                };
                if !is_plain_component(&name) || seen.contains_key(&name) || hidden.contains(&name)
                {
                    continue;
                }
                let kind = match kind {
                    Some(k) => k,
                    None => match beneath::lstat_at(dir.as_fd(), &stored)
                        .map_err(|e| CoreError::io("stat entry", e))?
                    {
                        Some(st) => st.kind,
                        None => continue, // removed meanwhile
                    },
                };
                seen.insert(name, kind);
            }
            hidden.extend(whiteouts);
        }
        Ok(seen
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }

    /// The merged listing of directory `path` (symlinks followed), sorted.
    pub fn read_dir(&self, path: &BranchPath) -> CoreResult<Vec<DirEntry>> {
        let r = self.existing(path, true)?;
        let frame = self.dir_frame(&r)?;
        self.list_frame(&frame)
    }

    /// Opens regular file `path` (symlinks followed) for reading.
    pub fn open_read(&self, path: &BranchPath) -> CoreResult<File> {
        let r = self.existing(path, true)?;
        let h = regular_file(&r)?;
        beneath::open_file_at(h.dir.as_fd(), &h.stored, OFlags::RDONLY, 0)
            .map_err(io_err(&r.path, "open"))
    }

    /// The whole content of regular file `path`.
    pub fn read(&self, path: &BranchPath) -> CoreResult<Vec<u8>> {
        let mut f = self.open_read(path)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| CoreError::io(format!("read {path}"), e))?;
        Ok(buf)
    }

    /// The target of symlink `path`.
    pub fn read_link(&self, path: &BranchPath) -> CoreResult<OsString> {
        let r = self.existing(path, false)?;
        match &r.hit {
            Some(h) if h.st.kind == FileKind::Symlink => {
                beneath::readlink_at(h.dir.as_fd(), &h.stored).map_err(io_err(&r.path, "readlink"))
            }
            _ => Err(CoreError::InvalidArgument(format!(
                "{}: not a symbolic link",
                r.path
            ))),
        }
    }

    /// Opens a resolved file or directory for xattr calls.
    pub(crate) fn open_for_xattr(&self, r: &Resolved) -> CoreResult<OwnedFd> {
        let res = match (&r.hit, r.kind()) {
            (None, _) => beneath::open_dir_readable(self.layers[0].root.as_fd(), None),
            (Some(h), Some(FileKind::Dir)) => {
                beneath::open_dir_readable(h.dir.as_fd(), Some(&h.stored))
            }
            (Some(h), Some(FileKind::File)) => {
                beneath::open_file_at(h.dir.as_fd(), &h.stored, OFlags::RDONLY, 0).map(Into::into)
            }
            _ => {
                return Err(CoreError::Unsupported(format!(
                    "{}: extended attributes on this kind of entry",
                    r.path
                )))
            }
        };
        res.map_err(io_err(&r.path, "open"))
    }

    /// The value of extended attribute `name` of `path`, or `None`.
    pub fn get_xattr(&self, path: &BranchPath, name: &OsStr) -> CoreResult<Option<Vec<u8>>> {
        let r = self.existing(path, true)?;
        let fd = self.open_for_xattr(&r)?;
        super::xattrs::get(fd.as_fd(), name).map_err(|e| xattr_err(&r.path, e))
    }

    /// The names of the extended attributes of `path`.
    pub fn list_xattr(&self, path: &BranchPath) -> CoreResult<Vec<OsString>> {
        let r = self.existing(path, true)?;
        let fd = self.open_for_xattr(&r)?;
        super::xattrs::list(fd.as_fd()).map_err(|e| xattr_err(&r.path, e))
    }

    /// The physical path of a resolved entry in layer `layer` (for reflink).
    pub fn physical_path(&self, layer: usize, path: &BranchPath) -> PathBuf {
        let l = &self.layers[layer];
        let mut p = l.root_path.clone();
        for c in path.components() {
            p.push(l.stored(c).unwrap_or_else(|| c.clone()));
        }
        p
    }
}

/// Maps an xattr OS error.
pub(crate) fn xattr_err(path: &BranchPath, e: std::io::Error) -> CoreError {
    match e.raw_os_error() {
        Some(c) if c == libc::ENOTSUP || c == libc::EOPNOTSUPP => {
            CoreError::Unsupported(format!("{path}: extended attributes on this filesystem"))
        }
        _ => CoreError::from_errno(&path.to_string(), "xattr", e),
    }
}

/// The hit of a resolved regular file, or the right error.
pub(crate) fn regular_file(r: &Resolved) -> CoreResult<&Hit> {
    match (&r.hit, r.kind()) {
        (Some(h), Some(FileKind::File)) => Ok(h),
        (_, Some(FileKind::Dir)) => Err(CoreError::IsDirectory(r.path.to_string())),
        (_, Some(_)) => Err(CoreError::Unsupported(format!(
            "{}: not a regular file",
            r.path
        ))),
        (_, None) => Err(CoreError::NotFound(r.path.to_string())),
    }
}

/// The steps a relative symlink target adds; `None` for an absolute or
/// empty target, or one with an over-long component.
fn target_steps(target: &OsStr) -> Option<Vec<Step>> {
    let b = target.as_bytes();
    if b.is_empty() || b.starts_with(b"/") {
        return None;
    }
    let mut out = Vec::new();
    for c in b.split(|&x| x == b'/') {
        match c {
            b"" | b"." => {}
            b".." => out.push(Step::Up),
            c if c.len() > NAME_MAX || c.contains(&0) => return None,
            c => out.push(Step::Name(OsStr::from_bytes(c).to_os_string())),
        }
    }
    Some(out)
}

/// Reads a small reserved file (a hashed whiteout's name).
fn read_small(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> CoreResult<Option<Vec<u8>>> {
    match beneath::open_file_at(dir, name, OFlags::RDONLY, 0) {
        Ok(f) => {
            let mut v = Vec::new();
            f.take(NAME_MAX as u64 + 1)
                .read_to_end(&mut v)
                .map_err(|e| CoreError::io("read whiteout", e))?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io("read whiteout", e)),
    }
}
