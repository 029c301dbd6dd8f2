//! `mock`: a RAM-backed backstore that runs anywhere. Layers are directories
//! in a private directory on tmpfs (`/dev/shm` by default), so nothing is
//! written to disk; reflink is a software clone with the semantics of a real
//! one (both ends inside the store, never overwriting, metadata preserved,
//! independent afterwards); native snapshots are `Unsupported`. The store is
//! removed when the backstore is dropped: it is not persistent. A process
//! killed before it could drop its store leaves `agentfs-mock-<pid>-<n>`
//! behind, holding RAM; the next mock backstore made in the same parent
//! directory removes those of dead pids and reports them (`reclaimed`, shown
//! by `agentfs status`). Each instance's store is private to it: two
//! processes never share one.

use std::{
    fs,
    path::{Path, PathBuf},
};

use agentfs_plugin_api::{
    backstore::{BackstoreImpl, BackstorePluginDef, Capabilities},
    export_backstore, parse_options, ErrorCode, PluginError, PluginMeta, PluginResult,
};
use agentfs_plugin_support::{
    dir_layers::remove_tree, fs_type_of, leftovers::reap_dead_owners, softclone::soft_clone,
    DirLayerStore,
};

/// Name prefix of each instance's private store directory.
const STORE_PREFIX: &str = "agentfs-mock-";

/// Options of the mock backstore (TOML).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct MockOptions {
    /// Directory in which the private store directory is made.
    /// Default: `/dev/shm` where it exists, else the temp directory.
    parent: Option<PathBuf>,
    /// Simulate a store without reflink (`Unsupported`), to exercise the
    /// host's copy fallback. Default: true.
    reflink: Option<bool>,
}

/// The mock backstore instance.
pub struct MockBackstore {
    store: DirLayerStore,
    caps: Capabilities,
    reflink: bool,
    reclaimed: Vec<String>,
}

impl MockBackstore {
    /// Creates a fresh private store from TOML options.
    pub fn new(options: &str) -> PluginResult<Self> {
        let opts: MockOptions = parse_options("mock", options)?;
        let parent = opts.parent.unwrap_or_else(default_parent);
        let reclaimed = reap_dead_owners(&parent, STORE_PREFIX, remove_tree);
        let root = make_private_dir(&parent)?;
        let store = DirLayerStore::open(&root)?;
        let fs_type = fs_type_of(&root)?;
        let reflink = opts.reflink.unwrap_or(true);
        let mut caps = Capabilities::empty();
        caps.set(Capabilities::NATIVE_REFLINK, reflink);
        caps.set(
            Capabilities::RAM_BACKED,
            fs_type == "tmpfs" || fs_type == "ramfs",
        );
        if !caps.contains(Capabilities::RAM_BACKED) {
            tracing::warn!(root = %root.display(), %fs_type, "mock backstore is not on tmpfs: it is not RAM-backed here");
        }
        Ok(Self {
            store,
            caps,
            reflink,
            reclaimed,
        })
    }

    fn inside(&self, p: &Path) -> bool {
        p.starts_with(self.store.layers_dir())
    }
}

fn default_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn make_private_dir(parent: &Path) -> PluginResult<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let pid = std::process::id();
    for n in 0..1000u32 {
        let p = parent.join(format!("{STORE_PREFIX}{pid}-{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(PluginError::from_io(
                    format!("create mock store in {}", parent.display()),
                    &e,
                ))
            }
        }
    }
    Err(PluginError::new(
        ErrorCode::IO,
        format!("could not make a private directory in {}", parent.display()),
    ))
}

impl Drop for MockBackstore {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(self.store.root()) {
            tracing::warn!(root = %self.store.root().display(), error = %e, "could not remove mock store");
        }
    }
}

impl BackstoreImpl for MockBackstore {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    agentfs_plugin_support::dir_layer_methods!(store);
    fn snapshot_layer(&self, _src: &str, _dst: &str, _read_only: bool) -> PluginResult<PathBuf> {
        Err(PluginError::unsupported(
            "the mock backstore has no native snapshots",
        ))
    }
    fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        if !self.reflink {
            return Err(PluginError::unsupported(
                "reflink is disabled in this mock backstore (reflink = false)",
            ));
        }
        // Like a real clone, both ends must be on this store's "filesystem".
        if !self.inside(src) || !self.inside(dst) {
            return Err(PluginError::new(
                ErrorCode::CROSS_DEVICE,
                format!(
                    "reflink {} -> {}: both ends must be inside the mock store",
                    src.display(),
                    dst.display()
                ),
            ));
        }
        soft_clone(src, dst)
    }
    fn reclaimed(&self) -> Vec<String> {
        self.reclaimed.clone()
    }
}

/// Plugin definition for [`export_backstore!`].
pub struct MockPlugin;

impl BackstorePluginDef for MockPlugin {
    type Backstore = MockBackstore;
    const META: PluginMeta = PluginMeta {
        name: "mock",
        version: env!("CARGO_PKG_VERSION"),
        description: "RAM-backed layers on tmpfs with software reflink; not persistent",
        platforms: "any",
        capabilities: &["native_reflink", "ram_backed"],
    };
    fn create(options: &str) -> PluginResult<MockBackstore> {
        MockBackstore::new(options)
    }
}

export_backstore!(MockPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_unsupported_with_the_right_code() {
        let b = MockBackstore::new("").unwrap();
        b.create_layer("a").unwrap();
        let e = b.snapshot_layer("a", "b", true).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert_eq!(b.list_layers().unwrap(), vec!["a"]);
    }

    #[test]
    fn reflink_outside_the_store_is_cross_device() {
        let b = MockBackstore::new("").unwrap();
        let l = b.create_layer("a").unwrap();
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let e = b.reflink(&t.path().join("f"), &l.join("f")).unwrap_err();
        assert_eq!(e.code, ErrorCode::CROSS_DEVICE);
    }

    #[test]
    fn drop_removes_the_store() {
        let b = MockBackstore::new("").unwrap();
        let root = b.store.root().to_path_buf();
        assert!(root.is_dir());
        drop(b);
        assert!(!root.exists());
    }

    #[test]
    fn stores_of_dead_processes_are_reclaimed_and_reported() {
        let parent = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let leftover = parent.path().join(format!("{STORE_PREFIX}{dead}-0"));
        fs::create_dir_all(leftover.join("layers/l1")).unwrap();
        fs::write(
            leftover.join("layers/l1/big"),
            b"ram held by a dead process",
        )
        .unwrap();
        let live = parent
            .path()
            .join(format!("{STORE_PREFIX}{}-999", std::process::id()));
        fs::create_dir(&live).unwrap();
        let opts = format!("parent = {:?}", parent.path().display().to_string());
        let b = MockBackstore::new(&opts).unwrap();
        assert!(
            !leftover.exists(),
            "the dead process's store is still there"
        );
        assert!(live.exists(), "a live process's store was removed");
        let r = b.reclaimed();
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains(&leftover.display().to_string()), "{r:?}");
    }

    #[test]
    fn unknown_option_is_rejected() {
        let e = MockBackstore::new("parnet = '/tmp'").err().unwrap();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        assert!(e.message().contains("parnet"));
    }
}
