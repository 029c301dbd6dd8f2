//! The core's error type: every failure names what it was about, and maps to
//! an errno for the daemon and the shim.

use std::{io, path::PathBuf};

use crate::layer_store::LayerError;

/// Result type of the core.
pub type CoreResult<T> = Result<T, CoreError>;

/// Why a core operation failed. Operations that fail change nothing
/// visible, unless the message says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No store has been initialised in this backstore yet.
    #[error("no AgentFS store in {}: run `agentfs init` first", meta_dir.display())]
    NotInitialized {
        /// The backstore's metadata directory.
        meta_dir: PathBuf,
    },
    /// Another process holds the store lock and waiting was not allowed.
    #[error("store busy: another agentfs process holds the lock {}", lock.display())]
    StoreBusy {
        /// The lock file.
        lock: PathBuf,
    },
    /// The named branch, snapshot or path does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The named branch, snapshot or path already exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The object is in use by others (a snapshot with dependents).
    #[error("{what}: busy: {why}")]
    Busy {
        /// The object.
        what: String,
        /// Who depends on it.
        why: String,
    },
    /// The tree is read-only (a snapshot).
    #[error("{0}: read-only")]
    ReadOnly(String),
    /// A directory is not empty.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// A path component that must be a directory is not one.
    #[error("{0}: not a directory")]
    NotDirectory(String),
    /// A directory was given where a non-directory was expected.
    #[error("{0}: is a directory")]
    IsDirectory(String),
    /// The path is not an acceptable branch-relative path.
    #[error("invalid path {path:?}: {why}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A branch or snapshot name is not acceptable.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// An argument is invalid (e.g. renaming a directory into itself).
    #[error("{0}")]
    InvalidArgument(String),
    /// Following a symlink would leave the branch.
    #[error("{path}: symlink points outside the branch ({target:?})")]
    Escapes {
        /// The path being resolved.
        path: String,
        /// The offending symlink target.
        target: String,
    },
    /// Too many symlinks while resolving a path.
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    /// A name is too long for the layer's filesystem.
    #[error("{0}: file name too long")]
    NameTooLong(String),
    /// The operation is not supported by the overlay or the filesystem.
    #[error("{0}: not supported")]
    Unsupported(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A layer-store (backstore) call failed.
    #[error("backstore: {context}: {source}")]
    Backstore {
        /// What was being done.
        context: String,
        /// The layer store's error.
        #[source]
        source: LayerError,
    },
    /// The store's metadata is unreadable or inconsistent.
    #[error("store metadata {}: {why}", file.display())]
    Corrupt {
        /// The metadata file.
        file: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl CoreError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A backstore error with context.
    pub fn backstore(context: impl Into<String>, source: LayerError) -> Self {
        Self::Backstore {
            context: context.into(),
            source,
        }
    }

    /// The closest errno, for the daemon and the shim.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotInitialized { .. } | Self::NotFound(_) => libc::ENOENT,
            Self::StoreBusy { .. } | Self::Busy { .. } => libc::EBUSY,
            Self::AlreadyExists(_) => libc::EEXIST,
            Self::ReadOnly(_) => libc::EROFS,
            Self::NotEmpty(_) => libc::ENOTEMPTY,
            Self::NotDirectory(_) => libc::ENOTDIR,
            Self::IsDirectory(_) => libc::EISDIR,
            Self::InvalidPath { .. } | Self::InvalidName { .. } | Self::InvalidArgument(_) => {
                libc::EINVAL
            }
            Self::Escapes { .. } => libc::EXDEV,
            Self::SymlinkLoop(_) => libc::ELOOP,
            Self::NameTooLong(_) => libc::ENAMETOOLONG,
            Self::Unsupported(_) => libc::ENOTSUP,
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::Backstore { source, .. } => source.errno(),
            Self::Corrupt { .. } => libc::EIO,
        }
    }

    /// Builds the error an errno means for `path` (used for OS errors
    /// whose meaning is the caller's, such as `ENOTEMPTY`).
    pub(crate) fn from_errno(path: &str, context: &str, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) => Self::NotFound(path.to_string()),
            Some(libc::EEXIST) => Self::AlreadyExists(path.to_string()),
            Some(libc::ENOTEMPTY) => Self::NotEmpty(path.to_string()),
            Some(libc::ENOTDIR) => Self::NotDirectory(path.to_string()),
            Some(libc::EISDIR) => Self::IsDirectory(path.to_string()),
            Some(libc::ENAMETOOLONG) => Self::NameTooLong(path.to_string()),
            Some(libc::ELOOP) => Self::SymlinkLoop(path.to_string()),
            _ => Self::io(format!("{context} {path}"), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_follow_posix() {
        assert_eq!(CoreError::NotEmpty("d".into()).errno(), libc::ENOTEMPTY);
        assert_eq!(
            CoreError::Busy {
                what: "s".into(),
                why: "x".into()
            }
            .errno(),
            libc::EBUSY
        );
        let e = CoreError::backstore("x", LayerError::unsupported("no"));
        assert_eq!(e.errno(), libc::ENOTSUP);
        let e = CoreError::from_errno("a/b", "unlink", io::Error::from_raw_os_error(libc::EISDIR));
        assert!(matches!(e, CoreError::IsDirectory(ref p) if p == "a/b"));
    }
}
