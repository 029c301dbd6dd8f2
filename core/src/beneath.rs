//! File-descriptor-relative access beneath a directory, so that no path a
//! user gives can reach outside a layer or the base.
//!
//! Every access starts from an open directory fd and goes one plain
//! component at a time with `O_NOFOLLOW` (the *component walk*), or, on
//! Linux, in one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` call, which the kernel refuses to let escape.
//! Symlinks are never followed here: the overlay resolves symlinks itself,
//! in the merged view, and refuses targets that leave the branch.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{
    metadata::{time_from, FileKind},
    path::is_plain_component,
};

/// Flags for directory fds used only as anchors for `*at` calls.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const DIR_ANCHOR: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Flags for directory fds used only as anchors for `*at` calls.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const DIR_ANCHOR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Lstat-style metadata of one entry in one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStat {
    /// Entry kind.
    pub kind: FileKind,
    /// Full `st_mode`.
    pub mode: u32,
    /// Size.
    pub size: u64,
    /// Owner and group.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u64,
    /// Inode.
    pub ino: u64,
    /// Device.
    pub dev: u64,
    /// The device a device node stands for (else 0).
    pub rdev: u64,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

impl RawStat {
    /// Converts a `stat` result.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // field types vary by platform
    pub fn from_stat(st: &rustix::fs::Stat) -> Self {
        let mode = st.st_mode as u32;
        Self {
            kind: FileKind::from_mode(mode),
            mode,
            size: st.st_size as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            nlink: st.st_nlink as u64,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            rdev: st.st_rdev as u64,
            atime: (st.st_atime as i64, st.st_atime_nsec as i64),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        }
    }

    /// Permission bits only.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Modification time.
    pub fn mtime(&self) -> std::time::SystemTime {
        time_from(self.mtime.0, self.mtime.1)
    }

    /// Access time.
    pub fn atime(&self) -> std::time::SystemTime {
        time_from(self.atime.0, self.atime.1)
    }
}

fn not_plain(name: &OsStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing non-plain path component {:?}", name),
    )
}

/// Opens a trusted root directory (a layer or the base) by absolute path.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let f = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(f)
}

/// Opens `path` as a directory on a private, detached, read-only copy of
/// its mount (and of every mount beneath it): whatever is opened beneath
/// the returned fd is on a read-only mount, so not even a reopen of
/// `/proc/self/fd/N` for writing can change it (`EROFS`). Needs the
/// privilege to clone mounts (`CAP_SYS_ADMIN` in the caller's mount
/// namespace); other systems answer `Unsupported`.
#[cfg(target_os = "linux")]
pub fn open_root_read_only(path: &Path) -> io::Result<OwnedFd> {
    use std::{ffi::CString, os::fd::FromRawFd, os::unix::ffi::OsStrExt};
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    /// `struct mount_attr` of <linux/mount.h>.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: open_tree(2) with a valid NUL-terminated path that outlives
    // the call; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr(2) on the fd just made, an empty path with
    // AT_EMPTY_PATH, and a mount_attr of the size passed; all outlive the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The detached tree's root is the directory itself; reopen it as an
    // ordinary directory fd (the same file, on the read-only mount).
    Ok(rustix::fs::openat(
        &tree,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Read-only mounts are a Linux facility: elsewhere `Unsupported`.
#[cfg(not(target_os = "linux"))]
pub fn open_root_read_only(_path: &Path) -> io::Result<OwnedFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "read-only mounts for handed-out fds need Linux",
    ))
}

/// Opens subdirectory `name` of `dir` as an anchor, never following a
/// symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    if !is_plain_component(name) {
        return Err(not_plain(name));
    }
    Ok(rustix::fs::openat(dir, name, DIR_ANCHOR, Mode::empty())?)
}

