//! The measured hot paths: each bench sets up its world (files, a store, a
//! loaded plugin, registrations) and returns the closure whose instruction
//! count the gate tracks. Setup is never counted.

use std::{fs, hint::black_box, path::Path};

use agentfs_conformance::watch_tables::{all_flags, append_event, watch_spec, Watched};
use agentfs_core::{DirLayerStore, InitOptions, LockWait, OpenOptions, Store};
use agentfs_host::{
    config::PluginEntry,
    daemon::WatchService,
    loader::{load_backstore, load_watch_provider, LoadedWatchProvider, SearchPath},
};
use agentfs_plugin_api::watch::{WatchApi, WatchSpec};
use agentfs_proto::{
    decode_body, encode_frame, Ack, ClientFrame, DaemonFrame, EventDelivery, FdOpen, FdOpened,
    FileKind, FileStat, FsOp, FsReply, OpenFlags, Request, Response, WireRecord, HEADER_LEN,
    MAX_FRAME_LEN,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{paths, resolve};

/// A measured operation, ready to run (its world lives in the closure).
pub type Body = Box<dyn FnMut()>;

/// One benchmark of the gate.
pub struct Bench {
    /// Stable name: the key in the baselines file.
    pub name: &'static str,
    /// What one iteration does.
    pub what: &'static str,
    /// Builds the world and returns the measured body.
    pub setup: fn() -> anyhow::Result<Body>,
}

/// Every gated benchmark, in report order.
pub const BENCHES: &[Bench] = &[
    Bench {
        name: "core/lstat_3_layers",
        what: "lstat of an unchanged base file through a 3-layer branch",
        setup: core_lstat,
    },
    Bench {
        name: "core/open_read_3_layers",
        what: "open for reading (and close) of an unchanged base file through a 3-layer branch",
        setup: core_open_read,
    },
    Bench {
        name: "core/readdir_100_3_layers",
        what: "listing of an unchanged 100-entry base directory through a 3-layer branch",
        setup: core_readdir,
    },
    Bench {
        name: "core/copy_up_decision",
        what: "open for writing (and close) of a file already in the active layer: the copy-up decision finds nothing to copy",
        setup: core_copy_up_decision,
    },
    Bench {
        name: "core/write_1_byte_in_branch",
        what: "a 1-byte write at offset 0 of a file already in the active layer (the daemon's Fs Write)",
        setup: core_write,
    },
    Bench {
        name: "abi/backstore_capabilities",
        what: "one call into the loaded mock backstore plugin (capabilities: pure crossing)",
        setup: abi_capabilities,
    },
    Bench {
        name: "watch/synthesize_kqueue",
        what: "the kqueue provider synthesizes one Modified event for 2 watches",
        setup: synth_kqueue,
    },
    Bench {
        name: "watch/synthesize_fsevents",
        what: "the FSEvents provider synthesizes one Modified event for 2 watches",
        setup: synth_fsevents,
    },
    Bench {
        name: "watch/synthesize_inotify",
        what: "the inotify provider synthesizes one Modified event for 2 watches",
        setup: synth_inotify,
    },
    Bench {
        name: "watch/service_match_10000",
        what: "the watch service fans one Modified event out against 10,000 inotify registrations (one matches)",
        setup: service_match,
    },
    Bench {
        name: "proto/request_fs_stat",
        what: "encode + decode of a Request frame (Fs Stat)",
        setup: proto_request_stat,
    },
    Bench {
        name: "proto/response_stat",
        what: "encode + decode of a Response frame (a FileStat)",
        setup: proto_response_stat,
    },
    Bench {
        name: "proto/request_fd_open",
        what: "encode + decode of a Request frame (FdOpen for writing)",
        setup: proto_request_fd_open,
    },
    Bench {
        name: "proto/response_fd_opened",
        what: "encode + decode of a Response frame (FdOpened)",
        setup: proto_response_fd_opened,
    },
    Bench {
        name: "proto/events_delivery",
        what: "encode + decode of an Events frame (one inotify record)",
        setup: proto_events,
    },
    Bench {
        name: "proto/ack",
        what: "encode + decode of an Ack frame",
        setup: proto_ack,
    },
    Bench {
        name: "shim/translate_3_layers",
        what: "the shim's path translation: absolute path -> branch path -> the layer holding it (3 layers)",
        setup: shim_translate,
    },
];

/// The bench called `name`.
pub fn find(name: &str) -> Option<&'static Bench> {
    BENCHES.iter().find(|b| b.name == name)
}

/// A store over `base` (a `src/lib.rs` and a 100-entry `src/big`) with
/// branch `b` whose chain has 3 layers: active, one committed, the base.
struct World {
    _dir: tempfile::TempDir,
    store: Store,
}

