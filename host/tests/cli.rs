//! The `agentfs` binary over a hostfs store in a temporary directory: a
//! whole session, JSON output, errors, the store lock between processes,
//! and the demo.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::Stdio,
};

use common::*;

type Env = CliEnv;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn a_whole_session() {
    let e = Env::new();
    let before = image_dir(&e.base());
    assert!(e.fails(&["branch", "list"]).contains("agentfs init"));
    let info = json(&e.ok(&["init", "--base", "base", "--json"]));
    assert_eq!(
        info["default_base"].as_str().unwrap(),
        e.base().canonicalize().unwrap().to_str().unwrap()
    );
    e.ok(&["branch", "create", "main"]);
    let ls = e.ok(&["fs", "ls", "--branch", "main"]);
    assert!(
        ls.lines().any(|l| l == "src/") && ls.lines().any(|l| l == "README.md"),
        "{ls}"
    );
    e.ok(&[
        "fs",
        "write",
        "--branch",
        "main",
        "README.md",
        "--data",
        "new readme",
    ]);
    let mut child = e
        .cmd()
        .args(["fs", "write", "--branch", "main", "docs/stdin.txt"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        e.ok(&["fs", "cat", "--branch", "main", "README.md"]),
        "new readme"
    );
    assert_eq!(
        e.ok(&["fs", "cat", "--branch", "main", "docs/stdin.txt"]),
        "from stdin"
    );
    e.ok(&["fs", "mkdir", "--branch", "main", "-p", "a/b/c"]);
    e.ok(&["fs", "mv", "--branch", "main", "src", "a/b/c/src"]);
    e.ok(&["fs", "rm", "--branch", "main", "run.sh"]);
    e.ok(&["fs", "rm", "--branch", "main", "-r", "docs"]);
    e.ok(&[
        "fs",
        "symlink",
        "--branch",
        "main",
        "a/b/c/src/main.rs",
        "m",
    ]);
    assert_eq!(
        e.ok(&["fs", "readlink", "--branch", "main", "m"]).trim(),
        "a/b/c/src/main.rs"
    );
    e.ok(&["fs", "chmod", "--branch", "main", "600", "README.md"]);
    let st = json(&e.ok(&["fs", "stat", "--branch", "main", "README.md", "--json"]));
    assert_eq!(st["mode"], 0o600);
    assert_eq!(st["origin"]["kind"], "active");
    let long = e.ok(&["fs", "ls", "--branch", "main", "-l", "a/b/c/src"]);
    assert!(
        long.contains("-rw-r--r--") && long.contains("main.rs"),
        "{long}"
    );
    let entries = json(&e.ok(&["fs", "ls", "--branch", "main", "--json"]));
    let names: Vec<&str> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [".agentfs~wh.README.md", "README.md", "a", "m", "main-link"]
    );

    let diff = e.ok(&["diff", "--branch", "main"]);
    for line in [
        "M README.md",
        "D run.sh",
        "D docs/",
        "D docs/guide.md",
        "A a/",
        "A m",
        "D src/",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "missing {line:?} in:\n{diff}"
        );
    }
    let snap = json(&e.ok(&["snapshot", "create", "--branch", "main", "s1", "--json"]));
    assert_eq!(snap["name"], "s1");
    e.ok(&[
        "fs",
        "write",
        "--branch",
        "main",
        "after.txt",
        "--data",
        "x",
    ]);
    let d = json(&e.ok(&["diff", "--branch", "main", "--from", "s1", "--json"]));
    assert_eq!(
        d["changes"],
        serde_json::json!([{"path": "after.txt", "change": "added", "kind": "file"}])
    );
    assert!(e
        .fails(&["fs", "cat", "--snapshot", "s1", "after.txt"])
        .contains("not found"));
    assert_eq!(
        e.ok(&["fs", "cat", "--snapshot", "s1", "README.md"]),
        "new readme"
    );

    e.ok(&["branch", "create", "fork", "--from", "s1"]);
    let branches = json(&e.ok(&["branch", "list", "--json"]));
    assert_eq!(branches["branches"].as_array().unwrap().len(), 2);
    assert_eq!(branches["branches"][0]["from_snapshot"], "s1");
    let snaps = e.ok(&["snapshot", "list"]);
    assert!(snaps.contains("s1") && snaps.contains("main"), "{snaps}");
    let busy = e.fails(&["snapshot", "delete", "s1"]);
    assert!(busy.contains("busy") && busy.contains("fork"), "{busy}");
    e.ok(&["branch", "delete", "fork"]);
    e.ok(&["branch", "delete", "main"]);
    e.ok(&["snapshot", "delete", "s1"]);
    assert_eq!(e.ok(&["branch", "list"]).trim(), "no branches");
    assert_eq!(image_dir(&e.base()), before, "the base changed");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let e = Env::new();
    e.ok(&["init", "--base", "base"]);
    e.ok(&["branch", "create", "b"]);
    let err = e.fails(&["fs", "cat", "--branch", "b", "/etc/passwd"]);
    assert!(err.contains("absolute paths are not allowed"), "{err}");
    let err = e.fails(&["fs", "write", "--branch", "b", "../escape", "--data", "x"]);
    assert!(err.contains("'..' is not allowed"), "{err}");
    assert!(!e.dir.join("escape").exists());
    let err = e.fails(&["branch", "create", "bad/name"]);
    assert!(err.contains("invalid name"), "{err}");
    let err = e.fails(&["fs", "chmod", "--branch", "b", "9x", "README.md"]);
    assert!(err.contains("octal"), "{err}");
    let err = e.fails(&["fs", "ls", "--branch", "nope"]);
    assert!(err.contains("branch nope: not found"), "{err}");
    let err = e.fails(&["fs", "write", "--snapshot", "x", "f", "--data", "d"]);
    assert!(
        err.contains("--snapshot") || err.contains("unexpected"),
        "{err}"
    );
    let err = e.fails(&["init", "--base", "base/src"]);
    assert!(err.contains("already exists"), "{err}");
    let out = e.ok(&["diff", "--branch", "b"]);
    assert!(out.is_empty(), "{out}");
}

