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
    let sf = fs::OpenOptions::new()
        .read(true)
        // Never block in open(2): the source may have been swapped for a
        // FIFO since `check_source` looked (O_NONBLOCK is a no-op on a
        // regular file's reads).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .map_err(errno)?;
    let df = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(md.permissions().mode() & 0o777)
        .open(dst)
        .map_err(errno)?;
    if let Err(e) = copy_keeping_holes(&sf, &df, md.len()) {
        drop(df);
        let _ = fs::remove_file(dst);
        return Err(errno(e));
    }
    copy_times_and_xattrs(&md, src, &df);
    Ok(())
}

/// Copies `len` bytes of `src` into the empty `dst`, only the ranges
/// `SEEK_DATA`/`SEEK_HOLE` report as data, then sets the length: a sparse
/// file stays sparse (a clone shares every block; a soft clone should at
/// least not allocate the holes, least of all in RAM).
fn copy_keeping_holes(src: &fs::File, dst: &fs::File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let fd = std::os::fd::AsRawFd::as_raw_fd(src);
    // SAFETY: lseek on an fd `src` owns for the call; no memory is passed.
    let seek = |pos: u64, whence: i32| unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
    let mut buf = vec![0u8; (1usize << 20).min(len as usize).max(1)];
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(pos, libc::SEEK_DATA) {
            d if d >= 0 => d as u64,
            _ => match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole is left
                Some(libc::EINVAL) | Some(libc::ENOTSUP) => pos,
                _ => return Err(io::Error::last_os_error()),
            },
        };
        if data >= len {
            break;
        }
        let hole = match seek(data, libc::SEEK_HOLE) {
            h if h >= 0 => (h as u64).min(len),
            _ => len,
        };
        let mut at = data;
        while at < hole {
            let want = ((hole - at) as usize).min(buf.len());
            let n = match src.read_at(&mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = hole.max(data + 1);
    }
    dst.set_len(len)
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

    #[test]
    fn a_sparse_file_stays_sparse() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let f = fs::File::create(&a).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (1 << 30) - 4).unwrap();
        drop(f);
        if fs::metadata(&a).unwrap().blocks() * 512 > 16 << 20 {
            let why = "a_sparse_file_stays_sparse: the temp dir's filesystem keeps no holes";
            assert!(
                std::env::var("AGENTFS_REQUIRE_COW").map_or(true, |v| v != "1"),
                "{why}, and AGENTFS_REQUIRE_COW=1 forbids skipping"
            );
            eprintln!("skipped: {why}");
            return;
        }
        soft_clone(&a, &b).unwrap();
        let mb = fs::metadata(&b).unwrap();
        assert_eq!(mb.len(), 1 << 30);
        assert!(mb.blocks() * 512 < 16 << 20, "{} bytes", mb.blocks() * 512);
        let g = fs::File::open(&b).unwrap();
        let mut x = [0u8; 4];
        g.read_exact_at(&mut x, (1 << 30) - 4).unwrap();
        assert_eq!(&x, b"tail");
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
