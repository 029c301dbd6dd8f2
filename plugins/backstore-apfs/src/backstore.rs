//! The apfs backstore instance: layers as directories on an APFS volume
//! (a configured root, or a RAM disk it provisions), the filesystem probed
//! once at construction, reflink by `clonefile(2)`.

use std::path::{Path, PathBuf};

use agentfs_plugin_api::{
    backstore::{BackstoreImpl, Capabilities},
    PluginError, PluginResult,
};
use agentfs_plugin_support::{
    fs_type_of,
    reflink::{check_source, reflink_file},
    DirLayerStore,
};

use crate::{
    options::ApfsOptions,
    ramdisk::{clean_leftovers, RamDisk},
    tools::Tools,
    volume_snapshots::VolumeSnapshots,
};

/// The filesystem under the store, from statfs `f_fstypename`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    /// APFS: `clonefile(2)` works.
    Apfs,
    /// HFS+ (`hfs`): no clones.
    Hfs,
    /// Anything else (`smbfs`, `msdos`, `nfs`, ... or a Linux type in tests).
    Other(String),
}

impl FsKind {
    /// Classifies a filesystem type name.
    pub fn from_type_name(name: &str) -> Self {
        match name {
            "apfs" => Self::Apfs,
            "hfs" => Self::Hfs,
            other => Self::Other(other.to_string()),
        }
    }

    /// Probes the filesystem holding `p` (one statfs call).
    pub fn probe(p: &Path) -> PluginResult<Self> {
        fs_type_of(p).map(|n| Self::from_type_name(&n))
    }

    /// The type name (`apfs`, `hfs`, ...).
    pub fn name(&self) -> &str {
        match self {
            Self::Apfs => "apfs",
            Self::Hfs => "hfs",
            Self::Other(n) => n,
        }
    }

    /// The capabilities a store on this filesystem has.
    pub fn capabilities(&self, ram_backed: bool) -> Capabilities {
        let mut c = Capabilities::empty();
        c.set(Capabilities::NATIVE_REFLINK, *self == Self::Apfs);
        c.set(Capabilities::RAM_BACKED, ram_backed);
        c.set(Capabilities::PERSISTENT, !ram_backed);
        c
    }
}

/// Message of every `snapshot_layer` call.
pub const NO_NATIVE_SNAPSHOTS: &str = "APFS offers no public API to snapshot a directory or a user-managed volume, \
     so the apfs backstore has no native snapshots; the host commits the layer and starts a new one";

/// The apfs backstore. Fields drop in order: the store first, the RAM disk
/// (if any) last.
#[derive(Debug)]
pub struct ApfsBackstore {
    store: DirLayerStore,
    fs: FsKind,
    caps: Capabilities,
    volume_snapshots: Option<VolumeSnapshots>,
    ramdisk: Option<RamDisk>,
}

impl ApfsBackstore {
    /// Builds the backstore the options describe: cleans RAM disks left by
    /// dead processes and provisions a new one when `ramdisk` is set, opens
    /// the store, probes the filesystem once.
    ///
    /// `default_root` is used when neither `root` nor `ramdisk` is given.
    pub fn from_options(opts: &ApfsOptions, default_root: &Path) -> PluginResult<Self> {
        opts.check()?;
        let tools = Tools::from_options(opts);
        let ramdisk = match opts.ramdisk {
            Some(r) => {
                clean_leftovers(&tools);
                Some(RamDisk::create(&tools, r)?)
            }
            None => None,
        };
        let root = match (&ramdisk, &opts.root) {
            (Some(rd), _) => rd.mount_point().join("agentfs"),
            (None, Some(r)) => r.clone(),
            (None, None) => default_root.to_path_buf(),
        };
        let store = DirLayerStore::open(&root)?;
        let fs = FsKind::probe(store.root())?;
        if fs != FsKind::Apfs {
            tracing::warn!(root = %root.display(), fs = fs.name(),
                "the apfs backstore's root is not on APFS: reflink is unavailable (the host copies)");
        }
        let volume_snapshots = if opts.volume_snapshots {
            let volume = match &ramdisk {
                Some(rd) => rd.volume().to_string(),
                None => volume_of(store.root())?,
            };
            Some(VolumeSnapshots::new(tools, volume))
        } else {
            None
        };
        let caps = fs.capabilities(ramdisk.is_some());
        Ok(Self {
            store,
            fs,
            caps,
            volume_snapshots,
            ramdisk,
        })
    }

