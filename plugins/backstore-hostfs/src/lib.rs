//! `hostfs`: layers as plain directories under a configured root on any
//! filesystem. Reflink uses the platform clone call (FICLONE on Linux,
//! clonefile on macOS) when a real clone in the root works at start, and is
//! `Unsupported` otherwise (the host then copies). Native snapshots are
//! `Unsupported`. Persistent: layers survive restarts.

use std::path::{Path, PathBuf};

use agentfs_plugin_api::{
    backstore::{BackstoreImpl, BackstorePluginDef, Capabilities},
    export_backstore, parse_options, PluginError, PluginMeta, PluginResult,
};
use agentfs_plugin_support::{
    reflink::{probe_reflink, reflink_if_enabled},
    DirLayerStore,
};

/// Options of the hostfs backstore (TOML).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HostfsOptions {
    /// Root directory of the store; created if missing.
    /// Default: `$XDG_DATA_HOME/agentfs/hostfs` (or `~/.local/share/...`).
    root: Option<PathBuf>,
}

/// The hostfs backstore instance.
pub struct HostfsBackstore {
    store: DirLayerStore,
    caps: Capabilities,
}

/// The default root when none is configured.
pub fn default_root() -> PathBuf {
    agentfs_plugin_support::dir_layers::default_root("hostfs")
}

impl HostfsBackstore {
    /// Opens (creating if needed) a store from TOML options.
    pub fn new(options: &str) -> PluginResult<Self> {
        let opts: HostfsOptions = parse_options("hostfs", options)?;
        let root = opts.root.unwrap_or_else(default_root);
        if root.as_os_str().is_empty() {
            return Err(PluginError::invalid(
                "hostfs option 'root' must not be empty",
            ));
        }
        let store = DirLayerStore::open(&root)?;
        let mut caps = Capabilities::PERSISTENT;
        caps.set(
            Capabilities::NATIVE_REFLINK,
            probe_reflink(store.meta_dir()),
        );
        Ok(Self { store, caps })
    }
}

impl BackstoreImpl for HostfsBackstore {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    agentfs_plugin_support::dir_layer_methods!(store);
    fn snapshot_layer(&self, _src: &str, _dst: &str, _read_only: bool) -> PluginResult<PathBuf> {
        Err(PluginError::unsupported(
            "the hostfs backstore has no native snapshots",
        ))
    }
    fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        reflink_if_enabled(
            self.caps.contains(Capabilities::NATIVE_REFLINK),
            self.store.root(),
            src,
            dst,
        )
    }
}

/// Plugin definition for [`export_backstore!`].
pub struct HostfsPlugin;

impl BackstorePluginDef for HostfsPlugin {
    type Backstore = HostfsBackstore;
    const META: PluginMeta = PluginMeta {
        name: "hostfs",
        version: env!("CARGO_PKG_VERSION"),
        description:
            "layers as plain directories on any filesystem; reflink where the filesystem has it",
        platforms: "any",
        capabilities: &["native_reflink (where the filesystem clones)", "persistent"],
    };
    fn create(options: &str) -> PluginResult<HostfsBackstore> {
        HostfsBackstore::new(options)
    }
}

export_backstore!(HostfsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;

    fn opts(root: &Path) -> String {
        format!("root = {:?}", root.display().to_string())
    }

    #[test]
    fn layers_persist_across_instances() {
        let t = tempfile::tempdir().unwrap();
        let b = HostfsBackstore::new(&opts(t.path())).unwrap();
        let l = b.create_layer("x").unwrap();
        std::fs::write(l.join("f"), b"1").unwrap();
        drop(b);
        let b = HostfsBackstore::new(&opts(t.path())).unwrap();
        assert_eq!(b.list_layers().unwrap(), vec!["x"]);
        assert_eq!(
            std::fs::read(b.layer_path("x").unwrap().join("f")).unwrap(),
            b"1"
        );
        assert!(b.capabilities().contains(Capabilities::PERSISTENT));
    }

    #[test]
    fn reflink_capability_agrees_with_behaviour() {
        let t = tempfile::tempdir().unwrap();
        let b = HostfsBackstore::new(&opts(t.path())).unwrap();
        let l = b.create_layer("x").unwrap();
        std::fs::write(l.join("a"), b"data").unwrap();
        let r = b.reflink(&l.join("a"), &l.join("b"));
        if b.capabilities().contains(Capabilities::NATIVE_REFLINK) {
            r.unwrap();
            assert_eq!(std::fs::read(l.join("b")).unwrap(), b"data");
        } else {
            assert_eq!(r.unwrap_err().code, ErrorCode::UNSUPPORTED);
            assert!(!l.join("b").exists());
        }
    }
}
