//! The macOS FSEvents injection's bookkeeping (`shim/src/fse.rs`, compiled
//! in here: the shim itself is only a `cdylib`) against a real daemon on
//! any platform: an `FsEventsSocket` doorbell, a stream on part of the
//! branch, a change in another branch and one outside the stream's paths
//! that must not arrive, then changes in the branch from another process,
//! decoded, held for the stream's latency and batched for the callback.

mod common;

#[path = "../../shim/src/paths.rs"]
#[allow(dead_code)]
mod paths;

#[path = "../../shim/src/fse.rs"]
#[allow(dead_code, unused_imports)]
mod fse;

use std::{io::Read, path::PathBuf, time::Duration};

use agentfs_proto::{Client, Doorbell, DoorbellKind, Hello, Request, Response, WatchRegistration};
use agentfs_vocab::native::fsevents::{
    CREATE_FLAG_FILE_EVENTS, CREATE_FLAG_USE_CF_TYPES, FLAG_ITEM_CREATED, FLAG_ITEM_IS_DIR,
    FLAG_ITEM_IS_FILE, FLAG_ITEM_REMOVED,
};
use common::daemon::*;

#[test]
fn daemon_events_become_one_callback_batch_per_latency_window() {
    let t = tempfile::tempdir().unwrap();
    let dir: PathBuf = t.path().into();
    let base = dir.join("base");
    std::fs::create_dir_all(base.join("src")).unwrap();
    std::fs::create_dir_all(base.join("docs")).unwrap();
    std::fs::write(base.join("src/lib.rs"), b"pub fn f() {}\n").unwrap();
    let config = hostfs_config(&dir, &dir.join("store"));
    let socket = dir.join("run/agentfs.sock");
    let cli = |args: &[&str]| agentfs_ok(&config, &socket, args);
    cli(&["--direct", "init", "--base", base.to_str().unwrap()]);
    cli(&["--direct", "branch", "create", "b"]);
    cli(&["--direct", "branch", "create", "c"]);
    let _d = DaemonProc::start(&config, &socket, &[], &[]);
    let mut c =
        Client::connect(&socket, Hello::current("fsevents inject", Some("b".into()))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let pid = std::process::id();

    // What FSEventStreamCreate does with ["/Users/me/p/src", "/tmp"] when
    // the branch is visible at /Users/me/p.
    let flags = CREATE_FLAG_FILE_EVENTS | CREATE_FLAG_USE_CF_TYPES;
    let split = fse::split_paths(
        b"/Users/me/p",
        b"/Users/me/p",
        &[b"/Users/me/p/src".to_vec(), b"/tmp".to_vec()],
    )
    .unwrap();
    assert_eq!(split.branch, vec!["src"]);
    assert_eq!(split.native, vec![b"/tmp".to_vec()]);
    assert_eq!(fse::path_form(flags), fse::PathForm::CfStrings);
    let (mut bell, daemon_end) = std::os::unix::net::UnixStream::pair().unwrap();
    c.request_with_fd(
        Request::Doorbell(Doorbell {
            pid,
            instance: 42,
            kind: DoorbellKind::FsEventsSocket,
        }),
        std::os::fd::AsFd::as_fd(&daemon_end),
    )
    .unwrap();
    drop(daemon_end);
    let r = c
        .request(Request::WatchRegister(WatchRegistration::FsEvents {
            pid,
            stream_id: 42,
            path_prefixes: split.branch.clone(),
            flags,
            latency: 0.5,
            visible_root: "/Users/me/p".into(),
            branch: None,
        }))
        .unwrap();
    assert!(matches!(r, Response::WatchRegistered { .. }), "{r:?}");

    // Not for this stream: another branch, and a path outside its prefix.
    cli(&["fs", "mkdir", "--branch", "c", "src/other"]);
    cli(&["fs", "mkdir", "--branch", "b", "docs/elsewhere"]);
    // For it, from another process.
    cli(&["fs", "mkdir", "--branch", "b", "src/new"]);
    cli(&["fs", "rm", "--branch", "b", "src/lib.rs"]);

    bell.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut dec = fse::Decoder::default();
    let mut lat = fse::Latency::new(0.5, flags);
    let mut buf = [0u8; 4096];
    let mut clock = 1_000u64; // the test's own monotonic clock (ns)
    let mut held = 0;
    let mut due = None;
    while held < 2 {
        let n = bell.read(&mut buf).expect("the daemon's events");
        assert!(n > 0, "the daemon closed the doorbell");
        let ev = dec.push(&buf[..n]).unwrap();
        held += ev.len();
        due = lat.push(clock, ev);
        c.ack(2, 42).unwrap();
        clock += 1_000;
    }
    let due = due.expect("a window");
    assert_eq!(
        due,
        1_000 + 500_000_000,
        "the window starts at the first event"
    );
    assert!(
        lat.take(due - 1).is_empty(),
        "held for the stream's latency"
    );
    let batch = fse::Batch::of(42, &lat.take(due));
    assert_eq!(
        batch.paths,
        vec!["/Users/me/p/src/new", "/Users/me/p/src/lib.rs"]
    );
    assert_eq!(
        batch.flags,
        vec![
            FLAG_ITEM_CREATED | FLAG_ITEM_IS_DIR,
            FLAG_ITEM_REMOVED | FLAG_ITEM_IS_FILE
        ]
    );
    assert!(batch.ids[0] < batch.ids[1], "event ids increase");
}
