//! The platform reflink call, in one place for every in-tree plugin:
//! `FICLONE` on Linux, `clonefile(2)` on macOS. Errors map exactly:
//! `EXDEV` -> CrossDevice; `EOPNOTSUPP`/`ENOTSUP`/`EINVAL`/`ENOTTY` ->
//! Unsupported; `ENOSPC` -> NoSpace; an existing destination -> AlreadyExists
//! (never overwritten). The clone carries content and mode, and on Linux the
//! times and user xattrs are copied too, so both platforms give what
//! `clonefile` gives. On macOS the clone also carries the source's ACLs
//! (`CLONE_ACL` where the kernel has it; older kernels copy them anyway),
//! and the kernel clears setuid/setgid on it.

use std::{fs, io, path::Path};

use agentfs_plugin_api::{ErrorCode, PluginError, PluginResult};

/// Maps an errno from a clone call to the plugin error the contract names.
pub fn map_clone_errno(errno: i32, src: &Path, dst: &Path) -> PluginError {
    let ctx = format!("reflink {} -> {}", src.display(), dst.display());
    let (code, why) = match errno {
        libc::EXDEV => (
            ErrorCode::CROSS_DEVICE,
            "source and destination are on different filesystems",
        ),
        e if e == libc::EOPNOTSUPP
            || e == libc::ENOTSUP
            || e == libc::EINVAL
            || e == libc::ENOTTY =>
        {
            (
                ErrorCode::UNSUPPORTED,
                "the filesystem does not support reflinks",
            )
        }
        libc::ENOSPC => (ErrorCode::NO_SPACE, "no space left on the device"),
        libc::EEXIST => (ErrorCode::ALREADY_EXISTS, "the destination already exists"),
        libc::ENOENT => (ErrorCode::NOT_FOUND, "the source does not exist"),
        libc::EISDIR => (ErrorCode::IS_DIRECTORY, "the source is a directory"),
        other => {
            return PluginError {
                code: ErrorCode::from_errno(other),
                errno: other,
                message: format!("{ctx}: {}", io::Error::from_raw_os_error(other)).into(),
            }
        }
    };
    PluginError {
        code,
        errno,
        message: format!("{ctx}: {why}").into(),
    }
}

/// Checks the source: it must exist and be a regular file (not a symlink,
/// not a directory). Returns its metadata.
pub fn check_source(src: &Path, dst: &Path) -> PluginResult<fs::Metadata> {
    let md = match fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) => {
            return Err(map_clone_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                src,
                dst,
            ))
        }
    };
    if md.is_dir() {
        return Err(map_clone_errno(libc::EISDIR, src, dst));
    }
    if !md.is_file() {
        return Err(PluginError::invalid(format!(
            "reflink {} -> {}: the source is not a regular file",
            src.display(),
            dst.display()
        )));
    }
    if fs::symlink_metadata(dst).is_ok() {
        return Err(map_clone_errno(libc::EEXIST, src, dst));
    }
    Ok(md)
}

