//! The file API of one branch or snapshot ([`Tree`]), and the store's
//! views and diffs: reads run lock-free on cached views, changes under
//! their branch's lock.

use super::*;
use crate::write_ops;
use std::os::unix::fs::FileExt;

impl Store {
    // ----- views and diffs -----

    /// The file tree of branch `name` (readable and writable).
    pub fn branch(&self, name: &str) -> Tree<'_> {
        Tree {
            store: self,
            target: Target::Branch(name.to_string()),
            pid: 0,
        }
    }

    /// The file tree of snapshot `name` (read-only).
    pub fn snapshot(&self, name: &str) -> Tree<'_> {
        Tree {
            store: self,
            target: Target::Snapshot(name.to_string()),
            pid: 0,
        }
    }

    /// What changed in `branch` since snapshot `from` (or since its base).
    pub fn diff(&self, branch: &str, from: Option<&str>) -> CoreResult<Vec<DiffEntry>> {
        self.with_shared(|_| {
            let new = self.target_view(&Target::Branch(branch.to_string()))?;
            let (new_layer, _) = self.target_layer(&Target::Branch(branch.to_string()))?;
            let new_base = self.db.read(|g| Ok(g.need_layer(&new_layer)?.base))?;
            let old = match from {
                Some(s) => {
                    let old = self.target_view(&Target::Snapshot(s.to_string()))?;
                    let (old_layer, _) = self.target_layer(&Target::Snapshot(s.to_string()))?;
                    if self.db.read(|g| Ok(g.need_layer(&old_layer)?.base))? != new_base {
                        return Err(CoreError::InvalidArgument(format!(
                            "snapshot {s} and branch {branch} have different bases"
                        )));
                    }
                    old
                }
                None => View {
                    layers: match &new_base {
                        Some(b) => vec![self.base_dir(b)?],
                        None => vec![],
                    },
                },
            };
            let ids = |v: &View| -> BTreeSet<String> {
                v.layers
                    .iter()
                    .filter(|l| l.kind != LayerKind::Base)
                    .map(|l| l.id.clone())
                    .collect()
            };
            let (oi, ni) = (ids(&old), ids(&new));
            let only = |v: &View, other: &BTreeSet<String>| -> Vec<usize> {
                v.layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.kind != LayerKind::Base && !other.contains(&l.id))
                    .map(|(i, _)| i)
                    .collect()
            };
            diff::diff(&old, &new, &only(&old, &ni), &only(&new, &oi))
        })
    }
}

/// The file tree of one branch or snapshot. Every call is one locked
/// operation on the store; changes publish exactly one event each.
#[derive(Debug, Clone)]
pub struct Tree<'s> {
    store: &'s Store,
    target: Target,
    pid: u32,
}