/// Opens the directory `comps` beneath `root` as an anchor. No component
/// may be a symlink, `..` or absolute: the result is always inside `root`.
pub fn open_dir_beneath(root: BorrowedFd<'_>, comps: &[OsString]) -> io::Result<OwnedFd> {
    if let Some(bad) = comps.iter().find(|c| !is_plain_component(c)) {
        return Err(not_plain(bad));
    }
    if comps.is_empty() {
        return Ok(rustix::fs::openat(root, c".", DIR_ANCHOR, Mode::empty())?);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(r) = linux::openat2_beneath(root, comps) {
        return r;
    }
    walk(root, comps)
}

/// The component walk: one `openat(O_NOFOLLOW | O_DIRECTORY)` per component.
pub fn walk(root: BorrowedFd<'_>, comps: &[OsString]) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for c in comps {
        let next = {
            let at = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
            open_subdir(at, c)?
        };
        cur = Some(next);
    }
    match cur {
        Some(f) => Ok(f),
        None => Ok(rustix::fs::openat(root, c".", DIR_ANCHOR, Mode::empty())?),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::{
        ffi::OsString,
        io,
        os::fd::{BorrowedFd, OwnedFd},
        sync::atomic::{AtomicBool, Ordering},
    };

    use rustix::fs::{Mode, ResolveFlags};

    use super::DIR_ANCHOR;

    /// Set once openat2 turned out to be unavailable (old kernel, seccomp).
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

    /// `openat2` with `RESOLVE_BENEATH`; `None` when the walk must be used.
    pub(super) fn openat2_beneath(
        root: BorrowedFd<'_>,
        comps: &[OsString],
    ) -> Option<io::Result<OwnedFd>> {
        if UNAVAILABLE.load(Ordering::Relaxed) {
            return None;
        }
        let mut joined = Vec::new();
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                joined.push(b'/');
            }
            joined.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(c.as_os_str()));
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, joined.as_slice(), DIR_ANCHOR, Mode::empty(), how) {
            Ok(fd) => Some(Ok(fd)),
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                UNAVAILABLE.store(true, Ordering::Relaxed);
                None
            }
            // A concurrent rename made the kernel give up: walk instead.
            Err(rustix::io::Errno::AGAIN) => None,
            Err(e) => Some(Err(e.into())),
        }
    }
}

/// Lstat of `name` in `dir`; `None` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<RawStat>> {
    if !is_plain_component(name) {
        return Err(not_plain(name));
    }
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(RawStat::from_stat(&st))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Fstat of an open fd.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<RawStat> {
    Ok(RawStat::from_stat(&rustix::fs::fstat(fd)?))
}

/// The names in directory `dir` (without `.` and `..`), with the kind when
/// the filesystem reports it in the listing.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, Option<FileKind>)>> {
    // Anchors may be O_PATH fds, which cannot be read: reopen for reading.
    let mut d = rustix::fs::Dir::new(open_dir_readable(dir, None)?)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match ent.file_type() {
            rustix::fs::FileType::RegularFile => Some(FileKind::File),
            rustix::fs::FileType::Directory => Some(FileKind::Dir),
            rustix::fs::FileType::Symlink => Some(FileKind::Symlink),
            rustix::fs::FileType::Unknown => None,
            _ => Some(FileKind::Other),
        };
        out.push((OsStr::from_bytes(name).to_os_string(), kind));
    }
    Ok(out)
}

/// Opens regular file `name` in `dir` with `flags` (plus `O_NOFOLLOW` and
/// `O_CLOEXEC`), creating it with `mode` if `O_CREAT` is given.
///
/// Never blocks in `open(2)` and never returns anything but a regular
/// file: callers check the entry's type first, but it may have been
/// replaced by a FIFO or a device since, and opening a FIFO blocks until a
/// writer comes. So the open is non-blocking, the fd is checked with
/// `fstat`, and `O_NONBLOCK` is cleared again unless `flags` asked for it.
pub fn open_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
) -> io::Result<File> {
    if !is_plain_component(name) {
        return Err(not_plain(name));
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(mode as _),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(not_regular(name));
    }
    if !flags.contains(OFlags::NONBLOCK) {
        // F_SETFL changes only the status flags (append, direct, noatime,
        // non-blocking) and ignores the rest: `flags` sets them as the
        // open did, without a F_GETFL first.
        rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    }
    Ok(File::from(fd))
}

/// The error for an entry that is not a regular file where one must be.
fn not_regular(name: &OsStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{name:?}: not a regular file"),
    )
}

/// Reads symlink `name` in `dir`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    if !is_plain_component(name) {
        return Err(not_plain(name));
    }
    let t = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(OsStr::from_bytes(t.as_bytes()).to_os_string())
}

