//! Helpers shared by the core's integration tests: loading the real plugin
//! libraries built in the target directory, building base trees, and
//! snapshotting a directory tree byte for byte.
#![allow(dead_code)]

pub mod daemon;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use agentfs_host::{
    config::PluginEntry,
    core::{FileKind, LockWait, Store, Tree},
    plugins::{library_file_name, load_backstore, Backstore, SearchPath},
};
use agentfs_plugin_api::PluginKind;

/// `target/debug` (or the profile dir): the test binary lives in its `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// The built library of backstore plugin `name`.
pub fn plugin_lib(name: &str) -> PathBuf {
    let p = target_dir().join(library_file_name(PluginKind::BACKSTORE, name));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// The built library of watch-provider plugin `name`.
pub fn watch_lib(name: &str) -> PathBuf {
    let p = target_dir().join(library_file_name(PluginKind::WATCH_PROVIDER, name));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// Loads the three watch-provider plugins from the target dir.
pub fn watch_providers() -> Vec<agentfs_host::plugins::WatchProvider> {
    ["kqueue", "fsevents", "inotify"]
        .iter()
        .map(|n| {
            let entry = PluginEntry {
                plugin: None,
                path: Some(watch_lib(n)),
                options: toml::Table::new(),
            };
            agentfs_host::plugins::load_watch_provider(&entry, &SearchPath::default())
                .expect("watch provider loads")
        })
        .collect()
}

/// Loads backstore plugin `name` from the target dir with TOML `options`.
pub fn load(name: &str, options: &str) -> Backstore {
    let entry = PluginEntry {
        plugin: None,
        path: Some(plugin_lib(name)),
        options: toml::from_str(options).expect("options are TOML"),
    };
    load_backstore(&entry, &SearchPath::default()).expect("plugin loads")
}

/// A hostfs backstore rooted at `root`.
pub fn hostfs(root: &Path) -> Backstore {
    load(
        "hostfs",
        &format!("root = {:?}", root.display().to_string()),
    )
}

/// A fresh mock (RAM) backstore.
pub fn mock() -> Backstore {
    load("mock", "")
}

/// A fresh mock backstore without reflink (exercises the copy fallback).
pub fn mock_copying() -> Backstore {
    load("mock", "reflink = false")
}

/// Initialises a store over `b` with default base `base`.
pub fn store(b: Backstore, base: Option<&Path>) -> Store {
    Store::init(
        b,
        agentfs_host::core::InitOptions {
            default_base: base.map(Path::to_path_buf),
            compact_threshold: None,
        },
        LockWait::Block,
    )
    .expect("store init")
}

/// Writes a small base tree: files, a nested directory, a symlink, an
/// executable, and a name that looks like an AgentFS marker.
pub fn make_base(dir: &Path) {
    fs::create_dir_all(dir.join("src/nested")).unwrap();
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::write(dir.join("README.md"), b"# project\n").unwrap();
    fs::write(dir.join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(dir.join("src/lib.rs"), b"pub fn f() {}\n").unwrap();
    fs::write(dir.join("src/nested/deep.txt"), b"deep\n").unwrap();
    fs::write(dir.join("docs/guide.md"), b"guide\n").unwrap();
    fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", dir.join("main-link")).unwrap();
    fs::write(dir.join(".agentfs~wh.README.md"), b"not a whiteout\n").unwrap();
}

/// What a tree holds, for byte-for-byte comparison: path -> (kind, mode,
/// content or link target). Directory mtimes are left out (listing does not
/// change them, but they are not content).
pub type TreeImage = BTreeMap<String, (char, u32, Vec<u8>)>;

/// Images a real directory tree.
pub fn image_dir(root: &Path) -> TreeImage {
    fn walk(root: &Path, rel: &str, out: &mut TreeImage) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                out.insert(r.clone(), ('d', mode, vec![]));
                walk(root, &r, out);
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(r, ('l', 0, t.into_os_string().into_encoded_bytes()));
            } else {
                out.insert(r, ('-', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = TreeImage::new();
    walk(root, "", &mut out);
    out
}

/// Images a branch or snapshot through the core.
pub fn image_tree(t: &Tree<'_>) -> TreeImage {
    fn walk(t: &Tree<'_>, rel: &str, out: &mut TreeImage) {
        for e in t.read_dir(rel).unwrap() {
            let n = e.name.into_string().unwrap();
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            let st = t.lstat(r.as_str()).unwrap();
            match st.kind {
                FileKind::Dir => {
                    out.insert(r.clone(), ('d', st.mode, vec![]));
                    walk(t, &r, out);
                }
                FileKind::Symlink => {
                    let l = t.read_link(r.as_str()).unwrap();
                    out.insert(r, ('l', 0, l.into_encoded_bytes()));
                }
                _ => {
                    let data = t.read_file(r.as_str()).unwrap();
                    out.insert(r, ('-', st.mode, data));
                }
            }
        }
    }
    let mut out = TreeImage::new();
    walk(t, "", &mut out);
    out
}

/// Drains a subscription's queued events into their one-line summaries.
pub fn drain(sub: &agentfs_host::core::Subscription) -> Vec<String> {
    sub.events.try_iter().map(|e| e.summary()).collect()
}
