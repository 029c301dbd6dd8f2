//! The daemon's file-operation requests in process (what the shim will
//! call for the calls it interposes): stat and lstat, canonical paths,
//! times, extended attributes, reads in pieces, snapshots read-only,
//! errors with their errno.

mod common;

use std::fs;

use agentfs_host::daemon::{state::DaemonInfo, Daemon, Session, WatchService};
use agentfs_proto::{FileKind, FsOp, FsReply, Request, Response, WireError};
use common::*;

fn setup() -> (tempfile::TempDir, Daemon, Session) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f.txt"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("d/f.txt", base.join("link")).unwrap();
    std::os::unix::fs::symlink("d", base.join("dl")).unwrap();
    let s = store(mock(), Some(&base));
    s.create_branch("b", None, None).unwrap();
    let d = Daemon::new(
        s,
        WatchService::new(vec![]).unwrap(),
        DaemonInfo {
            config: "test".into(),
            socket: "/nonexistent".into(),
        },
    );
    let session = Session {
        conn: d.begin_session(),
        pid: 1,
        branch: Some("b".into()),
        version: 1,
    };
    (t, d, session)
}

fn fs_at(d: &Daemon, s: &Session, snapshot: Option<&str>, op: FsOp) -> Result<FsReply, WireError> {
    d.handle(
        s,
        Request::Fs {
            branch: None,
            snapshot: snapshot.map(str::to_string),
            op,
        },
        None,
    )
    .0
    .map(|r| match r {
        Response::Fs(r) => r,
        other => panic!("{other:?}"),
    })
}

fn fs_op(d: &Daemon, s: &Session, op: FsOp) -> FsReply {
    fs_at(d, s, None, op).unwrap()
}

