//! The branch root: `rm -r` of it (`""`, `"."`, `"/"`, or a daemon
//! `RemoveAll` of `""`) is refused before anything is removed, and `/`
//! names the root wherever a path is taken (`fs ls /`).

mod common;

use std::fs;

use agentfs_proto::{FsOp, Request};
use common::hostile::Served;

fn sample(base: &std::path::Path) {
    fs::create_dir(base.join("d")).unwrap();
    fs::write(base.join("d/f"), b"f").unwrap();
    fs::write(base.join("top"), b"t").unwrap();
}

fn root_removal_is_refused_and_changes_nothing(s: &Served) {
    for root in ["", ".", "/", "./", "//"] {
        let err = s.fails(&["fs", "rm", "-r", "--branch", "b", root]);
        assert!(
            err.contains("cannot remove the branch root"),
            "{root:?}: {err}"
        );
        assert_eq!(
            s.ok(&["diff", "--branch", "b"]),
            "",
            "rm -r {root:?} removed something"
        );
    }
}

#[test]
fn rm_r_of_the_root_is_refused_before_anything_goes() {
    let s = Served::new(sample);
    root_removal_is_refused_and_changes_nothing(&s);
    // A non-recursive rm of the root is refused the same way.
    assert!(s
        .fails(&["fs", "rm", "--branch", "b", ""])
        .contains("branch root"));
}

#[test]
fn a_daemon_remove_all_of_the_root_is_refused_before_anything_goes() {
    let s = Served::new(sample);
    let d = s.serve();
    root_removal_is_refused_and_changes_nothing(&s);
    let mut c = d.client("branch root");
    for path in ["", ".", "/"] {
        let e = c
            .request(Request::Fs {
                branch: Some("b".into()),
                snapshot: None,
                op: FsOp::RemoveAll { path: path.into() },
            })
            .unwrap_err();
        assert_eq!(e.wire().map(|w| w.errno()), Some(libc::EINVAL), "{e}");
    }
    assert_eq!(s.ok(&["diff", "--branch", "b"]), "");
}

#[test]
fn slash_is_the_branch_root_for_ls() {
    let s = Served::new(sample);
    let root = s.ok(&["fs", "ls", "--branch", "b", ""]);
    assert_eq!(root, "d/\ntop\n");
    assert_eq!(s.ok(&["fs", "ls", "--branch", "b", "/"]), root);
    assert_eq!(
        s.ok(&["fs", "ls", "-l", "--branch", "b", "/"])
            .lines()
            .count(),
        2
    );
    // Only the root: any other absolute path is still refused.
    assert!(s
        .fails(&["fs", "ls", "--branch", "b", "/d"])
        .contains("absolute"));
}
