//! Restarts keep every branch, snapshot and deletion; two store instances
//! on one backstore see each other's changes; leftovers of interrupted
//! operations are cleaned at open.

mod common;

use agentfs_core::{CoreError, InitOptions, LockWait, Store, WORK_DIR};
use common::*;

#[test]
fn a_restart_keeps_branches_snapshots_and_deletions() {
    let t = tempfile::tempdir().unwrap();
    let (base, root) = (t.path().join("base"), t.path().join("store"));
    make_base(&base);
    let (img_main, img_snap, img_fork) = {
        let s = store(hostfs(&root), Some(&base));
        s.create_branch("main", None, None).unwrap();
        let m = s.branch("main");
        m.unlink("README.md").unwrap();
        m.remove_all("src").unwrap();
        m.mkdir("src", 0o755).unwrap();
        m.write_file("src/new.rs", b"new").unwrap();
        m.rename("docs", "manual").unwrap();
        s.create_snapshot("main", Some("s1")).unwrap();
        m.write_file("after.txt", b"after").unwrap();
        s.create_branch("fork", Some("s1"), None).unwrap();
        s.branch("fork").unlink("run.sh").unwrap();
        (
            image_tree(&m),
            image_tree(&s.snapshot("s1")),
            image_tree(&s.branch("fork")),
        )
    };
    // Dropping the store dropped the plugin instance: a real restart.
    let s = Store::open(hostfs(&root), LockWait::Block).unwrap();
    assert_eq!(branch_names(&s), ["fork", "main"]);
    assert_eq!(s.list_snapshots().unwrap()[0].name, "s1");
    assert_eq!(image_tree(&s.branch("main")), img_main);
    assert_eq!(image_tree(&s.snapshot("s1")), img_snap);
    assert_eq!(image_tree(&s.branch("fork")), img_fork);
    let m = s.branch("main");
    assert!(!m.exists("README.md").unwrap(), "a deleted file reappeared");
    assert!(
        !m.exists("src/main.rs").unwrap(),
        "an opaque directory leaked"
    );
    assert!(!m.exists("docs").unwrap(), "a renamed directory reappeared");
    assert_eq!(
        s.info().unwrap().default_base.unwrap(),
        base.canonicalize().unwrap()
    );
}

#[test]
fn open_and_init_rules() {
    let t = tempfile::tempdir().unwrap();
    let (base, root) = (t.path().join("base"), t.path().join("store"));
    make_base(&base);
    let e = Store::open(hostfs(&root), LockWait::Block).unwrap_err();
    assert!(matches!(e, CoreError::NotInitialized { .. }), "{e}");
    assert!(e.to_string().contains("agentfs init"), "{e}");
    drop(store(hostfs(&root), Some(&base)));
    // Same settings again: fine. Different base: refused, nothing changed.
    drop(store(hostfs(&root), Some(&base)));
    let e = Store::init(hostfs(&root), InitOptions::default(), LockWait::Block).unwrap_err();
    assert!(matches!(e, CoreError::AlreadyExists(_)), "{e}");
    let s = Store::open(hostfs(&root), LockWait::Block).unwrap();
    assert!(s.info().unwrap().default_base.is_some());
    // A base inside the store is refused.
    let e = s
        .create_branch("x", None, Some(&root.join("layers")))
        .unwrap_err();
    assert!(matches!(e, CoreError::InvalidArgument(_)), "{e}");
    let e = s
        .create_branch("x", None, Some(&t.path().join("missing")))
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

/// Two instances of one hostfs store under `dir` (as two processes would
/// open it) over a sample base, with branch `x` made through the first.
fn two_instances(dir: &std::path::Path) -> (Store, Store) {
    let (base, root) = (dir.join("base"), dir.join("store"));
    make_base(&base);
    let a = store(hostfs(&root), Some(&base));
    let b = Store::open(hostfs(&root), LockWait::Block).unwrap();
    a.create_branch("x", None, None).unwrap();
    (a, b)
}

#[test]
fn two_instances_share_one_store() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(t.path());
    b.branch("x").write_file("from-b", b"b").unwrap();
    assert_eq!(a.branch("x").read_file("from-b").unwrap(), b"b");
    // A snapshot through `a` moves the branch to a new active layer; `b`
    // notices and writes there, so the snapshot stays isolated.
    a.create_snapshot("x", Some("s")).unwrap();
    b.branch("x").write_file("from-b", b"changed").unwrap();
    assert_eq!(a.snapshot("s").read_file("from-b").unwrap(), b"b");
    assert_eq!(a.branch("x").read_file("from-b").unwrap(), b"changed");
    b.delete_branch("x").unwrap();
    assert!(matches!(
        a.branch("x").read_file("from-b"),
        Err(CoreError::NotFound(_))
    ));
}

