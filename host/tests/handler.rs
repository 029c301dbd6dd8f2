//! One handler for both paths: every store request, sent through the daemon
//! (`Daemon::handle`) and answered in process the way the CLI's direct mode
//! answers it (`handler::handle`), gets the same response or the same error
//! (code and errno). Two stores over one base take the same sequence of
//! requests; identities that differ by nature (layer ids, inode numbers,
//! times) are blanked before comparing.

mod common;

use std::fs;

use agentfs_host::{
    daemon::{convert::wire_error, state::DaemonInfo, Daemon, Session, WatchService},
    handler,
};
use agentfs_proto::{FsOp, Request, Response, WireError};
use common::*;
use serde_json::Value;

/// Layer ids, inode numbers, devices and times differ between two stores.
const BLANKED: &[&str] = &["created", "layer", "ino", "dev", "mtime_ns", "atime_ns"];

fn blank(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if BLANKED.contains(&k.as_str()) || k == "Committed" {
                    *x = Value::Null;
                } else {
                    blank(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(blank),
        _ => {}
    }
}

/// What a comparison sees of an answer: the response with identities
/// blanked, or the error's code and errno.
fn outcome(r: Result<Response, WireError>) -> Result<Value, (u32, i32)> {
    match r {
        Ok(resp) => {
            let mut v = serde_json::to_value(&resp).unwrap();
            blank(&mut v);
            Ok(v)
        }
        Err(e) => Err((e.code, e.errno)),
    }
}

fn fs(op: FsOp) -> Request {
    Request::Fs {
        branch: Some("b".into()),
        snapshot: None,
        op,
    }
}

fn snap(op: FsOp) -> Request {
    Request::Fs {
        branch: None,
        snapshot: Some("s1".into()),
        op,
    }
}

/// Every store request kind and every file operation, successes and
/// refusals, in an order where each depends on the ones before.
fn script() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::BranchCreate {
            name: p("b"),
            base: None,
        },
        Request::BranchCreate {
            name: p("b"),
            base: None,
        },
        Request::BranchCreate {
            name: p("../bad"),
            base: None,
        },
        Request::BranchList,
        fs(FsOp::Stat {
            path: p("d/f.txt"),
            follow: false,
        }),
        fs(FsOp::Stat {
            path: p("link"),
            follow: true,
        }),
        fs(FsOp::Canonical {
            path: p("link"),
            follow: true,
        }),
        fs(FsOp::ReadDir { path: p("d") }),
        fs(FsOp::Read {
            path: p("d/f.txt"),
            offset: 2,
            len: 4,
        }),
        fs(FsOp::Readlink { path: p("link") }),
        fs(FsOp::Read {
            path: p("missing"),
            offset: 0,
            len: 1,
        }),
        fs(FsOp::Write {
            path: p("d/f.txt"),
            offset: 0,
            data: b"AB".to_vec(),
        }),
        fs(FsOp::Create {
            path: p("new.txt"),
            mode: 0o644,
            exclusive: true,
        }),
        fs(FsOp::Create {
            path: p("new.txt"),
            mode: 0o644,
            exclusive: true,
        }),
        fs(FsOp::WriteFile {
            path: p("new.txt"),
            data: b"hello".to_vec(),
        }),
        fs(FsOp::Truncate {
            path: p("new.txt"),
            size: 2,
        }),
        fs(FsOp::Chmod {
            path: p("new.txt"),
            mode: 0o600,
        }),
        fs(FsOp::SetTimes {
            path: p("new.txt"),
            atime_ns: Some(1_000_000_000),
            mtime_ns: Some(2_000_000_000),
        }),
        fs(FsOp::SetXattr {
            path: p("new.txt"),
            name: p("user.k"),
            value: b"v".to_vec(),
        }),
        fs(FsOp::GetXattr {
            path: p("new.txt"),
            name: p("user.k"),
        }),
        fs(FsOp::ListXattr { path: p("new.txt") }),
        fs(FsOp::RemoveXattr {
            path: p("new.txt"),
            name: p("user.k"),
        }),
        fs(FsOp::Mkdir {
            path: p("m"),
            mode: 0o755,
        }),
        fs(FsOp::MkdirAll { path: p("m/x/y") }),
        fs(FsOp::Rmdir { path: p("m") }),
        fs(FsOp::Symlink {
            target: p("new.txt"),
            path: p("sl"),
        }),
        fs(FsOp::Rename {
            from: p("sl"),
            to: p("m/sl"),
        }),
        fs(FsOp::Unlink { path: p("m/sl") }),
        fs(FsOp::Stat {
            path: p("/"),
            follow: false,
        }),
        Request::SnapshotCreate {
            branch: p("b"),
            name: Some(p("s1")),
        },
        Request::SnapshotList,
        fs(FsOp::RemoveAll { path: p("m") }),
        fs(FsOp::Unlink { path: p("d/f.txt") }),
        snap(FsOp::Read {
            path: p("d/f.txt"),
            offset: 0,
            len: 100,
        }),
        snap(FsOp::ReadDir { path: p("") }),
        // A write to a snapshot: read-only (EROFS) on both paths.
        snap(FsOp::WriteFile {
            path: p("x"),
            data: b"x".to_vec(),
        }),
        Request::Fs {
            branch: Some(p("b")),
            snapshot: Some(p("s1")),
            op: FsOp::Stat {
                path: p(""),
                follow: false,
            },
        },
        Request::BranchFromSnapshot {
            snapshot: p("s1"),
            name: p("b2"),
        },
        Request::SnapshotDelete { name: p("s1") },
        Request::BranchCompact { name: p("b") },
        Request::BranchDelete { name: p("b2") },
        Request::SnapshotDelete { name: p("s1") },
        Request::BranchDelete { name: p("nope") },
        Request::SnapshotList,
        Request::BranchList,
    ]
}

