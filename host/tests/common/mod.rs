//! Helpers shared by the core's integration tests: loading the real plugin
//! libraries built in the target directory, building base trees, and
//! snapshotting a directory tree byte for byte.
#![allow(dead_code)]

pub mod daemon;
pub mod hostile;
pub mod programs;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use agentfs_core::{ChangeType, FileKind, LockWait, Store, Tree};
use agentfs_host::{
    config::PluginEntry,
    loader::{library_file_name, load_backstore, LoadedBackstore, SearchPath},
};
use agentfs_plugin_api::PluginKind;

/// `target/<profile>`, with the workspace's plugins built (once, if a
/// clean checkout has not built them yet).
pub fn target_dir() -> PathBuf {
    agentfs_testfs::built(&library_file_name(PluginKind::BACKSTORE, "mock"));
    agentfs_testfs::target_dir()
}

/// The built library of the plugin of `kind` named `name`.
fn built_lib(kind: PluginKind, name: &str) -> PathBuf {
    let p = agentfs_testfs::built(&library_file_name(kind, name));
    assert!(p.is_file(), "{} is missing after building", p.display());
    p
}

/// The built library of backstore plugin `name`.
pub fn plugin_lib(name: &str) -> PathBuf {
    built_lib(PluginKind::BACKSTORE, name)
}

/// The built library of watch-provider plugin `name`.
pub fn watch_lib(name: &str) -> PathBuf {
    built_lib(PluginKind::WATCH_PROVIDER, name)
}

/// Loads the three watch-provider plugins from the target dir.
pub fn watch_providers() -> Vec<agentfs_host::loader::LoadedWatchProvider> {
    ["kqueue", "fsevents", "inotify"]
        .iter()
        .map(|n| {
            let entry = PluginEntry {
                plugin: None,
                path: Some(watch_lib(n)),
                options: toml::Table::new(),
            };
            agentfs_host::loader::load_watch_provider(&entry, &SearchPath::default())
                .expect("watch provider loads")
        })
        .collect()
}

/// Loads backstore plugin `name` from the target dir with TOML `options`.
pub fn load(name: &str, options: &str) -> LoadedBackstore {
    let entry = PluginEntry {
        plugin: None,
        path: Some(plugin_lib(name)),
        options: toml::from_str(options).expect("options are TOML"),
    };
    load_backstore(&entry, &SearchPath::default()).expect("plugin loads")
}

/// A hostfs backstore rooted at `root`.
pub fn hostfs(root: &Path) -> LoadedBackstore {
    load(
        "hostfs",
        &format!("root = {:?}", root.display().to_string()),
    )
}

/// A btrfs-plugin backstore rooted at `root` (native snapshots and reflink
/// when `root` is on btrfs).
pub fn btrfs(root: &Path) -> LoadedBackstore {
    load("btrfs", &format!("root = {:?}", root.display().to_string()))
}

/// A fresh mock (RAM) backstore.
pub fn mock() -> LoadedBackstore {
    load("mock", "")
}

/// A fresh mock backstore without reflink (exercises the copy fallback).
pub fn mock_copying() -> LoadedBackstore {
    load("mock", "reflink = false")
}

/// Initialises a store over `b` with default base `base`.
pub fn store(b: LoadedBackstore, base: Option<&Path>) -> Store {
    Store::init(
        b,
        agentfs_core::InitOptions {
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
            } else if md.is_file() {
                out.insert(r, ('-', mode, fs::read(&p).unwrap()));
            } else {
                // A fifo, device or socket: its kind and device number
                // (reading a fifo would block).
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let ft = md.file_type();
                let kind = if ft.is_fifo() {
                    'p'
                } else if ft.is_char_device() {
                    'c'
                } else if ft.is_block_device() {
                    'b'
                } else {
                    's'
                };
                out.insert(r, (kind, mode, md.rdev().to_le_bytes().to_vec()));
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
pub fn drain(sub: &agentfs_core::Subscription) -> Vec<String> {
    sub.events.try_iter().map(|e| e.summary()).collect()
}

/// `diff` as (path, change) pairs.
pub fn diff_of(s: &Store, branch: &str, from: Option<&str>) -> Vec<(String, ChangeType)> {
    s.diff(branch, from)
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string(), e.change))
        .collect()
}

/// The names of the store's branches.
pub fn branch_names(s: &Store) -> Vec<String> {
    s.list_branches()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect()
}

/// Asserts that the backstore holds exactly the layers the graph names.
pub fn assert_no_orphan_layers(s: &Store) {
    let mut present = s.layer_store().list_layers().unwrap();
    present.sort();
    assert_eq!(
        present,
        s.layers_in_use().unwrap(),
        "orphan or missing layers"
    );
}

/// A temporary directory with the sample base and a config file pointing
/// hostfs at `<dir>/store`, for running the `agentfs` binary.
pub struct CliEnv {
    _t: tempfile::TempDir,
    /// The directory (the processes' working directory).
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl CliEnv {
    /// A fresh environment.
    pub fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let config = dir.join("agentfs.toml");
        fs::write(
            &config,
            format!(
                "[backstore]\nplugin = \"hostfs\"\noptions = {{ root = {:?} }}\n",
                dir.join("store").display().to_string()
            ),
        )
        .unwrap();
        make_base(&dir.join("base"));
        Self { _t: t, dir, config }
    }

    /// An `agentfs` command in this environment.
    pub fn cmd(&self) -> std::process::Command {
        target_dir();
        self.cmd_of(Path::new(env!("CARGO_BIN_EXE_agentfs")))
    }

    /// The same with the `agentfs` executable at `exe` (a copy).
    pub fn cmd_of(&self, exe: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(exe);
        c.env("AGENTFS_CONFIG", &self.config)
            // Never a daemon the developer may be running: the store directly.
            .env("AGENTFS_SOCKET", self.dir.join("no-daemon.sock"))
            .env_remove("AGENTFS_BACKSTORE")
            .env_remove("AGENTFS_BACKSTORE_OPTIONS")
            .env_remove("AGENTFS_FAULT")
            .env_remove("AGENTFS_LOG")
            .current_dir(&self.dir);
        c
    }

    /// Runs `agentfs args`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "agentfs {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "agentfs {args:?} should have failed");
        String::from_utf8(o.stderr).unwrap()
    }

    /// The base directory.
    pub fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// The hostfs root.
    pub fn store_root(&self) -> PathBuf {
        self.dir.join("store")
    }
}
