//! A write open through a real daemon with the writer registration handed
//! to the client (`FdOpenWithWriter`, protocol 2): one round trip to open,
//! and a close that needs none. The registration is a shared `flock` on an
//! fd the client holds, so the client's own close ends it in the kernel; a
//! snapshot that any connection asks for right after the close must never
//! find the branch busy, a process still holding a copy of the fd must
//! keep it busy, and the `Modified` of each close must still arrive.
//!
//! The hostfs backstore has no native snapshots, so a snapshot commits the
//! branch's active layer and is refused while a writer is registered.

mod common;

use std::{
    fs,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::{fs::FileExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use agentfs_proto::WireEventKind;
use agentfs_proto::{Client, DaemonFrame, FdOpen, FdOpened, Hello, OpenFlags, Request, Response};
use common::daemon::*;

/// Tests of this file run one at a time. Each one forks (the CLI, the
/// daemon, shells), and a fork copies every fd of the test process into
/// the child until its exec closes them: a sibling test forking between a
/// test's close of its registration fd and its snapshot would hold the
/// branch busy for that moment, which is right for the product (a forked
/// child holds the file open too) but not what these tests measure.
static SERIAL: Mutex<()> = Mutex::new(());

struct Env {
    _serial: MutexGuard<'static, ()>,
    _t: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Env {
    /// A hostfs store over a base with `d/f.txt`, and branch `b`.
    fn new() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        fs::create_dir_all(dir.join("base/d")).unwrap();
        fs::write(dir.join("base/d/f.txt"), b"hello").unwrap();
        let config = hostfs_config(&dir, &dir.join("store"));
        let socket = dir.join("run/agentfs.sock");
        let base = dir.join("base");
        agentfs_ok(
            &config,
            &socket,
            &["--direct", "init", "--base", base.to_str().unwrap()],
        );
        agentfs_ok(&config, &socket, &["--direct", "branch", "create", "b"]);
        Self {
            _serial: serial,
            _t: t,
            dir,
            config,
            socket,
        }
    }

    fn serve(&self) -> DaemonProc {
        DaemonProc::start(&self.config, &self.socket, &[], &[])
    }

    fn base_file(&self) -> Vec<u8> {
        fs::read(self.dir.join("base/d/f.txt")).unwrap()
    }
}

fn client(socket: &Path, hello: Hello) -> Client {
    let c = Client::connect(socket, hello).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

/// A client of branch `b` subscribed to the core events under `d`.
fn watcher(socket: &Path) -> Client {
    let mut w = client(socket, Hello::current("watcher", Some("b".into())));
    let r = w
        .request(Request::Subscribe {
            branch: None,
            path: "d".into(),
        })
        .unwrap();
    assert!(matches!(r, Response::Subscribed { .. }), "{r:?}");
    w
}

fn open_for_writing() -> FdOpen {
    FdOpen {
        branch: Some("b".into()),
        path: "d/f.txt".into(),
        flags: OpenFlags::WRITE,
        mode: 0,
    }
}

/// A snapshot of `b` asked for by `c`: `Ok` or the daemon's errno.
fn snapshot(c: &mut Client, name: &str) -> Result<(), i32> {
    match c.request(Request::SnapshotCreate {
        branch: "b".into(),
        name: Some(name.into()),
    }) {
        Ok(Response::Snapshot(_)) => Ok(()),
        Ok(other) => panic!("snapshot {name}: {other:?}"),
        Err(e) => Err(e.wire().map_or(-1, |w| w.errno)),
    }
}

/// Opens `d/f.txt` for writing with the registration handed over.
fn open_held(w: &mut Client) -> (FdOpened, fs::File, OwnedFd) {
    let (o, fd, writer) = w.fd_open_with_writer(open_for_writing()).unwrap();
    assert!(o.record != 0 && o.writer, "{o:?}");
    (
        o,
        fs::File::from(fd),
        writer.expect("the registration's fd"),
    )
}

#[test]
fn a_snapshot_right_after_a_close_is_never_refused_as_busy() {
    let e = Env::new();
    let d = e.serve();
    let mut w = client(&d.socket, Hello::current("writer", Some("b".into())));
    assert_eq!(w.welcome().version, 2);
    let mut s = client(&d.socket, Hello::current("snapshots", Some("b".into())));
    let mut watcher = watcher(&d.socket);

    // While the file is open the branch is busy (the test can fail).
    let (o, f, writer) = open_held(&mut w);
    assert_eq!(snapshot(&mut s, "while-open"), Err(libc::EBUSY));
    drop((f, writer));
    w.fd_closed(o.record).unwrap();

    const ROUNDS: usize = 40;
    for i in 0..ROUNDS {
        let (o, f, writer) = open_held(&mut w);
        f.write_all_at(format!("round {i:02}").as_bytes(), 0)
            .unwrap();
        drop(f);
        drop(writer);
        w.fd_closed(o.record).unwrap();
        // Another connection, at once: the close needed no reply, and the
        // registration is already gone.
        assert_eq!(snapshot(&mut s, &format!("s{i}")), Ok(()), "round {i}");
    }
    // Every close that changed the file was published.
    let mut modified = 0;
    while modified < ROUNDS {
        match watcher.next_push().unwrap() {
            DaemonFrame::CoreEvents(b) => {
                modified += b
                    .events
                    .iter()
                    .filter(|ev| ev.kind == WireEventKind::Modified && ev.path == "d/f.txt")
                    .count()
            }
            other => panic!("{other:?}"),
        }
    }
    // The last snapshot has the last write; the base is untouched.
    let r = s
        .request(Request::Fs {
            branch: None,
            snapshot: Some(format!("s{}", ROUNDS - 1)),
            op: agentfs_proto::FsOp::Read {
                path: "d/f.txt".into(),
                offset: 0,
                len: 64,
            },
        })
        .unwrap();
    assert_eq!(
        r,
        Response::Fs(agentfs_proto::FsReply::Data(
            format!("round {:02}", ROUNDS - 1).into_bytes()
        ))
    );
    assert_eq!(e.base_file(), b"hello");
}

#[test]
fn a_process_holding_a_copy_of_the_registration_keeps_the_branch_busy_until_it_dies() {
    let e = Env::new();
    let d = e.serve();
    let mut w = client(&d.socket, Hello::current("writer", Some("b".into())));
    let mut s = client(&d.socket, Hello::current("snapshots", Some("b".into())));
    let (o, f, writer) = open_held(&mut w);
    // A child inherits both fds, as a forked child would.
    let (file_raw, writer_raw) = (f.as_raw_fd(), writer.as_raw_fd());
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(file_raw, 3) < 0 || libc::dup2(writer_raw, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop((f, writer));
    w.fd_closed(o.record).unwrap();
    // Our copies are closed, the child's are not: still busy.
    assert_eq!(snapshot(&mut s, "child-holds"), Err(libc::EBUSY));
    // The child is killed: the kernel closes its fds, the branch is free.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(snapshot(&mut s, "child-gone"), Ok(()));
    assert_eq!(e.base_file(), b"hello");
}

#[test]
fn the_registration_outlives_a_daemon_restart_until_the_client_closes() {
    let e = Env::new();
    let d = e.serve();
    let mut w = client(&d.socket, Hello::current("writer", Some("b".into())));
    let (o, f, writer) = open_held(&mut w);
    let (status, _) = d.stop();
    assert!(status.success());
    let d = e.serve();
    let mut s = client(&d.socket, Hello::current("snapshots", Some("b".into())));
    // The file is still open for writing in this client: a new daemon
    // must not commit the layer it writes into.
    assert_eq!(snapshot(&mut s, "open"), Err(libc::EBUSY));
    f.write_all_at(b"after", 0).unwrap();
    drop((f, writer));
    // The old connection is gone; telling the new daemon is harmless.
    let mut w = client(&d.socket, Hello::current("writer", Some("b".into())));
    w.fd_closed(o.record).unwrap();
    assert_eq!(snapshot(&mut s, "closed"), Ok(()));
    assert_eq!(e.base_file(), b"hello");
}

#[test]
fn a_protocol_1_client_keeps_the_registration_in_the_daemon_until_fd_close() {
    let e = Env::new();
    let d = e.serve();
    let mut hello = Hello::current("old writer", Some("b".into()));
    hello.max_version = 1;
    let mut w = client(&d.socket, hello);
    assert_eq!(w.welcome().version, 1);
    let mut s = client(&d.socket, Hello::current("snapshots", Some("b".into())));
    let (o, fd, writer) = w.fd_open_with_writer(open_for_writing()).unwrap();
    assert!(writer.is_none() && !o.writer && o.record != 0, "{o:?}");
    drop(fd);
    assert_eq!(snapshot(&mut s, "open"), Err(libc::EBUSY));
    assert!(
        w.fd_closed(o.record).is_err(),
        "no FdClosed to a protocol 1 peer"
    );
    let r = w.request(Request::FdClose { record: o.record }).unwrap();
    assert_eq!(r, Response::Done);
    assert_eq!(snapshot(&mut s, "closed"), Ok(()));
}

/// Through the shim: a shell in the branch writes a file (the shim opens it
/// with `FdOpenWithWriter` and closes it with a frame that needs no reply)
/// and at once runs `agentfs snapshot create`, another process, through
/// the daemon; never refused as busy.
#[cfg(target_os = "linux")]
#[test]
fn through_the_shim_a_snapshot_right_after_each_write_is_never_busy() {
    use common::programs::{fingerprint, Sample};
    agentfs_testfs::built("libagentfs_shim.so");
    let e = Sample::new(false);
    let before = fingerprint(&e.base);
    let bin = env!("CARGO_BIN_EXE_agentfs");
    let script = format!(
        "i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo round $i > docs/w.txt || exit 2; \
         {bin} snapshot create --branch b s$i >/dev/null || exit 3; done; cat docs/w.txt"
    );
    let o = e
        .cli
        .cmd()
        .current_dir(&e.base)
        .args([
            "run", "--create", "--branch", "b", "--", "sh", "-c", &script,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "round 20\n");
    let got = e.cli.ok(&["fs", "cat", "--snapshot", "s7", "docs/w.txt"]);
    assert_eq!(got, "round 7\n");
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// Through the shim, across a daemon restart: a shell opens a file for
/// writing (`exec 3>>`), the daemon restarts, the shell writes and closes
/// it. The registration held in the shell keeps the new daemon from
/// committing the layer while the file is open, and the close still
/// reaches the new daemon's watchers as `Modified` (the record died with
/// the old connection: the shim makes a new one for the same file and
/// closes it at once).
#[cfg(target_os = "linux")]
#[test]
fn through_the_shim_a_close_after_a_daemon_restart_is_still_reported() {
    use std::io::{BufRead, BufReader, Write};
    agentfs_testfs::built("libagentfs_shim.so");
    let e = Env::new();
    let d = e.serve();
    let fifo = e.dir.join("go");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let script = format!(
        "exec 3>>d/f.txt || exit 2; echo opened; read x < {} || exit 3; \
         printf ' after' >&3 || exit 4; exec 3>&-; echo closed",
        fifo.display()
    );
    let mut child = agentfs_cmd(&e.config, &e.socket)
        .current_dir(e.dir.join("base"))
        .args(["run", "--branch", "b", "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "opened\n");

    let (status, _) = d.stop();
    assert!(status.success());
    let d = e.serve();
    let mut s = client(&d.socket, Hello::current("snapshots", Some("b".into())));
    let mut watcher = watcher(&d.socket);
    assert_eq!(snapshot(&mut s, "open"), Err(libc::EBUSY));

    fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "closed\n");
    assert!(child.wait().unwrap().success());
    // The close arrives (the client's read timeout fails the test if not).
    loop {
        match watcher.next_push().unwrap() {
            DaemonFrame::CoreEvents(b) => {
                if b.events
                    .iter()
                    .any(|ev| ev.kind == WireEventKind::Modified && ev.path == "d/f.txt")
                {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(snapshot(&mut s, "closed"), Ok(()));
    assert_eq!(
        agentfs_ok(
            &e.config,
            &e.socket,
            &["fs", "cat", "--branch", "b", "d/f.txt"]
        ),
        "hello after"
    );
    assert_eq!(e.base_file(), b"hello");
}
