//! How every path-taking interposer chooses between the program's own call
//! and the branch, the same on Linux and macOS: inside the shim, for a null
//! or empty path and for a path outside the branch the call passes through
//! unchanged; a branch path is read through its physical entry or handled
//! in the branch.

use std::{
    ffi::{c_char, c_int, CStr, CString},
    os::fd::IntoRawFd,
};

use rustix::fs::FileType;

use crate::platform::{self, fail};
use crate::resolve::{Errno, Resolved};
use crate::state::{
    classify, drop_root_fd, fd_insert, fd_insert_phys, fd_open, fd_relative_offset,
    kernel_cwd_offset, read_fast, resolve, resolve_for_read, root_relative, Guard, Target,
};

/// The bytes of a C string, `None` for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
pub(crate) unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// The path a read of branch path `rel` uses.
pub(crate) fn read_target(rel: &[u8], follow: bool) -> Result<CString, Errno> {
    read_target_in(rel, follow).map(|(c, _)| c)
}

/// [`read_target`], and whether the path is an entry of the branch (not a
/// native path a symlink led out to).
fn read_target_in(rel: &[u8], follow: bool) -> Result<(CString, bool), Errno> {
    match resolve_for_read(rel, follow)? {
        Resolved::Found(e) => Ok((e.phys, true)),
        Resolved::Absent(_) => Err(libc::ENOENT),
        Resolved::Outside(p) => CString::new(p)
            .map(|c| (c, false))
            .map_err(|_| libc::EINVAL),
    }
}

/// The branch path `path` (relative to `dirfd`) names, or `None` when the
/// program's own call should run: inside the shim, for a null or empty
/// path, or outside the branch. The guard is held until the caller drops
/// it.
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
unsafe fn branch_of(dirfd: c_int, path: *const c_char) -> Option<(Guard, Result<Vec<u8>, Errno>)> {
    let g = Guard::enter()?;
    // SAFETY: the caller's contract.
    let p = unsafe { bytes(path) }.filter(|p| !p.is_empty())?;
    match classify(dirfd, p) {
        Ok(Target::Native) => None,
        Ok(Target::Branch(rel)) => Some((g, Ok(rel))),
        Err(e) => Some((g, Err(e))),
    }
}

/// Runs `call` on the program's path, or on the physical path of a
/// branch entry (absolute, so any dirfd beside it is ignored).
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
pub(crate) unsafe fn with_read_path<R>(
    dirfd: c_int,
    path: *const c_char,
    follow: bool,
    err: impl FnOnce(Errno) -> R,
    call: impl FnOnce(*const c_char) -> R,
) -> R {
    // SAFETY: the caller's contract.
    unsafe { with_read_path_then(dirfd, path, follow, err, call, |_| ()) }
}

/// [`with_read_path`], then `after` on the result of a call made on an
/// entry of the branch (not on a native path a symlink led out to), still
/// inside the shim: a stat's identity is rewritten there.
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
pub(crate) unsafe fn with_read_path_then<R>(
    dirfd: c_int,
    path: *const c_char,
    follow: bool,
    err: impl FnOnce(Errno) -> R,
    call: impl FnOnce(*const c_char) -> R,
    after: impl FnOnce(&R),
) -> R {
    let mut call = Some(call);
    // SAFETY: the caller's contract.
    unsafe {
        with_read_path_at_then(
            dirfd,
            path,
            follow,
            err,
            |p| (call.take().expect("called once"))(p),
            None::<(fn(c_int, *const c_char) -> Option<R>, fn(&R) -> bool)>,
            after,
        )
    }
}

/// The result of a call made relative to a directory fd the shim holds,
/// `None` when it failed with `EBADF` (the program closed that number
/// behind the shim's back, with a raw syscall) or `ENOTDIR` (the same, or
/// the path's own answer): the call is then made again on the whole path.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn unless_bad_fd(r: c_int) -> Option<c_int> {
    (r >= 0 || !matches!(platform::errno(), libc::EBADF | libc::ENOTDIR)).then_some(r)
}

