//! `btrfs`: the Linux copy-on-write backstore (the twin of
//! `apfs`).
//!
//! - The filesystem under the root is identified with `statfs` `f_type`.
//! - Reflink is the `FICLONE` ioctl; the capability is verified with a real
//!   clone at start (btrfs, XFS with reflink=1), never guessed from a name.
//! - On btrfs, layers are subvolumes made with `BTRFS_IOC_SUBVOL_CREATE`;
//!   native snapshots (`BTRFS_IOC_SNAP_CREATE_V2`, read-only with
//!   `BTRFS_SUBVOL_RDONLY`) are O(1); deletion is
//!   `BTRFS_IOC_SNAP_DESTROY_V2`. Elsewhere layers are plain directories and
//!   native snapshots are `Unsupported`.
//! - `ramdisk = { size_mb = N }` provisions a private btrfs volume in RAM
//!   (a sparse file in `/dev/shm` on a loop device), removed when the
//!   backstore is dropped, or at the next start if the process was killed.
//!
//! On other platforms the plugin loads and says that it needs Linux.

pub mod options;

#[cfg(target_os = "linux")]
mod backstore;
#[cfg(target_os = "linux")]
pub mod loopdev;
#[cfg(target_os = "linux")]
pub mod ramdisk;
#[cfg(target_os = "linux")]
pub mod subvol;

#[cfg(target_os = "linux")]
pub use backstore::{BtrfsBackstore, LayerKind, PROBE_PREFIX, USER_RM_OPTION};

use agentfs_plugin_api::{
    backstore::BackstorePluginDef, export_backstore, PluginMeta, PluginResult,
};

/// The btrfs backstore on a platform other than Linux: it cannot exist.
#[cfg(not(target_os = "linux"))]
pub enum BtrfsBackstore {}

#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use std::path::{Path, PathBuf};

    use agentfs_plugin_api::{
        backstore::{BackstoreImpl, Capabilities, StoreStatus},
        ErrorCode, PluginError, PluginResult,
    };

    use super::BtrfsBackstore;

    impl BtrfsBackstore {
        /// Always fails: this backstore needs Linux.
        pub fn new(options: &str) -> PluginResult<Self> {
            crate::options::BtrfsOptions::parse(options)?;
            Err(PluginError::new(
                ErrorCode::WRONG_PLATFORM,
                "the btrfs backstore needs Linux (FICLONE, btrfs subvolumes, loop devices); \
                 on macOS use the apfs backstore",
            ))
        }
    }

    impl BackstoreImpl for BtrfsBackstore {
        fn capabilities(&self) -> Capabilities {
            match *self {}
        }
        fn status(&self) -> PluginResult<StoreStatus> {
            match *self {}
        }
        fn metadata_dir(&self) -> PluginResult<PathBuf> {
            match *self {}
        }
        fn create_layer(&self, _id: &str) -> PluginResult<PathBuf> {
            match *self {}
        }
        fn delete_layer(&self, _id: &str) -> PluginResult<()> {
            match *self {}
        }
        fn layer_path(&self, _id: &str) -> PluginResult<PathBuf> {
            match *self {}
        }
        fn list_layers(&self) -> PluginResult<Vec<String>> {
            match *self {}
        }
        fn snapshot_layer(&self, _s: &str, _d: &str, _ro: bool) -> PluginResult<PathBuf> {
            match *self {}
        }
        fn reflink(&self, _src: &Path, _dst: &Path) -> PluginResult<()> {
            match *self {}
        }
    }
}

/// Plugin definition for [`export_backstore!`].
pub struct BtrfsPlugin;

impl BackstorePluginDef for BtrfsPlugin {
    type Backstore = BtrfsBackstore;
    const META: PluginMeta = PluginMeta {
        name: "btrfs",
        version: env!("CARGO_PKG_VERSION"),
        description: "Linux copy-on-write: FICLONE reflink (btrfs, XFS), btrfs subvolume \
                      snapshots, optional btrfs volume in RAM",
        platforms: "linux",
        capabilities: &[
            "native_reflink (btrfs, XFS reflink=1)",
            "native_snapshots (btrfs)",
            "ram_backed (ramdisk option)",
            "persistent (without ramdisk)",
        ],
    };
    fn create(options: &str) -> PluginResult<BtrfsBackstore> {
        BtrfsBackstore::new(options)
    }
}

export_backstore!(BtrfsPlugin);
