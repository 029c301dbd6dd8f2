//! The plugin's TOML options, parsed strictly and checked before anything
//! is provisioned.
//!
//! ```toml
//! root = "/Users/me/agentfs"        # a directory on APFS (persistent store), or
//! ramdisk = { size_mb = 512 }       # a fresh APFS RAM disk (not persistent)
//! volume_snapshots = false          # opt in to the `diskutil apfs createSnapshot` wrapper
//! diskutil = "/usr/sbin/diskutil"   # tool paths (tests point these at fakes)
//! hdiutil = "/usr/bin/hdiutil"
//! ```

use std::path::{Path, PathBuf};

use agentfs_plugin_api::{parse_options, PluginError, PluginResult};

/// The plugin's name in config and messages.
pub const PLUGIN_NAME: &str = "apfs";

/// Where `diskutil` lives on every macOS release.
pub const DEFAULT_DISKUTIL: &str = "/usr/sbin/diskutil";

/// Where `hdiutil` lives on every macOS release.
pub const DEFAULT_HDIUTIL: &str = "/usr/bin/hdiutil";

/// Smallest RAM disk accepted, in MiB (APFS needs a few MiB of metadata).
pub const MIN_RAMDISK_MB: u64 = 16;

/// Largest RAM disk accepted, in MiB (1 TiB; the kernel refuses far earlier
/// if the memory is not there).
pub const MAX_RAMDISK_MB: u64 = 1 << 20;

/// Options of the apfs backstore (TOML). Unknown keys are errors.
#[derive(serde::Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApfsOptions {
    /// Root directory of a persistent store; created if missing. Default:
    /// `~/Library/Application Support/agentfs/apfs`. Not with `ramdisk`.
    pub root: Option<PathBuf>,
    /// Provision a fresh APFS RAM disk and keep the layers on it.
    pub ramdisk: Option<RamdiskOptions>,
    /// Opt in to the `diskutil apfs createSnapshot`/`deleteSnapshot`
    /// wrapper (whole-volume snapshots; Time Machine–managed volumes).
    #[serde(default)]
    pub volume_snapshots: bool,
    /// Path of `diskutil` (default `/usr/sbin/diskutil`).
    pub diskutil: Option<PathBuf>,
    /// Path of `hdiutil` (default `/usr/bin/hdiutil`).
    pub hdiutil: Option<PathBuf>,
}

/// `ramdisk = { size_mb = N }`.
#[derive(serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RamdiskOptions {
    /// Size of the RAM disk in MiB.
    pub size_mb: u64,
}

impl RamdiskOptions {
    /// The `ram://` URL `hdiutil attach` takes: a count of 512-byte sectors.
    pub fn ram_url(&self) -> String {
        format!("ram://{}", self.size_mb * 2048)
    }
}

impl ApfsOptions {
    /// Parses and checks TOML options.
    pub fn parse(options: &str) -> PluginResult<Self> {
        let opts: Self = parse_options(PLUGIN_NAME, options)?;
        opts.check()?;
        Ok(opts)
    }

    /// Rejects contradictory or out-of-range values with a message naming the key.
    pub fn check(&self) -> PluginResult<()> {
        if self.root.is_some() && self.ramdisk.is_some() {
            return Err(PluginError::invalid(
                "apfs options 'root' and 'ramdisk' exclude each other: the RAM disk's volume is the root",
            ));
        }
        if self
            .root
            .as_deref()
            .is_some_and(|r| r.as_os_str().is_empty())
        {
            return Err(PluginError::invalid("apfs option 'root' must not be empty"));
        }
        if let Some(r) = &self.ramdisk {
            if !(MIN_RAMDISK_MB..=MAX_RAMDISK_MB).contains(&r.size_mb) {
                return Err(PluginError::invalid(format!(
                    "apfs option 'ramdisk.size_mb' is {}: use {MIN_RAMDISK_MB} to {MAX_RAMDISK_MB} (MiB)",
                    r.size_mb
                )));
            }
        }
        for (key, p) in [("diskutil", &self.diskutil), ("hdiutil", &self.hdiutil)] {
            if p.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(PluginError::invalid(format!(
                    "apfs option '{key}' must not be empty"
                )));
            }
        }
        Ok(())
    }

    /// The `diskutil` to run.
    pub fn diskutil_path(&self) -> PathBuf {
        self.diskutil
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DISKUTIL))
    }

    /// The `hdiutil` to run.
    pub fn hdiutil_path(&self) -> PathBuf {
        self.hdiutil
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HDIUTIL))
    }
}

/// The default store root under a home directory:
/// `~/Library/Application Support/agentfs/apfs`.
pub fn default_root(home: &Path) -> PathBuf {
    home.join("Library")
        .join("Application Support")
        .join("agentfs")
        .join("apfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;

    #[test]
    fn empty_options_are_the_defaults() {
        let o = ApfsOptions::parse("").unwrap();
        assert_eq!(o, ApfsOptions::default());
        assert_eq!(o.diskutil_path(), Path::new("/usr/sbin/diskutil"));
        assert_eq!(o.hdiutil_path(), Path::new("/usr/bin/hdiutil"));
        assert!(!o.volume_snapshots);
    }

    #[test]
    fn ramdisk_table_parses_and_gives_the_sector_count() {
        let o = ApfsOptions::parse("ramdisk = { size_mb = 512 }").unwrap();
        let r = o.ramdisk.unwrap();
        assert_eq!(r.size_mb, 512);
        assert_eq!(r.ram_url(), "ram://1048576");
    }

    #[test]
    fn every_tool_path_and_flag_is_accepted() {
        let o = ApfsOptions::parse(
            "root = \"/tmp/x\"\nvolume_snapshots = true\ndiskutil = \"/opt/d\"\nhdiutil = \"/opt/h\"",
        )
        .unwrap();
        assert_eq!(o.root.as_deref(), Some(Path::new("/tmp/x")));
        assert!(o.volume_snapshots);
        assert_eq!(o.diskutil_path(), Path::new("/opt/d"));
        assert_eq!(o.hdiutil_path(), Path::new("/opt/h"));
    }

    #[test]
    fn bad_options_are_rejected_with_the_key_named() {
        for (text, needle) in [
            ("rot = \"/x\"", "rot"),
            ("ramdisk = { size = 5 }", "size"),
            ("ramdisk = { size_mb = 4 }", "ramdisk.size_mb"),
            ("ramdisk = { size_mb = 2000000 }", "ramdisk.size_mb"),
            ("ramdisk = { size_mb = -1 }", "size_mb"),
            ("root = \"\"", "root"),
            ("diskutil = \"\"", "diskutil"),
            ("root = \"/x\"\nramdisk = { size_mb = 64 }", "exclude"),
            ("volume_snapshots = \"yes\"", "volume_snapshots"),
        ] {
            let e = ApfsOptions::parse(text).unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT, "{text}");
            assert!(e.message().contains(needle), "{text}: {}", e.message());
            assert!(!e.message().contains('\n'), "{text}: not one line");
        }
    }

    #[test]
    fn default_root_is_under_application_support() {
        assert_eq!(
            default_root(Path::new("/Users/ada")),
            Path::new("/Users/ada/Library/Application Support/agentfs/apfs")
        );
    }
}
