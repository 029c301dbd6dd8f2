//! What the overlay engine needs from a backstore: directories for layers,
//! and two optional accelerators (native snapshots, reflink).
//!
//! The engine owns every overlay semantic (lookup, whiteouts, copy-up,
//! snapshots by commit); a layer store only keeps directories. The host
//! implements this trait for a loaded backstore plugin; anything else that
//! keeps layer directories (a test fixture, an embedded store) can too.
//!
//! # Lifecycle and threading
//!
//! - A [`Store`](crate::Store) takes ownership of one layer store when it is
//!   opened and gives it back from [`Store::destroy`](crate::Store::destroy)
//!   or [`Store::into_layer_store`](crate::Store::into_layer_store).
//! - Methods are called from any thread, concurrently: implementations must
//!   be `Send + Sync` and keep no per-call state.
//! - Several processes may open stores over the same layer store root at
//!   once; the engine serialises graph changes between them with its own
//!   lock file in [`metadata_dir`](LayerStore::metadata_dir). A layer store
//!   must therefore not cache directory listings across calls.
//! - `create_layer` and `delete_layer` are called only by the engine, which
//!   never creates a layer id twice and never deletes a layer in use.
//! - `snapshot_layer` and `reflink` may answer
//!   [`LayerErrorKind::Unsupported`]: the engine then commits instead of
//!   snapshotting, and copies instead of cloning.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Result of a layer-store call.
pub type LayerResult<T> = Result<T, LayerError>;

/// The class of a layer-store failure; the engine treats `Unsupported` and
/// `CrossDevice` as "use the fallback" and everything else as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerErrorKind {
    /// The capability is absent (no native snapshots, no reflink).
    Unsupported,
    /// Source and destination are on different filesystems.
    CrossDevice,
    /// The layer or file does not exist.
    NotFound,
    /// The layer or file already exists.
    AlreadyExists,
    /// The layer is in use.
    Busy,
    /// The backstore is full.
    NoSpace,
    /// The backstore is read-only.
    ReadOnly,
    /// Permission denied.
    PermissionDenied,
    /// An argument was refused.
    InvalidArgument,
    /// The backstore itself failed (a panic caught at a plugin boundary, say).
    Internal,
    /// Any other I/O failure.
    Io,
}

/// A layer-store failure: its class, the OS errno when there was one
/// (0 otherwise), and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerError {
    /// The class of failure.
    pub kind: LayerErrorKind,
    /// The OS error number behind it, or 0.
    pub errno: i32,
    /// What went wrong, in words.
    pub message: String,
}

impl LayerError {
    /// An error of `kind` with `message` and no errno.
    pub fn new(kind: LayerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            errno: 0,
            message: message.into(),
        }
    }

    /// The capability is absent.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(LayerErrorKind::Unsupported, message)
    }

    /// True for failures the engine answers with its fallback.
    pub fn is_fallback(&self) -> bool {
        matches!(
            self.kind,
            LayerErrorKind::Unsupported | LayerErrorKind::CrossDevice
        )
    }

    /// The closest errno: the OS's own when known, else one for the class.
    pub fn errno(&self) -> i32 {
        if self.errno != 0 {
            return self.errno;
        }
        match self.kind {
            LayerErrorKind::Unsupported => libc::ENOTSUP,
            LayerErrorKind::CrossDevice => libc::EXDEV,
            LayerErrorKind::NotFound => libc::ENOENT,
            LayerErrorKind::AlreadyExists => libc::EEXIST,
            LayerErrorKind::Busy => libc::EBUSY,
            LayerErrorKind::NoSpace => libc::ENOSPC,
            LayerErrorKind::ReadOnly => libc::EROFS,
            LayerErrorKind::PermissionDenied => libc::EACCES,
            LayerErrorKind::InvalidArgument => libc::EINVAL,
            LayerErrorKind::Internal | LayerErrorKind::Io => libc::EIO,
        }
    }
}

