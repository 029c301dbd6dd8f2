//! Standard output closed early (`agentfs diff | head -1`): the commands
//! end quietly, as `ls` and `git` do (killed by SIGPIPE, nothing on
//! stderr), never with a panic and exit status 101; the daemon, whose
//! stdout nobody may read any more, still shuts down cleanly.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    process::{Command, Output, Stdio},
    sync::mpsc,
};

use common::hostile::{wait_within, Served, LIMIT};

fn sample(base: &std::path::Path) {
    for i in 0..50 {
        fs::write(base.join(format!("f{i:02}")), b"x").unwrap();
    }
}

/// Runs `cmd` with a standard output whose reading end is already closed.
fn with_closed_stdout(mut cmd: Command, what: &str) -> Output {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what}: hangs"))
        .unwrap()
}

fn ends_quietly(s: &Served, args: &[&str]) {
    let o = with_closed_stdout(s.cmd(args), &format!("{args:?}"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && o.status.code() != Some(101),
        "agentfs {args:?} panicked: {:?} {err}",
        o.status
    );
    assert!(
        o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
        "agentfs {args:?}: {:?} {err}",
        o.status
    );
    assert_eq!(err, "", "agentfs {args:?} says nothing");
}

fn listings_end_quietly(s: &Served) {
    for args in [
        &["diff", "--branch", "b"][..],
        &["diff", "--branch", "b", "--json"],
        &["fs", "ls", "--branch", "b"],
        &["fs", "ls", "-l", "--branch", "b", "/"],
        &["fs", "cat", "--branch", "b", "f00"],
        &["snapshot", "list"],
        &["branch", "list"],
        &["plugins", "list"],
        &["config", "show"],
        &["--help"],
        &["fs", "--help"],
    ] {
        ends_quietly(s, args);
    }
}

fn served_with_changes() -> Served {
    let s = Served::new(sample);
    for i in 0..20 {
        let name = format!("new{i}");
        s.ok(&["fs", "write", "--branch", "b", &name, "--data", "n"]);
    }
    s.ok(&["snapshot", "create", "--branch", "b", "s1"]);
    s
}

#[test]
fn a_closed_stdout_ends_listings_quietly() {
    listings_end_quietly(&served_with_changes());
}

#[test]
fn a_closed_stdout_ends_listings_quietly_through_the_daemon() {
    let s = served_with_changes();
    let _d = s.serve();
    listings_end_quietly(&s);
}

#[test]
fn the_daemon_shuts_down_cleanly_when_its_stdout_is_closed() {
    let s = Served::new(sample);
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut d = s
        .cmd(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(fs::File::from(r));
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("agentfs serve: ready"), "{line:?}");
    drop(out); // nobody reads the daemon's stdout any more
    assert!(s.ok(&["branch", "list"]).contains('b'), "it serves");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let mut err = d.stderr.take().unwrap();
    let status = wait_within(&mut d, LIMIT).expect("the daemon stops");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut err, &mut log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(status.success(), "{status:?}: {log}");
    assert!(!s.socket.exists());
}
