//! Nothing AgentFS hands out can change a base or a snapshot: an fd the
//! daemon hands out for reading (a base file, a file in a committed layer)
//! cannot be reopened for writing through `/proc/self/fd` (`EROFS`: it
//! lives on a private read-only mount). Needs the privilege to clone
//! mounts (root here); elsewhere it says why it skipped, and
//! `AGENTFS_REQUIRE_COW=1` makes that a failure.
#![cfg(target_os = "linux")]

mod common;

use std::{fs, io::Write, os::fd::AsRawFd};

use agentfs_proto::{Client, FdOpen, FsOp, Hello, OpenFlags, Request, Response};
use common::hostile::Served;

fn reopen_for_writing(f: &fs::File) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

fn open_read(c: &mut Client, path: &str) -> fs::File {
    let (_, fd) = c
        .fd_open(FdOpen {
            branch: None,
            path: path.into(),
            flags: OpenFlags::from_native(libc::O_RDONLY),
            mode: 0,
        })
        .unwrap();
    fs::File::from(fd)
}

#[test]
fn read_fds_of_the_base_and_of_snapshots_cannot_be_reopened_for_writing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        agentfs_testfs::skip(
            "read_fds_of_the_base_and_of_snapshots_cannot_be_reopened_for_writing",
            "cloning mounts needs root",
        );
        return;
    }
    let s = Served::new(|base| fs::write(base.join("f.txt"), b"BASE").unwrap());
    let base = s.base();
    let _d = s.serve();
    let mut c = Client::connect(&s.socket, Hello::current("ro", Some("b".into()))).unwrap();
    match c.request(Request::Status).unwrap() {
        Response::Status(st) => assert!(st.read_only_fds, "status: {st:?}"),
        other => panic!("{other:?}"),
    }

    // A base file.
    let f = open_read(&mut c, "f.txt");
    let e = reopen_for_writing(&f).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // A file of the branch, then committed by a snapshot.
    c.request(Request::Fs {
        branch: None,
        snapshot: None,
        op: FsOp::WriteFile {
            path: "mine.txt".into(),
            data: b"MINE".to_vec(),
        },
    })
    .unwrap();
    c.request(Request::SnapshotCreate {
        branch: "b".into(),
        name: Some("s1".into()),
    })
    .unwrap();
    let f = open_read(&mut c, "mine.txt");
    let e = reopen_for_writing(&f).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // Writing in the branch still works (copy-up into the active layer).
    let (_, fd) = c
        .fd_open(FdOpen {
            branch: None,
            path: "mine.txt".into(),
            flags: OpenFlags::from_native(libc::O_WRONLY | libc::O_APPEND),
            mode: 0,
        })
        .unwrap();
    fs::File::from(fd).write_all(b"+more").unwrap();
    assert_eq!(s.ok(&["fs", "cat", "--snapshot", "s1", "mine.txt"]), "MINE");
    assert_eq!(
        s.ok(&["fs", "cat", "--branch", "b", "mine.txt"]),
        "MINE+more"
    );
    assert_eq!(fs::read(base.join("f.txt")).unwrap(), b"BASE");
}
