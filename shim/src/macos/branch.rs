//! What the macOS interposers do with a branch path: reads on the physical
//! entry the resolver finds, changes through the daemon (the same rules
//! as on Linux; see `docs/shim.md`).

use std::ffi::c_int;

use agentfs_proto::FsOp;
use rustix::fs::FileType;

use super::{chain_changed, fs_op, resolve, wire};
use crate::dispatch::{open_in_branch, umask_now};
use crate::resolve::{Entry, Errno, Resolved};

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
    // SAFETY: a valid C string; the shim's own call is not interposed.
    open_in_branch(rel, flags, mode, |p, f, m| unsafe {
        libc::open(p.as_ptr(), f, m as c_int)
    })
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
