//! Crash safety: a real `agentfs` process is stopped at an injected fault
//! point (`AGENTFS_FAULT`), killed with SIGKILL there, and the store is
//! reopened and checked: it opens, every branch and snapshot reads, no
//! half-made entry is visible, orphan layers are gone, and the operation
//! can be done again.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use agentfs_core::{
    LockWait, Store, BRANCH_LOCK_DIR, GENERATION_FILE, GRAPH_FILE, SESSION_DIR, WORK_DIR,
    WRITER_LOCK_DIR,
};
use common::*;

/// The sample base plus a 1 MiB file, an initialised store, branch `b`.
fn env() -> CliEnv {
    let e = CliEnv::new();
    std::fs::write(e.base().join("big.bin"), vec![7u8; 1 << 20]).unwrap();
    e.ok(&["init", "--base", "base"]);
    e.ok(&["branch", "create", "b"]);
    e
}

/// Runs `args` until it reaches fault point `point`, then kills it.
fn crash_at(e: &CliEnv, point: &str, args: &[&str]) {
    let mut child = e
        .cmd()
        .args(args)
        .env("AGENTFS_FAULT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let want = format!("agentfs: fault point {point} reached");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l == want => break,
            Some(Ok(_)) => continue,
            _ => panic!("agentfs {args:?} ended without reaching {point}"),
        }
    }
    child.kill().unwrap(); // SIGKILL, at the fault point
    let status = child.wait().unwrap();
    assert!(!status.success());
}

/// Reopens the store and checks it is consistent.
fn reopen(e: &CliEnv) -> Store {
    let s = Store::open(hostfs(&e.store_root()), LockWait::Block).expect("store reopens");
    assert_no_orphan_layers(&s);
    for b in s.list_branches().unwrap() {
        image_tree(&s.branch(&b.name));
        let p = s.layer_store().layer_path(&b.layer).unwrap();
        // An empty work directory is no debris (every copy-up leaves one).
        let debris = std::fs::read_dir(p.join(WORK_DIR)).map_or(0, |d| d.count());
        assert_eq!(debris, 0, "work dir not cleaned");
    }
    for sn in s.list_snapshots().unwrap() {
        image_tree(&s.snapshot(&sn.name));
    }
    let meta = e.store_root().join("meta");
    let stray: Vec<_> = std::fs::read_dir(&meta)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            ![
                GRAPH_FILE,
                &format!("{GRAPH_FILE}-wal"),
                &format!("{GRAPH_FILE}-shm"),
                SESSION_DIR,
                "lock",
                GENERATION_FILE,
                BRANCH_LOCK_DIR,
                WRITER_LOCK_DIR,
            ]
            .contains(&n.as_str())
        })
        .collect();
    assert!(stray.is_empty(), "stray metadata files: {stray:?}");
    s
}

#[test]
fn killed_during_copy_up() {
    let e = env();
    let base = image_dir(&e.base());
    e.ok(&["fs", "write", "--branch", "b", "kept.txt", "--data", "k"]);
    let before = image_tree(&reopen(&e).branch("b"));
    // chmod copies the file up first: killed with the copy complete under
    // its temporary name, not yet renamed into place.
    crash_at(
        &e,
        "copyup-after-temp-write",
        &["fs", "chmod", "--branch", "b", "600", "big.bin"],
    );
    // The kill left the complete temporary copy behind...
    let temps: Vec<_> = std::fs::read_dir(e.store_root().join("layers"))
        .unwrap()
        .flat_map(|l| {
            std::fs::read_dir(l.unwrap().path().join(WORK_DIR))
                .into_iter()
                .flatten()
        })
        .map(|t| std::fs::metadata(t.unwrap().path()).unwrap().len())
        .collect();
    assert_eq!(temps, [1 << 20], "expected one complete temporary copy");
    // ...which the next open removes, the branch never having shown it.
    let s = reopen(&e);
    let b = s.branch("b");
    assert_eq!(image_tree(&b), before, "a half copy-up became visible");
    assert_eq!(
        b.stat("big.bin").unwrap().origin,
        agentfs_core::Origin::Base
    );
    drop(s);
    e.ok(&["fs", "chmod", "--branch", "b", "600", "big.bin"]);
    let s = reopen(&e);
    assert_eq!(s.branch("b").stat("big.bin").unwrap().mode, 0o600);
    assert_eq!(
        s.branch("b").read_file("big.bin").unwrap(),
        vec![7u8; 1 << 20]
    );
    assert_eq!(image_dir(&e.base()), base);
}

