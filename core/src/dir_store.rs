//! A layer store of plain directories under one root, with no plugin and
//! no accelerators: the engine copies instead of cloning and commits
//! instead of snapshotting. For embedding the engine without the plugin
//! host (tests, benchmarks, tools); production stores come from backstore
//! plugins.
//!
//! Layout: `<root>/layers/<id>/` for each layer, `<root>/meta/` for the
//! engine's metadata.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::layer_store::{
    LayerCaps, LayerError, LayerErrorKind, LayerResult, LayerStore, LayerStoreStatus,
};

/// Plain directories under a root. Persistent; several processes may open
/// the same root.
#[derive(Debug, Clone)]
pub struct DirLayerStore {
    root: PathBuf,
}

impl DirLayerStore {
    /// A store under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("layers"))?;
        Ok(Self { root })
    }

    fn layer(&self, id: &str) -> LayerResult<PathBuf> {
        let ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && id != "."
            && id != "..";
        if !ok {
            return Err(LayerError::new(
                LayerErrorKind::InvalidArgument,
                format!("layer id {id:?}: use [A-Za-z0-9._-]"),
            ));
        }
        Ok(self.root.join("layers").join(id))
    }
}

fn with_context(context: String) -> impl FnOnce(io::Error) -> LayerError {
    move |e| {
        let mut l = LayerError::from(e);
        l.message = format!("{context}: {}", l.message);
        l
    }
}

impl LayerStore for DirLayerStore {
    fn name(&self) -> &str {
        "dir"
    }

    fn capabilities(&self) -> LayerCaps {
        LayerCaps {
            persistent: true,
            ..LayerCaps::default()
        }
    }

    fn status(&self) -> LayerResult<LayerStoreStatus> {
        Ok(LayerStoreStatus {
            root: self.root.clone(),
            ..LayerStoreStatus::default()
        })
    }

    fn metadata_dir(&self) -> LayerResult<PathBuf> {
        let m = self.root.join("meta");
        fs::create_dir_all(&m).map_err(with_context(format!("create {}", m.display())))?;
        Ok(m)
    }

    fn create_layer(&self, id: &str) -> LayerResult<PathBuf> {
        let p = self.layer(id)?;
        fs::create_dir(&p).map_err(with_context(format!("create layer {id}")))?;
        Ok(p)
    }

    fn delete_layer(&self, id: &str) -> LayerResult<()> {
        let p = self.layer(id)?;
        fs::remove_dir_all(&p).map_err(with_context(format!("delete layer {id}")))
    }

    fn layer_path(&self, id: &str) -> LayerResult<PathBuf> {
        let p = self.layer(id)?;
        if !p.is_dir() {
            return Err(LayerError::new(
                LayerErrorKind::NotFound,
                format!("layer {id}: no such layer"),
            ));
        }
        Ok(p)
    }

    fn list_layers(&self) -> LayerResult<Vec<String>> {
        let dir = self.root.join("layers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(with_context(format!("list {}", dir.display())))? {
            let e = e.map_err(with_context(format!("list {}", dir.display())))?;
            if let Some(name) = e.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    fn reflink(&self, _src: &Path, _dst: &Path) -> LayerResult<()> {
        Err(LayerError::unsupported("plain directories: no reflink"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_directories_and_ids_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let s = DirLayerStore::new(t.path()).unwrap();
        let p = s.create_layer("l1").unwrap();
        assert!(p.is_dir());
        assert_eq!(s.layer_path("l1").unwrap(), p);
        assert_eq!(
            s.create_layer("l1").unwrap_err().kind,
            LayerErrorKind::AlreadyExists
        );
        assert_eq!(s.list_layers().unwrap(), vec!["l1".to_string()]);
        s.delete_layer("l1").unwrap();
        assert_eq!(
            s.layer_path("l1").unwrap_err().kind,
            LayerErrorKind::NotFound
        );
        for bad in ["", "..", "a/b", "x\0"] {
            assert_eq!(
                s.create_layer(bad).unwrap_err().kind,
                LayerErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
