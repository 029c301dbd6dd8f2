//! Special files (FIFOs, sockets) in the base: nothing ever opens one in a
//! way that can block, so a FIFO cannot hang the store, the daemon or a
//! client; and SIGTERM stops the daemon within a bounded time even while
//! a request is stuck.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
};

use agentfs_proto::{FsOp, Request};
use common::{
    daemon::agentfs_cmd,
    hostile::{wait_within, Served, LIMIT},
};
use nix::{sys::stat::Mode, unistd::mkfifo};

fn base_with_fifo(base: &Path) {
    fs::write(base.join("a"), b"a\n").unwrap();
    mkfifo(&base.join("fifo"), Mode::S_IRWXU).unwrap();
    fs::create_dir(base.join("dir")).unwrap();
    mkfifo(&base.join("dir/inner"), Mode::S_IRWXU).unwrap();
    std::os::unix::net::UnixListener::bind(base.join("sock")).unwrap();
}

/// What every command that meets a FIFO must do: refuse, at once, clearly.
fn refuses_clearly(s: &Served, args: &[&str]) {
    let err = s.fails(args);
    assert!(
        err.contains("not a regular file") && err.contains("not supported"),
        "agentfs {args:?}: {err}"
    );
}

fn fifo_commands_are_refused_and_leave_the_store_usable(s: &Served) {
    refuses_clearly(s, &["fs", "mv", "--branch", "b", "fifo", "fifo2"]);
    refuses_clearly(s, &["fs", "mv", "--branch", "b", "sock", "sock2"]);
    refuses_clearly(s, &["fs", "cat", "--branch", "b", "fifo"]);
    refuses_clearly(s, &["fs", "write", "--branch", "b", "fifo", "--data", "x"]);
    // A directory holding a FIFO cannot be moved either (its copy would
    // need the FIFO copied), and nothing of it changes.
    refuses_clearly(s, &["fs", "mv", "--branch", "b", "dir", "dir2"]);
    assert_eq!(s.ok(&["diff", "--branch", "b"]), "", "nothing changed");
    // The store is not held by anything stuck.
    assert!(s.ok(&["branch", "list"]).contains('b'));
    assert_eq!(s.ok(&["fs", "cat", "--branch", "b", "a"]), "a\n");
    // Metadata says what each special file is, directly and through the
    // daemon alike.
    for (name, special) in [("fifo", "fifo"), ("sock", "socket")] {
        let st: serde_json::Value =
            serde_json::from_str(&s.ok(&["fs", "stat", "--branch", "b", "--json", name])).unwrap();
        assert_eq!(st["special"], special, "{name}: {st}");
    }
}

#[test]
fn moving_a_fifo_is_refused_without_opening_it() {
    let s = Served::new(base_with_fifo);
    fifo_commands_are_refused_and_leave_the_store_usable(&s);
}

#[test]
fn a_fifo_never_hangs_the_daemon() {
    let s = Served::new(base_with_fifo);
    let d = s.serve();
    fifo_commands_are_refused_and_leave_the_store_usable(&s);
    let mut c = d.client("special files");
    let e = c
        .request(Request::Fs {
            branch: Some("b".into()),
            snapshot: None,
            op: FsOp::Rename {
                from: "fifo".into(),
                to: "f2".into(),
            },
        })
        .unwrap_err();
    assert_eq!(e.wire().map(|w| w.errno()), Some(libc::ENOTSUP), "{e}");
    let (status, _) = d.stop();
    assert!(status.success(), "{status:?}");
}

/// A request stuck for good (here: a fault point that never returns,
/// standing for an `open()` or a plugin call that blocks) does not keep
/// the daemon from stopping: SIGTERM ends it within its shutdown timeout,
/// and the socket file goes.
#[test]
fn sigterm_stops_the_daemon_in_bounded_time_while_a_request_is_stuck() {
    let s = Served::new(base_with_fifo);
    let mut daemon = agentfs_cmd(&s.config, &s.socket)
        .env("AGENTFS_FAULT", "copyup-after-temp-write")
        .args(["serve", "--shutdown-timeout", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(daemon.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("agentfs serve: ready"), "{line:?}");
    // A chmod of a base file copies it up, and stops at the fault point.
    let mut writer = s
        .cmd(&["fs", "chmod", "--branch", "b", "600", "a"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(daemon.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "daemon log ended: {log}"
        );
        log.push_str(&line);
        if line.contains("fault point copyup-after-temp-write reached") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = wait_within(&mut daemon, LIMIT);
    let _ = writer.kill();
    let _ = writer.wait();
    let Some(status) = status else {
        let _ = daemon.kill();
        panic!("the daemon ignored SIGTERM for {LIMIT:?}");
    };
    assert_eq!(status.code(), Some(1), "a forced exit says so: {status:?}");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    assert!(rest.contains("the shutdown took longer than"), "{rest}");
    assert!(!s.socket.exists(), "the socket file is removed");
    // The store is usable afterwards, and the write never happened.
    assert_eq!(s.ok(&["fs", "cat", "--branch", "b", "a"]), "a\n");
}
