//! Frames over real sockets, every message round trip, and decoding of
//! hostile bytes (arbitrary, truncated, oversized, deeply nested).

use std::{io::Cursor, os::unix::net::UnixStream};

use agentfs_proto::*;
use proptest::prelude::*;

fn hello() -> Hello {
    Hello::current("agentfs-proto tests", Some("feature-x".into()))
}

/// One of every frame kind and request, response and reply variant.
fn samples() -> (Vec<ClientFrame>, Vec<DaemonFrame>) {
    let reqs = vec![
        Request::Ping,
        Request::Status,
        Request::BranchCreate {
            name: "a".into(),
            base: Some("/src".into()),
        },
        Request::BranchCompact { name: "a".into() },
        Request::BranchFromSnapshot {
            snapshot: "s".into(),
            name: "b".into(),
        },
        Request::BranchList,
        Request::BranchDelete { name: "a".into() },
        Request::SnapshotCreate {
            branch: "a".into(),
            name: None,
        },
        Request::SnapshotList,
        Request::SnapshotDelete { name: "s".into() },
        Request::Fs {
            branch: None,
            snapshot: Some("s".into()),
            op: FsOp::Stat {
                path: "f".into(),
                follow: true,
            },
        },
        Request::Fs {
            branch: Some("a".into()),
            snapshot: None,
            op: FsOp::ReadDir { path: "".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Read {
                path: "f".into(),
                offset: 3,
                len: 10,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Write {
                path: "f".into(),
                offset: 0,
                data: vec![0, 255, 7],
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Create {
                path: "n".into(),
                mode: 0o644,
                exclusive: true,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Mkdir {
                path: "d".into(),
                mode: 0o755,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Rmdir { path: "d".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Unlink { path: "n".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Rename {
                from: "a".into(),
                to: "b".into(),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Truncate {
                path: "f".into(),
                size: 1,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Symlink {
                target: "../x".into(),
                path: "l".into(),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Readlink { path: "l".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Chmod {
                path: "f".into(),
                mode: 0o600,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::WriteFile {
                path: "f".into(),
                data: b"all".to_vec(),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::MkdirAll {
                path: "a/b/c".into(),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::RemoveAll { path: "a".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Canonical {
                path: "l".into(),
                follow: true,
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::GetXattr {
                path: "f".into(),
                name: "user.x".into(),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::ListXattr { path: "f".into() },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::SetTimes {
                path: "f".into(),
                atime_ns: None,
                mtime_ns: Some(-1),
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::SetXattr {
                path: "f".into(),
                name: "user.x".into(),
                value: vec![0, 1],
            },
        },
        Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::RemoveXattr {
                path: "f".into(),
                name: "user.x".into(),
            },
        },
        Request::WatchRegister(WatchRegistration::Kqueue {
            pid: 1,
            kqueue_id: 2,
            fd: 3,
            vnode_flags: 0x7f,
            path: "f".into(),
            branch: None,
        }),
        Request::WatchRegister(WatchRegistration::FsEvents {
            pid: 1,
            stream_id: 9,
            path_prefixes: vec!["src".into(), "".into()],
            flags: 0x10,
            latency: 0.25,
            visible_root: "/Users/me/p".into(),
            branch: Some("a".into()),
        }),
        Request::WatchRegister(WatchRegistration::Inotify {
            pid: 1,
            instance: 4,
            wd: 1,
            path: "d".into(),
            mask: 0x2000_0100,
            branch: None,
        }),
        Request::WatchUnregister { watch_id: 5 },
        Request::Doorbell(Doorbell {
            pid: 1,
            instance: 2,
            kind: DoorbellKind::KqueueSocket,
        }),
        Request::Doorbell(Doorbell {
            pid: 1,
            instance: 3,
            kind: DoorbellKind::FsEventsSocket,
        }),
        Request::Doorbell(Doorbell {
            pid: 1,
            instance: 4,
            kind: DoorbellKind::InotifySocket,
        }),
        Request::Subscribe {
            branch: None,
            path: "src".into(),
        },
        Request::Unsubscribe { subscription: 3 },
        Request::FdOpen(FdOpen {
            branch: None,
            path: "f".into(),
            flags: OpenFlags::WRITE.union(OpenFlags::CREATE),
            mode: 0o644,
        }),
        Request::FdClose { record: 7 },
    ];
    let mut client = vec![
        ClientFrame::Hello(hello()),
        ClientFrame::Ack(Ack {
            api: 3,
            instance: 4,
        }),
    ];
    client.extend(
        reqs.into_iter()
            .enumerate()
            .map(|(i, request)| ClientFrame::Request {
                id: i as u64,
                request,
            }),
    );
    let stat = FileStat {
        kind: FileKind::Other,
        size: 3,
        mode: 0o644,
        mtime_ns: -5,
        nlink: 1,
        uid: 501,
        gid: 20,
        ino: 99,
        dev: 3,
        atime_ns: 7,
        origin: Some(FileOrigin::Committed("l2".into())),
        special: Some(SpecialKind::CharDevice),
        rdev: 0x103,
    };
    let responses = vec![
        Ok(Response::Pong),
        Ok(Response::Done),
        Ok(Response::Status(Box::new(DaemonStatus {
            daemon: "agentfs 0.1.0".into(),
            protocol: 1,
            base: "/src".into(),
            backstore: BackstoreInfo {
                plugin: "btrfs".into(),
                fs_type: "btrfs".into(),
                capacity: 1 << 30,
                used: 1 << 20,
                capabilities: vec!["native_reflink".into(), "native_snapshots".into()],
                root: "/mnt/store".into(),
            },
            branches: 2,
            snapshots: 1,
            watches: 7,
            clients: 3,
            open_fds: 1,
            subscriptions: 2,
            doorbells: 1,
            last_seq: 42,
            pid: 1234,
            config: "/etc/agentfs.toml".into(),
            socket: "/run/user/501/agentfs/agentfs.sock".into(),
            watch_providers: vec!["inotify".into()],
            read_only_fds: true,
        }))),
        Ok(Response::Branch(BranchInfo {
            name: "a".into(),
            from_snapshot: None,
            layer: "l1".into(),
            depth: 0,
            base: Some("/src".into()),
            created: 1_700_000_000,
        })),
        Ok(Response::Branches(vec![BranchInfo {
            name: "b".into(),
            from_snapshot: Some("s".into()),
            ..Default::default()
        }])),
        Ok(Response::Snapshot(SnapshotInfo {
            name: "s".into(),
            branch: "a".into(),
            native: true,
            layer: "l2".into(),
            base: None,
            created: 1,
        })),
        Ok(Response::Compacted(true)),
        Ok(Response::Snapshots(vec![])),
        Ok(Response::Fs(FsReply::Done)),
        Ok(Response::Fs(FsReply::Stat(stat))),
        Ok(Response::Fs(FsReply::Entries(vec![
            DirEntry {
                name: "x".into(),
                kind: FileKind::Dir,
                name_bytes: None,
            },
            DirEntry {
                name: "\u{fffd}".into(),
                kind: FileKind::File,
                name_bytes: Some(vec![0xff]),
            },
        ]))),
        Ok(Response::Fs(FsReply::Data(vec![1, 2, 3]))),
        Ok(Response::Fs(FsReply::Written(3))),
        Ok(Response::Fs(FsReply::Target("../x".into()))),
        Ok(Response::Fs(FsReply::Names(vec!["user.x".into()]))),
        Ok(Response::WatchRegistered {
            watch_id: 5,
            handle: 1,
        }),
        Ok(Response::Subscribed { subscription: 3 }),
        Ok(Response::FdOpened(FdOpened {
            copied_up: true,
            reflinked: true,
            created: false,
            record: 7,
            writer: false,
        })),
        Err(WireError::new(4, "snapshot s has dependents")),
    ];
    let mut daemon = vec![
        DaemonFrame::Welcome(Welcome {
            version: VERSION,
            daemon: "agentfs 0.1.0".into(),
            branch: Some("feature-x".into()),
            session: 17,
        }),
        DaemonFrame::Refused(WireError::new(WireError::VERSION_MISMATCH, "no")),
        DaemonFrame::Events(EventDelivery {
            api: 3,
            instance: 4,
            records: vec![WireRecord {
                watch_id: 5,
                handle: 1,
                seq: 9,
                flags: 0x100,
                cookie: 0,
                name: "new".into(),
                retire_watch: false,
            }],
            encoded: vec![1, 0, 0, 0],
        }),
        DaemonFrame::CoreEvents(CoreEventBatch {
            subscription: 3,
            events: vec![WireCoreEvent {
                seq: 1,
                pid: 0,
                kind: WireEventKind::Renamed,
                branch: "a".into(),
                path: "x".into(),
                to: "y".into(),
                is_dir: false,
                size_before: u64::MAX,
                size_after: u64::MAX,
            }],
            dropped: 0,
        }),
    ];
    daemon.extend(
        responses
            .into_iter()
            .enumerate()
            .map(|(i, result)| DaemonFrame::Response {
                id: i as u64,
                result,
            }),
    );
    (client, daemon)
}

#[test]
fn every_message_round_trips_through_a_byte_stream() {
    let (client, daemon) = samples();
    let mut bytes = Vec::new();
    for f in &client {
        write_frame(&mut bytes, f, MAX_FRAME_LEN).unwrap();
    }
    let mut r = Cursor::new(bytes);
    for f in &client {
        let got: ClientFrame = read_frame(&mut r, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(&got, f);
    }
    assert!(read_frame::<ClientFrame>(&mut r, MAX_FRAME_LEN)
        .unwrap()
        .is_none());
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    for f in &daemon {
        // Fed one byte at a time: whole frames come out, nothing early.
        let bytes = encode_frame(f, MAX_FRAME_LEN).unwrap();
        for b in &bytes[..bytes.len() - 1] {
            dec.push(std::slice::from_ref(b));
            assert!(dec.next_frame::<DaemonFrame>().unwrap().is_none());
        }
        dec.push(&bytes[bytes.len() - 1..]);
        assert_eq!(&dec.next_frame::<DaemonFrame>().unwrap().unwrap(), f);
        assert_eq!(dec.pending(), 0);
    }
}

#[test]
fn frames_carrying_fds_are_marked() {
    let (client, daemon) = samples();
    let fd_client: Vec<_> = client.iter().filter(|f| f.carries_fd()).collect();
    assert_eq!(fd_client.len(), 3);
    assert!(fd_client.iter().all(|f| matches!(
        f,
        ClientFrame::Request {
            request: Request::Doorbell(_),
            ..
        }
    )));
    assert_eq!(daemon.iter().filter(|f| f.carries_fd()).count(), 1);
}

#[test]
fn an_fd_opened_with_the_writer_carries_two_fds_and_old_peers_still_decode_it() {
    let opened = |writer| DaemonFrame::Response {
        id: 9,
        result: Ok(Response::FdOpened(FdOpened {
            record: 3,
            writer,
            ..FdOpened::default()
        })),
    };
    assert_eq!(opened(false).fds_carried(), 1);
    assert_eq!(opened(true).fds_carried(), 2);
    // `writer: false` is not sent at all: the frame is the one protocol 1
    // peers sent and expect.
    let bytes = encode_frame(&opened(false), MAX_FRAME_LEN).unwrap();
    assert!(!bytes.windows(6).any(|w| w == b"writer"));
    let bytes = encode_frame(&opened(true), MAX_FRAME_LEN).unwrap();
    let back: DaemonFrame = decode_body(&bytes[HEADER_LEN..]).unwrap();
    assert_eq!(back, opened(true));
    let closed = ClientFrame::FdClosed { record: 3 };
    assert!(!closed.carries_fd());
    let bytes = encode_frame(&closed, MAX_FRAME_LEN).unwrap();
    assert_eq!(decode_client_frame(&bytes[HEADER_LEN..]).unwrap(), closed);
}

#[test]
fn enums_travel_by_name_and_unknown_fields_are_ignored() {
    let bytes = encode_frame(&ClientFrame::Hello(hello()), MAX_FRAME_LEN).unwrap();
    let body = &bytes[HEADER_LEN..];
    assert!(body.windows(5).any(|w| w == b"Hello"));
    assert!(body.windows(11).any(|w| w == b"min_version"));

    // A newer client adds a field: this version still reads the hello.
    #[derive(serde::Serialize)]
    struct HelloV2 {
        magic: &'static str,
        min_version: u32,
        max_version: u32,
        client: &'static str,
        pid: u32,
        ppid: u32,
        uid: u32,
        executable: &'static str,
        branch: Option<String>,
        sandbox_profile: &'static str,
    }
    #[derive(serde::Serialize)]
    enum Frame {
        Hello(HelloV2),
    }
    let v2 = Frame::Hello(HelloV2 {
        magic: MAGIC,
        min_version: 1,
        max_version: VERSION + 1,
        client: "shim 2",
        pid: 1,
        ppid: 1,
        uid: 0,
        executable: "/bin/x",
        branch: None,
        sandbox_profile: "strict",
    });
    let bytes = encode_frame(&v2, MAX_FRAME_LEN).unwrap();
    let got: ClientFrame = decode_body(&bytes[HEADER_LEN..]).unwrap();
    let ClientFrame::Hello(h) = got else {
        panic!("{got:?}")
    };
    assert_eq!(negotiate(&h), Ok(VERSION));
}

#[test]
fn fields_added_for_the_daemon_default_when_an_older_peer_omits_them() {
    // What a peer built before `base`, `layer`, `record`... were added sends.
    #[derive(serde::Serialize)]
    struct OldBranch {
        name: &'static str,
        from_snapshot: Option<String>,
    }
    #[derive(serde::Serialize)]
    enum OldRequest {
        BranchCreate { name: &'static str },
    }
    let b: BranchInfo = decode_body(
        &encode_frame(
            &OldBranch {
                name: "a",
                from_snapshot: None,
            },
            MAX_FRAME_LEN,
        )
        .unwrap()[HEADER_LEN..],
    )
    .unwrap();
    assert_eq!(
        b,
        BranchInfo {
            name: "a".into(),
            ..Default::default()
        }
    );
    let r: Request = decode_body(
        &encode_frame(&OldRequest::BranchCreate { name: "x" }, MAX_FRAME_LEN).unwrap()
            [HEADER_LEN..],
    )
    .unwrap();
    assert_eq!(
        r,
        Request::BranchCreate {
            name: "x".into(),
            base: None
        }
    );
}

#[test]
fn an_oversized_length_prefix_is_refused_before_allocation() {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"tiny");
    match read_frame::<ClientFrame>(&mut Cursor::new(&bytes), MAX_FRAME_LEN) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (u64::from(u32::MAX), MAX_FRAME_LEN))
        }
        other => panic!("{other:?}"),
    }
    let mut dec = FrameDecoder::new(1024);
    dec.push(&2048u32.to_be_bytes());
    assert!(matches!(
        dec.next_frame::<DaemonFrame>(),
        Err(FrameError::TooLarge { len: 2048, .. })
    ));
    // The sender refuses too.
    let big = ClientFrame::Request {
        id: 1,
        request: Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Write {
                path: "f".into(),
                offset: 0,
                data: vec![0; 4096],
            },
        },
    };
    assert!(matches!(
        encode_frame(&big, 1024),
        Err(FrameError::TooLarge { .. })
    ));
    let w = WireError::from(&FrameError::TooLarge { len: 9, max: 1 });
    assert_eq!(w.code, WireError::FRAME_TOO_LARGE);
}

#[test]
fn every_truncation_of_every_frame_is_an_error_not_a_panic() {
    let (client, _) = samples();
    for f in &client {
        let bytes = encode_frame(f, MAX_FRAME_LEN).unwrap();
        for cut in 1..bytes.len() {
            match read_frame::<ClientFrame>(&mut Cursor::new(&bytes[..cut]), MAX_FRAME_LEN) {
                Err(FrameError::Truncated { needed, got }) => assert!(got < needed),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // 1,000,000 nested one-element arrays inside a Hello.
    let mut body = vec![0x81, 0xa5];
    body.extend_from_slice(b"Hello");
    body.extend(std::iter::repeat_n(0x91u8, 1_000_000));
    body.push(0xc0);
    assert!(matches!(
        decode_body::<ClientFrame>(&body),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn handshake_over_a_real_socket_accepts_and_refuses() {
    // A minimal daemon side: read the hello, negotiate, answer.
    fn serve(mut s: UnixStream) {
        let Some(ClientFrame::Hello(h)) = read_frame(&mut s, MAX_FRAME_LEN).unwrap() else {
            panic!("no hello");
        };
        let answer = match negotiate(&h) {
            Ok(version) => DaemonFrame::Welcome(Welcome {
                version,
                daemon: "test".into(),
                branch: h.branch.clone(),
                session: 1,
            }),
            Err(e) => DaemonFrame::Refused(e),
        };
        write_frame(&mut s, &answer, MAX_FRAME_LEN).unwrap();
    }
    for (min, max, ok, agreed) in [
        (1, 1, true, 1),
        (1, VERSION + 3, true, VERSION),
        (VERSION + 1, VERSION + 2, false, 0),
    ] {
        let (mut c, d) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(d));
        let mut h = hello();
        h.min_version = min;
        h.max_version = max;
        write_frame(&mut c, &ClientFrame::Hello(h), MAX_FRAME_LEN).unwrap();
        let got: DaemonFrame = read_frame(&mut c, MAX_FRAME_LEN).unwrap().unwrap();
        t.join().unwrap();
        match (got, ok) {
            (DaemonFrame::Welcome(w), true) => {
                assert_eq!(w.version, agreed);
                assert_eq!(w.branch.as_deref(), Some("feature-x"));
            }
            (DaemonFrame::Refused(e), false) => {
                assert_eq!(e.code, WireError::VERSION_MISMATCH);
                assert!(e.message.contains(&format!("{min}..={max}")), "{e}");
            }
            (other, _) => panic!("{min}..={max}: {other:?}"),
        }
        // The daemon side is gone: the next read is a clean end of stream.
        assert!(read_frame::<DaemonFrame>(&mut c, MAX_FRAME_LEN)
            .unwrap()
            .is_none());
    }
}

#[test]
fn async_frames_over_a_nonblocking_socket_pair() {
    futures_lite::future::block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = async_io::Async::new(a).unwrap();
        let mut b = async_io::Async::new(b).unwrap();
        let (client, daemon) = samples();
        let writer = std::thread::spawn(move || {
            futures_lite::future::block_on(async move {
                for f in &client {
                    write_frame_async(&mut a, f, MAX_FRAME_LEN).await.unwrap();
                }
                let back: Vec<DaemonFrame> = {
                    let mut v = Vec::new();
                    while let Some(f) = read_frame_async(&mut a, MAX_FRAME_LEN).await.unwrap() {
                        v.push(f);
                    }
                    v
                };
                (client, back)
            })
        });
        let mut got = Vec::new();
        for _ in 0..samples().0.len() {
            got.push(
                read_frame_async::<ClientFrame>(&mut b, MAX_FRAME_LEN)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        for f in &daemon {
            write_frame_async(&mut b, f, MAX_FRAME_LEN).await.unwrap();
        }
        drop(b);
        let (sent, back) = writer.join().unwrap();
        assert_eq!(got, sent);
        assert_eq!(back, daemon);
    });
}

#[test]
fn open_flags_map_to_native_and_back() {
    let f = OpenFlags::READ
        .union(OpenFlags::WRITE)
        .union(OpenFlags::CREATE)
        .union(OpenFlags::TRUNCATE);
    assert_eq!(f.to_native(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC);
    assert_eq!(OpenFlags::from_native(f.to_native()), f);
    assert_eq!(OpenFlags::from_native(libc::O_RDONLY), OpenFlags::READ);
    assert_eq!(
        OpenFlags::from_native(libc::O_WRONLY | libc::O_APPEND),
        OpenFlags::WRITE.union(OpenFlags::APPEND)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_body::<ClientFrame>(&bytes);
        let _ = decode_body::<DaemonFrame>(&bytes);
        let _ = read_frame::<ClientFrame>(&mut Cursor::new(&bytes), 4096);
        let mut dec = FrameDecoder::new(4096);
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_frame::<DaemonFrame>() {}
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        pick in 0usize..64,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let (client, daemon) = samples();
        let mut bytes = if pick % 2 == 0 {
            encode_frame(&client[pick / 2 % client.len()], MAX_FRAME_LEN).unwrap()
        } else {
            encode_frame(&daemon[pick / 2 % daemon.len()], MAX_FRAME_LEN).unwrap()
        };
        for (at, v) in flips {
            let i = HEADER_LEN + at % (bytes.len() - HEADER_LEN);
            bytes[i] = v;
        }
        let _ = read_frame::<ClientFrame>(&mut Cursor::new(&bytes), MAX_FRAME_LEN);
        let _ = read_frame::<DaemonFrame>(&mut Cursor::new(&bytes), MAX_FRAME_LEN);
    }

    #[test]
    fn any_length_prefix_is_handled(len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        match read_frame::<ClientFrame>(&mut Cursor::new(&bytes), 1 << 16) {
            Err(FrameError::TooLarge { .. }) => prop_assert!(len as usize > 1 << 16),
            Err(FrameError::Truncated { .. }) => prop_assert!(tail.len() < len as usize),
            _ => prop_assert!(tail.len() >= len as usize),
        }
    }
}