impl From<std::io::Error> for LayerError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => LayerErrorKind::NotFound,
            K::AlreadyExists => LayerErrorKind::AlreadyExists,
            K::PermissionDenied => LayerErrorKind::PermissionDenied,
            K::Unsupported => LayerErrorKind::Unsupported,
            K::InvalidInput => LayerErrorKind::InvalidArgument,
            _ => match e.raw_os_error() {
                Some(libc::EXDEV) => LayerErrorKind::CrossDevice,
                Some(libc::ENOSPC) => LayerErrorKind::NoSpace,
                Some(libc::EROFS) => LayerErrorKind::ReadOnly,
                Some(libc::EBUSY) => LayerErrorKind::Busy,
                Some(libc::EOPNOTSUPP) => LayerErrorKind::Unsupported,
                _ => LayerErrorKind::Io,
            },
        };
        Self {
            kind,
            errno: e.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        }
    }
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LayerError {}

/// What a layer store can do natively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerCaps {
    /// `reflink` clones files without copying data.
    pub native_reflink: bool,
    /// `snapshot_layer` works (O(1) frozen copies of a layer).
    pub native_snapshots: bool,
    /// Data lives in RAM and is lost at reboot.
    pub ram_backed: bool,
    /// Layers survive the process (reopening finds them again).
    pub persistent: bool,
}

impl LayerCaps {
    /// The names of the capabilities present, in a fixed order
    /// (`native_reflink`, `native_snapshots`, `ram_backed`, `persistent`).
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.native_reflink, "native_reflink"),
            (self.native_snapshots, "native_snapshots"),
            (self.ram_backed, "ram_backed"),
            (self.persistent, "persistent"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect()
    }
}

/// Where the layer store keeps its data, and how full it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStoreStatus {
    /// The directory holding every layer and the metadata directory.
    pub root: PathBuf,
    /// Filesystem type of `root` (`btrfs`, `ext4`, `tmpfs`, `apfs`...).
    pub fs_type: String,
    /// Capacity of that filesystem, in bytes.
    pub capacity_bytes: u64,
    /// Bytes used on it.
    pub used_bytes: u64,
}

/// Directories for layers. See the module documentation for the lifecycle
/// and threading rules.
pub trait LayerStore: Send + Sync + fmt::Debug {
    /// A short name for messages (the plugin's name).
    fn name(&self) -> &str;

    /// What this instance can do natively.
    fn capabilities(&self) -> LayerCaps;

    /// Where data lives, filesystem type, capacity and usage.
    fn status(&self) -> LayerResult<LayerStoreStatus>;

    /// A directory the engine owns for its graph and lock file; created on
    /// first call, the same path every time.
    fn metadata_dir(&self) -> LayerResult<PathBuf>;

    /// Creates the empty, writable layer `id` and returns its directory.
    fn create_layer(&self, id: &str) -> LayerResult<PathBuf>;

    /// Deletes layer `id` and everything in it.
    fn delete_layer(&self, id: &str) -> LayerResult<()>;

    /// The directory of existing layer `id`.
    fn layer_path(&self, id: &str) -> LayerResult<PathBuf>;

    /// Ids of every layer present, in any order.
    fn list_layers(&self) -> LayerResult<Vec<String>>;

    /// A native snapshot of layer `src` as the new layer `dst` (read-only
    /// when asked), or `Unsupported`.
    fn snapshot_layer(&self, src: &str, dst: &str, read_only: bool) -> LayerResult<PathBuf> {
        let _ = (src, dst, read_only);
        Err(LayerError::unsupported("native snapshots"))
    }

    /// Clones regular file `src` to the new file `dst` sharing data blocks,
    /// or `Unsupported` / `CrossDevice`.
    fn reflink(&self, src: &Path, dst: &Path) -> LayerResult<()> {
        let _ = (src, dst);
        Err(LayerError::unsupported("reflink"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_errno_and_class() {
        let e = LayerError::from(std::io::Error::from_raw_os_error(libc::EXDEV));
        assert_eq!(e.kind, LayerErrorKind::CrossDevice);
        assert!(e.is_fallback());
        assert_eq!(e.errno(), libc::EXDEV);
        let e = LayerError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!((e.kind, e.errno()), (LayerErrorKind::NoSpace, libc::ENOSPC));
        assert!(!e.is_fallback());
        assert_eq!(LayerError::unsupported("x").errno(), libc::ENOTSUP);
    }
}
