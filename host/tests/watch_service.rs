//! The daemon's watch service with synthetic registrations and real core
//! mutations, in process (no socket): matching by equality, by parent
//! directory and by prefix; nothing across branches or for hidden paths;
//! pids on events; coalescing with one delivery outstanding; retired,
//! retargeted and updated watches; and a connection's release.

mod common;

use std::fs;

use agentfs_host::daemon::{
    state::DaemonInfo,
    watch_service::{Delivery, Outgoing},
    Daemon, Session, WatchService,
};
use agentfs_plugin_api::watch::WatchApi;
use agentfs_proto::{
    FdOpen, FsOp, OpenFlags, Request, Response, WatchRegistration, WireCoreEvent, WireEventKind,
};
use agentfs_vocab::native::{fsevents as fse, inotify as ino, kqueue as kq};
use common::*;

fn setup() -> (tempfile::TempDir, Daemon) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(base.join("d/sub")).unwrap();
    fs::write(base.join("d/f.txt"), b"hello").unwrap();
    fs::write(base.join("d/sub/deep.txt"), b"deep").unwrap();
    fs::write(base.join("top.txt"), b"top").unwrap();
    fs::write(base.join("gone.txt"), b"gone").unwrap();
    let s = store(mock(), Some(&base));
    s.create_branch("a", None, None).unwrap();
    s.create_branch("b", None, None).unwrap();
    let w = WatchService::new(watch_providers()).unwrap();
    let d = Daemon::new(
        s,
        w,
        DaemonInfo {
            config: "test".into(),
            socket: "/nonexistent".into(),
        },
    );
    (t, d)
}

fn session(d: &Daemon, pid: u32, branch: &str) -> Session {
    Session {
        conn: d.begin_session(),
        pid,
        branch: Some(branch.into()),
        version: 1,
    }
}

fn ask(d: &Daemon, s: &Session, r: Request) -> Response {
    match d.handle(s, r, None).0 {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn fs_op(d: &Daemon, s: &Session, op: FsOp) {
    ask(
        d,
        s,
        Request::Fs {
            branch: None,
            snapshot: None,
            op,
        },
    );
}

fn write(d: &Daemon, s: &Session, path: &str, data: &str) {
    fs_op(
        d,
        s,
        FsOp::WriteFile {
            path: path.into(),
            data: data.into(),
        },
    );
}

fn inotify(wd: i32, path: &str, mask: u32) -> Request {
    Request::WatchRegister(WatchRegistration::Inotify {
        pid: 0,
        instance: 1,
        wd,
        path: path.into(),
        mask,
        branch: None,
    })
}

fn kqueue(fd: i32, path: &str) -> Request {
    Request::WatchRegister(WatchRegistration::Kqueue {
        pid: 0,
        kqueue_id: 7,
        fd,
        vnode_flags: kq::NOTE_ALL_VNODE,
        path: path.into(),
        branch: None,
    })
}

fn registered(r: Response) -> (u64, u64) {
    match r {
        Response::WatchRegistered { watch_id, handle } => (watch_id, handle),
        other => panic!("{other:?}"),
    }
}

/// One delivery as (api, [(handle, flags, name)]).
type Shown = (WatchApi, Vec<(u64, u64, String)>);

/// Deliveries ready for `s`.
fn ready(d: &Daemon, s: &Session) -> Vec<Shown> {
    let mut v: Vec<_> = d
        .watch
        .take_ready(s.conn)
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Events(Delivery { api, records, .. }) => Some((
                api,
                records
                    .iter()
                    .map(|r| (r.handle, r.flags, r.name.as_str().to_string()))
                    .collect::<Vec<_>>(),
            )),
            Outgoing::Core(_) => None,
        })
        .collect();
    v.sort_by_key(|(api, _)| api.0);
    v
}

fn ack_all(d: &Daemon, s: &Session) {
    for api in [WatchApi::KQUEUE, WatchApi::FSEVENTS, WatchApi::INOTIFY] {
        for instance in [1, 5, 7] {
            d.watch.ack(s.conn, api, instance);
        }
    }
}

