//! Branches do not wait for each other: while the real daemon is stopped
//! half way through a copy-up in branch `a` (a fault point parks the
//! thread doing it, holding whatever locks it holds), another client's
//! ping, reads and writes in branch `b` complete, and so does a direct
//! CLI read of branch `b` in another process.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use agentfs_proto::{Client, FdOpen, FsOp, FsReply, Hello, OpenFlags, Request, Response};
use common::{daemon::agentfs_cmd, hostile::Served};

fn fs_req(branch: &str, op: FsOp) -> Request {
    Request::Fs {
        branch: Some(branch.into()),
        snapshot: None,
        op,
    }
}

#[test]
fn a_copy_up_held_in_one_branch_does_not_stop_another() {
    // hostfs on a plain directory: copy-up by copy, through the fault point.
    let s = Served::new(|base| {
        fs::write(base.join("big.bin"), vec![7u8; 4 << 20]).unwrap();
        fs::write(base.join("small.txt"), b"small").unwrap();
    });
    let (base, socket) = (s.base(), s.socket.clone());
    let direct = |args: &[&str]| {
        let mut a = vec!["--direct"];
        a.extend_from_slice(args);
        s.ok(&a)
    };
    direct(&["branch", "create", "a"]);

    let mut daemon = agentfs_cmd(&s.config, &socket)
        .env("AGENTFS_FAULT", "copyup-after-temp-write")
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(daemon.stdout.take().unwrap());
    let mut err = BufReader::new(daemon.stderr.take().unwrap());
    // Killed however the test ends (it is parked for good).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Kill(daemon);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("agentfs serve: ready on "), "{line}");

    // Client 1: open big.bin for writing in branch a; the daemon parks at
    // the fault point in the middle of the copy-up and never answers.
    let sock = socket.clone();
    let _stuck = std::thread::spawn(move || {
        let mut c = Client::connect(&sock, Hello::current("stuck", Some("a".into()))).unwrap();
        let _ = c.fd_open(FdOpen {
            branch: None,
            path: "big.bin".into(),
            flags: OpenFlags::from_native(libc::O_RDWR),
            mode: 0,
        });
    });
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the daemon's stderr ended before the fault point"
        );
        if line.contains("fault point copyup-after-temp-write reached") {
            break;
        }
    }

    // Client 2, branch b. A bound on each answer turns a regression (a
    // store-wide lock held by the parked copy-up) into a failure, not a
    // hang; the answers come in milliseconds when it works.
    let mut c = Client::connect(&socket, Hello::current("free", Some("b".into()))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(c.request(Request::Ping).unwrap(), Response::Pong);
    let r = c
        .request(fs_req(
            "b",
            FsOp::WriteFile {
                path: "new.txt".into(),
                data: b"written in b".to_vec(),
            },
        ))
        .expect("a write in branch b completes");
    assert!(matches!(r, Response::Fs(_)), "{r:?}");
    let r = c
        .request(fs_req(
            "b",
            FsOp::Read {
                path: "small.txt".into(),
                offset: 0,
                len: 100,
            },
        ))
        .expect("a read in branch b completes");
    assert_eq!(r, Response::Fs(FsReply::Data(b"small".to_vec())));
    let r = c
        .request(fs_req(
            "b",
            FsOp::Rename {
                from: "new.txt".into(),
                to: "renamed.txt".into(),
            },
        ))
        .expect("a rename in branch b completes");
    assert!(matches!(r, Response::Fs(_)), "{r:?}");
    // Another process, straight to the store (no daemon): reads branch b.
    assert_eq!(
        direct(&["fs", "cat", "--branch", "b", "renamed.txt"]),
        "written in b"
    );

    drop(daemon);
    // The base is untouched.
    assert_eq!(fs::read(base.join("big.bin")).unwrap().len(), 4 << 20);
    assert!(!base.join("renamed.txt").exists());
}

/// A snapshot never changes after it is taken, whichever process takes it:
/// while the daemon has handed out an fd for writing in a branch, a direct
/// (other-process) snapshot that would commit the branch's active layer is
/// refused as busy; once the fd's record is closed, it is taken, and it
/// holds what was written.
#[test]
fn a_direct_snapshot_is_refused_while_the_daemon_has_a_writer_open() {
    use std::{io::Write, os::unix::fs::FileExt};
    let s = Served::new(|base| fs::write(base.join("f.txt"), b"BASE").unwrap());
    let (base, socket) = (s.base(), s.socket.clone());
    let run = |args: &[&str]| {
        let mut a = vec!["--direct"];
        a.extend_from_slice(args);
        s.run(&a)
    };
    let d = s.serve();
    let mut c = Client::connect(&socket, Hello::current("writer", Some("b".into()))).unwrap();
    let (opened, fd) = c
        .fd_open(FdOpen {
            branch: None,
            path: "f.txt".into(),
            flags: OpenFlags::from_native(libc::O_RDWR),
            mode: 0,
        })
        .unwrap();
    let mut f = fs::File::from(fd);
    f.write_all_at(b"BEFORE", 0).unwrap();

    let refused = run(&["snapshot", "create", "--branch", "b", "s1"]);
    assert!(
        !refused.status.success(),
        "a snapshot was taken under a writer"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("busy") && err.contains("open for writing"),
        "{err}"
    );

    f.flush().unwrap();
    drop(f);
    c.request(Request::FdClose {
        record: opened.record,
    })
    .unwrap();
    let taken = run(&["snapshot", "create", "--branch", "b", "s1"]);
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    // Later writes in the branch do not reach the snapshot.
    let (_, fd) = c
        .fd_open(FdOpen {
            branch: None,
            path: "f.txt".into(),
            flags: OpenFlags::from_native(libc::O_WRONLY | libc::O_APPEND),
            mode: 0,
        })
        .unwrap();
    fs::File::from(fd).write_all(b"\nAFTER").unwrap();
    let cat = |at: &[&str]| {
        let mut a = vec!["fs", "cat"];
        a.extend_from_slice(at);
        a.push("f.txt");
        String::from_utf8(run(&a).stdout).unwrap()
    };
    assert_eq!(cat(&["--snapshot", "s1"]), "BEFORE");
    assert_eq!(cat(&["--branch", "b"]), "BEFORE\nAFTER");
    assert_eq!(fs::read(base.join("f.txt")).unwrap(), b"BASE");
    drop(d);
}
