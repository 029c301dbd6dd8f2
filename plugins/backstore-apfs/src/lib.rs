//! `apfs`: the macOS backstore. Layers are directories on an
//! APFS volume: a configured root, or a RAM disk it provisions with
//! `hdiutil` and `diskutil` (`ramdisk = { size_mb = N }`) and destroys when
//! dropped.
//!
//! - **Probe**: statfs `f_fstypename` of the root (`apfs`, `hfs`, ...), read
//!   once at construction; `native_reflink` only on APFS.
//! - **Reflink**: `clonefile(2)` through the shared
//!   [`agentfs_plugin_support::reflink_file`]: ENOTSUP (HFS+) ->
//!   Unsupported, EEXIST -> AlreadyExists, EXDEV -> CrossDevice, ENOSPC ->
//!   NoSpace. Never a silent copy: the host decides the fallback. The
//!   clone keeps mode, times, flags, xattrs and (with `CLONE_ACL`) ACLs,
//!   and the kernel clears setuid/setgid on it.
//! - **Native snapshots**: none. Apple has no public API to snapshot a
//!   directory or a user-managed APFS volume, so `snapshot_layer` is
//!   `Unsupported` and the host commits the layer and starts a new one. The
//!   `diskutil apfs createSnapshot` wrapper ([`volume_snapshots`]) is an
//!   opt-in Rust API for Time Machine–managed volumes.
//!
//! Everything except the syscalls and the plugin's real construction is
//! platform-independent and unit-tested on Linux (parsers, name rules,
//! command sequences against fake tools). On other platforms the plugin
//! loads, says it is for macOS, and its constructor fails with
//! `WrongPlatform`.

pub mod backstore;
pub mod names;
pub mod options;
pub mod parse;
pub mod ramdisk;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod volume_snapshots;

pub use backstore::{ApfsBackstore, FsKind};
pub use options::ApfsOptions;
pub use ramdisk::RamDisk;

use agentfs_plugin_api::{
    backstore::BackstorePluginDef, export_backstore, ErrorCode, PluginError, PluginMeta,
    PluginResult,
};

/// The one-line error construction gives on every platform but macOS.
pub fn wrong_platform(os: &str) -> PluginError {
    PluginError::new(
        ErrorCode::WRONG_PLATFORM,
        format!(
            "the apfs backstore runs only on macOS (it needs APFS, clonefile(2), hdiutil and diskutil), \
             and this host runs {os}: use the btrfs or hostfs backstore here"
        ),
    )
}

/// Builds the backstore from TOML options (macOS).
#[cfg(target_os = "macos")]
pub fn create(options: &str) -> PluginResult<ApfsBackstore> {
    let opts = ApfsOptions::parse(options)?;
    let default_root = match std::env::var_os("HOME") {
        Some(home) => options::default_root(std::path::Path::new(&home)),
        None if opts.root.is_none() && opts.ramdisk.is_none() => {
            return Err(PluginError::invalid(
                "apfs: HOME is not set, so there is no default root: set 'root' or 'ramdisk' in the options",
            ))
        }
        None => std::path::PathBuf::new(),
    };
    ApfsBackstore::from_options(&opts, &default_root)
}

/// Refuses to build: the apfs backstore needs macOS.
#[cfg(not(target_os = "macos"))]
pub fn create(_options: &str) -> PluginResult<ApfsBackstore> {
    Err(wrong_platform(std::env::consts::OS))
}

/// Plugin definition for [`export_backstore!`].
pub struct ApfsPlugin;

impl BackstorePluginDef for ApfsPlugin {
    type Backstore = ApfsBackstore;
    const META: PluginMeta = PluginMeta {
        name: options::PLUGIN_NAME,
        version: env!("CARGO_PKG_VERSION"),
        description: "macOS only: layers on APFS with clonefile(2) reflink, optionally on an APFS RAM disk (hdiutil/diskutil)",
        platforms: "macos",
        capabilities: &[
            "native_reflink (on APFS)",
            "ram_backed (with the ramdisk option)",
            "persistent (without it)",
        ],
    };
    fn create(options: &str) -> PluginResult<ApfsBackstore> {
        create(options)
    }
}

export_backstore!(ApfsPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn construction_off_macos_is_one_line_naming_the_platform() {
        let e = ApfsPlugin::create("ramdisk = { size_mb = 64 }").unwrap_err();
        assert_eq!(e.code, ErrorCode::WRONG_PLATFORM);
        assert!(e.message().contains("only on macOS"), "{e}");
        assert!(e.message().contains(std::env::consts::OS), "{e}");
        assert!(!e.message().contains('\n'));
    }

    #[test]
    fn meta_says_macos() {
        assert_eq!(ApfsPlugin::META.platforms, "macos");
        assert_eq!(ApfsPlugin::META.name, "apfs");
    }
}