fn core_events(d: &Daemon, s: &Session) -> Vec<WireCoreEvent> {
    d.watch
        .take_ready(s.conn)
        .into_iter()
        .flat_map(|o| match o {
            Outgoing::Core(b) => b.events,
            Outgoing::Events(_) => vec![],
        })
        .collect()
}

fn m(bits: u32) -> u64 {
    u64::from(bits)
}

#[test]
fn file_watches_match_by_equality_and_directory_watches_their_children() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    registered(ask(&d, &s, inotify(1, "d", ino::IN_ALL_EVENTS)));
    registered(ask(&d, &s, inotify(2, "d/f.txt", ino::IN_ALL_EVENTS)));
    write(&d, &s, "d/f.txt", "changed");
    assert_eq!(
        ready(&d, &s),
        [(
            WatchApi::INOTIFY,
            vec![
                (1, m(ino::IN_MODIFY), "f.txt".into()),
                (2, m(ino::IN_MODIFY), "".into())
            ]
        )]
    );
    ack_all(&d, &s);
    // A grandchild of the directory, and a file elsewhere: no one.
    write(&d, &s, "d/sub/deep.txt", "x");
    write(&d, &s, "top.txt", "x");
    assert_eq!(ready(&d, &s), []);
    fs_op(
        &d,
        &s,
        FsOp::Mkdir {
            path: "d/new".into(),
            mode: 0o755,
        },
    );
    assert_eq!(
        ready(&d, &s),
        [(
            WatchApi::INOTIFY,
            vec![(1, m(ino::IN_CREATE | ino::IN_ISDIR), "new".into())]
        )]
    );
}

#[test]
fn fsevents_streams_match_by_prefix() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    ask(
        &d,
        &s,
        Request::WatchRegister(WatchRegistration::FsEvents {
            pid: 0,
            stream_id: 5,
            path_prefixes: vec!["d".into()],
            flags: fse::CREATE_FLAG_FILE_EVENTS,
            latency: 0.0,
            visible_root: "/Users/me/p".into(),
            branch: None,
        }),
    );
    write(&d, &s, "d/sub/deep.txt", "x");
    assert_eq!(
        ready(&d, &s),
        [(
            WatchApi::FSEVENTS,
            vec![(
                5,
                m(fse::FLAG_ITEM_MODIFIED | fse::FLAG_ITEM_IS_FILE),
                "/Users/me/p/d/sub/deep.txt".into()
            )]
        )]
    );
    ack_all(&d, &s);
    write(&d, &s, "top.txt", "x");
    fs_op(
        &d,
        &s,
        FsOp::Mkdir {
            path: "dx".into(),
            mode: 0o755,
        },
    );
    assert_eq!(ready(&d, &s), [], "prefixes match whole components");
}

#[test]
fn other_branches_and_whiteout_hidden_paths_reach_no_one() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    let other = session(&d, 200, "b");
    registered(ask(&d, &s, inotify(1, "", ino::IN_ALL_EVENTS)));
    registered(ask(&d, &s, inotify(2, "d/f.txt", ino::IN_ALL_EVENTS)));
    write(&d, &other, "d/f.txt", "in b");
    write(&d, &other, "new-in-b", "x");
    assert_eq!(ready(&d, &s), [], "branch b's changes are not branch a's");
    fs_op(
        &d,
        &s,
        FsOp::Unlink {
            path: "gone.txt".into(),
        },
    );
    assert_eq!(
        ready(&d, &s),
        [(
            WatchApi::INOTIFY,
            vec![(1, m(ino::IN_DELETE), "gone.txt".into())]
        )]
    );
    ack_all(&d, &s);
    // Hidden by a whiteout in a: no watch can be put on it...
    let (r, _) = d.handle(&s, inotify(3, "gone.txt", ino::IN_ALL_EVENTS), None);
    let e = r.unwrap_err();
    assert_eq!(e.errno, libc::ENOENT, "{e}");
    let (r, _) = d.handle(&s, kqueue(9, "gone.txt"), None);
    assert_eq!(r.unwrap_err().errno, libc::ENOENT);
    // ... and what b does with its own copy reaches no watcher of a.
    write(&d, &other, "gone.txt", "b's");
    assert_eq!(ready(&d, &s), []);
    assert_eq!(d.watch.counts().watches, 2);
}

