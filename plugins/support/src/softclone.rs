//! A software clone: copies content, mode, times and user xattrs into a new
//! file, with the same preconditions as a real clone (used by the mock
//! backstore, whose reflink must behave like a real one).

use std::{fs, io, path::Path, time::SystemTime};

use agentfs_plugin_api::PluginResult;

use crate::reflink::{check_source, map_clone_errno};

/// Copies `src` into the new file `dst` (never overwriting), preserving mode,
/// times and xattrs. On failure `dst` is removed.
pub fn soft_clone(src: &Path, dst: &Path) -> PluginResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let md = check_source(src, dst)?;
    let errno = |e: io::Error| map_clone_errno(e.raw_os_error().unwrap_or(libc::EIO), src, dst);
    let mut sf = fs::OpenOptions::new()
        .read(true)
        // Never block in open(2): the source may have been swapped for a
        // FIFO since `check_source` looked (O_NONBLOCK is a no-op on a
        // regular file's reads).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .map_err(errno)?;
    let mut df = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(md.permissions().mode() & 0o777)
        .open(dst)
        .map_err(errno)?;
    if let Err(e) = io::copy(&mut sf, &mut df) {
        drop(df);
        let _ = fs::remove_file(dst);
        return Err(errno(e));
    }
    copy_times_and_xattrs(&md, src, &df);
    Ok(())
}

/// Best-effort copy of access/modification times and xattrs from `src`
/// (whose metadata is `md`) to the open file `dst`.
pub fn copy_times_and_xattrs(md: &fs::Metadata, src: &Path, dst: &fs::File) {
    let times = fs::FileTimes::new()
        .set_accessed(md.accessed().unwrap_or(SystemTime::UNIX_EPOCH))
        .set_modified(md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    if let Err(e) = dst.set_times(times) {
        tracing::debug!(error = %e, "could not copy times");
    }
    if let Ok(names) = xattr::list(src) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(src, &name) {
                if let Err(e) = xattr::FileExt::set_xattr(dst, &name, &value) {
                    tracing::debug!(error = %e, ?name, "could not copy xattr");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;
    use proptest::prelude::*;

    #[test]
    fn soft_clone_preserves_mode_and_mtime() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, b"hello").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
        soft_clone(&a, &b).unwrap();
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(mb.permissions().mode() & 0o777, 0o640);
        assert_eq!(ma.modified().unwrap(), mb.modified().unwrap());
        assert_eq!(
            soft_clone(&a, &b).unwrap_err().code,
            ErrorCode::ALREADY_EXISTS
        );
    }

    proptest! {
        #[test]
        fn clone_and_source_are_independent(data in proptest::collection::vec(any::<u8>(), 0..4096),
                                            patch in proptest::collection::vec(any::<u8>(), 1..64)) {
            let t = tempfile::tempdir().unwrap();
            let (a, b) = (t.path().join("a"), t.path().join("b"));
            fs::write(&a, &data).unwrap();
            soft_clone(&a, &b).unwrap();
            prop_assert_eq!(fs::read(&b).unwrap(), data.clone());
            fs::write(&b, &patch).unwrap();
            prop_assert_eq!(fs::read(&a).unwrap(), data);
        }
    }
}