fn world() -> anyhow::Result<World> {
    let dir = tempfile::Builder::new().prefix("agentfs-perf").tempdir()?;
    let base = dir.path().join("base");
    fs::create_dir_all(base.join("src/big"))?;
    fs::write(base.join("src/lib.rs"), b"pub fn f() {}\n")?;
    for i in 0..100 {
        fs::write(base.join(format!("src/big/f{i:04}")), b"x")?;
    }
    let store = Store::init(
        DirLayerStore::new(dir.path().join("store"))?,
        InitOptions {
            default_base: Some(base),
            ..InitOptions::default()
        },
        LockWait::Block,
    )?;
    store.create_branch("b", None, None)?;
    store.branch("b").write_file("other.txt", b"o")?;
    store.create_snapshot("b", Some("s"))?;
    store.branch("b").write_file("top.txt", b"t")?;
    Ok(World { _dir: dir, store })
}

fn core_lstat() -> anyhow::Result<Body> {
    let w = world()?;
    Ok(Box::new(move || {
        let w = &w; // the whole world, temporary directory included
        black_box(w.store.branch("b").lstat("src/lib.rs").expect("lstat").size);
    }))
}

fn core_open_read() -> anyhow::Result<Body> {
    let w = world()?;
    let ro = OpenOptions::default();
    Ok(Box::new(move || {
        let w = &w; // the whole world, temporary directory included
        drop(black_box(
            w.store.branch("b").open("src/lib.rs", &ro).expect("open"),
        ));
    }))
}

fn core_readdir() -> anyhow::Result<Body> {
    let w = world()?;
    Ok(Box::new(move || {
        let w = &w; // the whole world, temporary directory included
        black_box(
            w.store
                .branch("b")
                .read_dir("src/big")
                .expect("readdir")
                .len(),
        );
    }))
}

fn core_copy_up_decision() -> anyhow::Result<Body> {
    let w = world()?;
    let rw = OpenOptions {
        write: true,
        ..OpenOptions::default()
    };
    Ok(Box::new(move || {
        let w = &w; // the whole world, temporary directory included
        let f = w
            .store
            .branch("b")
            .open("top.txt", &rw)
            .expect("open for writing");
        assert!(!f.copied_up, "top.txt is in the active layer");
        drop(black_box(f));
    }))
}

fn core_write() -> anyhow::Result<Body> {
    let w = world()?;
    Ok(Box::new(move || {
        let w = &w; // the whole world, temporary directory included
        w.store
            .branch("b")
            .write_at("top.txt", 0, b"x")
            .expect("write");
    }))
}

fn search() -> SearchPath {
    SearchPath(vec![agentfs_conformance::target_dir()])
}

fn abi_capabilities() -> anyhow::Result<Body> {
    let abi = load_backstore(&PluginEntry::named("mock"), &search())?;
    Ok(Box::new(move || {
        black_box(abi.capabilities());
    }))
}

fn provider(name: &str) -> anyhow::Result<LoadedWatchProvider> {
    Ok(load_watch_provider(&PluginEntry::named(name), &search())?)
}

/// One watch on directory `d`, one on file `d/f`: the event matches both.
fn synth(name: &str, api: WatchApi) -> anyhow::Result<Body> {
    let p = provider(name)?;
    let d = p.register(&[], watch_spec(Watched::Dir("d"), all_flags(api)))?;
    let mut f = watch_spec(Watched::File("d/f"), all_flags(api));
    f.watch_id = 2;
    f.handle = 8;
    let f = p.register(std::slice::from_ref(&d), f)?;
    let ws = [d, f];
    let ev = append_event(1);
    Ok(Box::new(move || {
        black_box(p.synthesize(&ws, &ev).expect("synthesize").len());
    }))
}

fn synth_kqueue() -> anyhow::Result<Body> {
    synth("kqueue", WatchApi::KQUEUE)
}

fn synth_fsevents() -> anyhow::Result<Body> {
    synth("fsevents", WatchApi::FSEVENTS)
}

fn synth_inotify() -> anyhow::Result<Body> {
    synth("inotify", WatchApi::INOTIFY)
}

/// Registrations in the service.
const REGISTRATIONS: u64 = 10_000;

