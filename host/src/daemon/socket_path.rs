//! Where the daemon's socket lives, and binding it safely: mode 0600 from
//! the start, in a directory no one else can write to, never over a live
//! daemon's socket or over something that is not a socket.

use std::{
    fs, io,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use super::DaemonError;

/// Environment variable naming the socket (also `--socket`).
pub const SOCKET_ENV: &str = "AGENTFS_SOCKET";

/// The default socket path: `$XDG_RUNTIME_DIR/agentfs/agentfs.sock` when
/// `XDG_RUNTIME_DIR` is set (Linux desktops: a per-user tmpfs), else
/// `$TMPDIR/agentfs-<uid>/agentfs.sock` (on macOS `$TMPDIR` is per user;
/// elsewhere `/tmp`).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("agentfs").join("agentfs.sock"),
        _ => {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("agentfs-{uid}"))
                .join("agentfs.sock")
        }
    }
}

fn err(path: &Path, why: impl Into<String>) -> DaemonError {
    DaemonError::Socket {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn io_err(path: &Path, e: io::Error) -> DaemonError {
    err(path, e.to_string())
}

/// Makes sure the socket's directory exists (created with mode 0700) and
/// that no other user can write in it (unless it is sticky, like `/tmp`).
fn check_dir(sock: &Path) -> Result<(), DaemonError> {
    let dir = match sock.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(dir, e))?;
        // The umask may be narrower meanwhile (`bind` sets 0o177 while it
        // binds, and another thread may be binding): say 0700 outright.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
    }
    let md = fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    if !md.is_dir() {
        return Err(err(dir, "not a directory"));
    }
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    if md.uid() != me && md.uid() != 0 {
        return Err(err(
            dir,
            format!("owned by uid {}, not by this user (uid {me})", md.uid()),
        ));
    }
    let mode = md.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(err(
            dir,
            format!(
                "writable by other users (mode {:o}): they could replace the socket",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A bound socket; dropping it removes the socket file, if it is still
/// the one bound.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file now if it is still the one bound (dropping
    /// does the same); for an exit that skips destructors.
    pub fn remove_now(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket");
                }
            }
            _ => {} // gone, or replaced by someone else's: leave it
        }
    }

    /// A second handle on the same socket file that never removes it when
    /// dropped, only through [`BoundSocket::remove_now`].
    pub(crate) fn detached(&self) -> std::mem::ManuallyDrop<BoundSocket> {
        std::mem::ManuallyDrop::new(BoundSocket {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
        })
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// Restores the umask when dropped.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask cannot fail.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(self.0) };
    }
}

/// Binds a listening socket at `path` with mode 0600. A stale socket (no
/// daemon accepts on it) is replaced; a live one is
/// [`DaemonError::AlreadyRunning`]; anything else at the path is left
/// alone and refused.
pub fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), DaemonError> {
    check_dir(path)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(DaemonError::AlreadyRunning(path.to_path_buf())),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                tracing::info!(path = %path.display(), "removing a stale socket (no daemon accepts on it)");
                fs::remove_file(path).map_err(|e| io_err(path, e))?;
            }
            Err(e) => return Err(io_err(path, e)),
        },
        Ok(_) => return Err(err(path, "exists and is not a socket")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, e)),
    }
    let listener = {
        // The socket is created 0600: no window in which others may connect.
        // (The daemon binds before it starts any thread.)
        let _mask = Umask::set(0o177);
        UnixListener::bind(path).map_err(|e| io_err(path, e))?
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| io_err(path, e))?;
    let m = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_replaces_stale_refuses_live_and_foreign() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run/agentfs.sock");
        let (l, b) = bind(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(t.path().join("run"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(matches!(bind(&p), Err(DaemonError::AlreadyRunning(_))));
        drop(l);
        // The listener is gone but the file stays: a stale socket.
        std::mem::forget(b);
        let (_l, b) = bind(&p).unwrap();
        drop(b);
        assert!(!p.exists(), "dropping the bound socket removes it");
        fs::write(&p, b"data").unwrap();
        let e = bind(&p).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"data", "left alone");
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("open");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&d.join("s.sock")).unwrap_err().to_string();
        assert!(e.contains("writable by other users"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(bind(&d.join("s.sock")).is_ok(), "sticky, like /tmp");
    }

    #[test]
    fn the_default_path_is_per_user() {
        let p = default_socket_path();
        assert!(p.ends_with("agentfs.sock"));
        let dir = p
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(dir == "agentfs" || dir.starts_with("agentfs-"), "{dir}");
    }
}
