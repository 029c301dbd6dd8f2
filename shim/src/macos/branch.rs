//! What the macOS interposers do with a branch path: reads on the physical
//! entry the resolver finds, changes through the daemon (the same rules
//! as on Linux; see `docs/shim.md`).

use std::{
    ffi::{c_int, CString},
    os::fd::IntoRawFd,
};

use agentfs_proto::FsOp;
use rustix::fs::FileType;

use super::{chain_changed, fd_insert, fd_open, fs_op, resolve, wire};
use crate::resolve::{Entry, Errno, Resolved};

/// The process's umask (read without changing it for long).
fn umask_now() -> u32 {
    // SAFETY: umask has no preconditions; the second call restores it.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        u32::from(m)
    }
}

fn done(r: Result<agentfs_proto::FsReply, Errno>) -> Result<c_int, Errno> {
    r.map(|_| 0)
}

/// The existing entry at `rel`.
pub(super) fn existing(rel: &[u8], follow: bool) -> Result<Entry, Errno> {
    match resolve(rel, follow)? {
        Resolved::Found(e) => Ok(e),
        Resolved::Absent(_) => Err(libc::ENOENT),
        Resolved::Outside(_) => Err(libc::EXDEV),
    }
}

/// Opens branch path `rel`: reads on the physical entry, writes through
/// the daemon's `fd_open`.
pub(super) fn open(rel: &[u8], flags: c_int, mode: u32) -> Result<c_int, Errno> {
    let writes =
        flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0;
    let follow = flags & libc::O_NOFOLLOW == 0;
    let canon = match resolve(rel, follow)? {
        Resolved::Outside(p) => {
            let c = CString::new(p).map_err(|_| libc::EINVAL)?;
            // SAFETY: a valid C string; the shim's call is not interposed.
            return Ok(unsafe { libc::open(c.as_ptr(), flags, mode as c_int) });
        }
        Resolved::Found(e) if !writes => {
            // SAFETY: a valid C string.
            let fd = unsafe { libc::open(e.phys.as_ptr(), flags, mode as c_int) };
            if fd >= 0 {
                fd_insert(fd, e.path, 0);
            }
            return Ok(fd);
        }
        Resolved::Absent(_) if !writes => return Err(libc::ENOENT),
        Resolved::Found(e) => {
            if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
                return Err(libc::EEXIST);
            }
            if e.kind == FileType::Directory {
                return Err(libc::EISDIR);
            }
            e.path
        }
        Resolved::Absent(p) => {
            if flags & libc::O_CREAT == 0 {
                return Err(libc::ENOENT);
            }
            p
        }
    };
    let (opened, fd) = fd_open(&canon, flags, mode & 0o7777 & !umask_now())?;
    let raw = fd.into_raw_fd();
    // SAFETY: fcntl on the fd we just received.
    unsafe {
        if flags & libc::O_CLOEXEC == 0 {
            libc::fcntl(raw, libc::F_SETFD, 0);
        }
        if flags & libc::O_NONBLOCK != 0 {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    fd_insert(raw, canon, opened.record);
    Ok(raw)
}

/// `mkdir` in the branch.
pub(super) fn mkdir(rel: &[u8], mode: u32) -> Result<c_int, Errno> {
    match resolve(rel, false)? {
        Resolved::Found(_) => Err(libc::EEXIST),
        Resolved::Outside(_) => Err(libc::EXDEV),
        Resolved::Absent(c) => done(fs_op(FsOp::Mkdir {
            path: wire(&c),
            mode: mode & 0o7777 & !umask_now(),
        })),
    }
}

/// `unlink` (`dir` false) or `rmdir` in the branch.
pub(super) fn remove(rel: &[u8], dir: bool) -> Result<c_int, Errno> {
    let e = existing(rel, false)?;
    if e.path.is_empty() {
        return Err(libc::EBUSY);
    }
    let is_dir = e.kind == FileType::Directory;
    match (dir, is_dir) {
        (true, false) => Err(libc::ENOTDIR),
        (false, true) => Err(libc::EPERM), // macOS unlink(2) of a directory
        (true, true) => {
            let r = done(fs_op(FsOp::Rmdir {
                path: wire(&e.path),
            }));
            chain_changed();
            r
        }
        (false, false) => done(fs_op(FsOp::Unlink {
            path: wire(&e.path),
        })),
    }
}

/// `rename` of branch path `from` to branch path `to`.
pub(super) fn rename(from: &[u8], to: &[u8]) -> Result<c_int, Errno> {
    let from = existing(from, false)?.path;
    if from.is_empty() {
        return Err(libc::EBUSY);
    }
    let to = match resolve(to, false)? {
        Resolved::Found(e) => e.path,
        Resolved::Absent(c) => c,
        Resolved::Outside(_) => return Err(libc::EXDEV),
    };
    if from == to {
        return Ok(0);
    }
    let r = done(fs_op(FsOp::Rename {
        from: wire(&from),
        to: wire(&to),
    }));
    chain_changed();
    r
}

/// `symlink(target, rel)` in the branch.
pub(super) fn symlink(target: &[u8], rel: &[u8]) -> Result<c_int, Errno> {
    match resolve(rel, false)? {
        Resolved::Found(_) => Err(libc::EEXIST),
        Resolved::Outside(_) => Err(libc::EXDEV),
        Resolved::Absent(c) => done(fs_op(FsOp::Symlink {
            target: wire(target),
            path: wire(&c),
        })),
    }
}

/// `chmod` in the branch.
pub(super) fn chmod(rel: &[u8], mode: u32) -> Result<c_int, Errno> {
    let e = existing(rel, true)?;
    done(fs_op(FsOp::Chmod {
        path: wire(&e.path),
        mode: mode & 0o7777,
    }))
}

/// `truncate` in the branch.
pub(super) fn truncate(rel: &[u8], len: i64) -> Result<c_int, Errno> {
    let e = existing(rel, true)?;
    if e.kind == FileType::Directory {
        return Err(libc::EISDIR);
    }
    done(fs_op(FsOp::Truncate {
        path: wire(&e.path),
        size: u64::try_from(len).map_err(|_| libc::EINVAL)?,
    }))
}

/// Sets times in the branch (`None`: leave that one).
pub(super) fn set_times(
    rel: &[u8],
    follow: bool,
    atime: Option<i64>,
    mtime: Option<i64>,
) -> Result<c_int, Errno> {
    let e = existing(rel, follow)?;
    if atime.is_none() && mtime.is_none() {
        return Ok(0);
    }
    done(fs_op(FsOp::SetTimes {
        path: wire(&e.path),
        atime_ns: atime,
        mtime_ns: mtime,
    }))
}

/// Now, in nanoseconds since the epoch.
pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
