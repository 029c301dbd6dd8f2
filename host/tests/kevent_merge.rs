//! The macOS kevent hook's bookkeeping (`shim/src/kq.rs`, compiled in
//! here: the shim itself is only a `cdylib`) against a real daemon on any
//! platform: a `KqueueSocket` doorbell, two registrations (`EV_CLEAR` on a
//! file, `EV_ONESHOT` on its directory), a change in another branch that
//! must not arrive, changes in the branch from another process, and the
//! records the program would get from `kevent()`, one call at a time.

mod common;

#[path = "../../shim/src/kq.rs"]
#[allow(dead_code)]
mod kq;

use std::{io::Read, os::fd::AsRawFd, path::PathBuf, time::Duration};

use agentfs_proto::{Client, Doorbell, DoorbellKind, Hello, Request, Response, WatchRegistration};
use agentfs_vocab::native::kqueue::{NOTE_ATTRIB, NOTE_EXTEND, NOTE_WRITE};
use common::daemon::*;
use kq::{Change, Kev, KqState, EVFILT_VNODE, EV_ADD, EV_CLEAR, EV_ONESHOT};

fn register(c: &mut Client, pid: u32, fd: i32, path: &str) -> u64 {
    match c
        .request(Request::WatchRegister(WatchRegistration::Kqueue {
            pid,
            kqueue_id: 7,
            fd,
            vnode_flags: kq::NOTE_ALL_VNODE,
            path: path.into(),
            branch: None,
        }))
        .unwrap()
    {
        Response::WatchRegistered { watch_id, .. } => watch_id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn daemon_records_merge_into_the_programs_kevent_results() {
    let t = tempfile::tempdir().unwrap();
    let dir: PathBuf = t.path().into();
    let base = dir.join("base");
    std::fs::create_dir_all(base.join("d")).unwrap();
    std::fs::write(base.join("d/f.txt"), b"hello").unwrap();
    let config = hostfs_config(&dir, &dir.join("store"));
    let socket = dir.join("run/agentfs.sock");
    let cli = |args: &[&str]| agentfs_ok(&config, &socket, args);
    cli(&["--direct", "init", "--base", base.to_str().unwrap()]);
    cli(&["--direct", "branch", "create", "b"]);
    cli(&["--direct", "branch", "create", "c"]);
    let _d = DaemonProc::start(&config, &socket, &[], &[]);
    let mut c = Client::connect(&socket, Hello::current("kevent merge", Some("b".into()))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let pid = std::process::id();

    // The shim's side: a doorbell, then the program's two EV_ADDs.
    let (mut bell, daemon_end) = std::os::unix::net::UnixStream::pair().unwrap();
    c.request_with_fd(
        Request::Doorbell(Doorbell {
            pid,
            instance: 7,
            kind: DoorbellKind::KqueueSocket,
        }),
        std::os::fd::AsFd::as_fd(&daemon_end),
    )
    .unwrap();
    drop(daemon_end);
    let mut k = KqState::new(7);
    k.doorbell = Some(bell.as_raw_fd() as u64);
    let add = |ident: u64, flags: u16, udata: u64| Kev {
        ident,
        filter: EVFILT_VNODE,
        flags: EV_ADD | flags,
        fflags: kq::NOTE_ALL_VNODE,
        data: 0,
        udata,
    };
    for (ident, flags, udata, path) in [
        (10, EV_CLEAR, 0xABC, "d/f.txt"),
        (11, EV_ONESHOT, 0xDEF, "d"),
    ] {
        assert!(matches!(
            k.apply(&add(ident, flags, udata), |_| true),
            Change::Register { .. }
        ));
        let w = register(&mut c, pid, ident as i32, path);
        k.registered(ident, w);
    }
    assert_eq!(status(&mut c).watches, 2);

    // Another branch first (an attribute change: NOTE_ATTRIB must not
    // show up), then this branch from another process.
    cli(&["fs", "chmod", "--branch", "c", "600", "d/f.txt"]);
    cli(&[
        "fs",
        "write",
        "--branch",
        "b",
        "d/f.txt",
        "--data",
        "hello, longer",
    ]);
    cli(&["fs", "write", "--branch", "b", "d/new.txt", "--data", "x"]);

    // kevent() calls with nevents = 1 until both records came.
    bell.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut gone = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 2 {
        let (out, dead) = k.drain(1);
        assert!(out.len() <= 1, "nevents respected");
        gone.extend(dead);
        if let Some(r) = out.first() {
            got.push(*r);
            continue;
        }
        let n = bell.read(&mut buf).expect("the daemon's records");
        assert!(n > 0, "the daemon closed the doorbell");
        k.ingest(&buf[..n]);
        c.ack(1, 7).unwrap();
    }
    assert_eq!(
        got,
        vec![
            Kev {
                ident: 10,
                filter: EVFILT_VNODE,
                flags: EV_ADD | EV_CLEAR,
                fflags: NOTE_WRITE | NOTE_EXTEND,
                data: 0,
                udata: 0xABC,
            },
            Kev {
                ident: 11,
                filter: EVFILT_VNODE,
                flags: EV_ADD | EV_ONESHOT,
                fflags: NOTE_WRITE,
                data: 0,
                udata: 0xDEF,
            },
        ]
    );
    assert!(got.iter().all(|r| r.fflags & NOTE_ATTRIB == 0));
    // The oneshot registration is gone: the hook unregisters it.
    assert_eq!(gone.len(), 1);
    for watch_id in gone {
        c.request(Request::WatchUnregister { watch_id }).unwrap();
    }
    assert_eq!(status(&mut c).watches, 1);
    assert!(k.reg(11).is_none() && k.reg(10).is_some());
}
