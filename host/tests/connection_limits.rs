//! What clients can make the daemon hold: a connection that has not said
//! `Hello` can make it hold a Hello's worth of bytes, not a 16 MiB frame;
//! and a uid gets a bounded number of connections, the rest refused with
//! an error frame and a log line.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::mpsc,
    time::Duration,
};

use agentfs_proto::{read_frame, Client, ClientError, DaemonFrame, Hello, MAX_FRAME_LEN};
use common::{daemon::DaemonProc, hostile::Served};

/// Resident set size of process `pid`, in bytes (`ps` where there is no
/// `/proc`).
#[cfg(not(target_os = "linux"))]
fn rss(pid: u32) -> u64 {
    let o = std::process::Command::new("ps")
        .args(["-o", "rss=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    let kb: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    kb * 1024
}

/// Resident set size of process `pid`, in bytes.
#[cfg(target_os = "linux")]
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// The bound this test states: 40 clients sending 16 MiB each before
/// their Hello (640 MiB in all) grow the daemon by less than this.
const RSS_GROWTH_BOUND: u64 = 64 << 20;

#[test]
fn partial_frames_before_hello_do_not_grow_the_daemon() {
    let s = Served::new(|b| std::fs::write(b.join("f"), b"f").unwrap());
    let d = s.serve();
    let pid = d.child.id();
    // Warm up: one real client, so the baseline includes a served request.
    let mut c = d.client("baseline");
    c.request(agentfs_proto::Request::Ping).unwrap();
    drop(c);
    let before = rss(pid);
    let (sent_tx, sent_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
    let mut threads = Vec::new();
    for _ in 0..40 {
        let (socket, sent_tx, done_rx) = (d.socket.clone(), sent_tx.clone(), done_rx.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = UnixStream::connect(&socket).unwrap();
            let len = MAX_FRAME_LEN as u32; // a frame of the largest size allowed after Hello
            let mut frame = len.to_be_bytes().to_vec();
            frame.resize(4 + MAX_FRAME_LEN - 1, 0x90); // one byte short: never complete
                                                       // The daemon may refuse and close long before all is sent.
            let _ = conn.write_all(&frame);
            sent_tx.send(()).unwrap();
            // Hold the connection open until the measure is taken.
            let _ = done_rx.lock().unwrap().recv();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut answer = Vec::new();
            let _ = conn.read_to_end(&mut answer);
            answer
        }));
    }
    for _ in 0..40 {
        sent_rx.recv().unwrap();
    }
    let after = rss(pid);
    drop(done_tx);
    let answers: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        after < before + RSS_GROWTH_BOUND,
        "the daemon grew from {} to {} MiB (bound: + {} MiB)",
        before >> 20,
        after >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    // Each was told why.
    for a in answers {
        match read_frame::<DaemonFrame>(&mut a.as_slice(), MAX_FRAME_LEN) {
            Ok(Some(DaemonFrame::Refused(e))) => {
                assert!(e.message.contains("exceeds the limit"), "{e}")
            }
            other => panic!("no refusal: {other:?}"),
        }
    }
    // And it still serves.
    d.client("after")
        .request(agentfs_proto::Request::Ping)
        .unwrap();
}

#[test]
fn connections_past_the_per_uid_cap_are_refused_and_reported() {
    let s = Served::new(|b| std::fs::write(b.join("f"), b"f").unwrap());
    let d = DaemonProc::start(
        &s.config,
        &s.socket,
        &[],
        &["--max-connections-per-uid", "4"],
    );
    let held: Vec<Client> = (0..4).map(|i| d.client(&format!("held {i}"))).collect();
    match Client::connect(&d.socket, Hello::current("one too many", None)) {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.errno, libc::EAGAIN, "{e}");
            assert!(e.message.contains("max-connections-per-uid"), "{e}");
        }
        other => panic!("a fifth connection: {:?}", other.map(|_| ())),
    }
    drop(held);
    let (status, _) = d.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(s.config.with_file_name("agentfs.sock.stderr")).unwrap();
    assert!(log.contains("refusing a connection"), "{log}");
}

/// What one connection can make the daemon hold after the handshake is
/// bounded too: subscriptions and files open for writing past their caps
/// are refused with an error (`no-space`), the connection goes on, and
/// releasing one makes room again.
#[test]
fn subscriptions_and_write_records_per_connection_are_capped() {
    use agentfs_host::daemon::{
        fd_requests::MAX_RECORDS_PER_CONNECTION, watch_service::MAX_SUBSCRIPTIONS_PER_CONNECTION,
    };
    use agentfs_proto::{FdOpen, OpenFlags, Request, Response};
    let s = Served::new(|_| {});
    let _d = s.serve();
    let mut c = Client::connect(&s.socket, Hello::current("caps", Some("b".into()))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let subscribe = |c: &mut Client| {
        c.request(Request::Subscribe {
            branch: None,
            path: Default::default(),
        })
    };
    let mut first = None;
    for _ in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION {
        match subscribe(&mut c).unwrap() {
            Response::Subscribed { subscription } => {
                first.get_or_insert(subscription);
            }
            other => panic!("{other:?}"),
        }
    }
    match subscribe(&mut c) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.code_name(), "no-space", "{e}"),
        other => panic!("past the cap: {other:?}"),
    }
    c.request(Request::Unsubscribe {
        subscription: first.unwrap(),
    })
    .unwrap();
    assert!(matches!(
        subscribe(&mut c).unwrap(),
        Response::Subscribed { .. }
    ));

    let open = |c: &mut Client, i: usize| {
        c.fd_open(FdOpen {
            branch: None,
            path: format!("f{i}").into(),
            flags: OpenFlags::from_native(libc::O_WRONLY | libc::O_CREAT),
            mode: 0o644,
        })
    };
    let mut records = Vec::new();
    for i in 0..MAX_RECORDS_PER_CONNECTION {
        let (opened, _fd) = open(&mut c, i).unwrap();
        records.push(opened.record);
    }
    match open(&mut c, MAX_RECORDS_PER_CONNECTION) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.code_name(), "no-space", "{e}"),
        other => panic!("past the cap: {:?}", other.map(|(o, _)| o)),
    }
    c.request(Request::FdClose { record: records[0] }).unwrap();
    assert!(open(&mut c, MAX_RECORDS_PER_CONNECTION).is_ok());
    assert_eq!(c.request(Request::Ping).unwrap(), Response::Pong);
}
