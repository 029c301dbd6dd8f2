//! Values out of range, refused with the right error: mode bits outside
//! 07777, sizes and offsets past what a file can hold (EFBIG), a base that
//! is or holds the store itself. And the error and log lines themselves:
//! an OS error said once, no colour codes when stderr is not a terminal.

mod common;

use std::fs;

use agentfs_core::{LockWait, Store};
use agentfs_host::{daemon::convert::wire_error, handler};
use agentfs_proto::{FsOp, Request, WireError};
use common::hostile::Served;

fn sample(base: &std::path::Path) {
    fs::write(base.join("f"), b"data").unwrap();
    fs::create_dir(base.join("d")).unwrap();
}

fn fs_req(op: FsOp) -> Request {
    Request::Fs {
        branch: Some("b".into()),
        snapshot: None,
        op,
    }
}

/// Requests that must be refused, with the errno and a word of the message.
fn hostile_requests() -> Vec<(FsOp, i32, &'static str)> {
    let mode = |m: u32| FsOp::Chmod {
        path: "f".into(),
        mode: m,
    };
    vec![
        (mode(0xFFFF_FFFF), libc::EINVAL, "invalid mode"),
        (mode(0o10_0644), libc::EINVAL, "invalid mode"),
        (mode(0o1_0000), libc::EINVAL, "invalid mode"),
        (
            FsOp::Create {
                path: "new".into(),
                mode: 0o10_0644,
                exclusive: true,
            },
            libc::EINVAL,
            "invalid mode",
        ),
        (
            FsOp::Mkdir {
                path: "newdir".into(),
                mode: 0o4_0755,
            },
            libc::EINVAL,
            "invalid mode",
        ),
        (
            FsOp::Truncate {
                path: "f".into(),
                size: 1 << 63,
            },
            libc::EFBIG,
            "too large",
        ),
        (
            FsOp::Truncate {
                path: "f".into(),
                size: u64::MAX,
            },
            libc::EFBIG,
            "too large",
        ),
        (
            FsOp::Write {
                path: "f".into(),
                offset: u64::MAX - 1,
                data: b"xyz".to_vec(),
            },
            libc::EFBIG,
            "too large",
        ),
    ]
}

fn check_refusals(mut ask: impl FnMut(Request) -> Result<(), WireError>, via: &str) {
    for (op, errno, word) in hostile_requests() {
        let what = format!("{via}: {op:?}");
        let e = ask(fs_req(op)).expect_err(&what);
        assert_eq!(e.errno, errno, "{what}: {e}");
        assert!(e.message.contains(word), "{what}: {e}");
    }
}

#[test]
fn modes_and_sizes_out_of_range_are_refused_in_both_paths() {
    let s = Served::new(sample);
    {
        let d = s.serve();
        let mut c = d.client("hostile values");
        check_refusals(
            |r| {
                c.request(r)
                    .map(drop)
                    .map_err(|e| e.wire().unwrap().clone())
            },
            "daemon",
        );
    }
    let store = Store::open(common::hostfs(&s.dir.join("store")), LockWait::Block).unwrap();
    check_refusals(
        |r| {
            handler::handle(&store, None, r)
                .map(drop)
                .map_err(|e| wire_error(&e))
        },
        "direct",
    );
    drop(store);
    assert_eq!(s.ok(&["diff", "--branch", "b"]), "", "nothing changed");
    assert_eq!(fs::read(s.base().join("f")).unwrap(), b"data");
}

#[test]
fn an_os_error_is_printed_once() {
    let s = Served::new(sample);
    let err = s.fails(&["--direct", "init", "--base", "/nonexistent/agentfs-base"]);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let err = s.fails(&[
        "--direct",
        "branch",
        "create",
        "x",
        "--base",
        "/nonexistent/x",
    ]);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn a_base_that_is_or_holds_the_store_is_refused() {
    let s = Served::new(sample);
    let store = s.dir.join("store");
    for base in [s.dir.clone(), store.clone(), store.join("meta")] {
        let b = base.to_str().unwrap();
        let err = s.fails(&["--direct", "branch", "create", "x", "--base", b]);
        assert!(err.contains("the store's own directory"), "{b}: {err}");
    }
    // A relative base in a request would resolve against the daemon's own
    // working directory: refused (the CLI sends absolute paths).
    let store_ = Store::open(common::hostfs(&store), LockWait::Block).unwrap();
    let e = handler::handle(
        &store_,
        None,
        Request::BranchCreate {
            name: "rel".into(),
            base: Some("base".into()),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    drop(store_);
    // `init` of a fresh store too.
    let t = tempfile::tempdir().unwrap();
    let config = common::daemon::hostfs_config(t.path(), &t.path().join("s"));
    let o = common::daemon::agentfs_cmd(&config, &t.path().join("no.sock"))
        .args(["--direct", "init", "--base", t.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("the store's own directory"),
        "{err}"
    );
    assert!(s
        .ok(&["branch", "list"])
        .lines()
        .all(|l| !l.starts_with("x ")));
}

#[test]
fn log_lines_carry_no_colour_codes_into_a_pipe() {
    let s = Served::new(sample);
    let o = s
        .cmd(&["--direct", "branch", "list"])
        .env("AGENTFS_LOG", "debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DEBUG"), "debug lines are logged: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in {err:?}");
}
