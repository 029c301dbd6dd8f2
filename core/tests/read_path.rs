//! The lock-free read path sees every committed change at once: changes
//! made through another store instance over the same root (as another
//! process would make them), graph changes, and changes to the base made
//! behind the engine's back.

use std::fs;

use agentfs_core::{CoreError, DirLayerStore, FileKind, InitOptions, LockWait, OpenOptions, Store};

fn two_stores(t: &std::path::Path) -> (Store, Store) {
    let base = t.join("base");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f.txt"), b"base").unwrap();
    let a = Store::init(
        DirLayerStore::new(t.join("store")).unwrap(),
        InitOptions {
            default_base: Some(base),
            ..InitOptions::default()
        },
        LockWait::Block,
    )
    .unwrap();
    let b = Store::open(
        DirLayerStore::new(t.join("store")).unwrap(),
        LockWait::Block,
    )
    .unwrap();
    (a, b)
}

fn read(s: &Store, path: &str) -> Vec<u8> {
    use std::io::Read;
    let (mut f, mut v) = (
        s.branch("b")
            .open(path, &OpenOptions::default())
            .unwrap()
            .file,
        Vec::new(),
    );
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn another_instances_namespace_changes_are_seen_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(t.path());
    b.create_branch("b", None, None).unwrap();
    // `a` resolves (and caches) the base file, twice.
    for _ in 0..2 {
        assert_eq!(a.branch("b").lstat("d/f.txt").unwrap().size, 4);
        assert_eq!(read(&a, "d/f.txt"), b"base");
    }
    // Shadowed by a copy in the active layer: `a` sees the new one.
    b.branch("b").write_file("d/f.txt", b"changed!").unwrap();
    assert_eq!(a.branch("b").lstat("d/f.txt").unwrap().size, 8);
    assert_eq!(read(&a, "d/f.txt"), b"changed!");
    // Removed (a whiteout over the base): gone for `a` too.
    b.branch("b").unlink("d/f.txt").unwrap();
    assert!(matches!(
        a.branch("b").lstat("d/f.txt"),
        Err(CoreError::NotFound(_))
    ));
    assert!(a
        .branch("b")
        .open("d/f.txt", &OpenOptions::default())
        .is_err());
    // Back again.
    b.branch("b").write_file("d/f.txt", b"again").unwrap();
    assert_eq!(read(&a, "d/f.txt"), b"again");
}

#[test]
fn graph_changes_by_another_instance_are_seen_every_time() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = two_stores(t.path());
    b.create_branch("b", None, None).unwrap();
    assert_eq!(a.list_branches().unwrap().len(), 1);
    // Two graph writes in a row: the second may reuse the first's inode on
    // ext4; the counter still moves.
    b.create_branch("c", None, None).unwrap();
    b.create_branch("e", None, None).unwrap();
    let names: Vec<_> = a
        .list_branches()
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["b", "c", "e"]);
    // A snapshot commits the active layer and gives the branch a new one:
    // `a`'s cached view of the branch is replaced.
    a.branch("b").write_file("x", b"1").unwrap();
    assert_eq!(a.branch("b").lstat("x").unwrap().size, 1);
    b.create_snapshot("b", Some("s")).unwrap();
    b.branch("b").write_file("x", b"22").unwrap();
    assert_eq!(a.branch("b").lstat("x").unwrap().size, 2);
    assert_eq!(a.snapshot("s").lstat("x").unwrap().size, 1);
    b.delete_branch("e").unwrap();
    assert!(a.branch("e").lstat("").is_err());
}

#[test]
fn the_base_changed_behind_the_engines_back_is_not_served_stale() {
    let t = tempfile::tempdir().unwrap();
    let (a, _b) = two_stores(t.path());
    a.create_branch("b", None, None).unwrap();
    assert_eq!(a.branch("b").lstat("d/f.txt").unwrap().kind, FileKind::File);
    let base = t.path().join("base");
    fs::remove_file(base.join("d/f.txt")).unwrap();
    assert!(a.branch("b").lstat("d/f.txt").is_err());
    fs::create_dir(base.join("d/f.txt")).unwrap();
    assert_eq!(a.branch("b").lstat("d/f.txt").unwrap().kind, FileKind::Dir);
    fs::remove_dir(base.join("d/f.txt")).unwrap();
    fs::write(base.join("d/f.txt"), b"new base").unwrap();
    assert_eq!(a.branch("b").lstat("d/f.txt").unwrap().size, 8);
    assert_eq!(read(&a, "d/f.txt"), b"new base");
}