fn service_match() -> anyhow::Result<Body> {
    let svc = WatchService::new(vec![provider("inotify")?])?;
    // 100 connections of 100 watches, as many processes would hold them.
    let conns = 100;
    for c in 0..conns {
        svc.connect(c, std::sync::Arc::new(|| {}));
    }
    for i in 0..REGISTRATIONS {
        let conn = i % conns;
        let path = format!("d{}/f{}", i % 97, i);
        let spec = WatchSpec {
            instance: conn,
            handle: i + 1,
            path: path.as_str().into(),
            ..watch_spec(Watched::File("d/f"), all_flags(WatchApi::INOTIFY))
        };
        svc.register(conn, WatchApi::INOTIFY, spec)?;
    }
    let mut ev = append_event(1);
    ev.path = "d3/f100".into();
    let mut n = 0;
    Ok(Box::new(move || {
        n += 1;
        ev.seq = n;
        svc.dispatch(black_box(&ev));
        // Empty the queue so every iteration does the same work.
        black_box(svc.take_ready(100 % conns).len());
        svc.ack(100 % conns, WatchApi::INOTIFY, 100 % conns);
    }))
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
    msg: T,
) -> anyhow::Result<Body> {
    let bytes = encode_frame(&msg, MAX_FRAME_LEN)?;
    let back: T = decode_body(&bytes[HEADER_LEN..])?;
    anyhow::ensure!(back == msg, "the frame does not decode to what was encoded");
    Ok(Box::new(move || {
        let bytes = encode_frame(black_box(&msg), MAX_FRAME_LEN).expect("encode");
        let back: T = decode_body(&bytes[HEADER_LEN..]).expect("decode");
        black_box(back);
    }))
}

fn proto_request_stat() -> anyhow::Result<Body> {
    round_trip(ClientFrame::Request {
        id: 42,
        request: Request::Fs {
            branch: None,
            snapshot: None,
            op: FsOp::Stat {
                path: "src/agentfs/core/lib.rs".into(),
                follow: true,
            },
        },
    })
}

fn proto_response_stat() -> anyhow::Result<Body> {
    round_trip(DaemonFrame::Response {
        id: 42,
        result: Ok(Response::Fs(FsReply::Stat(FileStat {
            kind: FileKind::File,
            size: 4096,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            nlink: 1,
            uid: 1000,
            gid: 1000,
            ino: 123_456,
            dev: 2049,
            atime_ns: 1_700_000_000_000_000_000,
            origin: None,
            special: None,
            rdev: 0,
        }))),
    })
}

fn proto_request_fd_open() -> anyhow::Result<Body> {
    round_trip(ClientFrame::Request {
        id: 43,
        request: Request::FdOpen(FdOpen {
            branch: None,
            path: "src/agentfs/core/lib.rs".into(),
            flags: OpenFlags::READ.union(OpenFlags::WRITE),
            mode: 0o644,
        }),
    })
}

fn proto_response_fd_opened() -> anyhow::Result<Body> {
    round_trip(DaemonFrame::Response {
        id: 43,
        result: Ok(Response::FdOpened(FdOpened {
            copied_up: true,
            reflinked: true,
            created: false,
            record: 7,
            writer: false,
        })),
    })
}

fn proto_events() -> anyhow::Result<Body> {
    round_trip(DaemonFrame::Events(EventDelivery {
        api: WatchApi::INOTIFY.0,
        instance: 3,
        records: vec![WireRecord {
            watch_id: 1,
            handle: 1,
            seq: 9,
            flags: 2,
            cookie: 0,
            name: "lib.rs".into(),
            retire_watch: false,
        }],
        encoded: vec![0; 32],
    }))
}

fn proto_ack() -> anyhow::Result<Body> {
    round_trip(ClientFrame::Ack(Ack {
        api: WatchApi::INOTIFY.0,
        instance: 3,
    }))
}

fn shim_translate() -> anyhow::Result<Body> {
    let dir = tempfile::Builder::new().prefix("agentfs-perf").tempdir()?;
    let layer = |name: &str, base: bool| -> anyhow::Result<resolve::Layer> {
        let root = dir.path().join(name);
        fs::create_dir_all(root.join("src"))?;
        Ok(resolve::Layer {
            root: path_bytes(&root),
            base,
        })
    };
    let layers = vec![
        layer("top", false)?,
        layer("mid", false)?,
        layer("base", true)?,
    ];
    fs::write(dir.path().join("base/src/lib.rs"), b"pub fn f() {}\n")?;
    let root = b"/home/user/project".to_vec();
    let chain = resolve::Chain::new(layers, root.clone())
        .map_err(|e| anyhow::anyhow!("chain: errno {e}"))?;
    let abs = b"/home/user/project/src/lib.rs".to_vec();
    Ok(Box::new(move || {
        let _keep = &dir;
        let rel = paths::under(&root, black_box(&abs)).expect("under the root");
        match chain.resolve(rel, true).expect("resolve") {
            resolve::Resolved::Found(e) => assert_eq!(e.layer, 2),
            other => panic!("src/lib.rs resolved to {other:?}"),
        }
    }))
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}
