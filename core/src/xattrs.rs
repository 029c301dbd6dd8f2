//! Extended attributes on open fds (via the `xattr` crate), and the
//! best-effort copy used by copy-up.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io,
    os::fd::BorrowedFd,
};

use xattr::FileExt;

fn file(fd: BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

/// The value of `name`, or `None` when it is not set.
pub fn get(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    file(fd)?.get_xattr(name)
}

/// The attribute names, sorted.
pub fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut v: Vec<OsString> = file(fd)?.list_xattr()?.collect();
    v.sort();
    Ok(v)
}

/// Sets `name` to `value`.
pub fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    file(fd)?.set_xattr(name, value)
}

/// Removes `name`.
pub fn remove(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    file(fd)?.remove_xattr(name)
}

/// Copies every attribute from `src` to `dst` that the destination
/// accepts; attributes it refuses (other namespaces, no support) are
/// skipped with a debug log: copy-up must not fail over them.
pub fn copy_all(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let Ok(names) = list(src) else { return };
    for n in names {
        match get(src, &n) {
            Ok(Some(v)) => {
                if let Err(e) = set(dst, &n, &v) {
                    tracing::debug!(name = ?n, error = %e, "xattr not copied");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(name = ?n, error = %e, "xattr not readable"),
        }
    }
}