#[test]
fn every_store_request_gets_the_same_answer_through_the_daemon_and_directly() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f.txt"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("d/f.txt", base.join("link")).unwrap();

    let direct = store(mock(), Some(&base));
    let daemon = Daemon::new(
        store(mock(), Some(&base)),
        WatchService::new(vec![]).unwrap(),
        DaemonInfo {
            config: "test".into(),
            socket: "/nonexistent".into(),
        },
    );
    let session = Session {
        conn: daemon.begin_session(),
        pid: 1,
        branch: None,
        version: 1,
    };

    let mut kinds = std::collections::BTreeSet::new();
    let (mut answered, mut refused) = (0, 0);
    for (i, req) in script().into_iter().enumerate() {
        kinds.insert(handler::request_name(&req));
        assert!(handler::is_store_request(&req), "{req:?}");
        let via_daemon = outcome(daemon.handle(&session, req.clone(), None).0);
        let in_process =
            outcome(handler::handle(&direct, None, req.clone()).map_err(|e| wire_error(&e)));
        assert_eq!(via_daemon, in_process, "request {i}: {req:?}");
        if via_daemon.is_ok() {
            answered += 1;
        } else {
            refused += 1;
        }
    }
    // Both successes and refusals were compared (the script is not all errors).
    assert!(
        answered >= 30 && refused >= 8,
        "{answered} answered, {refused} refused"
    );
    // The script covers every store request kind.
    for k in [
        "ping",
        "branch create",
        "branch create --from",
        "branch list",
        "branch delete",
        "branch compact",
        "snapshot create",
        "snapshot list",
        "snapshot delete",
        "fs",
    ] {
        assert!(kinds.contains(k), "{k} not covered");
    }
    // Base untouched by either.
    assert_eq!(fs::read(base.join("d/f.txt")).unwrap(), b"0123456789");
}

#[test]
fn a_write_to_a_snapshot_is_read_only_on_both_paths() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(&base).unwrap();
    let s = store(mock(), Some(&base));
    s.create_branch("b", None, None).unwrap();
    s.create_snapshot("b", Some("s1")).unwrap();
    let e = handler::handle(
        &s,
        None,
        snap(FsOp::WriteFile {
            path: "x".into(),
            data: vec![],
        }),
    )
    .unwrap_err();
    assert_eq!(e.errno(), libc::EROFS, "{e}");
}

#[test]
fn daemon_only_requests_are_refused_in_process_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let s = store(mock(), Some(t.path()));
    let e = handler::handle(&s, None, Request::Unsubscribe { subscription: 1 }).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTSUP);
    assert!(e.to_string().contains("without a daemon"), "{e}");
}

/// A name or a path, as the field wants it.
fn p<T: From<String>>(s: &str) -> T {
    T::from(s.to_string())
}
