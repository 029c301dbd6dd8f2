//! Finding plugin libraries by name in the search path.

use std::path::{Path, PathBuf};

use agentfs_plugin_api::PluginKind;

use crate::config::Config;

/// The ordered list of directories searched for plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath(pub Vec<PathBuf>);

/// Where plugins live under an installation prefix: `<prefix>/lib/agentfs/plugins`
/// (the binary being `<prefix>/bin/agentfs`).
pub const PREFIX_PLUGIN_DIR: &str = "lib/agentfs/plugins";

/// The directories searched next to executable `exe`: its own directory (a
/// build tree, where cargo puts the plugins beside the binary), then
/// `<exe dir>/../lib/agentfs/plugins` (an installation prefix).
pub fn exe_plugin_dirs(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let mut out = vec![dir.to_path_buf()];
    if let Some(prefix) = dir.parent() {
        out.push(prefix.join(PREFIX_PLUGIN_DIR));
    }
    out
}

impl SearchPath {
    /// The standard order: the `agentfs` executable's directory, then
    /// `<exe dir>/../lib/agentfs/plugins`, then `AGENTFS_PLUGIN_PATH`
    /// (colon-separated), then the config's `plugin_path`. The executable
    /// is the resolved one (`/proc/self/exe`), so a symlink to an installed
    /// `agentfs` finds the plugins of the installation it points into.
    pub fn standard(config: &Config) -> Self {
        let mut dirs = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            dirs.extend(exe_plugin_dirs(&exe));
        }
        if let Some(v) = std::env::var_os("AGENTFS_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
        dirs.extend(config.plugin_path.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Self(dirs)
    }
}

/// The file name plugin `name` of `kind` has: `libagentfs_<kind>_<name>.so`
/// (`.dylib` on macOS); dashes in the name become underscores.
pub fn library_file_name(kind: PluginKind, name: &str) -> String {
    let stem = match kind {
        PluginKind::WATCH_PROVIDER => "watch",
        _ => "backstore",
    };
    format!(
        "{}agentfs_{stem}_{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// Existing files that could be plugin `name` for `kind`, best first: the
/// file for that kind in each directory, then the other kind's (so a plugin
/// configured in the wrong role is found and reported as such).
pub fn candidate_files(search: &SearchPath, kind: PluginKind, name: &str) -> Vec<PathBuf> {
    let other = if kind == PluginKind::BACKSTORE {
        PluginKind::WATCH_PROVIDER
    } else {
        PluginKind::BACKSTORE
    };
    [kind, other]
        .into_iter()
        .flat_map(|k| {
            search
                .0
                .iter()
                .map(move |d| d.join(library_file_name(k, name)))
        })
        .filter(|p| p.is_file())
        .collect()
}

/// Every plugin-looking library in the search path, first occurrence of each
/// file name winning (like `PATH`).
pub fn scan_dirs(search: &SearchPath) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for dir in &search.0 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let pre = std::env::consts::DLL_PREFIX;
                (n.starts_with(&format!("{pre}agentfs_backstore_"))
                    || n.starts_with(&format!("{pre}agentfs_watch_")))
                    && n.ends_with(std::env::consts::DLL_SUFFIX)
            })
            .collect();
        files.sort();
        for f in files {
            if seen.insert(f.file_name().map(|n| n.to_owned())) {
                out.push(f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_convention() {
        let n = library_file_name(PluginKind::BACKSTORE, "host-fs");
        assert!(n.contains("agentfs_backstore_host_fs"), "{n}");
        assert!(library_file_name(PluginKind::WATCH_PROVIDER, "inotify")
            .contains("agentfs_watch_inotify"));
    }

    #[test]
    fn the_install_layout_follows_the_executables_directory() {
        assert_eq!(
            exe_plugin_dirs(Path::new("/opt/agentfs/bin/agentfs")),
            vec![
                PathBuf::from("/opt/agentfs/bin"),
                PathBuf::from("/opt/agentfs/lib/agentfs/plugins")
            ]
        );
        assert_eq!(
            exe_plugin_dirs(Path::new("/agentfs")),
            vec![PathBuf::from("/")]
        );
    }

    #[test]
    fn candidates_prefer_the_kind_then_the_other_kind() {
        let t = tempfile::tempdir().unwrap();
        let sp = SearchPath(vec![t.path().to_path_buf()]);
        let wrong = t.path().join(library_file_name(PluginKind::BACKSTORE, "x"));
        std::fs::write(&wrong, b"").unwrap();
        assert_eq!(
            candidate_files(&sp, PluginKind::WATCH_PROVIDER, "x"),
            vec![wrong.clone()]
        );
        let right = t
            .path()
            .join(library_file_name(PluginKind::WATCH_PROVIDER, "x"));
        std::fs::write(&right, b"").unwrap();
        assert_eq!(
            candidate_files(&sp, PluginKind::WATCH_PROVIDER, "x"),
            vec![right, wrong]
        );
        assert_eq!(scan_dirs(&sp).len(), 2);
    }
}