#[test]
fn killed_during_snapshot() {
    let e = env();
    e.ok(&["fs", "write", "--branch", "b", "a.txt", "--data", "1"]);
    e.ok(&["fs", "rm", "--branch", "b", "README.md"]);
    let before = image_tree(&reopen(&e).branch("b"));
    // The new layer exists; the graph does not name it yet.
    crash_at(
        &e,
        "snapshot-after-layer-create",
        &["snapshot", "create", "--branch", "b", "s1"],
    );
    let s = reopen(&e);
    assert!(s.list_snapshots().unwrap().is_empty());
    assert_eq!(image_tree(&s.branch("b")), before);
    drop(s);
    // Killed with the change written to the graph, not yet committed.
    crash_at(
        &e,
        "graph-before-commit",
        &["snapshot", "create", "--branch", "b", "s1"],
    );
    let s = reopen(&e);
    assert!(s.list_snapshots().unwrap().is_empty());
    assert_eq!(image_tree(&s.branch("b")), before);
    drop(s);
    e.ok(&["snapshot", "create", "--branch", "b", "s1"]);
    e.ok(&["fs", "write", "--branch", "b", "a.txt", "--data", "2"]);
    let s = reopen(&e);
    assert_eq!(image_tree(&s.snapshot("s1")), before);
    assert_eq!(s.branch("b").read_file("a.txt").unwrap(), b"2");
}

#[test]
fn killed_during_branch_creation() {
    let e = env();
    crash_at(&e, "graph-before-commit", &["branch", "create", "x"]);
    let s = reopen(&e);
    assert_eq!(branch_names(&s), ["b"]);
    drop(s);
    e.ok(&["branch", "create", "x"]);
    assert_eq!(reopen(&e).list_branches().unwrap().len(), 2);
}

#[test]
fn killed_during_rename_of_a_lower_entry() {
    let e = env();
    // Killed after the copy is in place, before the old name is whited
    // out: both names show the same content (never neither).
    crash_at(
        &e,
        "rename-after-place",
        &["fs", "mv", "--branch", "b", "src", "code"],
    );
    let s = reopen(&e);
    let b = s.branch("b");
    assert_eq!(b.read_file("code/main.rs").unwrap(), b"fn main() {}\n");
    assert_eq!(b.read_file("src/main.rs").unwrap(), b"fn main() {}\n");
    // Finishing by hand gives the intended result.
    b.remove_all("src").unwrap();
    assert_eq!(b.read_dir("code").unwrap().len(), 3);
}

/// A store of the earlier format (`store.json`, written by the previous
/// engine: see `core/tests/migration.rs`) unpacked into `e`, replacing the
/// sample base and store.
fn unpack_v1_store(e: &CliEnv) {
    std::fs::remove_dir_all(e.base()).unwrap();
    let tar = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/store-v1.tar");
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&e.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = e.store_root().join("meta/store.json");
    let text = std::fs::read_to_string(&json).unwrap();
    std::fs::write(
        &json,
        text.replace("/tmp/AGENTFS_FIXTURE", e.dir.to_str().unwrap()),
    )
    .unwrap();
}

#[test]
fn killed_during_migration() {
    for point in ["graph-db-before-rename", "migrate-before-legacy-removal"] {
        let e = CliEnv::new();
        unpack_v1_store(&e);
        let base = image_dir(&e.base());
        crash_at(&e, point, &["branch", "list"]);
        // The next agentfs finds the store whole, in the new format.
        let listed = e.ok(&["branch", "list"]);
        for b in ["empty", "feature", "main"] {
            assert!(listed.contains(b), "{point}: {listed}");
        }
        assert_eq!(
            e.ok(&["fs", "cat", "--branch", "main", "a.txt"]),
            "two\n",
            "{point}"
        );
        let s = reopen(&e);
        assert_eq!(s.snapshot("s1").read_file("a.txt").unwrap(), b"one\n");
        assert!(!e.store_root().join("meta/store.json").exists(), "{point}");
        drop(s);
        e.ok(&["branch", "create", "--from", "s2", "after"]);
        assert_eq!(
            e.ok(&["fs", "cat", "--branch", "after", "f.txt"]),
            "feature\n"
        );
        assert_eq!(image_dir(&e.base()), base, "{point}: the base changed");
    }
}
