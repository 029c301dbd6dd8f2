//! The real daemon (`agentfs serve`, a child process) with real clients:
//! the CLI through the daemon and without, native records for each watch
//! provider through the socket while another process mutates the branch,
//! the inotify doorbell socket, clients that die, another uid, `fd_open`
//! into another process, SIGTERM and the backstore's cleanup, and
//! `agentfs watch`.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use agentfs_plugin_api::watch::WatchApi;
use agentfs_proto::{
    Client, DaemonFrame, Doorbell, DoorbellKind, FdOpen, Hello, OpenFlags, Request, Response,
    WatchRegistration, WireError, WireRecord,
};
use agentfs_vocab::native::{fsevents as fse, inotify as ino, kqueue as kq};
// One plugin crate linked in (each exports the same plugin symbols): the
// inotify layout is parsed here; kqueue and FSEvents bytes are compared
// with what the loaded plugins encode (their layouts are tested in their
// crates).
use agentfs_watch_inotify::{cookie_for, InotifyEvent};
use common::{daemon::*, watch_providers};

/// A hostfs store with a base and branches `b` and `c`, and a socket path.
struct Env {
    _t: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Env {
    fn hostfs() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let base = dir.join("base");
        fs::create_dir_all(base.join("d")).unwrap();
        fs::write(base.join("d/f.txt"), b"hello").unwrap();
        fs::write(base.join("d/g.txt"), b"gee").unwrap();
        fs::write(base.join("top.txt"), b"top").unwrap();
        let config = hostfs_config(&dir, &dir.join("store"));
        let socket = dir.join("run/agentfs.sock");
        let e = Self {
            _t: t,
            dir,
            config,
            socket,
        };
        e.direct(&["init", "--base", base.to_str().unwrap()]);
        e.direct(&["branch", "create", "b"]);
        e.direct(&["branch", "create", "c"]);
        e
    }

    /// Runs `agentfs` (through the daemon if one runs); returns stdout.
    fn cli(&self, args: &[&str]) -> String {
        agentfs_ok(&self.config, &self.socket, args)
    }

    /// Runs `agentfs --direct`.
    fn direct(&self, args: &[&str]) -> String {
        let mut a = vec!["--direct"];
        a.extend_from_slice(args);
        agentfs_ok(&self.config, &self.socket, &a)
    }