/// Holds the store's lock from the test process.
fn hold_lock(store_root: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(store_root.join("meta").join("lock"))
        .unwrap();
    // SAFETY: flock on a valid open fd.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    f
}

#[test]
fn a_held_store_is_busy_or_waited_for() {
    let e = Env::new();
    e.ok(&["init", "--base", "base"]);
    e.ok(&["branch", "create", "b"]);
    let lock = hold_lock(&e.store_root());
    let o = e.run(&["--no-wait", "branch", "list"]);
    assert_eq!(o.status.code(), Some(75));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("store busy"), "{err}");
    // Without --no-wait the process waits: it says so, then finishes once
    // the lock is released.
    let mut child = e
        .cmd()
        .env("AGENTFS_LOG", "info")
        .args(["fs", "write", "--branch", "b", "waited.txt", "--data", "w"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let l = lines.next().expect("child ended before waiting").unwrap();
        if l.contains("waiting for another agentfs process") {
            break;
        }
    }
    drop(lock);
    assert!(child.wait().unwrap().success());
    assert_eq!(e.ok(&["fs", "cat", "--branch", "b", "waited.txt"]), "w");
}

#[test]
fn concurrent_processes_are_serialised() {
    let e = Env::new();
    e.ok(&["init", "--base", "base"]);
    e.ok(&["branch", "create", "b"]);
    let children: Vec<_> = (0..8)
        .map(|i| {
            let args: Vec<String> = if i % 4 == 3 {
                vec![
                    "snapshot".into(),
                    "create".into(),
                    "--branch".into(),
                    "b".into(),
                    format!("s{i}"),
                ]
            } else {
                vec![
                    "fs".into(),
                    "write".into(),
                    "--branch".into(),
                    "b".into(),
                    format!("f{i}"),
                    "--data".into(),
                    format!("{i}"),
                ]
            };
            e.cmd()
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for i in [0, 1, 2, 4, 5, 6] {
        assert_eq!(
            e.ok(&["fs", "cat", "--branch", "b", &format!("f{i}")]),
            format!("{i}")
        );
    }
    let snaps = json(&e.ok(&["snapshot", "list", "--json"]));
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 2);
    // The store is consistent: it opens and holds exactly its layers.
    let s =
        agentfs_core::Store::open(hostfs(&e.store_root()), agentfs_core::LockWait::Block).unwrap();
    assert_no_orphan_layers(&s);
}

#[test]
fn the_demo_runs_and_cleans_up() {
    let e = Env::new();
    let out = e.ok(&["demo"]);
    for want in [
        "[2] branch: created",
        "[4] snapshot:",
        "M Cargo.toml",
        "byte-for-byte untouched",
        "[8] cleanup",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // It created the store for itself, and removed it.
    assert!(e.fails(&["branch", "list"]).contains("agentfs init"));
    // On a given directory, with an existing store that has other branches.
    e.ok(&["init"]);
    e.ok(&["branch", "create", "keep", "--base", "base"]);
    let before = image_dir(&e.base());
    let out = e.ok(&["demo", "--base", "base"]);
    assert!(out.contains("byte-for-byte untouched"), "{out}");
    assert!(out.contains("appended a line to"), "{out}");
    assert_eq!(image_dir(&e.base()), before);
    let branches = e.ok(&["branch", "list"]);
    assert!(
        branches.contains("keep") && !branches.contains("demo-"),
        "{branches}"
    );
    assert!(e.ok(&["snapshot", "list"]).contains("no snapshots"));
}