#[test]
fn events_carry_the_pid_of_the_client_that_caused_them() {
    let (_t, d) = setup();
    let me = session(&d, 111, "a");
    let them = session(&d, 222, "a");
    ask(
        &d,
        &me,
        Request::WatchRegister(WatchRegistration::FsEvents {
            pid: 111,
            stream_id: 5,
            path_prefixes: vec!["".into()],
            flags: fse::CREATE_FLAG_FILE_EVENTS | fse::CREATE_FLAG_MARK_SELF,
            latency: 0.0,
            visible_root: "/p".into(),
            branch: None,
        }),
    );
    ask(
        &d,
        &me,
        Request::Subscribe {
            branch: None,
            path: "".into(),
        },
    );
    write(&d, &me, "top.txt", "mine");
    write(&d, &them, "d/f.txt", "theirs");
    let out = d.watch.take_ready(me.conn);
    let mut flags = Vec::new();
    let mut pids = Vec::new();
    for o in out {
        match o {
            Outgoing::Events(del) => {
                flags.extend(del.records.iter().map(|r| (r.name.to_string(), r.flags)))
            }
            Outgoing::Core(b) => pids.extend(b.events.iter().map(|e| (e.path.to_string(), e.pid))),
        }
    }
    let file = fse::FLAG_ITEM_MODIFIED | fse::FLAG_ITEM_IS_FILE;
    assert_eq!(
        flags,
        [
            ("/p/top.txt".to_string(), m(file | fse::FLAG_OWN_EVENT)),
            ("/p/d/f.txt".to_string(), m(file))
        ]
    );
    assert_eq!(
        pids,
        [("top.txt".to_string(), 111), ("d/f.txt".to_string(), 222)]
    );
}

#[test]
fn a_burst_is_delivered_in_at_most_two_batches() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    let writer = session(&d, 200, "a");
    registered(ask(&d, &s, inotify(1, "d/f.txt", ino::IN_MODIFY)));
    registered(ask(&d, &s, kqueue(10, "d/f.txt")));
    let append = |i: u64| {
        fs_op(
            &d,
            &writer,
            FsOp::Write {
                path: "d/f.txt".into(),
                offset: 5 + i,
                data: b"x".to_vec(),
            },
        )
    };
    append(0);
    // The first record goes out at once...
    let first = ready(&d, &s);
    assert_eq!(
        first,
        [
            (
                WatchApi::KQUEUE,
                vec![(10, m(kq::NOTE_WRITE | kq::NOTE_EXTEND), "".into())]
            ),
            (WatchApi::INOTIFY, vec![(1, m(ino::IN_MODIFY), "".into())]),
        ]
    );
    // ... the rest waits, coalescing, until the client has read it.
    for i in 1..3000 {
        append(i);
    }
    assert_eq!(ready(&d, &s), [], "one delivery outstanding per watcher");
    ack_all(&d, &s);
    assert_eq!(ready(&d, &s), first, "the other 2999 in one record each");
    ack_all(&d, &s);
    assert_eq!(ready(&d, &s), []);
}

