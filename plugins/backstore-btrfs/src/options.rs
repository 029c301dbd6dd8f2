//! The plugin's TOML options.

use std::path::PathBuf;

use agentfs_plugin_api::{parse_options, PluginError, PluginResult};

/// Options of the btrfs backstore.
///
/// ```toml
/// options = { root = "/srv/agentfs" }          # a directory (btrfs, XFS, ext4, ...)
/// options = { ramdisk = { size_mb = 2048 } }   # a private btrfs volume in RAM
/// ```
#[derive(serde::Deserialize, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BtrfsOptions {
    /// Root directory of the store; created if missing. Default:
    /// `$XDG_DATA_HOME/agentfs/btrfs` (or `~/.local/share/agentfs/btrfs`).
    pub root: Option<PathBuf>,
    /// Provision a btrfs volume in RAM and keep the store on it.
    pub ramdisk: Option<RamdiskOptions>,
}

/// The `ramdisk` option table.
#[derive(serde::Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RamdiskOptions {
    /// Size of the volume in MiB (at least 128).
    pub size_mb: u64,
}

impl BtrfsOptions {
    /// Parses and checks the options text.
    pub fn parse(text: &str) -> PluginResult<Self> {
        let o: Self = parse_options("btrfs", text)?;
        if o.root.is_some() && o.ramdisk.is_some() {
            return Err(PluginError::invalid(
                "btrfs options: give either `root` (a directory) or `ramdisk` (a volume in RAM), not both",
            ));
        }
        if o.root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
            return Err(PluginError::invalid(
                "btrfs option `root` must not be empty",
            ));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;

    #[test]
    fn both_forms_parse() {
        assert_eq!(BtrfsOptions::parse("").unwrap(), BtrfsOptions::default());
        assert_eq!(
            BtrfsOptions::parse("root = \"/srv/x\"").unwrap().root,
            Some(PathBuf::from("/srv/x"))
        );
        assert_eq!(
            BtrfsOptions::parse("ramdisk = { size_mb = 512 }")
                .unwrap()
                .ramdisk,
            Some(RamdiskOptions { size_mb: 512 })
        );
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let cases = [
            ("rot = \"/x\"", "rot"),
            ("ramdisk = { size = 5 }", "size"),
            ("ramdisk = { size_mb = -1 }", "size_mb"),
            ("ramdisk = {}", "size_mb"),
            ("root = \"/x\"\nramdisk = { size_mb = 256 }", "not both"),
            ("root = \"\"", "must not be empty"),
        ];
        for (text, needle) in cases {
            let e = BtrfsOptions::parse(text).unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT, "{text}");
            assert!(e.message().contains(needle), "{text}: {e}");
        }
    }
}
