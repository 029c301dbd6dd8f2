//! A layer store that keeps each layer as a directory under `<root>/layers`,
//! with `<root>/meta` reserved for the host's metadata and `<root>/trash`
//! holding layers whose deletion is under way.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use agentfs_plugin_api::{ErrorCode, PluginError, PluginResult};

/// Longest accepted layer id, in bytes.
pub const MAX_LAYER_ID: usize = 128;

/// Checks that a layer id is a plain name: `[A-Za-z0-9._-]`, not starting
/// with a dot, at most [`MAX_LAYER_ID`] bytes. Ids never name paths.
pub fn validate_layer_id(id: &str) -> PluginResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_LAYER_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PluginError::invalid(format!(
            "invalid layer id {id:?}: use 1 to {MAX_LAYER_ID} of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

/// The default store root of plugin `name` when none is configured:
/// `$XDG_DATA_HOME/agentfs/<name>`, else `~/.local/share/agentfs/<name>`,
/// else `agentfs/<name>` in the temp directory.
pub fn default_root(name: &str) -> PathBuf {
    default_root_from(
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
        name,
    )
}

/// [`default_root`] with the environment passed in. Per the XDG spec an
/// unset, empty or relative `XDG_DATA_HOME` is ignored (and so is such a HOME).
pub fn default_root_from(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    name: &str,
) -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    xdg_data_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|h| h.join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("agentfs")
        .join(name)
}

/// Directory-per-layer store rooted at one directory.
#[derive(Debug)]
pub struct DirLayerStore {
    root: PathBuf,
    layers: PathBuf,
    meta: PathBuf,
    trash: PathBuf,
    trash_seq: AtomicU64,
}

impl DirLayerStore {
    /// Opens (creating if needed) a store at `root`, and removes leftovers of
    /// deletions a crash interrupted. Costs the same however many layers
    /// exist: only the trash directory is read.
    pub fn open(root: &Path) -> PluginResult<Self> {
        let layers = root.join("layers");
        let meta = root.join("meta");
        let trash = root.join("trash");
        // Earlier versions kept the trash among the layers: a store opened
        // for the first time by this one is searched for it once.
        let legacy_trash = !trash.exists();
        for d in [root, &layers, &meta] {
            fs::create_dir_all(d)
                .map_err(|e| PluginError::from_io(format!("create {}", d.display()), &e))?;
        }
        let store = Self {
            root: root.to_path_buf(),
            layers,
            meta,
            trash,
            trash_seq: AtomicU64::new(0),
        };
        if legacy_trash {
            purge(&store.layers, ".trash-");
        }
        fs::create_dir_all(&store.trash)
            .map_err(|e| PluginError::from_io(format!("create {}", store.trash.display()), &e))?;
        purge(&store.trash, "");
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory reserved for the host's metadata.
    pub fn meta_dir(&self) -> &Path {
        &self.meta
    }

    /// The directory holding the layers.
    pub fn layers_dir(&self) -> &Path {
        &self.layers
    }

    /// Where layer `id` lives (whether or not it exists).
    pub fn path_for(&self, id: &str) -> PluginResult<PathBuf> {
        validate_layer_id(id)?;
        Ok(self.layers.join(id))
    }

    /// Creates layer `id` as an empty directory (mkdir is atomic).
    pub fn create(&self, id: &str) -> PluginResult<PathBuf> {
        self.create_with(id, |p| fs::create_dir(p))
    }

    /// Creates layer `id` with `make`, which must create the directory at
    /// the path it is given atomically and fail with `EEXIST` when it is
    /// taken (a backstore uses it to make layers that are subvolumes or
    /// snapshots rather than plain directories).
    pub fn create_with(
        &self,
        id: &str,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> PluginResult<PathBuf> {
        let p = self.path_for(id)?;
        match make(&p) {
            Ok(()) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PluginError::new(
                ErrorCode::ALREADY_EXISTS,
                format!("layer {id} already exists"),
            )),
            Err(e) => Err(PluginError::from_io(format!("create layer {id}"), &e)),
        }
    }

    /// Path of an existing layer.
    pub fn existing(&self, id: &str) -> PluginResult<PathBuf> {
        let p = self.path_for(id)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(p),
            Ok(_) => Err(PluginError::new(
                ErrorCode::IO,
                format!("layer {id} is not a directory"),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PluginError::new(
                ErrorCode::NOT_FOUND,
                format!("no layer {id}"),
            )),
            Err(e) => Err(PluginError::from_io(format!("stat layer {id}"), &e)),
        }
    }

    /// Deletes layer `id`: first renamed into a trash name (so a crash never
    /// leaves a half-deleted layer under its id), then removed.
    pub fn delete(&self, id: &str) -> PluginResult<()> {
        let trash = self.move_to_trash(id)?;
        remove_tree(&trash).map_err(|e| PluginError::from_io(format!("delete layer {id}"), &e))
    }

    /// Renames layer `id` to a trash name and returns it: from then on the
    /// id is free, and whatever of the trash a crash leaves behind is
    /// removed at the next [`DirLayerStore::open`].
    pub fn move_to_trash(&self, id: &str) -> PluginResult<PathBuf> {
        let p = self.existing(id)?;
        let trash = self.trash.join(format!(
            "{id}-{}-{}",
            std::process::id(),
            self.trash_seq.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&p, &trash)
            .map_err(|e| PluginError::from_io(format!("delete layer {id}"), &e))?;
        Ok(trash)
    }

    /// Ids of every layer present, sorted.
    pub fn list(&self) -> PluginResult<Vec<String>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.layers)
            .map_err(|e| PluginError::from_io(format!("list {}", self.layers.display()), &e))?;
        for ent in rd {
            let ent = ent.map_err(|e| PluginError::from_io("list layers", &e))?;
            if let Some(name) = ent.file_name().to_str() {
                if validate_layer_id(name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Removes every entry of `dir` whose name starts with `prefix`.
fn purge(dir: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        if ent.file_name().to_string_lossy().starts_with(prefix) {
            if let Err(e) = remove_tree(&ent.path()) {
                tracing::warn!(path = %ent.path().display(), error = %e, "could not purge deleted layer");
            }
        }
    }
}

/// Writes the `BackstoreImpl` methods a [`DirLayerStore`] field answers
/// (`status`, `metadata_dir`, `create_layer`, `delete_layer`, `layer_path`,
/// `list_layers`) inside an `impl BackstoreImpl for T` block, for backstores
/// whose layers are plain directories:
/// `agentfs_plugin_support::dir_layer_methods!(store);`
#[macro_export]
macro_rules! dir_layer_methods {
    ($field:ident) => {
        fn status(
            &self,
        ) -> $crate::__plugin_api::PluginResult<$crate::__plugin_api::backstore::StoreStatus> {
            $crate::status_of(self.$field.root())
        }
        fn metadata_dir(&self) -> $crate::__plugin_api::PluginResult<::std::path::PathBuf> {
            Ok(self.$field.meta_dir().to_path_buf())
        }
        fn create_layer(
            &self,
            id: &str,
        ) -> $crate::__plugin_api::PluginResult<::std::path::PathBuf> {
            self.$field.create(id)
        }
        fn delete_layer(&self, id: &str) -> $crate::__plugin_api::PluginResult<()> {
            self.$field.delete(id)
        }
        fn layer_path(&self, id: &str) -> $crate::__plugin_api::PluginResult<::std::path::PathBuf> {
            self.$field.existing(id)
        }
        fn list_layers(&self) -> $crate::__plugin_api::PluginResult<Vec<String>> {
            self.$field.list()
        }
    };
}

/// Removes a tree, making read-only directories writable first if needed.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(p);
            fs::remove_dir_all(p)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = fs::set_permissions(
                p,
                fs::Permissions::from_mode(m.permissions().mode() | 0o700),
            );
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_ignores_empty_or_relative_xdg_data_home() {
        let h = || Some("/home/u".into());
        assert_eq!(
            default_root_from(Some("/x".into()), h(), "hostfs"),
            Path::new("/x/agentfs/hostfs")
        );
        for bad in ["", "rel/dir"] {
            assert_eq!(
                default_root_from(Some(bad.into()), h(), "hostfs"),
                Path::new("/home/u/.local/share/agentfs/hostfs")
            );
        }
        assert!(default_root_from(None, Some("".into()), "m").is_absolute());
    }

    #[test]
    fn hostile_ids_are_rejected() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            ".hidden",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(validate_layer_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["l1", "layer-000017", "snap_2.ro"] {
            validate_layer_id(good).unwrap();
        }
    }

    #[test]
    fn custom_make_hook_and_trash() {
        let t = tempfile::tempdir().unwrap();
        let s = DirLayerStore::open(t.path()).unwrap();
        // `make` decides how the layer is made; EEXIST becomes AlreadyExists.
        let p = s
            .create_with("a", |p| {
                fs::create_dir(p).and_then(|()| fs::write(p.join("seed"), b"1"))
            })
            .unwrap();
        assert!(p.join("seed").is_file());
        let e = s.create_with("a", |p| fs::create_dir(p)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
        let e = s.create_with("../x", |_| unreachable!()).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        // A layer moved to the trash frees its id at once.
        s.create("b").unwrap();
        let trash = s.move_to_trash("b").unwrap();
        assert!(trash.is_dir());
        assert_eq!(s.list().unwrap(), vec!["a"]);
        s.create("b").unwrap();
    }

    #[test]
    fn create_list_delete_and_trash_purge() {
        let t = tempfile::tempdir().unwrap();
        let s = DirLayerStore::open(t.path()).unwrap();
        let p = s.create("a").unwrap();
        fs::write(p.join("f"), b"x").unwrap();
        assert_eq!(s.create("a").unwrap_err().code, ErrorCode::ALREADY_EXISTS);
        s.create("b").unwrap();
        assert_eq!(s.list().unwrap(), vec!["a", "b"]);
        s.delete("a").unwrap();
        assert_eq!(s.list().unwrap(), vec!["b"]);
        assert_eq!(s.delete("a").unwrap_err().code, ErrorCode::NOT_FOUND);
        // A deletion interrupted after its rename is finished at the next open.
        fs::create_dir(t.path().join("trash/x-1-0")).unwrap();
        fs::write(t.path().join("trash/x-1-0/f"), b"x").unwrap();
        drop(s);
        let s = DirLayerStore::open(t.path()).unwrap();
        assert!(!t.path().join("trash/x-1-0").exists());
        assert_eq!(s.list().unwrap(), vec!["b"]);
        // So is one an earlier version left among the layers, at the first
        // open by this version (the one without a trash directory).
        fs::create_dir(s.layers_dir().join(".trash-y-1-0")).unwrap();
        fs::remove_dir(t.path().join("trash")).unwrap();
        drop(s);
        let s = DirLayerStore::open(t.path()).unwrap();
        assert!(!s.layers_dir().join(".trash-y-1-0").exists());
        assert!(t.path().join("trash").is_dir());
        assert_eq!(s.list().unwrap(), vec!["b"]);
    }
}