#[test]
fn retired_watches_go_and_moved_watches_follow() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    registered(ask(&d, &s, inotify(2, "d/f.txt", ino::IN_ALL_EVENTS)));
    registered(ask(&d, &s, kqueue(11, "d/f.txt")));
    registered(ask(&d, &s, inotify(3, "d/sub", ino::IN_ALL_EVENTS)));
    fs_op(
        &d,
        &s,
        FsOp::Rename {
            from: "d".into(),
            to: "e".into(),
        },
    );
    assert_eq!(
        ready(&d, &s),
        [],
        "a rename of an ancestor: nothing for them"
    );
    let paths: Vec<String> = d
        .watch
        .watches_of(s.conn)
        .iter()
        .map(|w| w.path.as_str().to_string())
        .collect();
    assert_eq!(paths, ["e/f.txt", "e/f.txt", "e/sub"], "the watches follow");
    write(&d, &s, "e/sub/deep.txt", "x");
    write(&d, &s, "e/f.txt", "longer content");
    assert_eq!(
        ready(&d, &s),
        [
            (
                WatchApi::KQUEUE,
                vec![(11, m(kq::NOTE_WRITE | kq::NOTE_EXTEND), "".into())]
            ),
            (
                WatchApi::INOTIFY,
                vec![
                    (3, m(ino::IN_MODIFY), "deep.txt".into()),
                    (2, m(ino::IN_MODIFY), "".into())
                ]
            ),
        ]
    );
    ack_all(&d, &s);
    fs_op(
        &d,
        &s,
        FsOp::Unlink {
            path: "e/f.txt".into(),
        },
    );
    assert_eq!(
        ready(&d, &s),
        [
            (WatchApi::KQUEUE, vec![(11, m(kq::NOTE_DELETE), "".into())]),
            (
                WatchApi::INOTIFY,
                vec![
                    (2, m(ino::IN_ATTRIB), "".into()),
                    (2, m(ino::IN_DELETE_SELF), "".into()),
                    (2, m(ino::IN_IGNORED), "".into())
                ]
            ),
        ]
    );
    assert_eq!(
        d.watch.counts().watches,
        1,
        "only the watch on e/sub is left"
    );
}

#[test]
fn re_registering_updates_the_existing_watch() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    let (id, wd) = registered(ask(&d, &s, inotify(1, "d", ino::IN_CREATE)));
    // inotify_add_watch on a watched path: the same wd, the mask ORed.
    let again = registered(ask(
        &d,
        &s,
        inotify(5, "d/", ino::IN_DELETE | ino::IN_MASK_ADD),
    ));
    assert_eq!(again, (id, wd));
    assert_eq!(d.watch.counts().watches, 1);
    write(&d, &s, "d/n", "x");
    fs_op(&d, &s, FsOp::Unlink { path: "d/n".into() });
    assert_eq!(
        ready(&d, &s),
        [(
            WatchApi::INOTIFY,
            vec![
                (1, m(ino::IN_CREATE), "n".into()),
                (1, m(ino::IN_DELETE), "n".into())
            ]
        )]
    );
    // kqueue EV_ADD on a registered fd.
    let (k, _) = registered(ask(&d, &s, kqueue(10, "d")));
    assert_eq!(registered(ask(&d, &s, kqueue(10, "d"))).0, k);
    assert_eq!(d.watch.counts().watches, 2);
    // Unregistering is per connection.
    let other = session(&d, 200, "a");
    assert!(d
        .handle(&other, Request::WatchUnregister { watch_id: k }, None)
        .0
        .is_err());
    ask(&d, &s, Request::WatchUnregister { watch_id: k });
    assert_eq!(d.watch.counts().watches, 1);
}

#[test]
fn a_connection_ending_releases_everything_it_registered() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    let watcher = session(&d, 300, "a");
    ask(
        &d,
        &watcher,
        Request::Subscribe {
            branch: None,
            path: "d".into(),
        },
    );
    registered(ask(&d, &s, inotify(1, "d", ino::IN_ALL_EVENTS)));
    ask(
        &d,
        &s,
        Request::Subscribe {
            branch: None,
            path: "".into(),
        },
    );
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (r, _) = d.handle(
        &s,
        Request::Doorbell(agentfs_proto::Doorbell {
            pid: 100,
            instance: 1,
            kind: agentfs_proto::DoorbellKind::InotifySocket,
        }),
        Some(a.into()),
    );
    r.unwrap();
    let (r, fd) = d.handle(
        &s,
        Request::FdOpen(FdOpen {
            branch: None,
            path: "d/f.txt".into(),
            flags: OpenFlags::READ.union(OpenFlags::WRITE),
            mode: 0,
        }),
        None,
    );
    let Ok(Response::FdOpened(o)) = r else {
        panic!("{r:?}")
    };
    assert!(o.copied_up && o.record != 0);
    let c = d.watch.counts();
    assert_eq!((c.watches, c.subscriptions, c.doorbells), (1, 2, 1));
    assert_eq!(d.open_fds(), 1);
    // The process writes through its fd, then dies without closing.
    let f = std::fs::File::from(fd.into_iter().next().unwrap());
    std::os::unix::fs::FileExt::write_all_at(&f, b" and more", 5).unwrap();
    drop(f);
    assert_eq!(core_events(&d, &watcher), []);
    d.end_session(&s);
    let c = d.watch.counts();
    assert_eq!((c.watches, c.subscriptions, c.doorbells), (0, 1, 0));
    assert_eq!(d.open_fds(), 0);
    let ev = core_events(&d, &watcher);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (
            ev[0].kind,
            ev[0].path.to_str().unwrap(),
            ev[0].pid,
            ev[0].size_before,
            ev[0].size_after
        ),
        (WireEventKind::Modified, "d/f.txt", 100, 5, 14),
        "writes through a released fd are reported, with the writer's pid"
    );
}