/// [`with_read_path_then`] for a call that can also be made relative to a
/// directory fd (`call_at`'s first closure, `(dirfd, path)`, the `*at()`
/// form of the program's call, `None` for a bad fd: see
/// [`unless_bad_fd`]): a physical path that would go to the kernel whole
/// goes relative to the fd the shim holds on its layer root instead (a
/// walk of the part under the root only). `call_at`'s second closure says
/// whether a result shows a directory (the fast lane then tells the cache
/// about a directory of the base's it met: see [`read_fast`]).
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
pub(crate) unsafe fn with_read_path_at_then<R>(
    dirfd: c_int,
    path: *const c_char,
    follow: bool,
    err: impl FnOnce(Errno) -> R,
    mut call: impl FnMut(*const c_char) -> R,
    call_at: Option<(
        impl Fn(c_int, *const c_char) -> Option<R>,
        impl Fn(&R) -> bool,
    )>,
    after: impl FnOnce(&R),
) -> R {
    if let (false, Some((at, is_dir))) = (follow, &call_at) {
        if let Some(_g) = Guard::enter() {
            // SAFETY: the caller's contract.
            let fast = unsafe { bytes(path) }.and_then(|p| {
                read_fast(
                    dirfd,
                    p,
                    |under| match under {
                        None => Some(call(path)),
                        Some((fd, p)) => at(fd, p),
                    },
                    is_dir,
                )
            });
            if let Some(r) = fast {
                after(&r);
                return r;
            }
        }
    }
    // SAFETY: the caller's contract.
    match unsafe { branch_of(dirfd, path) } {
        None => call(path),
        Some((_g, rel)) => match rel.and_then(|rel: Vec<u8>| read_target_in(&rel, follow)) {
            Ok((c, in_branch)) => {
                // A relative path of the program's, whose entry lies under
                // the kernel's working directory (or under the directory
                // the shim opened the program's dirfd on), stays relative:
                // the kernel walks only that part, as it does natively.
                // SAFETY: `path` is a non-empty C string (branch_of).
                let relative = unsafe { *path } != b'/' as c_char;
                let off = match (relative, dirfd == libc::AT_FDCWD) {
                    (false, _) => None,
                    (true, true) => kernel_cwd_offset(c.as_bytes()),
                    (true, false) => fd_relative_offset(dirfd, c.as_bytes()),
                };
                let root = match (off, &call_at, in_branch) {
                    (None, Some(_), true) => root_relative(c.as_bytes()),
                    _ => None,
                };
                let r = match (off, root, call_at) {
                    // SAFETY: `off` is inside `c`, before its NUL.
                    (Some(off), _, _) => call(unsafe { c.as_ptr().add(off) }),
                    (None, Some((fd, off)), Some((at, _))) => {
                        // SAFETY: as above.
                        match at(fd, unsafe { c.as_ptr().add(off) }) {
                            Some(r) => r,
                            None => {
                                // EBADF: the program closed the number
                                // behind the shim's back; ENOTDIR may be
                                // the path's own answer, the whole path
                                // tells.
                                if platform::errno() == libc::EBADF {
                                    drop_root_fd(fd);
                                }
                                call(c.as_ptr())
                            }
                        }
                    }
                    _ => call(c.as_ptr()),
                };
                if in_branch {
                    after(&r);
                }
                r
            }
            Err(e) => err(e),
        },
    }
}

/// Runs `branch` for a branch path, `native` otherwise.
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
pub(crate) unsafe fn with_write_path(
    dirfd: c_int,
    path: *const c_char,
    native: impl FnOnce(*const c_char) -> c_int,
    branch: impl FnOnce(Vec<u8>) -> Result<c_int, Errno>,
) -> c_int {
    // SAFETY: the caller's contract.
    match unsafe { branch_of(dirfd, path) } {
        None => native(path),
        Some((_g, rel)) => rel.and_then(branch).unwrap_or_else(fail),
    }
}

/// The error of a rename between the branch and a path outside it, given
/// the branch side (`rel`): the branch root itself cannot move or be
/// replaced (`EBUSY`, as for a mountpoint), where `EXDEV` would make `mv`
/// copy the whole branch out and then fail to remove it; anything else
/// is `EXDEV` (programs copy and delete instead).
pub(crate) fn rename_across(rel: &[u8]) -> Errno {
    if rel.is_empty() {
        libc::EBUSY
    } else {
        libc::EXDEV
    }
}

/// The process's umask (read by setting and restoring it).
pub(crate) fn umask_now() -> u32 {
    // SAFETY: umask has no preconditions; the second call restores it.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        #[allow(clippy::useless_conversion)] // mode_t is u16 on macOS
        u32::from(m)
    }
}

/// Opens branch path `rel`: reads on the physical entry (with the
/// platform's real `open`, `real_open(path, flags, mode)`), writes through
/// the daemon's `fd_open`; the fd is recorded in the shim's table.
pub(crate) fn open_in_branch(
    rel: &[u8],
    flags: c_int,
    mode: u32,
    real_open: impl Fn(&CStr, c_int, u32) -> c_int,
) -> Result<c_int, Errno> {
    let writes =
        flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0;
    let follow = flags & libc::O_NOFOLLOW == 0;
    let canon = match resolve(rel, follow)? {
        Resolved::Outside(p) => {
            let c = CString::new(p).map_err(|_| libc::EINVAL)?;
            return Ok(real_open(&c, flags, mode));
        }
        // A fifo or a character device is opened where it lives, also
        // for writing: its data goes to a pipe or a driver, never into
        // the tree (as natively; the safety net's read-only base allows
        // it); a socket refuses the open itself (ENXIO). A block device's
        // data is a disk: refused for writing.
        Resolved::Found(e) if writes && e.kind == FileType::BlockDevice => return Err(libc::EROFS),
        Resolved::Found(e)
            if !writes
                || matches!(
                    e.kind,
                    FileType::Fifo | FileType::CharacterDevice | FileType::Socket
                ) =>
        {
            let fd = real_open(&e.phys, flags, mode);
            if fd >= 0 {
                let dir = e.kind == FileType::Directory;
                fd_insert_phys(fd, e.path, dir.then(|| e.phys.into_bytes()));
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
    let (opened, fd, conn) = fd_open(&canon, flags, mode & 0o7777 & !umask_now())?;
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
    fd_insert(raw, canon, opened.record, conn);
    Ok(raw)
}