    /// The filesystem probed at construction.
    pub fn fs_kind(&self) -> &FsKind {
        &self.fs
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// The RAM disk this backstore provisioned, if any.
    pub fn ramdisk(&self) -> Option<&RamDisk> {
        self.ramdisk.as_ref()
    }

    /// The `diskutil` snapshot wrapper, when `volume_snapshots = true`.
    pub fn volume_snapshots(&self) -> PluginResult<&VolumeSnapshots> {
        self.volume_snapshots.as_ref().ok_or_else(|| {
            PluginError::unsupported(
                "APFS volume snapshots are off: set `volume_snapshots = true` in the apfs options to use the diskutil wrapper",
            )
        })
    }
}

/// The mount point of the volume holding `p` (statfs `f_mntonname`), which
/// `diskutil` accepts as a volume.
#[cfg(target_os = "macos")]
fn volume_of(p: &Path) -> PluginResult<String> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| PluginError::invalid("path contains a NUL byte"))?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(PluginError::from_io(
            format!("statfs {}", p.display()),
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(agentfs_plugin_support::fsinfo::fstypename_to_string(
        &st.f_mntonname,
    ))
}

/// Volume snapshots need macOS's `diskutil`.
#[cfg(not(target_os = "macos"))]
fn volume_of(p: &Path) -> PluginResult<String> {
    Err(PluginError::unsupported(format!(
        "APFS volume snapshots need macOS: cannot name the volume holding {}",
        p.display()
    )))
}

impl BackstoreImpl for ApfsBackstore {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    agentfs_plugin_support::dir_layer_methods!(store);
    fn snapshot_layer(&self, _src: &str, _dst: &str, _read_only: bool) -> PluginResult<PathBuf> {
        Err(PluginError::unsupported(NO_NATIVE_SNAPSHOTS))
    }
    fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        if self.fs != FsKind::Apfs {
            // Same precondition errors as a real clone, then Unsupported:
            // never a silent copy (the host decides the fallback).
            check_source(src, dst)?;
            return Err(PluginError::unsupported(format!(
                "reflink needs APFS, and {} is on {}",
                self.store.root().display(),
                self.fs.name()
            )));
        }
        reflink_file(src, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testing::FakeTools, tools::Tool};
    use agentfs_plugin_api::ErrorCode;

    #[test]
    fn fs_kinds_and_their_capabilities() {
        assert_eq!(FsKind::from_type_name("apfs"), FsKind::Apfs);
        assert_eq!(FsKind::from_type_name("hfs"), FsKind::Hfs);
        assert_eq!(
            FsKind::from_type_name("smbfs"),
            FsKind::Other("smbfs".into())
        );
        let c = FsKind::Apfs.capabilities(false);
        assert_eq!(c.names(), vec!["native_reflink", "persistent"]);
        let c = FsKind::Apfs.capabilities(true);
        assert_eq!(c.names(), vec!["native_reflink", "ram_backed"]);
        assert_eq!(FsKind::Hfs.capabilities(false).names(), vec!["persistent"]);
        assert!(!FsKind::Other("msdos".into())
            .capabilities(false)
            .contains(Capabilities::NATIVE_SNAPSHOTS));
    }

    /// On Linux the store's root is not APFS: the backstore still works as a
    /// plain directory store, and reflink refuses without copying.
    #[test]
    fn a_root_store_off_apfs_refuses_reflink_and_snapshots_honestly() {
        let t = tempfile::tempdir().unwrap();
        let opts =
            ApfsOptions::parse(&format!("root = {:?}", t.path().display().to_string())).unwrap();
        let b = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap();
        assert_ne!(*b.fs_kind(), FsKind::Apfs);
        assert!(b.capabilities().contains(Capabilities::PERSISTENT));
        assert!(!b.capabilities().contains(Capabilities::NATIVE_REFLINK));
        let l = b.create_layer("l1").unwrap();
        std::fs::write(l.join("a"), b"data").unwrap();
        let e = b.reflink(&l.join("a"), &l.join("b")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert!(e.message().contains("needs APFS"), "{e}");
        assert!(!l.join("b").exists(), "no silent copy");
        // Precondition errors come first, as with a real clone.
        assert_eq!(
            b.reflink(&l.join("missing"), &l.join("b"))
                .unwrap_err()
                .code,
            ErrorCode::NOT_FOUND
        );
        std::fs::write(l.join("b"), b"other").unwrap();
        assert_eq!(
            b.reflink(&l.join("a"), &l.join("b")).unwrap_err().code,
            ErrorCode::ALREADY_EXISTS
        );
        let e = b.snapshot_layer("l1", "s1", true).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert!(!b.capabilities().contains(Capabilities::NATIVE_SNAPSHOTS));
        assert_eq!(
            b.volume_snapshots().unwrap_err().code,
            ErrorCode::UNSUPPORTED
        );
        assert_eq!(b.status().unwrap().fs_type.as_str(), b.fs_kind().name());
    }

    #[test]
    fn default_root_is_used_without_root_or_ramdisk() {
        let t = tempfile::tempdir().unwrap();
        let def = t.path().join("deep/default");
        let b = ApfsBackstore::from_options(&ApfsOptions::default(), &def).unwrap();
        assert_eq!(b.root(), def);
        assert!(def.join("layers").is_dir() && def.join("meta").is_dir());
        assert!(b.ramdisk().is_none());
    }

    /// The whole RAM disk life cycle through the backstore, with fake tools
    /// whose "mounted volume" is a directory here.
    #[test]
    fn ramdisk_backstore_cleans_leftovers_provisions_and_detaches_on_drop() {
        let fake = FakeTools::new();
        let mnt = fake.dir().join("Volumes/AgentFS");
        std::fs::create_dir_all(&mnt).unwrap();
        let files = [
            fake.fixture("attach", include_str!("../fixtures/hdiutil-attach-ram.txt")),
            fake.fixture("info", "framework : 1\nimages : 0\n"),
            fake.fixture(
                "cc",
                include_str!("../fixtures/diskutil-apfs-createContainer.txt"),
            ),
            fake.fixture(
                "av",
                include_str!("../fixtures/diskutil-apfs-addVolume.txt"),
            ),
        ];
        fake.script(
            Tool::Hdiutil,
            &format!(
                "case \"$1\" in attach) cat '{}';; info) cat '{}';; esac",
                files[0].display(),
                files[1].display()
            ),
        );
        fake.script(
            Tool::Diskutil,
            &format!(
                "case \"$1 $2\" in 'apfs createContainer') cat '{}';; 'apfs addVolume') cat '{}';; \
                 info\\ *) printf '   Mount Point:   %s\\n' '{}';; esac",
                files[2].display(),
                files[3].display(),
                mnt.display()
            ),
        );
        let d = fake.tools().diskutil.display().to_string();
        let h = fake.tools().hdiutil.display().to_string();
        let opts = ApfsOptions::parse(&format!(
            "ramdisk = {{ size_mb = 512 }}\nvolume_snapshots = true\ndiskutil = {d:?}\nhdiutil = {h:?}"
        ))
        .unwrap();
        let b = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap();
        assert_eq!(b.root(), mnt.join("agentfs"));
        assert!(b.capabilities().contains(Capabilities::RAM_BACKED));
        assert!(!b.capabilities().contains(Capabilities::PERSISTENT));
        assert_eq!(b.volume_snapshots().unwrap().volume(), "disk5s1");
        let l = b.create_layer("x").unwrap();
        assert!(l.starts_with(&mnt));
        let calls_before_drop = fake.calls().len();
        drop(b);
        let calls = fake.calls();
        assert_eq!(calls[0], "hdiutil info", "leftovers are checked first");
        assert_eq!(calls[1], "hdiutil attach -nomount ram://1048576");
        assert_eq!(calls.len(), calls_before_drop + 1);
        assert_eq!(calls.last().unwrap(), "hdiutil detach /dev/disk4");
    }

    #[test]
    fn a_failed_ramdisk_is_one_clear_error() {
        let fake = FakeTools::new();
        fake.fails(
            Tool::Hdiutil,
            include_str!("../fixtures/hdiutil-attach-no-memory.txt"),
            1,
        );
        let mut opts = ApfsOptions::parse("ramdisk = { size_mb = 64 }").unwrap();
        opts.hdiutil = Some(fake.tools().hdiutil);
        opts.diskutil = Some(fake.tools().diskutil);
        let e = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.code, ErrorCode::NO_SPACE);
        assert!(e.message().starts_with("APFS RAM disk: attach: "), "{e}");
    }
}