#[test]
fn subscriptions_see_their_branch_under_their_prefix() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    ask(
        &d,
        &s,
        Request::Subscribe {
            branch: None,
            path: "d".into(),
        },
    );
    let other = session(&d, 200, "b");
    write(&d, &s, "top.txt", "x");
    write(&d, &other, "d/f.txt", "x");
    write(&d, &s, "d/sub/deep.txt", "x");
    fs_op(
        &d,
        &s,
        FsOp::Rename {
            from: "top.txt".into(),
            to: "d/top.txt".into(),
        },
    );
    let got: Vec<(WireEventKind, String)> = core_events(&d, &s)
        .into_iter()
        .map(|e| (e.kind, e.path.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (WireEventKind::Modified, "d/sub/deep.txt".into()),
            (WireEventKind::Renamed, "top.txt".into())
        ]
    );
    assert!(d
        .handle(
            &s,
            Request::Subscribe {
                branch: Some("nope".into()),
                path: "".into()
            },
            None
        )
        .0
        .is_err());
}

/// The `(wd, mask)` of each `struct inotify_event` readable now on `b`.
fn inotify_records(b: &std::os::unix::net::UnixStream) -> Vec<(i32, u32)> {
    use std::io::Read;
    b.set_nonblocking(true).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&*b).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let word = |i: usize| u32::from_ne_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
        out.push((word(0) as i32, word(4)));
        at += 16 + word(12) as usize;
    }
    assert_eq!(at, bytes.len(), "whole records only");
    out
}

#[test]
fn a_doorbell_watcher_gets_its_records_from_the_mutation_itself_and_bursts_coalesce() {
    let (_t, d) = setup();
    let s = session(&d, 100, "a");
    let writer = session(&d, 200, "a");
    registered(ask(&d, &s, inotify(1, "d/f.txt", ino::IN_MODIFY)));
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (r, _) = d.handle(
        &s,
        Request::Doorbell(agentfs_proto::Doorbell {
            pid: 100,
            instance: 1,
            kind: agentfs_proto::DoorbellKind::InotifySocket,
        }),
        Some(a.into()),
    );
    r.unwrap();
    let append = |i: u64| {
        fs_op(
            &d,
            &writer,
            FsOp::Write {
                path: "d/f.txt".into(),
                offset: 5 + i,
                data: b"x".to_vec(),
            },
        )
    };
    append(0);
    // No delivery task ran (this test has none): the record was written
    // into the doorbell by the request that changed the file.
    assert_eq!(inotify_records(&b), [(1, ino::IN_MODIFY)]);
    assert_eq!(ready(&d, &s), [], "not delivered a second time");
    for i in 1..3000 {
        append(i);
    }
    assert_eq!(inotify_records(&b), [], "one delivery outstanding");
    d.watch.ack(s.conn, WatchApi::INOTIFY, 1);
    assert_eq!(
        inotify_records(&b),
        [(1, ino::IN_MODIFY)],
        "the other 2999 coalesced into one record, written by the Ack"
    );
    d.watch.ack(s.conn, WatchApi::INOTIFY, 1);
    assert_eq!(inotify_records(&b), []);
    append(3000);
    assert_eq!(inotify_records(&b), [(1, ino::IN_MODIFY)]);
}
