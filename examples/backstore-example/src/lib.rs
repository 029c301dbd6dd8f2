//! A minimal AgentFS backstore plugin: layers are directories under a root
//! directory; no reflink, no native snapshots (the host copies and commits
//! instead). It uses only std and the plugin API, as a third party would.

use std::{fs, io, path::PathBuf};

use agentfs_plugin_api::{
    backstore::{BackstoreImpl, BackstorePluginDef, Capabilities, StoreStatus},
    export_backstore, parse_options, ErrorCode, PluginError, PluginMeta, PluginResult,
};

/// Options: `root = "/some/dir"` (required).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    root: PathBuf,
}

/// The plugin instance.
pub struct ExampleBackstore {
    root: PathBuf,
}

impl ExampleBackstore {
    fn layer(&self, id: &str) -> PluginResult<PathBuf> {
        let plain = !id.is_empty()
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain {
            return Err(PluginError::invalid(format!("invalid layer id {id:?}")));
        }
        Ok(self.root.join("layers").join(id))
    }
}

fn not_found(id: &str, e: io::Error) -> PluginError {
    if e.kind() == io::ErrorKind::NotFound {
        PluginError::new(ErrorCode::NOT_FOUND, format!("no layer {id}"))
    } else {
        PluginError::from_io(format!("layer {id}"), &e)
    }
}

impl BackstoreImpl for ExampleBackstore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PERSISTENT
    }

    fn status(&self) -> PluginResult<StoreStatus> {
        // A real plugin reports statvfs figures; the example keeps to std.
        Ok(StoreStatus {
            fs_type: "unknown".into(),
            capacity_bytes: u64::MAX,
            used_bytes: 0,
            root: self.root.clone(),
        })
    }

    fn metadata_dir(&self) -> PluginResult<PathBuf> {
        Ok(self.root.join("meta"))
    }

    fn create_layer(&self, id: &str) -> PluginResult<PathBuf> {
        let p = self.layer(id)?;
        fs::create_dir(&p).map_err(|e| PluginError::from_io(format!("create layer {id}"), &e))?;
        Ok(p)
    }

    fn delete_layer(&self, id: &str) -> PluginResult<()> {
        fs::remove_dir_all(self.layer(id)?).map_err(|e| not_found(id, e))
    }

    fn layer_path(&self, id: &str) -> PluginResult<PathBuf> {
        let p = self.layer(id)?;
        fs::metadata(&p).map_err(|e| not_found(id, e))?;
        Ok(p)
    }

    fn list_layers(&self) -> PluginResult<Vec<String>> {
        let rd = fs::read_dir(self.root.join("layers"))
            .map_err(|e| PluginError::from_io("list layers", &e))?;
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
    // snapshot_layer and reflink keep their defaults: Unsupported.
}

/// The plugin definition: metadata and constructor.
pub struct ExamplePlugin;

impl BackstorePluginDef for ExamplePlugin {
    type Backstore = ExampleBackstore;
    const META: PluginMeta = PluginMeta {
        name: "mystore",
        version: env!("CARGO_PKG_VERSION"),
        description: "minimal example backstore: plain directories, no reflink",
        platforms: "any",
        capabilities: &["persistent"],
    };

    fn create(options: &str) -> PluginResult<ExampleBackstore> {
        let o: Options = parse_options("mystore", options)?;
        for d in [o.root.join("layers"), o.root.join("meta")] {
            fs::create_dir_all(&d).map_err(|e| PluginError::from_io(d.display(), &e))?;
        }
        Ok(ExampleBackstore { root: o.root })
    }
}

export_backstore!(ExamplePlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn root_is_required() {
        let e = ExamplePlugin::create("").err().unwrap();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        assert!(e.message().contains("root"), "{}", e.message());
    }

    #[test]
    fn paths_stay_under_root() {
        let b = ExampleBackstore {
            root: Path::new("/r").to_path_buf(),
        };
        assert!(b.layer("../x").is_err());
        assert_eq!(b.layer("a").unwrap(), Path::new("/r/layers/a"));
    }
}
