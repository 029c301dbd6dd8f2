//! How every path-taking interposer chooses between the program's own call
//! and the branch, the same on Linux and macOS: inside the shim, for a null
//! or empty path and for a path outside the branch the call passes through
//! unchanged; a branch path is read through its physical entry or handled
//! in the branch.

use std::ffi::{c_char, c_int, CStr, CString};

use crate::platform::fail;
use crate::resolve::{Errno, Resolved};
use crate::state::{classify, resolve_for_read, Guard, Target};

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
    match resolve_for_read(rel, follow)? {
        Resolved::Found(e) => Ok(e.phys),
        Resolved::Absent(_) => Err(libc::ENOENT),
        Resolved::Outside(p) => CString::new(p).map_err(|_| libc::EINVAL),
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
    match unsafe { branch_of(dirfd, path) } {
        None => call(path),
        Some((_g, rel)) => match rel.and_then(|rel: Vec<u8>| read_target(&rel, follow)) {
            Ok(c) => call(c.as_ptr()),
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