    fn serve(&self) -> DaemonProc {
        DaemonProc::start(&self.config, &self.socket, &[], &[])
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn client_on(socket: &Path, branch: &str) -> Client {
    let c = Client::connect(socket, Hello::current("daemon tests", Some(branch.into()))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

#[test]
fn daemon_with_hostfs_backstore() {
    let e = Env::hostfs();
    let d = e.serve();
    let b = json(&e.cli(&["branch", "create", "x", "--json"]));
    assert_eq!(
        (b["name"].as_str(), b["via"].as_str()),
        (Some("x"), Some("daemon"))
    );
    assert!(b["base"].as_str().unwrap().ends_with("/base"));
    // The store on disk is the same one: the direct path sees the branch.
    let l = json(&e.direct(&["branch", "list", "--json"]));
    assert_eq!(l["via"], "store");
    assert_eq!(l["branches"].as_array().unwrap().len(), 3);
    assert_eq!(
        e.cli(&["branch", "list"]),
        e.direct(&["branch", "list"]),
        "the same output either way"
    );
    // File operations through the daemon.
    e.cli(&[
        "fs",
        "write",
        "--branch",
        "x",
        "d/new.txt",
        "--data",
        "via daemon",
    ]);
    e.cli(&["fs", "mkdir", "--branch", "x", "-p", "a/b"]);
    e.cli(&["fs", "mv", "--branch", "x", "d/g.txt", "a/b/g.txt"]);
    e.cli(&["fs", "symlink", "--branch", "x", "a/b/g.txt", "link"]);
    e.cli(&["fs", "chmod", "--branch", "x", "600", "top.txt"]);
    e.cli(&["fs", "rm", "--branch", "x", "-r", "a"]);
    assert_eq!(
        e.cli(&["fs", "cat", "--branch", "x", "d/new.txt"]),
        "via daemon"
    );
    assert_eq!(
        e.cli(&["fs", "readlink", "--branch", "x", "link"]).trim(),
        "a/b/g.txt"
    );
    let st = json(&e.cli(&["fs", "stat", "--branch", "x", "top.txt", "--json"]));
    assert_eq!(
        (st["mode"].as_u64(), st["via"].as_str()),
        (Some(0o600), Some("daemon"))
    );
    assert_eq!(st["origin"]["kind"], "active");
    for args in [
        &["fs", "ls", "--branch", "x", "-l"][..],
        &["fs", "ls", "--branch", "x", "d", "--json"],
        &["fs", "stat", "--branch", "x", "d/f.txt"],
        &["fs", "cat", "--branch", "x", "d/f.txt"],
    ] {
        let (a, mut b) = (e.cli(args), e.direct(args));
        if args.contains(&"--json") {
            b = b.replace("\"via\": \"store\"", "\"via\": \"daemon\"");
        }
        assert_eq!(a, b, "{args:?}");
    }
    // Snapshots, and reading one.
    let s = json(&e.cli(&["snapshot", "create", "--branch", "x", "s1", "--json"]));
    assert_eq!(s["via"], "daemon");
    e.cli(&[
        "fs",
        "write",
        "--branch",
        "x",
        "d/new.txt",
        "--data",
        "later",
    ]);
    assert_eq!(
        e.cli(&["fs", "cat", "--snapshot", "s1", "d/new.txt"]),
        "via daemon"
    );
    e.cli(&["branch", "create", "y", "--from", "s1"]);
    let o = agentfs_cmd(&e.config, &e.socket)
        .args(["snapshot", "delete", "s1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("busy"), "{o:?}");
    e.cli(&["branch", "delete", "y"]);
    assert_eq!(
        e.cli(&["branch", "compact", "x"]).trim(),
        "branch x: nothing to compact"
    );
    // Errors keep their meaning through the daemon.
    let o = agentfs_cmd(&e.config, &e.socket)
        .args(["fs", "cat", "--branch", "x", "../escape"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let (status, out) = d.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(out.trim(), "agentfs serve: stopped");
    assert!(!e.socket.exists(), "the socket is removed");
    // Without a daemon the CLI uses the store.
    let l = json(&e.cli(&["branch", "list", "--json"]));
    assert_eq!(l["via"], "store");
    assert_eq!(e.cli(&["fs", "cat", "--branch", "x", "d/new.txt"]), "later");
}

#[test]
fn backstore_status_api() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut c = d.client("status test");
    let st = status(&mut c);
    assert_eq!(st.backstore.plugin, "hostfs");
    assert!(!st.backstore.fs_type.is_empty());
    assert!(st.backstore.capacity > 0 && st.backstore.used <= st.backstore.capacity);
    assert_eq!(
        fs::canonicalize(&st.backstore.root).unwrap(),
        fs::canonicalize(e.dir.join("store")).unwrap()
    );
    assert_eq!((st.branches, st.snapshots, st.clients), (2, 0, 1));
    assert_eq!(st.pid, d.child.id());
    assert_eq!(st.watch_providers, ["kqueue", "fsevents", "inotify"]);
    assert_eq!(st.config, e.config.display().to_string());
    let j = json(&e.cli(&["status", "--json"]));
    assert_eq!(j["via"], "daemon");
    assert_eq!(j["backstore"]["plugin"], "hostfs");
    assert_eq!(j["daemon"]["pid"], d.child.id());
    assert!(e.cli(&["status"]).contains("backstore:    hostfs"));
    let j = json(&e.direct(&["status", "--json"]));
    assert_eq!(j["via"], "store");
}

/// (api, instance) -> records, as a test expects them.
type Expected = BTreeMap<(u32, u64), Vec<(u64, u64, u32, String, bool)>>;

/// Reads deliveries (acknowledging each) until every watcher in
/// `expected` has delivered once; checks records and native bytes.
fn expect_deliveries(
    c: &mut Client,
    expected: &Expected,
    step: &str,
) -> BTreeMap<(u32, u64), Vec<WireRecord>> {
    let mut got: BTreeMap<(u32, u64), Vec<WireRecord>> = BTreeMap::new();
    while got.len() < expected.len() {
        let DaemonFrame::Events(del) = c.next_push().unwrap() else {
            continue;
        };
        let key = (del.api, del.instance);
        assert!(
            expected.contains_key(&key) && !got.contains_key(&key),
            "{step}: unexpected delivery {del:?}"
        );
        check_native_bytes(WatchApi(del.api), &del.records, &del.encoded);
        c.ack(del.api, del.instance).unwrap();
        got.insert(key, del.records);
    }
    for (key, want) in expected {
        let have: Vec<(u64, u64, u32, String, bool)> = got[key]
            .iter()
            .map(|r| (r.handle, r.flags, r.cookie, r.name.clone(), r.retire_watch))
            .collect();
        assert_eq!(&have, want, "{step}: records of watcher {key:?}");
    }
    got
}

/// The encoded bytes say exactly what the records say.
fn check_native_bytes(api: WatchApi, records: &[WireRecord], bytes: &[u8]) {
    match api {
        WatchApi::INOTIFY => {
            let ev = InotifyEvent::parse_all(bytes).expect("whole inotify_event records");
            let want: Vec<(i32, u32, u32, Vec<u8>)> = records
                .iter()
                .map(|r| {
                    (
                        r.handle as i32,
                        r.flags as u32,
                        r.cookie,
                        r.name.as_bytes().to_vec(),
                    )
                })
                .collect();
            let have: Vec<(i32, u32, u32, Vec<u8>)> = ev
                .into_iter()
                .map(|e| (e.wd, e.mask, e.cookie, e.name))
                .collect();
            assert_eq!(have, want);
        }
        WatchApi::KQUEUE | WatchApi::FSEVENTS => {
            let providers = watch_providers();
            let p = providers.iter().find(|p| p.api().unwrap() == api).unwrap();
            let recs: Vec<_> = records
                .iter()
                .map(agentfs_host::daemon::abi_wire::native_record)
                .collect();
            assert_eq!(p.encode(&recs).unwrap(), bytes);
            if api == WatchApi::KQUEUE {
                // 32-byte kevents, ident first, EVFILT_VNODE at 8, fflags at 12.
                let shown: Vec<_> = records.iter().filter(|r| r.flags != 0).collect();
                assert_eq!(bytes.len(), 32 * shown.len());
                for (c, r) in bytes.chunks(32).zip(shown) {
                    assert_eq!(c[0..8], r.handle.to_ne_bytes());
                    assert_eq!(c[8..10], kq::EVFILT_VNODE.to_ne_bytes());
                    assert_eq!(c[12..16], (r.flags as u32).to_ne_bytes());
                }
            }
        }
        other => panic!("unknown api {other:?}"),
    }
}

#[test]
fn each_provider_gets_exactly_the_native_records_of_another_clients_changes() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut a = client_on(&d.socket, "b");
    let reg = |a: &mut Client, r: WatchRegistration| match a
        .request(Request::WatchRegister(r))
        .unwrap()
    {
        Response::WatchRegistered { watch_id, handle } => (watch_id, handle),
        other => panic!("{other:?}"),
    };
    let pid = std::process::id();
    for (wd, path) in [(1, "d"), (2, "d/f.txt")] {
        reg(
            &mut a,
            WatchRegistration::Inotify {
                pid,
                instance: 1,
                wd,
                path: path.into(),
                mask: ino::IN_ALL_EVENTS,
                branch: None,
            },
        );
    }
    for (fd, path) in [(10, "d"), (11, "d/f.txt")] {
        reg(
            &mut a,
            WatchRegistration::Kqueue {
                pid,
                kqueue_id: 7,
                fd,
                vnode_flags: kq::NOTE_ALL_VNODE,
                path: path.into(),
                branch: None,
            },
        );
    }
    reg(
        &mut a,
        WatchRegistration::FsEvents {
            pid,
            stream_id: 5,
            path_prefixes: vec!["d".into()],
            flags: fse::CREATE_FLAG_FILE_EVENTS,
            latency: 0.0,
            visible_root: "/work/p".into(),
            branch: None,
        },
    );
    assert_eq!(status(&mut a).watches, 5);
    let (i, k, f) = (
        (WatchApi::INOTIFY.0, 1u64),
        (WatchApi::KQUEUE.0, 7u64),
        (WatchApi::FSEVENTS.0, 5u64),
    );
    let file = fse::FLAG_ITEM_IS_FILE;
    let r = |h: u64, flags: u32, cookie: u32, name: &str, retire: bool| {
        (h, u64::from(flags), cookie, name.to_string(), retire)
    };
    // Another process (the CLI, through the daemon) changes the branch.
    e.cli(&["fs", "write", "--branch", "b", "d/new.txt", "--data", "x"]);
    expect_deliveries(
        &mut a,
        &Expected::from([
            (i, vec![r(1, ino::IN_CREATE, 0, "new.txt", false)]),
            (k, vec![r(10, kq::NOTE_WRITE, 0, "", false)]),
            (
                f,
                vec![r(
                    5,
                    fse::FLAG_ITEM_CREATED | file,
                    0,
                    "/work/p/d/new.txt",
                    false,
                )],
            ),
        ]),
        "create",
    );
    e.cli(&[
        "fs",
        "write",
        "--branch",
        "b",
        "d/f.txt",
        "--data",
        "hello world",
    ]);
    expect_deliveries(
        &mut a,
        &Expected::from([
            (
                i,
                vec![
                    r(1, ino::IN_MODIFY, 0, "f.txt", false),
                    r(2, ino::IN_MODIFY, 0, "", false),
                ],
            ),
            (
                k,
                vec![r(11, kq::NOTE_WRITE | kq::NOTE_EXTEND, 0, "", false)],
            ),
            (
                f,
                vec![r(
                    5,
                    fse::FLAG_ITEM_MODIFIED | file,
                    0,
                    "/work/p/d/f.txt",
                    false,
                )],
            ),
        ]),
        "modify",
    );
    e.cli(&["fs", "mv", "--branch", "b", "d/f.txt", "d/h.txt"]);
    let seq = status(&mut a).last_seq;
    let cookie = cookie_for(seq);
    expect_deliveries(
        &mut a,
        &Expected::from([
            (
                i,
                vec![
                    r(1, ino::IN_MOVED_FROM, cookie, "f.txt", false),
                    r(1, ino::IN_MOVED_TO, cookie, "h.txt", false),
                    r(2, ino::IN_MOVE_SELF, 0, "", false),
                ],
            ),
            (
                k,
                vec![
                    r(11, kq::NOTE_RENAME, 0, "", false),
                    r(10, kq::NOTE_WRITE, 0, "", false),
                ],
            ),
            (
                f,
                vec![
                    r(
                        5,
                        fse::FLAG_ITEM_RENAMED | file,
                        0,
                        "/work/p/d/f.txt",
                        false,
                    ),
                    r(
                        5,
                        fse::FLAG_ITEM_RENAMED | file,
                        0,
                        "/work/p/d/h.txt",
                        false,
                    ),
                ],
            ),
        ]),
        "rename",
    );
    // The watches on the file followed it to d/h.txt.
    e.cli(&["fs", "rm", "--branch", "b", "d/h.txt"]);
    expect_deliveries(
        &mut a,
        &Expected::from([
            (
                i,
                vec![
                    r(2, ino::IN_ATTRIB, 0, "", false),
                    r(2, ino::IN_DELETE_SELF, 0, "", false),
                    r(2, ino::IN_IGNORED, 0, "", true),
                    r(1, ino::IN_DELETE, 0, "h.txt", false),
                ],
            ),
            (
                k,
                vec![
                    r(11, kq::NOTE_DELETE, 0, "", true),
                    r(10, kq::NOTE_WRITE, 0, "", false),
                ],
            ),
            (
                f,
                vec![r(
                    5,
                    fse::FLAG_ITEM_REMOVED | file,
                    0,
                    "/work/p/d/h.txt",
                    false,
                )],
            ),
        ]),
        "remove",
    );
    assert_eq!(
        status(&mut a).watches,
        3,
        "the deleted file's watches are retired"
    );
    // Another branch, and a path outside every watch: nothing. The next
    // delivery of each watcher is the marker's (queues keep their order).
    e.cli(&["fs", "write", "--branch", "c", "d/g.txt", "--data", "in c"]);
    e.cli(&[
        "fs", "write", "--branch", "b", "top.txt", "--data", "outside",
    ]);
    e.cli(&["fs", "mkdir", "--branch", "b", "d/end"]);
    let dir = fse::FLAG_ITEM_IS_DIR;
    expect_deliveries(
        &mut a,
        &Expected::from([
            (
                i,
                vec![r(1, ino::IN_CREATE | ino::IN_ISDIR, 0, "end", false)],
            ),
            (k, vec![r(10, kq::NOTE_WRITE | kq::NOTE_LINK, 0, "", false)]),
            (
                f,
                vec![r(
                    5,
                    fse::FLAG_ITEM_CREATED | dir,
                    0,
                    "/work/p/d/end",
                    false,
                )],
            ),
        ]),
        "marker",
    );
    assert!(a.try_next_push().is_none());
}

#[test]
fn an_inotify_doorbell_socket_gets_kernel_layout_records() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut a = client_on(&d.socket, "b");
    let (app_end, daemon_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let r = a
        .request_with_fd(
            Request::Doorbell(Doorbell {
                pid: std::process::id(),
                instance: 3,
                kind: DoorbellKind::InotifySocket,
            }),
            std::os::fd::AsFd::as_fd(&daemon_end),
        )
        .unwrap();
    assert_eq!(r, Response::Done);
    drop(daemon_end); // the daemon holds its own copy now
    a.request(Request::WatchRegister(WatchRegistration::Inotify {
        pid: std::process::id(),
        instance: 3,
        wd: 4,
        path: "d".into(),
        mask: ino::IN_CREATE | ino::IN_DELETE,
        branch: None,
    }))
    .unwrap();
    assert_eq!(status(&mut a).doorbells, 1);
    e.cli(&[
        "fs",
        "write",
        "--branch",
        "b",
        "d/a-rather-long-name.txt",
        "--data",
        "x",
    ]);
    let mut app = app_end;
    app.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = app.read(&mut buf).unwrap();
    let ev = InotifyEvent::parse_all(&buf[..n]).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].wd, ev[0].mask, ev[0].cookie), (4, ino::IN_CREATE, 0));
    assert_eq!(ev[0].name, b"a-rather-long-name.txt");
    assert_eq!(ev[0].len, 32, "name + NUL padded to 16, as the kernel does");
    a.ack(WatchApi::INOTIFY.0, 3).unwrap();
    e.cli(&["fs", "rm", "--branch", "b", "d/a-rather-long-name.txt"]);
    let n = app.read(&mut buf).unwrap();
    let ev = InotifyEvent::parse_all(&buf[..n]).unwrap();
    assert_eq!((ev[0].wd, ev[0].mask), (4, ino::IN_DELETE));
    assert!(
        a.try_next_push().is_none(),
        "records went to the socket, not the connection"
    );
}

/// Not a test on its own: the child process of the tests below, run as
/// `<this test binary> --exact child_process` with AGENTFS_TEST_CHILD set.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var("AGENTFS_TEST_CHILD") else {
        return;
    };
    let socket = PathBuf::from(std::env::var("AGENTFS_TEST_SOCKET").unwrap());
    let mut c = client_on(&socket, "b");
    // Straight to fd 1: the test harness captures `println!`.
    let out = |l: String| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "child: {l}").unwrap();
        o.flush().unwrap();
    };
    match mode.as_str() {
        "hold" => {
            // Registrations of every kind, then wait to be killed.
            c.request(Request::WatchRegister(WatchRegistration::Inotify {
                pid: std::process::id(),
                instance: 1,
                wd: 1,
                path: "d".into(),
                mask: ino::IN_ALL_EVENTS,
                branch: None,
            }))
            .unwrap();
            c.request(Request::WatchRegister(WatchRegistration::Kqueue {
                pid: std::process::id(),
                kqueue_id: 2,
                fd: 5,
                vnode_flags: kq::NOTE_ALL_VNODE,
                path: "d/f.txt".into(),
                branch: None,
            }))
            .unwrap();
            c.request(Request::Subscribe {
                branch: None,
                path: "".into(),
            })
            .unwrap();
            let (o, fd) = c
                .fd_open(FdOpen {
                    branch: None,
                    path: "d/g.txt".into(),
                    flags: OpenFlags::WRITE.union(OpenFlags::APPEND),
                    mode: 0,
                })
                .unwrap();
            assert!(o.record != 0);
            fs::File::from(fd).write_all(b" and more").unwrap();
            out(format!("ready {}", std::process::id()));
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
        }
        "fds" => {
            let open = |c: &mut Client, path: &str, flags: OpenFlags, mode: u32| {
                c.fd_open(FdOpen {
                    branch: None,
                    path: path.into(),
                    flags,
                    mode,
                })
                .unwrap()
            };
            // Read-only and unchanged: the lower (base) file itself.
            let (o, fd) = open(&mut c, "d/f.txt", OpenFlags::READ, 0);
            let mut f = fs::File::from(fd);
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            let md = f.metadata().unwrap();
            out(format!(
                "read {s} copied_up={} ino={}",
                o.copied_up,
                md.ino()
            ));
            // Read-write: copied up first, then ours to change.
            let (o, fd) = open(
                &mut c,
                "d/f.txt",
                OpenFlags::READ.union(OpenFlags::WRITE),
                0,
            );
            let mut f = fs::File::from(fd);
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            f.write_all(b", world").unwrap();
            out(format!(
                "rw {s} copied_up={} ino={} record={}",
                o.copied_up,
                f.metadata().unwrap().ino(),
                o.record != 0
            ));
            c.request(Request::FdClose { record: o.record }).unwrap();
            // Create (exclusive), with a mode.
            let excl = OpenFlags::WRITE
                .union(OpenFlags::CREATE)
                .union(OpenFlags::EXCL);
            let (o, fd) = open(&mut c, "d/made.txt", excl, 0o600);
            fs::File::from(fd).write_all(b"made by the child").unwrap();
            out(format!("created={}", o.created));
            let again = c.fd_open(FdOpen {
                branch: None,
                path: "d/made.txt".into(),
                flags: excl,
                mode: 0o600,
            });
            out(format!(
                "again={}",
                again.unwrap_err().wire().unwrap().code_name()
            ));
            // Truncate.
            let (_, fd) = open(
                &mut c,
                "d/g.txt",
                OpenFlags::WRITE.union(OpenFlags::TRUNCATE),
                0,
            );
            fs::File::from(fd).write_all(b"t").unwrap();
            // Never outside the branch.
            for p in ["../../etc/passwd", "/etc/passwd", "link-out"] {
                let e = c
                    .fd_open(FdOpen {
                        branch: None,
                        path: p.into(),
                        flags: OpenFlags::READ,
                        mode: 0,
                    })
                    .unwrap_err();
                out(format!("refused {p} {}", e.wire().unwrap().code_name()));
            }
            out("done".into());
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn_child(
    mode: &str,
    socket: &Path,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AGENTFS_TEST_CHILD", mode)
        .env("AGENTFS_TEST_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The child's next `child: ...` line.
fn child_line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "the child ended early");
        // The harness may have begun the line ("test child_process ... ").
        if let Some(i) = l.find("child: ") {
            return l[i + "child: ".len()..].trim().to_string();
        }
    }
}

#[test]
fn a_client_that_dies_leaves_no_registration_behind() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut me = client_on(&d.socket, "b");
    me.request(Request::Subscribe {
        branch: None,
        path: "d".into(),
    })
    .unwrap();
    let (mut child, mut out) = spawn_child("hold", &d.socket);
    let line = child_line(&mut out);
    let child_pid: u32 = line.strip_prefix("ready ").unwrap().parse().unwrap();
    let st = status(&mut me);
    assert_eq!(
        (st.clients, st.watches, st.open_fds, st.subscriptions),
        (2, 2, 1, 2),
        "{st:?}"
    );
    // SIGKILL: no goodbye, no FdClose.
    child.kill().unwrap();
    child.wait().unwrap();
    let st = status_until(&mut me, "after the child was killed", |s| s.clients == 1);
    assert_eq!(
        (st.watches, st.open_fds, st.subscriptions, st.doorbells),
        (0, 0, 1, 0),
        "{st:?}"
    );
    // What it wrote through its fd before dying is reported, as its change.
    let DaemonFrame::CoreEvents(b) = me.next_push().unwrap() else {
        panic!()
    };
    let ev = &b.events[0];
    assert_eq!(
        (
            ev.path.to_str().unwrap(),
            ev.pid,
            ev.size_before,
            ev.size_after
        ),
        ("d/g.txt", child_pid, 3, 12)
    );
    assert_eq!(
        e.cli(&["fs", "cat", "--branch", "b", "d/g.txt"]),
        "gee and more"
    );
}