#[test]
fn stat_follows_only_when_asked_and_paths_canonicalise_in_the_branch() {
    let (_t, d, s) = setup();
    let stat = |follow| match fs_op(
        &d,
        &s,
        FsOp::Stat {
            path: "link".into(),
            follow,
        },
    ) {
        FsReply::Stat(st) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!(stat(false).kind, FileKind::Symlink);
    assert_eq!((stat(true).kind, stat(true).size), (FileKind::File, 10));
    for (path, follow, want) in [
        ("link", false, "link"),
        ("link", true, "d/f.txt"),
        ("dl/f.txt", false, "d/f.txt"),
        ("dl//f.txt", false, "d/f.txt"),
    ] {
        assert_eq!(
            fs_op(
                &d,
                &s,
                FsOp::Canonical {
                    path: path.into(),
                    follow
                }
            ),
            FsReply::Target(want.into()),
            "{path}"
        );
    }
}

#[test]
fn reads_come_in_pieces_and_writes_land_in_the_branch() {
    let (t, d, s) = setup();
    let read = |offset, len| {
        fs_op(
            &d,
            &s,
            FsOp::Read {
                path: "d/f.txt".into(),
                offset,
                len,
            },
        )
    };
    assert_eq!(read(3, 4), FsReply::Data(b"3456".to_vec()));
    assert_eq!(read(8, 100), FsReply::Data(b"89".to_vec()));
    assert_eq!(read(10, 100), FsReply::Data(vec![]));
    fs_op(
        &d,
        &s,
        FsOp::Write {
            path: "d/f.txt".into(),
            offset: 10,
            data: b"ab".to_vec(),
        },
    );
    assert_eq!(read(0, 100), FsReply::Data(b"0123456789ab".to_vec()));
    assert_eq!(
        fs::read(t.path().join("base/d/f.txt")).unwrap(),
        b"0123456789"
    );
}

#[test]
fn times_and_extended_attributes() {
    let (_t, d, s) = setup();
    fs_op(
        &d,
        &s,
        FsOp::SetTimes {
            path: "d/f.txt".into(),
            atime_ns: None,
            mtime_ns: Some(1_000_000_123),
        },
    );
    let FsReply::Stat(st) = fs_op(
        &d,
        &s,
        FsOp::Stat {
            path: "d/f.txt".into(),
            follow: false,
        },
    ) else {
        panic!()
    };
    assert_eq!(st.mtime_ns, 1_000_000_123);
    let set = fs_at(
        &d,
        &s,
        None,
        FsOp::SetXattr {
            path: "d/f.txt".into(),
            name: "user.agentfs-test".into(),
            value: b"v".to_vec(),
        },
    );
    if let Err(e) = &set {
        if e.errno == libc::ENOTSUP || e.errno == libc::EOPNOTSUPP {
            agentfs_testfs::skip(
                "times_and_extended_attributes",
                "no user xattrs on this tmpfs",
            );
            return;
        }
    }
    set.unwrap();
    let get = |d: &Daemon| {
        fs_at(
            d,
            &s,
            None,
            FsOp::GetXattr {
                path: "d/f.txt".into(),
                name: "user.agentfs-test".into(),
            },
        )
    };
    assert_eq!(get(&d).unwrap(), FsReply::Data(b"v".to_vec()));
    assert!(matches!(
        fs_op(&d, &s, FsOp::ListXattr { path: "d/f.txt".into() }),
        FsReply::Names(n) if n.contains(&"user.agentfs-test".to_string())
    ));
    fs_op(
        &d,
        &s,
        FsOp::RemoveXattr {
            path: "d/f.txt".into(),
            name: "user.agentfs-test".into(),
        },
    );
    assert_eq!(get(&d).unwrap_err().errno, libc::ENOENT);
}

#[test]
fn snapshots_are_read_only_and_errors_keep_their_errno() {
    let (_t, d, s) = setup();
    d.handle(
        &s,
        Request::SnapshotCreate {
            branch: "b".into(),
            name: Some("s1".into()),
        },
        None,
    )
    .0
    .unwrap();
    assert_eq!(
        fs_at(
            &d,
            &s,
            Some("s1"),
            FsOp::Read {
                path: "d/f.txt".into(),
                offset: 0,
                len: 2
            }
        )
        .unwrap(),
        FsReply::Data(b"01".to_vec())
    );
    let e = fs_at(
        &d,
        &s,
        Some("s1"),
        FsOp::Unlink {
            path: "d/f.txt".into(),
        },
    )
    .unwrap_err();
    assert_eq!(e.errno, libc::EROFS);
    for (op, errno) in [
        (
            FsOp::Unlink {
                path: "nope".into(),
            },
            libc::ENOENT,
        ),
        (FsOp::Rmdir { path: "d".into() }, libc::ENOTEMPTY),
        (
            FsOp::Mkdir {
                path: "d".into(),
                mode: 0o755,
            },
            libc::EEXIST,
        ),
        (
            FsOp::Unlink {
                path: "../x".into(),
            },
            libc::EINVAL,
        ),
    ] {
        let e = fs_at(&d, &s, None, op.clone()).unwrap_err();
        assert_eq!(e.errno, errno, "{op:?}: {e}");
    }
    // No branch named anywhere: a clear error.
    let anon = Session {
        branch: None,
        ..s.clone()
    };
    let e = fs_at(&d, &anon, None, FsOp::ReadDir { path: "".into() }).unwrap_err();
    assert!(e.message.contains("no branch"), "{e}");
}

#[test]
fn no_commit_snapshot_while_files_are_open_for_writing() {
    let (_t, d, s) = setup();
    let (r, fd) = d.handle(
        &s,
        Request::FdOpen(agentfs_proto::FdOpen {
            branch: None,
            path: "d/f.txt".into(),
            flags: agentfs_proto::OpenFlags::WRITE,
            mode: 0,
        }),
        None,
    );
    let Ok(Response::FdOpened(o)) = r else {
        panic!("{r:?}")
    };
    let snap = |d: &Daemon| {
        d.handle(
            &s,
            Request::SnapshotCreate {
                branch: "b".into(),
                name: None,
            },
            None,
        )
        .0
    };
    // The mock backstore has no native snapshots: a snapshot would commit
    // the layer the fd writes into.
    let e = snap(&d).unwrap_err();
    assert_eq!(e.errno, libc::EBUSY, "{e}");
    drop(fd);
    d.handle(&s, Request::FdClose { record: o.record }, None)
        .0
        .unwrap();
    assert!(matches!(snap(&d), Ok(Response::Snapshot(_))));
}
