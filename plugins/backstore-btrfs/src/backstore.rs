//! The backstore instance on Linux.

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use agentfs_plugin_api::{
    backstore::{BackstoreImpl, Capabilities, StoreStatus},
    ErrorCode, PluginError, PluginResult,
};
use agentfs_plugin_support::{
    dir_layers::{default_root, remove_tree},
    fs_type_of,
    leftovers::reap_dead_owners,
    reflink::{probe_reflink, reflink_if_enabled},
    status_of, DirLayerStore,
};

use crate::{
    options::BtrfsOptions,
    ramdisk::{reap_stale, RamConfig, RamVolume},
    subvol,
};

/// The mount option that lets a user who is not root destroy subvolumes.
pub const USER_RM_OPTION: &str = "user_subvol_rm_allowed";

/// How layers are made on this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// btrfs subvolumes: native O(1) snapshots.
    Subvolumes,
    /// Plain directories (XFS, ext4, tmpfs, ...): no native snapshots.
    Directories,
}

/// The btrfs backstore: layers as subvolumes on btrfs, as directories
/// elsewhere; reflink wherever a real FICLONE worked at start.
pub struct BtrfsBackstore {
    store: DirLayerStore,
    fs_type: String,
    kind: LayerKind,
    caps: Capabilities,
    warned_rm: AtomicBool,
    reclaimed: Vec<String>,
    // Declared last: dropped after the store, it unmounts the volume.
    ram: Option<RamVolume>,
}

impl std::fmt::Debug for BtrfsBackstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtrfsBackstore")
            .field("root", &self.store.root())
            .field("fs_type", &self.fs_type)
            .field("kind", &self.kind)
            .field("caps", &self.caps.names())
            .field("ram", &self.ram)
            .finish()
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl BtrfsBackstore {
    /// Opens (creating if needed) a store from TOML options; with
    /// `ramdisk`, provisions the RAM volume first. Every start also removes
    /// RAM volumes left behind by processes that are gone.
    pub fn new(options: &str) -> PluginResult<Self> {
        let opts = BtrfsOptions::parse(options)?;
        let ram_cfg = RamConfig::new(opts.ramdisk.as_ref().map_or(0, |r| r.size_mb));
        let stale = reap_stale(&ram_cfg.shm_dir, &ram_cfg.mount_parent);
        let mut b = match opts.ramdisk {
            Some(_) => {
                let vol = RamVolume::create(&ram_cfg)?;
                let root = vol.mount_point().to_path_buf();
                Self::open(&root, Some(vol))
            }
            None => Self::open(&opts.root.unwrap_or_else(|| default_root("btrfs")), None),
        }?;
        b.reclaimed.splice(0..0, stale);
        Ok(b)
    }

    /// Opens a store at `root`, probing what the filesystem under it can do.
    pub fn open(root: &Path, ram: Option<RamVolume>) -> PluginResult<Self> {
        let store = DirLayerStore::open(root)?;
        let fs_type = fs_type_of(root)?;
        // Probe subvolumes of processes killed while probing.
        let reclaimed = reap_dead_owners(store.root(), PROBE_PREFIX, remove_probe);
        let kind = if fs_type == "btrfs" {
            match probe_subvolumes(store.root()) {
                Ok(()) => LayerKind::Subvolumes,
                Err(e) => {
                    tracing::warn!(root = %root.display(), error = %e,
                        "btrfs subvolumes do not work here: layers are plain directories, no native snapshots");
                    LayerKind::Directories
                }
            }
        } else {
            LayerKind::Directories
        };
        let mut caps = Capabilities::empty();
        caps.set(
            Capabilities::NATIVE_REFLINK,
            probe_reflink(store.meta_dir()),
        );
        caps.set(
            Capabilities::NATIVE_SNAPSHOTS,
            kind == LayerKind::Subvolumes,
        );
        caps.set(Capabilities::RAM_BACKED, ram.is_some());
        caps.set(Capabilities::PERSISTENT, ram.is_none());
        tracing::info!(root = %root.display(), %fs_type, caps = ?caps.names(), "btrfs backstore ready");
        Ok(Self {
            store,
            fs_type,
            kind,
            caps,
            warned_rm: AtomicBool::new(false),
            reclaimed,
            ram,
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// The filesystem type found under the root at start.
    pub fn fs_type(&self) -> &str {
        &self.fs_type
    }

    /// How layers are made here.
    pub fn layer_kind(&self) -> LayerKind {
        self.kind
    }

    /// The RAM volume, when the store lives on one.
    pub fn ram_volume(&self) -> Option<&RamVolume> {
        self.ram.as_ref()
    }

    /// Deletes a subvolume layer. Root (or a filesystem mounted with
    /// `user_subvol_rm_allowed`) destroys it with one ioctl; any other owner
    /// clears its read-only flag, empties it and removes it with rmdir.
    fn delete_subvolume(&self, id: &str, path: &Path) -> PluginResult<()> {
        let denied = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS)
            )
        };
        let first = match subvol::destroy_subvolume(path) {
            Ok(()) => return Ok(()),
            Err(e) if denied(&e) && euid() != 0 => e,
            Err(e) => return Err(PluginError::from_io(format!("delete layer {id}"), &e)),
        };
        if !self.warned_rm.swap(true, Ordering::Relaxed) {
            tracing::warn!(root = %self.root().display(), error = %first,
                "cannot destroy subvolumes as uid {}: deleting layers by emptying them (slow); \
                 mount the filesystem with -o {USER_RM_OPTION} to make it O(1)", euid());
        }
        let fail = |e: &io::Error| {
            PluginError::new(
                ErrorCode::PERMISSION_DENIED,
                format!(
                    "cannot delete subvolume layer {id} as uid {}: {e}; mount the btrfs \
                     filesystem with -o {USER_RM_OPTION} or run as root",
                    euid()
                ),
            )
        };
        // A read-only snapshot's owner may clear the flag; then the ioctl may
        // succeed (option present but the snapshot was read-only).
        if subvol::is_read_only(path).map_err(|e| fail(&e))? {
            subvol::set_read_only(path, false).map_err(|e| fail(&e))?;
            if subvol::destroy_subvolume(path).is_ok() {
                return Ok(());
            }
        }
        let trash = self.store.move_to_trash(id)?;
        remove_tree(&trash).map_err(|e| fail(&e))
    }
}

