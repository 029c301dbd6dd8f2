//! Malformed frames after the handshake, sent on a real socket to the real
//! daemon: each gets an error frame naming what was wrong, by the
//! request's id when it can be read (and the connection goes on), else a
//! `Refused` frame and the connection closes. A property test sends
//! arbitrary MessagePack values in every field: never a panic, never
//! silence, the connection intact or cleanly closed.

mod common;

use std::{io::Write, os::unix::net::UnixStream, time::Duration};

use agentfs_proto::{
    encode_frame, read_frame, ClientFrame, DaemonFrame, FrameError, Hello, Request, Response,
    WireError, MAX_FRAME_LEN,
};
use common::hostile::Served;
use proptest::{prelude::*, test_runner::TestRunner};

/// A MessagePack value, including what serde types cannot make (strings
/// that are not UTF-8).
#[derive(Debug, Clone)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F64(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

fn s(v: &str) -> Mp {
    Mp::Str(v.as_bytes().to_vec())
}

fn map(kv: Vec<(&str, Mp)>) -> Mp {
    Mp::Map(kv.into_iter().map(|(k, v)| (s(k), v)).collect())
}

impl Mp {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = |out: &mut Vec<u8>, tag: u8, n: usize| {
            out.push(tag);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        };
        match self {
            Mp::Nil => out.push(0xc0),
            Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Mp::Int(i) => {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Mp::UInt(u) => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Mp::F64(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Mp::Str(b) => {
                len(out, 0xdb, b.len());
                out.extend_from_slice(b);
            }
            Mp::Bin(b) => {
                len(out, 0xc6, b.len());
                out.extend_from_slice(b);
            }
            Mp::Arr(v) => {
                len(out, 0xdd, v.len());
                v.iter().for_each(|x| x.encode(out));
            }
            Mp::Map(kv) => {
                len(out, 0xdf, kv.len());
                for (k, v) in kv {
                    k.encode(out);
                    v.encode(out);
                }
            }
        }
    }

    fn frame(&self) -> Vec<u8> {
        let mut body = Vec::new();
        self.encode(&mut body);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}

/// A connection after a good handshake.
fn connect(socket: &std::path::Path) -> UnixStream {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let hello = ClientFrame::Hello(Hello::current("malformed frames", None));
    c.write_all(&encode_frame(&hello, MAX_FRAME_LEN).unwrap())
        .unwrap();
    match read_frame::<DaemonFrame>(&mut c, MAX_FRAME_LEN).unwrap() {
        Some(DaemonFrame::Welcome(_)) => c,
        other => panic!("no welcome: {other:?}"),
    }
}

/// The daemon's answer to what was just sent: a response (by id) or a
/// refusal; pushed frames are skipped.
fn answer(c: &mut UnixStream) -> DaemonFrame {
    loop {
        match read_frame::<DaemonFrame>(c, MAX_FRAME_LEN) {
            Ok(Some(DaemonFrame::Events(_) | DaemonFrame::CoreEvents(_))) => continue,
            Ok(Some(f)) => return f,
            Ok(None) => panic!("the daemon closed the connection without an error frame"),
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("no answer within 30 s (silence)")
            }
            Err(e) => panic!("unreadable answer: {e}"),
        }
    }
}

/// After a refusal the daemon closes: the next read is a clean end.
fn closed(c: &mut UnixStream) -> bool {
    matches!(read_frame::<DaemonFrame>(c, MAX_FRAME_LEN), Ok(None))
}

fn ping(c: &mut UnixStream, id: u64) {
    let f = ClientFrame::Request {
        id,
        request: Request::Ping,
    };
    c.write_all(&encode_frame(&f, MAX_FRAME_LEN).unwrap())
        .unwrap();
    match answer(c) {
        DaemonFrame::Response {
            id: got,
            result: Ok(Response::Pong),
        } => assert_eq!(got, id),
        other => panic!("ping {id}: {other:?}"),
    }
}

fn fs_request(id: Mp, op: Mp) -> Mp {
    map(vec![(
        "Request",
        map(vec![
            ("id", id),
            (
                "request",
                map(vec![(
                    "Fs",
                    map(vec![("branch", s("b")), ("snapshot", Mp::Nil), ("op", op)]),
                )]),
            ),
        ]),
    )])
}

fn stat(path: Mp) -> Mp {
    map(vec![(
        "Stat",
        map(vec![("path", path), ("follow", Mp::Bool(false))]),
    )])
}

/// Expects an error answer to request `id` naming `word`, on a connection
/// that stays usable.
fn answered_by_id(c: &mut UnixStream, frame: &Mp, id: u64, word: &str) {
    c.write_all(&frame.frame()).unwrap();
    match answer(c) {
        DaemonFrame::Response {
            id: got,
            result: Err(e),
        } => {
            assert_eq!(got, id);
            assert_eq!(e.code, WireError::PROTOCOL, "{e}");
            assert!(e.message.contains(word), "{word:?} not in {e}");
        }
        other => panic!("{frame:?}: {other:?}"),
    }
    ping(c, id + 1000);
}

/// Expects a refusal naming `word`, then the end of the connection.
fn refused(socket: &std::path::Path, frame: &[u8], word: &str) {
    let mut c = connect(socket);
    c.write_all(frame).unwrap();
    match answer(&mut c) {
        DaemonFrame::Refused(e) => assert!(e.message.contains(word), "{word:?} not in {e}"),
        other => panic!("{other:?}"),
    }
    assert!(closed(&mut c), "the connection is closed after a refusal");
}

#[test]
fn malformed_requests_get_an_error_frame_naming_what_was_wrong() {
    let srv = Served::new(|b| std::fs::write(b.join("f"), b"f").unwrap());
    let d = srv.serve();
    let mut c = connect(&d.socket);
    ping(&mut c, 1);
    // An integer path, a branch name that is not UTF-8, a missing op:
    // answered by id. (A path's bytes need not be UTF-8: paths are bytes.)
    answered_by_id(
        &mut c,
        &fs_request(Mp::UInt(5), stat(Mp::Int(7))),
        5,
        "request 5",
    );
    let bad_name = map(vec![(
        "Request",
        map(vec![
            ("id", Mp::UInt(6)),
            (
                "request",
                map(vec![(
                    "BranchDelete",
                    map(vec![("name", Mp::Str(b"\xff\xfe".to_vec()))]),
                )]),
            ),
        ]),
    )]);
    answered_by_id(&mut c, &bad_name, 6, "request 6");
    let no_op = map(vec![(
        "Request",
        map(vec![
            ("id", Mp::UInt(7)),
            ("request", map(vec![("Fs", map(vec![("branch", s("b"))]))])),
        ]),
    )]);
    answered_by_id(&mut c, &no_op, 7, "missing field `op`");
    let unknown_op = fs_request(Mp::UInt(8), map(vec![("Explode", Mp::Nil)]));
    answered_by_id(&mut c, &unknown_op, 8, "Explode");
    // No usable id, an unknown frame, a second Hello, a frame over the
    // limit: refused, then closed.
    refused(
        &d.socket,
        &fs_request(s("x"), stat(s("f"))).frame(),
        "unsigned integer",
    );
    refused(
        &d.socket,
        &fs_request(Mp::Int(-1), stat(s("f"))).frame(),
        "unsigned integer",
    );
    refused(
        &d.socket,
        &map(vec![("Bogus", Mp::Nil)]).frame(),
        "not a client frame",
    );
    refused(
        &d.socket,
        &Mp::Str(b"\xff".to_vec()).frame(),
        "not a client frame",
    );
    let hello = ClientFrame::Hello(Hello::current("again", None));
    refused(
        &d.socket,
        &encode_frame(&hello, MAX_FRAME_LEN).unwrap(),
        "second Hello",
    );
    refused(
        &d.socket,
        &((MAX_FRAME_LEN as u32) + 1).to_be_bytes(),
        "exceeds the limit",
    );
    // Still serving.
    ping(&mut connect(&d.socket), 99);
}

/// Field and variant names of the protocol, so arbitrary frames often get
/// deep into the decoder rather than failing at the first key.
const NAMES: &[&str] = &[
    "Request",
    "Hello",
    "Ack",
    "id",
    "request",
    "Ping",
    "Status",
    "Fs",
    "branch",
    "snapshot",
    "op",
    "Stat",
    "ReadDir",
    "Read",
    "Write",
    "Create",
    "Mkdir",
    "Rename",
    "Truncate",
    "Chmod",
    "path",
    "follow",
    "offset",
    "len",
    "data",
    "mode",
    "exclusive",
    "from",
    "to",
    "size",
    "name",
    "base",
    "BranchCreate",
    "BranchList",
    "SnapshotList",
    "FdOpen",
    "FdClose",
    "record",
    "flags",
    "Subscribe",
    "Unsubscribe",
    "subscription",
    "WatchUnregister",
    "watch_id",
    "api",
    "instance",
];

fn arb_name() -> impl Strategy<Value = Mp> {
    prop_oneof![
        4 => proptest::sample::select(NAMES).prop_map(s),
        1 => any::<String>().prop_map(|x| s(&x)),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Mp::Str),
    ]
}

