//! Crash safety: a real `agentfs` process is stopped at an injected fault
//! point (`AGENTFS_FAULT`), killed with SIGKILL there, and the store is
//! reopened and checked: it opens, every branch and snapshot reads, no
//! half-made entry is visible, orphan layers are gone, and the operation
//! can be done again.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use agentfs_host::core::{LockWait, Store, GRAPH_FILE, WORK_DIR};
use common::*;

struct Env {
    _t: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let config = dir.join("agentfs.toml");
        std::fs::write(
            &config,
            format!(
                "[backstore]\nplugin = \"hostfs\"\noptions = {{ root = {:?} }}\n",
                dir.join("store").display().to_string()
            ),
        )
        .unwrap();
        make_base(&dir.join("base"));
        std::fs::write(dir.join("base/big.bin"), vec![7u8; 1 << 20]).unwrap();
        let e = Self { _t: t, dir, config };
        e.agentfs(&["init", "--base", "base"]);
        e.agentfs(&["branch", "create", "b"]);
        e
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agentfs"));
        c.args(args)
            .env("AGENTFS_CONFIG", &self.config)
            // Never a daemon the developer may be running: the store directly.
            .env("AGENTFS_SOCKET", self.dir.join("no-daemon.sock"))
            .env_remove("AGENTFS_FAULT")
            .current_dir(&self.dir);
        c
    }

    fn agentfs(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().unwrap();
        assert!(
            o.status.success(),
            "agentfs {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs `args` until it reaches fault point `point`, then kills it.
    fn crash_at(&self, point: &str, args: &[&str]) {
        let mut child = self
            .cmd(args)
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

    fn store_root(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Reopens the store and checks it is consistent.
    fn reopen(&self) -> Store {
        let s = Store::open(hostfs(&self.store_root()), LockWait::Block).expect("store reopens");
        let mut present = s.backstore().list_layers().unwrap();
        present.sort();
        assert_eq!(
            present,
            s.layers_in_use().unwrap(),
            "orphan or missing layers"
        );
        for b in s.list_branches().unwrap() {
            image_tree(&s.branch(&b.name));
            let p = s.backstore().layer_path(&b.layer).unwrap();
            assert!(!p.join(WORK_DIR).exists(), "work dir not cleaned");
        }
        for sn in s.list_snapshots().unwrap() {
            image_tree(&s.snapshot(&sn.name));
        }
        let meta = self.store_root().join("meta");
        let stray: Vec<_> = std::fs::read_dir(&meta)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != GRAPH_FILE && n != "lock")
            .collect();
        assert!(stray.is_empty(), "stray metadata files: {stray:?}");
        s
    }
}

fn base_image(dir: &Path) -> TreeImage {
    image_dir(&dir.join("base"))
}

#[test]
fn killed_during_copy_up() {
    let e = Env::new();
    let base = base_image(&e.dir);
    e.agentfs(&["fs", "write", "--branch", "b", "kept.txt", "--data", "k"]);
    let before = image_tree(&e.reopen().branch("b"));
    // chmod copies the file up first: killed with the copy complete under
    // its temporary name, not yet renamed into place.
    e.crash_at(
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
    let s = e.reopen();
    let b = s.branch("b");
    assert_eq!(image_tree(&b), before, "a half copy-up became visible");
    assert_eq!(
        b.stat("big.bin").unwrap().origin,
        agentfs_host::core::Origin::Base
    );
    drop(s);
    e.agentfs(&["fs", "chmod", "--branch", "b", "600", "big.bin"]);
    let s = e.reopen();
    assert_eq!(s.branch("b").stat("big.bin").unwrap().mode, 0o600);
    assert_eq!(
        s.branch("b").read_file("big.bin").unwrap(),
        vec![7u8; 1 << 20]
    );
    assert_eq!(base_image(&e.dir), base);
}

#[test]
fn killed_during_snapshot() {
    let e = Env::new();
    e.agentfs(&["fs", "write", "--branch", "b", "a.txt", "--data", "1"]);
    e.agentfs(&["fs", "rm", "--branch", "b", "README.md"]);
    let before = image_tree(&e.reopen().branch("b"));
    // The new layer exists; the graph does not name it yet.
    e.crash_at(
        "snapshot-after-layer-create",
        &["snapshot", "create", "--branch", "b", "s1"],
    );
    let s = e.reopen();
    assert!(s.list_snapshots().unwrap().is_empty());
    assert_eq!(image_tree(&s.branch("b")), before);
    drop(s);
    // Killed while the new graph is written to its temporary file.
    e.crash_at(
        "graph-after-temp-write",
        &["snapshot", "create", "--branch", "b", "s1"],
    );
    let s = e.reopen();
    assert!(s.list_snapshots().unwrap().is_empty());
    assert_eq!(image_tree(&s.branch("b")), before);
    drop(s);
    e.agentfs(&["snapshot", "create", "--branch", "b", "s1"]);
    e.agentfs(&["fs", "write", "--branch", "b", "a.txt", "--data", "2"]);
    let s = e.reopen();
    assert_eq!(image_tree(&s.snapshot("s1")), before);
    assert_eq!(s.branch("b").read_file("a.txt").unwrap(), b"2");
}

#[test]
fn killed_during_branch_creation() {
    let e = Env::new();
    e.crash_at("graph-after-temp-write", &["branch", "create", "x"]);
    let s = e.reopen();
    let names: Vec<_> = s
        .list_branches()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b"]);
    drop(s);
    e.agentfs(&["branch", "create", "x"]);
    assert_eq!(e.reopen().list_branches().unwrap().len(), 2);
}

#[test]
fn killed_during_rename_of_a_lower_entry() {
    let e = Env::new();
    // Killed after the copy is in place, before the old name is whited
    // out: both names show the same content (never neither).
    e.crash_at(
        "rename-after-place",
        &["fs", "mv", "--branch", "b", "src", "code"],
    );
    let s = e.reopen();
    let b = s.branch("b");
    assert_eq!(b.read_file("code/main.rs").unwrap(), b"fn main() {}\n");
    assert_eq!(b.read_file("src/main.rs").unwrap(), b"fn main() {}\n");
    // Finishing by hand gives the intended result.
    b.remove_all("src").unwrap();
    assert_eq!(b.read_dir("code").unwrap().len(), 3);
}