/// Opens directory `name` in `dir` (or `dir` itself when `name` is `None`)
/// for reading: needed for listing and for xattr calls on directories.
pub fn open_dir_readable(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match name {
        Some(n) if !is_plain_component(n) => Err(not_plain(n)),
        Some(n) => Ok(rustix::fs::openat(dir, n, flags, Mode::empty())?),
        None => Ok(rustix::fs::openat(dir, c".", flags, Mode::empty())?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn comps(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn an_opened_file_keeps_the_status_flags_asked_for_and_blocks_unless_asked() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let dir = std::fs::File::open(t.path()).unwrap();
        let getfl = |f: &File| rustix::fs::fcntl_getfl(f).unwrap();
        let f = open_file_at(
            dir.as_fd(),
            OsStr::new("f"),
            OFlags::WRONLY | OFlags::APPEND,
            0,
        )
        .unwrap();
        assert!(getfl(&f).contains(OFlags::APPEND));
        assert!(!getfl(&f).contains(OFlags::NONBLOCK));
        let f = open_file_at(dir.as_fd(), OsStr::new("f"), OFlags::RDONLY, 0).unwrap();
        assert!(!getfl(&f).intersects(OFlags::NONBLOCK | OFlags::APPEND));
        let f = open_file_at(
            dir.as_fd(),
            OsStr::new("f"),
            OFlags::RDONLY | OFlags::NONBLOCK,
            0,
        )
        .unwrap();
        assert!(getfl(&f).contains(OFlags::NONBLOCK));
    }

    #[test]
    fn symlinked_components_never_escape() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink(outside.path(), t.path().join("a/out")).unwrap();
        symlink("../..", t.path().join("a/up")).unwrap();
        symlink("b", t.path().join("a/rel")).unwrap();
        let root = open_root(t.path()).unwrap();
        open_dir_beneath(root.as_fd(), &comps(&["a", "b"])).unwrap();
        for bad in [
            comps(&["a", "out"]),
            comps(&["a", "up"]),
            comps(&["a", "rel"]),
        ] {
            assert!(open_dir_beneath(root.as_fd(), &bad).is_err(), "{bad:?}");
            assert!(walk(root.as_fd(), &bad).is_err(), "{bad:?}");
        }
        for bad in [comps(&[".."]), comps(&["a", "..", ".."]), comps(&["/etc"])] {
            let e = open_dir_beneath(root.as_fd(), &bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // lstat sees the link itself, never its target.
        let a = open_dir_beneath(root.as_fd(), &comps(&["a"])).unwrap();
        let st = lstat_at(a.as_fd(), OsStr::new("out")).unwrap().unwrap();
        assert_eq!(st.kind, FileKind::Symlink);
        assert!(lstat_at(a.as_fd(), OsStr::new("none")).unwrap().is_none());
        // Opening a file through a final symlink is refused.
        symlink(outside.path().join("secret"), t.path().join("a/f")).unwrap();
        assert!(open_file_at(a.as_fd(), OsStr::new("f"), OFlags::RDONLY, 0).is_err());
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn openat2_is_used_and_refuses_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink("/", t.path().join("a/root")).unwrap();
        let root = open_root(t.path()).unwrap();
        match linux::openat2_beneath(root.as_fd(), &comps(&["a", "b"])) {
            None => eprintln!("skipped: openat2 is not available on this kernel"),
            Some(r) => {
                r.unwrap();
                // Through a symlink: refused by RESOLVE_NO_SYMLINKS.
                let e = linux::openat2_beneath(root.as_fd(), &comps(&["a", "root", "etc"]))
                    .expect("available")
                    .unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
                // A final symlink is opened as itself (O_PATH | O_NOFOLLOW),
                // which O_DIRECTORY then refuses.
                let e = linux::openat2_beneath(root.as_fd(), &comps(&["a", "root"]))
                    .expect("available")
                    .unwrap_err();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn listing_reports_names_and_kinds() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let root = open_root(t.path()).unwrap();
        let mut l = list_dir(root.as_fd()).unwrap();
        l.sort();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, "d");
        assert!(matches!(l[0].1, Some(FileKind::Dir) | None));
    }
}
