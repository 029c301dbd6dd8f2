//! Stores written by the earlier format (the whole graph in one
//! `store.json`) open and are migrated to the graph database once.
//!
//! The fixture `fixtures/store-v1.tar` was written by the previous version
//! of the engine: a base, and a store with branches `main` (a file
//! written, one deleted, snapshot `s1`, then the file changed), `feature`
//! (from `s1`, a file added, snapshot `s2`), `empty`, and a deleted branch
//! `gone`; compaction threshold 3. It was made under
//! `/tmp/AGENTFS_FIXTURE`, which the test rewrites to where it unpacks it.

use std::{fs, path::Path, process::Command};

use agentfs_core::{CoreError, DirLayerStore, LockWait, Store, GRAPH_FILE, LEGACY_GRAPH_FILE};

const FIXTURE_DIR: &str = "/tmp/AGENTFS_FIXTURE";

/// Unpacks the fixture into `dir` with `tar`, pointing it at `dir`.
fn unpack(dir: &Path) {
    let tar = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1.tar");
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = dir.join("store/meta").join(LEGACY_GRAPH_FILE);
    let text = fs::read_to_string(&json).unwrap();
    assert!(text.contains(FIXTURE_DIR));
    fs::write(&json, text.replace(FIXTURE_DIR, dir.to_str().unwrap())).unwrap();
}

fn open(dir: &Path) -> Store {
    Store::open(
        DirLayerStore::new(dir.join("store")).unwrap(),
        LockWait::Block,
    )
    .unwrap()
}

fn names<T>(v: Vec<T>, f: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| f(x).to_string()).collect()
}

#[test]
fn a_store_json_store_opens_migrated_with_everything_in_it() {
    let t = tempfile::tempdir().unwrap();
    unpack(t.path());
    let meta = t.path().join("store/meta");
    let base_before = fs::read_dir(t.path().join("base")).unwrap().count();
    let s = open(t.path());
    // Migrated: the database is there, the old file is gone.
    assert!(meta.join(GRAPH_FILE).exists());
    assert!(!meta.join(LEGACY_GRAPH_FILE).exists());
    assert_eq!(
        names(s.list_branches().unwrap(), |b| &b.name),
        ["empty", "feature", "main"]
    );
    let snaps = s.list_snapshots().unwrap();
    assert_eq!(names(snaps.clone(), |x| &x.name), ["s1", "s2"]);
    assert_eq!(snaps[1].branch, "feature");
    // Every tree reads as the old engine left it.
    let main = s.branch("main");
    assert_eq!(main.read_file("a.txt").unwrap(), b"two\n");
    assert!(matches!(
        main.read_file("README.md"),
        Err(CoreError::NotFound(_))
    ));
    assert_eq!(main.read_file("src/main.rs").unwrap(), b"fn main() {}\n");
    assert_eq!(s.snapshot("s1").read_file("a.txt").unwrap(), b"one\n");
    let feature = s.branch("feature");
    assert_eq!(feature.read_file("f.txt").unwrap(), b"feature\n");
    assert_eq!(feature.read_file("a.txt").unwrap(), b"one\n");
    assert_eq!(
        s.branch("empty").read_file("README.md").unwrap(),
        b"hello\n"
    );
    let info = s.info().unwrap();
    assert_eq!(info.compact_threshold, 3);
    assert_eq!(info.default_base.as_deref(), Some(&*t.path().join("base")));
    // The layers the graph names are exactly those on disk.
    let mut on_disk = s.layer_store().list_layers().unwrap();
    on_disk.sort();
    assert_eq!(s.layers_in_use().unwrap(), on_disk);
    // Dependents are still refused, and layer ids go on where they stopped
    // (l000006 was the deleted branch's).
    let e = s.delete_snapshot("s1").unwrap_err();
    assert!(e.to_string().contains("branch feature"), "{e}");
    let b = s.create_branch("after", Some("s2"), None).unwrap();
    assert_eq!(b.layer, "l000007");
    assert_eq!(s.branch("after").read_file("f.txt").unwrap(), b"feature\n");
    drop(s);
    // A second open finds the database and changes nothing.
    let s = open(t.path());
    assert_eq!(s.list_branches().unwrap().len(), 4);
    assert_eq!(s.branch("main").read_file("a.txt").unwrap(), b"two\n");
    s.delete_branch("after").unwrap();
    assert_eq!(
        fs::read_dir(t.path().join("base")).unwrap().count(),
        base_before
    );
}

#[test]
fn a_corrupt_store_json_is_named_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    unpack(t.path());
    let json = t.path().join("store/meta").join(LEGACY_GRAPH_FILE);
    let mut text = fs::read_to_string(&json).unwrap();
    text.truncate(text.len() / 2);
    fs::write(&json, &text).unwrap();
    let e = Store::open(
        DirLayerStore::new(t.path().join("store")).unwrap(),
        LockWait::Block,
    )
    .unwrap_err();
    assert!(matches!(e, CoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("store.json"), "{e}");
    // Nothing was lost or half made.
    assert_eq!(fs::read_to_string(&json).unwrap(), text);
    assert!(!t.path().join("store/meta").join(GRAPH_FILE).exists());
    let stray: Vec<_> = fs::read_dir(t.path().join("store/meta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