fn arb_value() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Bool),
        any::<i64>().prop_map(Mp::Int),
        any::<u64>().prop_map(Mp::UInt),
        (0u64..10).prop_map(Mp::UInt),
        any::<f64>().prop_map(Mp::F64),
        arb_name(),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Mp::Bin),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Mp::Arr),
            proptest::collection::vec((arb_name(), inner), 0..5).prop_map(Mp::Map),
        ]
    })
}

/// A frame shaped like a request with arbitrary values in every field,
/// or anything at all.
fn arb_frame() -> impl Strategy<Value = Mp> {
    let id = prop_oneof![3 => (0u64..1_000_000).prop_map(Mp::UInt), 1 => arb_value()];
    let fields = || proptest::collection::vec((arb_name(), arb_value()), 0..5).prop_map(Mp::Map);
    let request = prop_oneof![
        arb_name(),
        (arb_name(), fields()).prop_map(|(k, v)| Mp::Map(vec![(k, v)])),
        (arb_name(), arb_name(), fields()).prop_map(|(k, op, v)| Mp::Map(vec![(
            k,
            map(vec![("branch", s("b")), ("op", Mp::Map(vec![(op, v)]))])
        )])),
    ];
    prop_oneof![
        4 => (id, request).prop_map(|(id, r)| map(vec![(
            "Request",
            map(vec![("id", id), ("request", r)])
        )])),
        1 => arb_value(),
    ]
}

#[test]
fn arbitrary_values_in_every_field_never_get_silence_or_a_panic() {
    let srv = Served::new(|b| std::fs::write(b.join("f"), b"f").unwrap());
    let d = srv.serve();
    let c = std::cell::RefCell::new(connect(&d.socket));
    let n = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_frame(), |frame| {
            n.set(n.get() + 1);
            let mut c = c.borrow_mut();
            c.write_all(&frame.frame()).unwrap();
            match answer(&mut c) {
                DaemonFrame::Response { .. } => ping(&mut c, 10_000_000 + n.get()),
                DaemonFrame::Refused(e) => {
                    prop_assert_eq!(e.code, WireError::PROTOCOL, "{}", e);
                    prop_assert!(closed(&mut c), "closed after a refusal");
                    *c = connect(&d.socket);
                }
                other => prop_assert!(false, "{:?}: {:?}", frame, other),
            }
            Ok(())
        })
        .unwrap();
    ping(&mut connect(&d.socket), 1);
    let (status, _) = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(!srv.ok(&["branch", "list"]).is_empty());
}