/// Clones the regular file `src` to the new file `dst` without copying data.
#[cfg(target_os = "linux")]
pub fn reflink_file(src: &Path, dst: &Path) -> PluginResult<()> {
    use std::os::unix::{
        fs::{OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    };
    let md = check_source(src, dst)?;
    let sf = fs::OpenOptions::new()
        .read(true)
        // Never block in open(2): the source may have been swapped for a
        // FIFO since `check_source` looked (O_NONBLOCK is a no-op on a
        // regular file's reads).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .map_err(|e| map_clone_errno(e.raw_os_error().unwrap_or(libc::EIO), src, dst))?;
    let df = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(md.permissions().mode() & 0o777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(|e| map_clone_errno(e.raw_os_error().unwrap_or(libc::EIO), src, dst))?;
    // SAFETY: both fds are open and owned by `sf`/`df` for the whole call;
    // FICLONE takes the source fd as its integer argument.
    let rc = unsafe { libc::ioctl(df.as_raw_fd(), libc::FICLONE, sf.as_raw_fd()) };
    if rc != 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        drop(df);
        let _ = fs::remove_file(dst);
        return Err(map_clone_errno(errno, src, dst));
    }
    crate::softclone::copy_times_and_xattrs(&md, src, &df);
    Ok(())
}

/// Clones the regular file `src` to the new file `dst` without copying data.
#[cfg(target_os = "macos")]
pub fn reflink_file(src: &Path, dst: &Path) -> PluginResult<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    check_source(src, dst)?;
    let cs = CString::new(src.as_os_str().as_bytes())
        .map_err(|_| PluginError::invalid("source path contains a NUL byte"))?;
    let cd = CString::new(dst.as_os_str().as_bytes())
        .map_err(|_| PluginError::invalid("destination path contains a NUL byte"))?;
    /// `CLONE_NOFOLLOW` from <sys/clonefile.h> (not exported by libc).
    const CLONE_NOFOLLOW: u32 = 0x0001;
    /// `CLONE_ACL` from <sys/clonefile.h> (macOS 13+): copy the source's
    /// ACLs too. Older kernels copy them without it and reject the flag.
    const CLONE_ACL: u32 = 0x0004;
    let clone = |flags: u32| {
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe { libc::clonefile(cs.as_ptr(), cd.as_ptr(), flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        }
    };
    // `check_source` rejected every other cause of EINVAL (a directory, a
    // non-regular file), so EINVAL here means a kernel without CLONE_ACL.
    match clone(CLONE_NOFOLLOW | CLONE_ACL) {
        Err(libc::EINVAL) => clone(CLONE_NOFOLLOW),
        r => r,
    }
    .map_err(|errno| map_clone_errno(errno, src, dst))
}

/// No reflink on other platforms.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn reflink_file(src: &Path, dst: &Path) -> PluginResult<()> {
    check_source(src, dst)?;
    Err(PluginError::unsupported(
        "reflink is not implemented on this platform",
    ))
}

/// Reflink for a backstore that probed the capability at start: a real
/// clone when `enabled`; otherwise the same precondition errors a real clone
/// gives, then `Unsupported` naming the store `root`.
pub fn reflink_if_enabled(enabled: bool, root: &Path, src: &Path, dst: &Path) -> PluginResult<()> {
    if enabled {
        return reflink_file(src, dst);
    }
    check_source(src, dst)?;
    Err(PluginError::unsupported(format!(
        "the filesystem under {} does not support reflinks",
        root.display()
    )))
}

/// Probes whether reflink works in directory `dir` with a real clone of a
/// small file (never guessed from the filesystem's name).
pub fn probe_reflink(dir: &Path) -> bool {
    let n = format!(".agentfs-reflink-probe-{}", std::process::id());
    let (a, b) = (dir.join(format!("{n}-a")), dir.join(format!("{n}-b")));
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    let ok = fs::write(&a, b"agentfs reflink probe").is_ok()
        && reflink_file(&a, &b).is_ok()
        && fs::read(&b)
            .map(|d| d == b"agentfs reflink probe")
            .unwrap_or(false);
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_exact() {
        let (s, d) = (Path::new("/a"), Path::new("/b"));
        assert_eq!(
            map_clone_errno(libc::EXDEV, s, d).code,
            ErrorCode::CROSS_DEVICE
        );
        assert_eq!(
            map_clone_errno(libc::EOPNOTSUPP, s, d).code,
            ErrorCode::UNSUPPORTED
        );
        assert_eq!(
            map_clone_errno(libc::EINVAL, s, d).code,
            ErrorCode::UNSUPPORTED
        );
        assert_eq!(
            map_clone_errno(libc::ENOSPC, s, d).code,
            ErrorCode::NO_SPACE
        );
        assert_eq!(
            map_clone_errno(libc::EEXIST, s, d).code,
            ErrorCode::ALREADY_EXISTS
        );
        let other = map_clone_errno(libc::EIO, s, d);
        assert_eq!((other.code, other.errno), (ErrorCode::IO, libc::EIO));
    }

    #[test]
    fn source_checks_come_before_any_clone() {
        let t = tempfile::tempdir().unwrap();
        let (f, g) = (t.path().join("f"), t.path().join("g"));
        fs::write(&f, b"x").unwrap();
        fs::write(&g, b"y").unwrap();
        let e = reflink_file(&f, &g).unwrap_err();
        assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
        assert_eq!(fs::read(&g).unwrap(), b"y", "destination was overwritten");
        let e = reflink_file(&t.path().join("missing"), &t.path().join("h")).unwrap_err();
        assert_eq!(e.code, ErrorCode::NOT_FOUND);
        let e = reflink_file(t.path(), &t.path().join("h")).unwrap_err();
        assert_eq!(e.code, ErrorCode::IS_DIRECTORY);
        assert!(!t.path().join("h").exists());
    }
}