/// Name prefix of the throwaway subvolumes the native-snapshot probe makes:
/// `<prefix><pid>-<n>` and its snapshot `<prefix><pid>-<n>-ro`.
pub const PROBE_PREFIX: &str = ".agentfs-subvol-probe-";

/// Removes a probe subvolume (or a plain directory of that name). Not root
/// and no `user_subvol_rm_allowed`: rmdir removes an empty subvolume its
/// owner can write, once it is writable.
fn remove_probe(p: &Path) -> io::Result<()> {
    if subvol::is_subvolume(p).unwrap_or(false) {
        if subvol::destroy_subvolume(p).is_ok() {
            return Ok(());
        }
        let _ = subvol::set_read_only(p, false);
    }
    std::fs::remove_dir(p)
}

/// Creates, snapshots and destroys a throwaway subvolume in `root`. A kill
/// in between leaves them; the next start removes them
/// ([`reap_dead_owners`] with [`PROBE_PREFIX`]).
fn probe_subvolumes(root: &Path) -> io::Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "{PROBE_PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let a = root.join(&name);
    let b = root.join(format!("{name}-ro"));
    let remove = |p: &Path| {
        if p.exists() {
            let _ = remove_probe(p);
        }
    };
    remove(&b);
    remove(&a);
    let r = subvol::create_subvolume(&a).and_then(|()| subvol::snapshot(&a, &b, true));
    remove(&b);
    remove(&a);
    r
}

impl BackstoreImpl for BtrfsBackstore {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn status(&self) -> PluginResult<StoreStatus> {
        status_of(self.store.root())
    }
    fn metadata_dir(&self) -> PluginResult<PathBuf> {
        Ok(self.store.meta_dir().to_path_buf())
    }
    fn create_layer(&self, id: &str) -> PluginResult<PathBuf> {
        match self.kind {
            LayerKind::Subvolumes => self.store.create_with(id, subvol::create_subvolume),
            LayerKind::Directories => self.store.create(id),
        }
    }
    fn delete_layer(&self, id: &str) -> PluginResult<()> {
        let path = self.store.existing(id)?;
        if subvol::is_subvolume(&path).unwrap_or(false) {
            self.delete_subvolume(id, &path)
        } else {
            self.store.delete(id)
        }
    }
    fn layer_path(&self, id: &str) -> PluginResult<PathBuf> {
        self.store.existing(id)
    }
    fn list_layers(&self) -> PluginResult<Vec<String>> {
        self.store.list()
    }
    fn snapshot_layer(&self, src: &str, dst: &str, read_only: bool) -> PluginResult<PathBuf> {
        if self.kind != LayerKind::Subvolumes {
            // Still report a bad or missing source precisely.
            self.store.existing(src)?;
            self.store.path_for(dst)?;
            return Err(PluginError::unsupported(format!(
                "native snapshots need btrfs subvolumes; the store at {} is on {}",
                self.root().display(),
                self.fs_type
            )));
        }
        let src_path = self.store.existing(src)?;
        if !subvol::is_subvolume(&src_path).unwrap_or(false) {
            return Err(PluginError::unsupported(format!(
                "layer {src} is a plain directory, not a btrfs subvolume: it cannot be snapshotted natively"
            )));
        }
        self.store
            .create_with(dst, |p| subvol::snapshot(&src_path, p, read_only))
    }
    fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        reflink_if_enabled(
            self.caps.contains(Capabilities::NATIVE_REFLINK),
            self.store.root(),
            src,
            dst,
        )
    }
    fn reclaimed(&self) -> Vec<String> {
        self.reclaimed.clone()
    }
}