#[test]
fn leftovers_of_interrupted_operations_are_cleaned_at_open() {
    let t = tempfile::tempdir().unwrap();
    let (base, root) = (t.path().join("base"), t.path().join("store"));
    make_base(&base);
    let active = {
        let s = store(hostfs(&root), Some(&base));
        s.create_branch("b", None, None).unwrap();
        s.branch("b").write_file("kept", b"k").unwrap();
        let bs = s.layer_store();
        // An orphan layer (created, never named in the graph) and a
        // half-written temporary in the work directory.
        bs.create_layer("l999999").unwrap();
        let layer = s.list_branches().unwrap()[0].layer.clone();
        let p = bs.layer_path(&layer).unwrap();
        std::fs::create_dir_all(p.join(WORK_DIR)).unwrap();
        std::fs::write(p.join(WORK_DIR).join("t1-1"), b"half").unwrap();
        layer
    };
    // What a process killed with the store open leaves: its session file,
    // which nobody holds. (Without one the next open trusts the store and
    // does not walk every layer.)
    let sessions = root.join("meta").join(agentfs_core::SESSION_DIR);
    std::fs::write(sessions.join("1-0"), b"").unwrap();
    let s = Store::open(hostfs(&root), LockWait::Block).unwrap();
    assert_no_orphan_layers(&s);
    let layers = s.layer_store().list_layers().unwrap();
    assert!(!layers.contains(&"l999999".to_string()), "{layers:?}");
    assert!(layers.contains(&active));
    let p = s.layer_store().layer_path(&active).unwrap();
    assert!(!p.join(WORK_DIR).exists());
    assert_eq!(s.branch("b").read_file("kept").unwrap(), b"k");
    // Deleting a branch deletes its layers.
    s.delete_branch("b").unwrap();
    assert!(s.layer_store().list_layers().unwrap().is_empty());
}

#[test]
fn repeated_writes_follow_changes_made_by_another_instance() {
    // `write_at` keeps the file it wrote open for the next write of the
    // same path; whatever another instance (another process) does in
    // between must still be seen.
    let t = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(t.path());
    let (ax, bx) = (a.branch("x"), b.branch("x"));
    ax.write_file("f", b"aaaa").unwrap();
    ax.write_at("f", 0, b"1").unwrap();
    ax.write_at("f", 1, b"2").unwrap();
    assert_eq!(bx.read_file("f").unwrap(), b"12aa");

    // Replaced by a rename in the other instance: the write goes to the
    // new file, and the old one (now "old") is untouched.
    bx.rename("f", "old").unwrap();
    bx.write_file("f", b"bbbb").unwrap();
    ax.write_at("f", 2, b"3").unwrap();
    assert_eq!(ax.read_file("f").unwrap(), b"bb3b");
    assert_eq!(ax.read_file("old").unwrap(), b"12aa");

    // Removed by the other instance: the write fails as for any missing
    // file, and creates nothing.
    ax.write_at("f", 0, b"4").unwrap();
    bx.unlink("f").unwrap();
    assert!(matches!(
        ax.write_at("f", 0, b"5"),
        Err(CoreError::NotFound(_))
    ));
    assert!(!bx.exists("f").unwrap());

    // A snapshot in the other instance moves the branch to a new active
    // layer: later writes land there, the snapshot keeps what it saw.
    bx.write_file("g", b"gggg").unwrap();
    ax.write_at("g", 0, b"1").unwrap();
    ax.write_at("g", 1, b"2").unwrap();
    b.create_snapshot("x", Some("s")).unwrap();
    ax.write_at("g", 2, b"3").unwrap();
    assert_eq!(a.snapshot("s").read_file("g").unwrap(), b"12gg");
    assert_eq!(bx.read_file("g").unwrap(), b"123g");

    // A write through a symlink: the event and the data follow the link,
    // also on the repeated write; retargeting the link is seen.
    bx.write_file("h", b"hhhh").unwrap();
    bx.symlink("g", "link").unwrap();
    ax.write_at("link", 3, b"4").unwrap();
    ax.write_at("link", 0, b"0").unwrap();
    assert_eq!(bx.read_file("g").unwrap(), b"0234");
    bx.unlink("link").unwrap();
    bx.symlink("h", "link").unwrap();
    ax.write_at("link", 0, b"9").unwrap();
    assert_eq!(bx.read_file("h").unwrap(), b"9hhh");
    assert_eq!(bx.read_file("g").unwrap(), b"0234");

    // A file removed through the same instance is not held open (its
    // space is freed at once).
    #[cfg(target_os = "linux")]
    {
        let root = t.path().join("store");
        ax.write_file("big", b"big").unwrap();
        ax.write_at("big", 0, b"B").unwrap();
        let held = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
                .filter(|l| l.starts_with(&root) && l.to_string_lossy().contains("big"))
                .count()
        };
        assert_eq!(held(), 1, "the written file is kept open");
        ax.unlink("big").unwrap();
        assert_eq!(held(), 0, "the removed file is let go");
    }

    // Every write, kept handle or not, published its event with the
    // file's sizes.
    let sub = a.subscribe();
    ax.write_at("h", 4, b"56").unwrap();
    ax.write_at("h", 6, b"7").unwrap();
    let got: Vec<_> = sub
        .events
        .try_iter()
        .map(|e| (e.path.to_string(), e.size_before, e.size_after))
        .collect();
    assert_eq!(
        got,
        [
            ("h".to_string(), Some(4), Some(6)),
            ("h".to_string(), Some(6), Some(7))
        ]
    );
}