impl Tree<'_> {
    /// The same tree, with its changes' events attributed to process `pid`
    /// (a daemon acting for a client passes the client's pid; the default
    /// is 0, unknown).
    pub fn on_behalf_of(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// The branch or snapshot name.
    pub fn name(&self) -> &str {
        match &self.target {
            Target::Branch(n) | Target::Snapshot(n) => n,
        }
    }

    fn read<T>(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        f: impl Fn(&View, &BranchPath) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let p = path.to_branch_path()?;
        self.with_view(|v| f(v, &p))
    }

    /// Runs read `f` on the current view: lock-free on the cached view when
    /// the graph has not changed since it was made, and still unchanged
    /// when `f` is done (else `f`'s answer may mix two graphs: it runs
    /// again under the lock).
    fn with_view<T>(&self, f: impl Fn(&Arc<View>) -> CoreResult<T>) -> CoreResult<T> {
        let stamp = self.stamp();
        if let Some(view) = self.store.cache.view(&self.target, stamp.graph) {
            let r = f(&view);
            if self.stamp() == stamp {
                return r;
            }
        }
        // Under the branch's lock the names do not change meanwhile.
        let locked = |g: &dyn Fn(&State) -> CoreResult<T>| match self.target.branch() {
            Some(b) => self.store.with_branch(b, g),
            None => self.store.with_shared(g),
        };
        locked(&|st: &State| {
            let view = Arc::new(self.store.target_view(&self.target)?);
            self.store
                .cache
                .put_view(&self.target, st.graph_gen, view.clone());
            f(&view)
        })
    }

    fn stamp(&self) -> Stamp {
        self.store.gen.stamp(self.target.branch())
    }

    /// Metadata through the resolution cache: one `fstatat` when `path`
    /// was resolved since the last namespace change, else a full
    /// resolution that is then remembered.
    fn cached_stat(&self, path: &(impl AsBranchPath + ?Sized), follow: bool) -> CoreResult<Stat> {
        let p = path.to_branch_path()?;
        let stamp = self.stamp();
        if let Some(h) = self.store.cache.hit(&self.target, &p, follow, stamp) {
            if let Ok(Some(raw)) = beneath::lstat_at(h.dir.as_fd(), &h.stored) {
                if raw.kind == h.kind && self.stamp() == stamp {
                    return Ok(h.view.stat_of(h.layer, &raw));
                }
            }
        }
        self.with_view(|v| {
            let r = v.existing(&p, follow)?;
            self.store
                .cache
                .put_hit(&self.target, &p, follow, stamp, v, &r);
            v.stat_resolved(&r)
        })
    }

    /// A read-only open through the resolution cache (see
    /// [`Tree::cached_stat`]).
    fn cached_open(&self, p: &BranchPath, nofollow: bool) -> CoreResult<(File, BranchPath)> {
        let follow = !nofollow;
        let stamp = self.stamp();
        if let Some(h) = self.store.cache.hit(&self.target, p, follow, stamp) {
            if h.kind == FileKind::File {
                if let Ok(f) =
                    beneath::open_file_at(h.dir.as_fd(), &h.stored, rustix::fs::OFlags::RDONLY, 0)
                {
                    if self.stamp() == stamp {
                        return Ok((f, h.path.clone()));
                    }
                }
            }
        }
        self.with_view(|v| {
            let r = v.existing(p, follow)?;
            self.store
                .cache
                .put_hit(&self.target, p, follow, stamp, v, &r);
            v.open_resolved(r, nofollow)
        })
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> CoreResult<(T, Option<Change>)>,
    ) -> CoreResult<T> {
        let Target::Branch(branch) = &self.target else {
            return Err(CoreError::ReadOnly(format!("snapshot {}", self.name())));
        };
        self.store.with_branch(branch, |st| {
            // Any other change may remove or replace the kept file: let it
            // go now rather than hold a removed file's space until the
            // next write.
            self.store.write_handles.forget(branch);
            self.change_locked(branch, st, f, |v| v)
        })
    }

    /// The body of [`Tree::change`], under the branch's lock: `f` makes
    /// the change, its event is published, then `settled` gets `f`'s value
    /// (the names are settled and the lock still held).
    fn change_locked<T, U>(
        &self,
        branch: &str,
        st: &State,
        f: impl FnOnce(&Writer<'_>) -> CoreResult<(T, Option<Change>)>,
        settled: impl FnOnce(T) -> U,
    ) -> CoreResult<U> {
        // The graph is the one `st` was loaded for (checked under the
        // lock): the view cached for it is current, no database read.
        let view = match self.store.cache.view(&self.target, st.graph_gen) {
            Some(v) => v,
            None => {
                let v = Arc::new(self.store.target_view(&self.target)?);
                self.store
                    .cache
                    .put_view(&self.target, st.graph_gen, v.clone());
                v
            }
        };
        // Lock-free readers stop trusting cached resolutions before the
        // first name changes (even if this process dies half way) and
        // again once all have.
        self.store.gen.bump_namespace_begin(branch);
        let after = BumpOnDrop(&self.store.gen, branch);
        let w = Writer::new(
            &view,
            &*self.store.backstore,
            self.store.reflink(),
            &self.store.stats,
        )?;
        let done = f(&w);
        // Mounts of the branch learn which names to forget.
        match &done {
            Ok((_, Some(c))) => log_change(&self.store.gen, branch, c),
            _ => self.store.gen.log_change(branch, None),
        }
        // Names are settled before anyone hears of the change (the
        // event may wake a reader at once, see `Store::set_event_hook`).
        drop(after);
        let (v, change) = done?;
        if let Some(c) = change {
            self.store.publish(branch, self.pid, c);
        }
        Ok(settled(v))
    }

    fn mutate(&self, f: impl FnOnce(&Writer<'_>) -> CoreResult<Change>) -> CoreResult<()> {
        self.change(|w| f(w).map(|c| ((), Some(c))))
    }

    /// Metadata, following a final symlink.
    pub fn stat(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Stat> {
        self.cached_stat(path, true)
    }

    /// Metadata of the entry itself (a final symlink is not followed).
    pub fn lstat(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Stat> {
        self.cached_stat(path, false)
    }

    /// True when something exists at `path` (a dangling symlink counts).
    pub fn exists(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<bool> {
        match self.lstat(path) {
            Ok(_) => Ok(true),
            Err(CoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The merged listing of a directory, sorted by name.
    pub fn read_dir(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<DirEntry>> {
        self.read(path, |v, p| v.read_dir(p))
    }

    /// The whole content of a regular file.
    pub fn read_file(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<u8>> {
        self.read(path, |v, p| v.read(p))
    }

    /// The canonical form of existing entry `path`: symlinks in its
    /// directories resolved, and a final one too with `follow`.
    pub fn canonical(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        follow: bool,
    ) -> CoreResult<BranchPath> {
        self.read(path, |v, p| v.existing(p, follow).map(|r| r.path))
    }

    /// Opens a regular file for reading (a real fd from its layer).
    pub fn open_read(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<File> {
        self.read(path, |v, p| v.open_read(p))
    }

    /// The target of a symlink.
    pub fn read_link(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<OsString> {
        self.read(path, |v, p| v.read_link(p))
    }

    /// An extended attribute's value, or `None`.
    pub fn get_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
    ) -> CoreResult<Option<Vec<u8>>> {
        self.read(path, |v, p| v.get_xattr(p, name))
    }

    /// Extended attribute names.
    pub fn list_xattr(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<Vec<OsString>> {
        self.read(path, |v, p| v.list_xattr(p))
    }

    /// Creates an empty file (fails if the name is taken).
    pub fn create(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.create(&p, mode))
    }

    /// Replaces a file's content, creating it (mode 0644) if needed.
    pub fn write_file(&self, path: &(impl AsBranchPath + ?Sized), data: &[u8]) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.write_file(&p, data, 0o644))
    }

    /// Writes `data` at `offset` into an existing file.
    pub fn write_at(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        offset: u64,
        data: &[u8],
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        let Target::Branch(branch) = &self.target else {
            return self.mutate(|w| w.write_at(&p, offset, data));
        };
        write_ops::check_write_size(&p, offset, data)?;
        let handles = &self.store.write_handles;
        self.store.with_branch(branch, |st| {
            if let Some(h) = handles.get(branch, &p, self.store.gen.stamp(Some(branch))) {
                return self.write_kept(branch, p.clone(), h, offset, data);
            }
            // Resolve, copy up if needed, open: then keep the file for the
            // next write of the same path.
            self.change_locked(
                branch,
                st,
                |w| {
                    let (change, path, file) = w.write_at_keep(&p, offset, data)?;
                    Ok(((path, file), Some(change)))
                },
                |(path, file)| {
                    let now = self.store.gen.stamp(Some(branch));
                    handles.put(branch, p.clone(), path, Arc::new(file), now);
                },
            )
        })
    }

    /// [`Tree::write_at`] through a kept handle, under the branch's lock:
    /// the names are as the write that kept the file left them, so `key`
    /// still names it, in the active layer. The counters move as for any
    /// change (see [`Tree::change_locked`]).
    fn write_kept(
        &self,
        branch: &str,
        key: BranchPath,
        h: WriteHandle,
        offset: u64,
        data: &[u8],
    ) -> CoreResult<()> {
        let handles = &self.store.write_handles;
        self.store.gen.bump_namespace_begin(branch);
        let after = BumpOnDrop(&self.store.gen, branch);
        let done = (|| {
            let before = h.file.metadata()?.len();
            h.file.write_all_at(data, offset)?;
            Ok::<_, std::io::Error>(before)
        })();
        log_paths(&self.store.gen, branch, &[&key]);
        drop(after);
        let before = match done {
            Ok(b) => b,
            Err(e) => {
                handles.forget(branch);
                return Err(CoreError::io(format!("write {}", h.path), e));
            }
        };
        let change = write_ops::written(h.path.clone(), before, offset, data);
        self.store.publish(branch, self.pid, change);
        let now = self.store.gen.stamp(Some(branch));
        handles.put(branch, key, h.path, h.file, now);
        Ok(())
    }

    /// Sets a file's length.
    pub fn truncate(&self, path: &(impl AsBranchPath + ?Sized), len: u64) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.truncate(&p, len))
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.mkdir(&p, mode))
    }

    /// Creates a directory and any missing parents (mode 0755); existing
    /// directories are fine.
    pub fn mkdir_all(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        let mut cur = BranchPath::root();
        for c in p.components() {
            cur = cur.join(c);
            match self.lstat(&cur) {
                Ok(s) if s.kind == FileKind::Dir => continue,
                Ok(s) if s.kind == FileKind::Symlink && self.stat(&cur)?.kind == FileKind::Dir => {
                    continue
                }
                Ok(_) => return Err(CoreError::NotDirectory(cur.to_string())),
                Err(CoreError::NotFound(_)) => match self.mkdir(&cur, 0o755) {
                    Ok(()) | Err(CoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.rmdir(&p))
    }

    /// Removes a non-directory.
    pub fn unlink(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.unlink(&p))
    }

    /// Removes `path` and, for a directory, everything under it (one event
    /// per removed entry, children first).
    pub fn remove_all(&self, path: &(impl AsBranchPath + ?Sized)) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        if p.is_root() {
            // Refused before anything is removed: the root itself cannot go.
            return Err(CoreError::InvalidArgument(
                "cannot remove the branch root".into(),
            ));
        }
        let st = self.lstat(&p)?;
        if st.kind == FileKind::Dir {
            for e in self.read_dir(&p)? {
                self.remove_all(&p.join(&e.name))?;
            }
            self.rmdir(&p)
        } else {
            self.unlink(&p)
        }
    }

    /// Renames an entry (POSIX semantics); a no-op when both paths name
    /// the same entry.
    pub fn rename(
        &self,
        from: &(impl AsBranchPath + ?Sized),
        to: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let (f, t) = (from.to_branch_path()?, to.to_branch_path()?);
        self.change(|w| Ok(((), w.rename(&f, &t)?)))
    }

    /// Creates a symlink to `target` (stored verbatim).
    pub fn symlink(
        &self,
        target: impl AsRef<OsStr>,
        path: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.symlink(target.as_ref(), &p))
    }

    /// Hard links: always `Unsupported` (a hard link into a lower layer
    /// would share an inode a copy-up must not change).
    pub fn link(
        &self,
        from: &(impl AsBranchPath + ?Sized),
        to: &(impl AsBranchPath + ?Sized),
    ) -> CoreResult<()> {
        let (f, t) = (from.to_branch_path()?, to.to_branch_path()?);
        self.mutate(|w| w.link(&f, &t))
    }

    /// Sets permission bits.
    pub fn chmod(&self, path: &(impl AsBranchPath + ?Sized), mode: u32) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.chmod(&p, mode))
    }

    /// Sets access and/or modification time (`None` keeps it).
    pub fn set_times(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.set_times(&p, atime, mtime))
    }

    /// Sets an extended attribute.
    pub fn set_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
        value: &[u8],
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.set_xattr(&p, name, value))
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        name: &OsStr,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.remove_xattr(&p, name))
    }

    /// Opens regular file `path` for a real fd (see [`OpenOptions`]): a
    /// read-only open gets the file where it lives; an open that may
    /// change it copies it up (reflink when possible) or creates it in the
    /// active layer first, publishing `Created` or, for a truncation,
    /// `Modified`. Writes through the fd publish nothing: report them with
    /// [`Tree::report_modified`].
    pub fn open(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        opts: &OpenOptions,
    ) -> CoreResult<OpenedFile> {
        let p = path.to_branch_path()?;
        if !opts.modifies() {
            let (file, path) = self.cached_open(&p, opts.nofollow)?;
            return Ok(OpenedFile {
                file,
                copied_up: false,
                reflinked: false,
                created: false,
                path,
                writer: None,
            });
        }
        let reflinks = &self.store.stats.reflinked;
        self.change(|w| {
            use std::sync::atomic::Ordering::Relaxed;
            let writer = self.store.branch_locks.writer(self.name())?;
            let before = reflinks.load(Relaxed);
            let (o, change) = w.open_file(&p, opts)?;
            let opened = OpenedFile {
                reflinked: o.copied_up && reflinks.load(Relaxed) > before,
                file: o.file,
                copied_up: o.copied_up,
                created: o.created,
                path: o.path,
                writer: Some(writer),
            };
            Ok((opened, change))
        })
    }

    /// Publishes `Modified` for regular file `path`, whose content changed
    /// through an fd from [`Tree::open`] (`size_before`: its size when
    /// opened). Changes nothing on disk.
    pub fn report_modified(
        &self,
        path: &(impl AsBranchPath + ?Sized),
        size_before: Option<u64>,
    ) -> CoreResult<()> {
        let p = path.to_branch_path()?;
        self.mutate(|w| w.modified_through_fd(&p, size_before))
    }
}

/// Logs the paths change `c` touched for the mounts of `branch` (see
/// [`Generation::log_change`]).
fn log_change(g: &Generation, branch: &str, c: &Change) {
    match &c.kind {
        EventKind::Created
        | EventKind::Removed
        | EventKind::Modified
        | EventKind::AttributesChanged => log_paths(g, branch, &[&c.path]),
        EventKind::Renamed { to } => log_paths(g, branch, &[&c.path, to]),
        EventKind::BranchCreated | EventKind::SnapshotCreated { .. } => g.log_change(branch, None),
    }
}

/// Logs `paths` as one change of `branch` for its mounts (nothing is
/// built while no mount is registered).
fn log_paths(g: &Generation, branch: &str, paths: &[&BranchPath]) {
    use std::os::unix::ffi::OsStringExt;
    if !g.logging() {
        return;
    }
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| p.to_os_string().into_vec()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    g.log_change(branch, Some(&refs));
}

/// Bumps the namespace counter when dropped (after a change, whether it
/// succeeded or not).
struct BumpOnDrop<'a>(&'a Generation, &'a str);

impl Drop for BumpOnDrop<'_> {
    fn drop(&mut self) {
        self.0.bump_namespace(self.1);
    }
}