#[test]
fn fd_open_passes_real_fds_that_another_process_reads_and_writes() {
    let e = Env::hostfs();
    // A symlink pointing out of the branch.
    std::os::unix::fs::symlink("/etc/passwd", e.dir.join("base/link-out")).unwrap();
    let d = e.serve();
    let base_ino = fs::metadata(e.dir.join("base/d/f.txt")).unwrap().ino();
    let (mut child, mut out) = spawn_child("fds", &d.socket);
    let mut lines = Vec::new();
    loop {
        let l = child_line(&mut out);
        if l == "done" {
            break;
        }
        lines.push(l);
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(
        lines[0],
        format!("read hello copied_up=false ino={base_ino}")
    );
    assert!(
        lines[1].starts_with("rw hello copied_up=true ino="),
        "{}",
        lines[1]
    );
    assert!(
        !lines[1].contains(&format!("ino={base_ino} ")),
        "a copy, not the base file"
    );
    assert!(lines[1].ends_with("record=true"));
    assert_eq!(lines[2], "created=true");
    assert_eq!(lines[3], "again=already-exists");
    for l in &lines[4..] {
        assert!(
            l.ends_with(" cross-device") || l.ends_with(" invalid-argument"),
            "{l}: refused as an escape"
        );
    }
    assert_eq!(lines.len(), 7);
    // The branch has the changes; the base has none.
    assert_eq!(
        e.cli(&["fs", "cat", "--branch", "b", "d/f.txt"]),
        "hello, world"
    );
    assert_eq!(
        e.cli(&["fs", "cat", "--branch", "b", "d/made.txt"]),
        "made by the child"
    );
    assert_eq!(e.cli(&["fs", "cat", "--branch", "b", "d/g.txt"]), "t");
    let st = json(&e.cli(&["fs", "stat", "--branch", "b", "d/made.txt", "--json"]));
    assert_eq!(st["mode"], 0o600);
    assert_eq!(fs::read(e.dir.join("base/d/f.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(e.dir.join("base/d/g.txt")).unwrap(), b"gee");
    assert!(!e.dir.join("base/d/made.txt").exists());
    assert_eq!(e.cli(&["fs", "cat", "--branch", "c", "d/f.txt"]), "hello");
}

#[cfg(target_os = "linux")]
#[test]
fn fd_open_for_writing_of_a_1gib_lower_file_uses_no_new_blocks() {
    use agentfs_testfs::{mount_or_skip, write_pattern, FsKind};
    let name = "fd_open_for_writing_of_a_1gib_lower_file_uses_no_new_blocks";
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 2560, name) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let base = tfs.path().join("base");
    fs::create_dir(&base).unwrap();
    write_pattern(&base.join("big.bin"), 1 << 30);
    let config = hostfs_config(t.path(), &tfs.path().join("store"));
    let socket = t.path().join("agentfs.sock");
    agentfs_ok(
        &config,
        &socket,
        &["init", "--base", base.to_str().unwrap()],
    );
    agentfs_ok(&config, &socket, &["branch", "create", "b"]);
    let d = DaemonProc::start(&config, &socket, &[], &[]);
    let mut c = client_on(&socket, "b");
    let before = tfs.free_bytes();
    let (o, fd) = c
        .fd_open(FdOpen {
            branch: None,
            path: "big.bin".into(),
            flags: OpenFlags::READ.union(OpenFlags::WRITE),
            mode: 0,
        })
        .unwrap();
    let f = fs::File::from(fd);
    f.sync_all().unwrap();
    let used = before.saturating_sub(tfs.free_bytes());
    eprintln!("{name}: the copy-up of 1 GiB used {} KiB", used >> 10);
    assert!(o.copied_up && o.reflinked, "{o:?}");
    assert!(used < 8 << 20, "the copy-up used {} MiB", used >> 20);
    assert_eq!(f.metadata().unwrap().len(), 1 << 30);
    // Control: 64 MiB written through the fd do show up; the base keeps
    // its own blocks and content.
    let before = tfs.free_bytes();
    let block = vec![0x5Au8; 1 << 20];
    for i in 0..64u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &block, i << 20).unwrap();
    }
    f.sync_all().unwrap();
    let used = before.saturating_sub(tfs.free_bytes());
    assert!(
        used >= 60 << 20,
        "64 MiB of writes not seen ({} KiB)",
        used >> 10
    );
    let mut head = [0u8; 16];
    std::os::unix::fs::FileExt::read_exact_at(
        &fs::File::open(base.join("big.bin")).unwrap(),
        &mut head,
        0,
    )
    .unwrap();
    assert_ne!(head, [0x5Au8; 16], "the base is untouched");
    drop(f);
    drop(c);
    drop(d);
}

#[test]
fn connections_from_another_uid_are_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        agentfs_testfs::skip(
            "connections_from_another_uid_are_refused",
            "switching to another uid needs root",
        );
        return;
    }
    let e = Env::hostfs();
    let d = e.serve();
    // A copy of the binary that uid 65534 can run wherever the checkout is.
    let bin = e.dir.join("agentfs-copy");
    fs::copy(agentfs_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&e.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |socket: &Path| {
        let mut c = agentfs_cmd_of(&bin, &e.config, socket);
        c.arg("status").uid(65534).gid(65534);
        agentfs_testfs::output_retrying_etxtbsy(&mut c)
    };
    use std::os::unix::process::CommandExt;
    // As the daemon made it (0600, in a 0700 directory), another user
    // cannot even reach the socket.
    assert_eq!(
        fs::metadata(&e.socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = nobody(&e.socket);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // To test the daemon's own check (SO_PEERCRED), open the way for the
    // test: the directories traversable and the socket mode 0666. The
    // kernel now lets uid 65534 connect; the daemon must refuse it.
    fs::set_permissions(
        e.socket.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::set_permissions(&e.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let o = nobody(&e.socket);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("peer-refused") && err.contains("uid 65534"),
        "{err}"
    );
    let mut me = d.client("root");
    assert_eq!(
        status(&mut me).clients,
        1,
        "the refused client never counted"
    );
    assert!(d.log().contains("refusing a connection"), "{}", d.log());
    // A hello that lies about its uid is refused too.
    let mut h = Hello::current("liar", None);
    h.uid = 65534;
    let err = Client::connect(&d.socket, h).unwrap_err();
    assert_eq!(err.wire().unwrap().code, WireError::PEER_REFUSED);
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_ram_store_goes() {
    let t = tempfile::tempdir().unwrap();
    let ram = t.path().join("ram");
    fs::create_dir(&ram).unwrap();
    let config = write_config(
        t.path(),
        "mock",
        &format!("parent = {:?}", ram.display().to_string()),
    );
    let socket = t.path().join("agentfs.sock");
    let base = t.path().join("base");
    fs::create_dir(&base).unwrap();
    fs::write(base.join("a"), b"a").unwrap();
    let d = DaemonProc::start(
        &config,
        &socket,
        &[],
        &["--init", "--base", base.to_str().unwrap()],
    );
    let store_dirs = || fs::read_dir(&ram).unwrap().count();
    assert_eq!(store_dirs(), 1, "the mock store lives in {}", ram.display());
    agentfs_ok(&config, &socket, &["branch", "create", "m"]);
    agentfs_ok(
        &config,
        &socket,
        &["fs", "write", "--branch", "m", "b", "--data", "in RAM"],
    );
    // A client still connected does not hold the shutdown up.
    let mut c = client_on(&socket, "m");
    c.request(Request::Subscribe {
        branch: None,
        path: "".into(),
    })
    .unwrap();
    let (status, out) = d.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(out.trim(), "agentfs serve: stopped");
    assert!(!socket.exists(), "the socket is removed");
    assert_eq!(
        store_dirs(),
        0,
        "the backstore was dropped: its RAII cleanup ran"
    );
    assert!(matches!(
        c.next_push(),
        Err(agentfs_proto::ClientError::Closed)
    ));
}

#[cfg(target_os = "linux")]
fn ramdisk_possible(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && tools && Path::new("/dev/loop-control").exists() {
        return true;
    }
    agentfs_testfs::skip(
        test,
        "a btrfs RAM volume needs root, btrfs-progs and loop devices",
    );
    false
}

#[cfg(target_os = "linux")]
/// Serves a btrfs RAM volume chosen with flags, checks it, stops; returns
/// the volume's root, which must be gone.
fn ramdisk_cycle(t: &Path, n: usize) {
    let config = write_config(t, "hostfs", "");
    let socket = t.join(format!("agentfs-{n}.sock"));
    let d = DaemonProc::start(
        &config,
        &socket,
        &[
            "--backstore",
            "btrfs",
            "--backstore-option",
            "ramdisk.size_mb=256",
        ],
        &["--init"],
    );
    let mut c = d.client("ramdisk");
    let st = status(&mut c);
    assert_eq!(
        (st.backstore.plugin.as_str(), st.backstore.fs_type.as_str()),
        ("btrfs", "btrfs")
    );
    assert!(
        st.backstore.capabilities.iter().any(|c| c == "ram_backed"),
        "{st:?}"
    );
    let root = st.backstore.root.clone();
    let pid = d.child.id();
    c.request(Request::BranchCreate {
        name: format!("r{n}"),
        base: None,
    })
    .unwrap();
    c.request(Request::Fs {
        branch: Some(format!("r{n}")),
        snapshot: None,
        op: agentfs_proto::FsOp::WriteFile {
            path: "x".into(),
            data: b"in a RAM volume".to_vec(),
        },
    })
    .unwrap();
    match c
        .request(Request::Fs {
            branch: Some(format!("r{n}")),
            snapshot: None,
            op: agentfs_proto::FsOp::Read {
                path: "x".into(),
                offset: 0,
                len: 100,
            },
        })
        .unwrap()
    {
        Response::Fs(agentfs_proto::FsReply::Data(d)) => assert_eq!(d, b"in a RAM volume"),
        other => panic!("{other:?}"),
    }
    assert!(fs::read_to_string("/proc/mounts").unwrap().contains(&root));
    drop(c);
    let (status, _) = d.stop();
    assert!(status.success());
    assert!(
        !fs::read_to_string("/proc/mounts").unwrap().contains(&root),
        "the RAM volume is unmounted"
    );
    let prefix = format!("agentfs-btrfs-ram-{pid}-");
    let left: Vec<String> = fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn daemon_with_ramdisk_backstore() {
    if !ramdisk_possible("daemon_with_ramdisk_backstore") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    ramdisk_cycle(t.path(), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn daemon_ramdisk_lifecycle() {
    if !ramdisk_possible("daemon_ramdisk_lifecycle") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    for n in 1..=3 {
        ramdisk_cycle(t.path(), n);
    }
}

#[test]
fn agentfs_watch_prints_events_through_the_daemon() {
    let e = Env::hostfs();
    let _d = e.serve();
    let watch = |extra: &[&str]| {
        let mut c = agentfs_cmd(&e.config, &e.socket);
        c.args(["watch", "--branch", "b", "d"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut ready = String::new();
        err.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("agentfs watch: "), "{ready}");
        let out = BufReader::new(child.stdout.take().unwrap());
        (child, out)
    };
    let (mut core, mut core_out) = watch(&["--json"]);
    let (mut native, mut native_out) = watch(&["--native", "inotify"]);
    let mut writer = agentfs_cmd(&e.config, &e.socket)
        .args([
            "fs",
            "write",
            "--branch",
            "b",
            "d/f.txt",
            "--data",
            "hello world",
        ])
        .spawn()
        .unwrap();
    let writer_pid = writer.id();
    assert!(writer.wait().unwrap().success());
    e.cli(&[
        "fs",
        "write",
        "--branch",
        "b",
        "top.txt",
        "--data",
        "not under d",
    ]);
    e.cli(&["fs", "mv", "--branch", "b", "d/g.txt", "d/h.txt"]);
    let mut line = String::new();
    core_out.read_line(&mut line).unwrap();
    let v = json(&line);
    assert_eq!(
        (v["kind"].as_str(), v["path"].as_str(), v["pid"].as_u64()),
        (
            Some("modified"),
            Some("d/f.txt"),
            Some(u64::from(writer_pid))
        )
    );
    assert_eq!(
        (v["size_before"].as_u64(), v["size_after"].as_u64()),
        (Some(5), Some(11))
    );
    line.clear();
    core_out.read_line(&mut line).unwrap();
    let v = json(&line);
    assert_eq!(
        (v["kind"].as_str(), v["path"].as_str(), v["to"].as_str()),
        (Some("renamed"), Some("d/g.txt"), Some("d/h.txt"))
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let mut l = String::new();
        native_out.read_line(&mut l).unwrap();
        // "<seq> inotify <flags> [name] [cookie=..]"
        got.push(
            l.split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    assert_eq!(
        got,
        [
            "inotify IN_MODIFY f.txt",
            "inotify IN_MOVED_FROM g.txt",
            "inotify IN_MOVED_TO h.txt"
        ]
    );
    for c in [&mut core, &mut native] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

#[test]
fn the_handshake_refuses_what_it_cannot_serve() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut h = Hello::current("future shim", None);
    h.min_version = 99;
    h.max_version = 100;
    let err = Client::connect(&d.socket, h).unwrap_err();
    assert_eq!(err.wire().unwrap().code, WireError::VERSION_MISMATCH);
    let err = Client::connect(&d.socket, Hello::current("shim", Some("nope".into()))).unwrap_err();
    assert!(err.to_string().contains("nope: not found"), "{err}");
    // A second daemon on the same socket is refused; the first goes on.
    let o = agentfs_cmd(&e.config, &e.socket)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another agentfs daemon is serving"));
    assert_eq!(status(&mut d.client("after")).clients, 1);
}

#[test]
fn backstore_from_flags_and_environment() {
    let e = Env::hostfs();
    let status_with = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = agentfs_cmd(&e.config, &e.socket);
        c.args(["--direct", "status", "--json"]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json(&String::from_utf8(o.stdout).unwrap())
    };
    let caps = |v: &serde_json::Value| -> Vec<String> {
        v["backstore"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        status_with(&[], &[])["backstore"]["plugin"],
        "hostfs",
        "the file"
    );
    let env = [
        ("AGENTFS_BACKSTORE", "mock"),
        ("AGENTFS_BACKSTORE_OPTIONS", "reflink = false"),
    ];
    let v = status_with(&env, &[]);
    assert_eq!(
        v["backstore"]["plugin"], "mock",
        "the environment wins over the file"
    );
    assert!(!caps(&v).contains(&"native_reflink".to_string()));
    let v = status_with(&env, &["--backstore-option", "reflink=true"]);
    assert!(
        caps(&v).contains(&"native_reflink".to_string()),
        "flags win over the environment"
    );
    let o = agentfs_cmd(&e.config, &e.socket)
        .args(["--direct", "--backstore-option", "nonsense", "status"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("--backstore-option: \"nonsense\": expected KEY=VALUE"));
}

/// A kqueue doorbell is a socket: the daemon writes 32-byte
/// `struct kevent` records (macOS layout, `EVFILT_VNODE`, ident = the
/// watched fd) into it, which is what wakes the app's `kevent()` where the
/// shim registered its end as `EVFILT_READ`. No `Events` frame is sent.
#[test]
fn a_kqueue_doorbell_socket_gets_kevent_records() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut a = client_on(&d.socket, "b");
    let (app_end, daemon_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = std::process::id();
    a.request_with_fd(
        Request::Doorbell(Doorbell {
            pid,
            instance: 7,
            kind: DoorbellKind::KqueueSocket,
        }),
        std::os::fd::AsFd::as_fd(&daemon_end),
    )
    .unwrap();
    drop(daemon_end);
    a.request(Request::WatchRegister(WatchRegistration::Kqueue {
        pid,
        kqueue_id: 7,
        fd: 10,
        vnode_flags: kq::NOTE_ALL_VNODE,
        path: "d".into(),
        branch: None,
    }))
    .unwrap();
    e.cli(&["fs", "write", "--branch", "b", "d/new.txt", "--data", "x"]);
    let mut app = app_end;
    app.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rec = [0u8; 32];
    app.read_exact(&mut rec).unwrap();
    assert_eq!(
        u64::from_ne_bytes(rec[0..8].try_into().unwrap()),
        10,
        "ident"
    );
    assert_eq!(
        i16::from_ne_bytes([rec[8], rec[9]]),
        kq::EVFILT_VNODE,
        "filter"
    );
    assert_eq!(
        u32::from_ne_bytes(rec[12..16].try_into().unwrap()),
        kq::NOTE_WRITE,
        "fflags"
    );
    a.ack(WatchApi::KQUEUE.0, 7).unwrap();
    assert!(
        a.try_next_push().is_none(),
        "records went to the socket, not the connection"
    );
}

/// A doorbell must be a socket: a kqueue (or any other fd) is refused with
/// a clear error, and the connection keeps working.
#[test]
fn a_doorbell_that_is_not_a_socket_is_refused() {
    let e = Env::hostfs();
    let d = e.serve();
    let mut a = client_on(&d.socket, "b");
    let f = tempfile::tempfile().unwrap();
    let err = a
        .request_with_fd(
            Request::Doorbell(Doorbell {
                pid: std::process::id(),
                instance: 1,
                kind: DoorbellKind::KqueueSocket,
            }),
            std::os::fd::AsFd::as_fd(&f),
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be a socket"), "{err}");
    assert_eq!(status(&mut a).doorbells, 0);
}
