//! The daemon, measured through its socket (a real `agentfs serve` process
//! over a RAM-backed mock store):
//!
//! - round-trip latency of a control request (`Ping`, and a `Stat`), of
//!   `fd_open` (read-only of an unchanged file; and write-open of a file
//!   already in the branch, with its `FdClose`), compared with a plain
//!   `open(2)` + `close(2)` of the same file, a bare socket round trip
//!   between two processes, and the same core calls in process;
//! - mutation -> watcher wake-up through the daemon (an inotify watch)
//!   against the kernel's own inotify;
//! - a burst of `Modified` events on one file (100,000 by default,
//!   `AGENTFS_BENCH_BURST=N` to change) under one watcher per provider,
//!   counting the deliveries each watcher gets (target: at most 2). The
//!   watchers do not read while the burst runs, as an app busy elsewhere.
//!
//! Run: `cargo build --workspace --release && cargo bench -p agentfs-host --bench daemon`
//! (the daemon loads the plugins from `target/release`).

#[path = "../tests/common/daemon.rs"]
#[allow(dead_code)]
mod daemon_proc;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use agentfs_proto::{
    Client, DaemonFrame, FdOpen, FsOp, Hello, OpenFlags, Request, Response, WatchRegistration,
};
use agentfs_vocab::native::{fsevents as fse, inotify as ino, kqueue as kq};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use daemon_proc::{status, write_config, DaemonProc};

struct Setup {
    _t: tempfile::TempDir,
    base: std::path::PathBuf,
    daemon: DaemonProc,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f.txt"), b"a small file to open").unwrap();
    let config = write_config(t.path(), "mock", "");
    let socket = t.path().join("agentfs.sock");
    let daemon = DaemonProc::start(
        &config,
        &socket,
        &[],
        &["--init", "--base", base.to_str().unwrap()],
    );
    let mut c = client(&socket, None);
    c.request(Request::BranchCreate {
        name: "b".into(),
        base: None,
    })
    .unwrap();
    Setup {
        _t: t,
        base,
        daemon,
    }
}

/// A store in this process over a fresh mock backstore, with branch `b`.
fn local_store(base: &Path) -> agentfs_core::Store {
    use agentfs_core as core;
    use agentfs_host::{config::PluginEntry, loader};
    let lib = Path::new(env!("CARGO_BIN_EXE_agentfs")).with_file_name(loader::library_file_name(
        agentfs_plugin_api::PluginKind::BACKSTORE,
        "mock",
    ));
    let entry = PluginEntry {
        plugin: None,
        path: Some(lib),
        options: toml::Table::new(),
    };
    let b = loader::load_backstore(&entry, &loader::SearchPath::default()).unwrap();
    let st = core::Store::init(
        b,
        core::InitOptions {
            default_base: Some(base.to_path_buf()),
            compact_threshold: None,
        },
        core::LockWait::Block,
    )
    .unwrap();
    st.create_branch("b", None, None).unwrap();
    st
}

fn client(socket: &Path, branch: Option<&str>) -> Client {
    Client::connect(
        socket,
        Hello::current("daemon bench", branch.map(str::to_string)),
    )
    .unwrap()
}

fn latency(c: &mut Criterion) {
    let s = setup();
    let mut cl = client(&s.daemon.socket, Some("b"));
    let mut g = c.benchmark_group("daemon_round_trip");
    g.bench_function("control_ping", |b| {
        b.iter(|| assert_eq!(cl.request(Request::Ping).unwrap(), Response::Pong))
    });
    g.bench_function("control_fs_stat", |b| {
        b.iter(|| {
            cl.request(Request::Fs {
                branch: None,
                snapshot: None,
                op: FsOp::Stat {
                    path: "d/f.txt".into(),
                    follow: false,
                },
            })
            .unwrap()
        })
    });
    let open = |flags| FdOpen {
        branch: None,
        path: "d/f.txt".into(),
        flags,
        mode: 0,
    };
    g.bench_function("fd_open_read_unchanged", |b| {
        b.iter(|| drop(cl.fd_open(open(OpenFlags::READ)).unwrap()))
    });
    let plain = s.base.join("d/f.txt");
    g.bench_function("plain_open_2", |b| {
        b.iter(|| drop(fs::File::open(&plain).unwrap()))
    });
    // Baselines: a bare round trip between two processes over a socket
    // pair (the floor of any daemon request), and the same core calls in
    // process (what a request does once in the daemon).
    g.bench_function("baseline_socket_round_trip", |b| {
        use std::io::{Read, Write};
        let (mut a, mut echo) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: fork in a process whose other threads only wait; the child
        // only reads, writes and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(a);
            let mut buf = [0u8; 64];
            while let Ok(n) = echo.read(&mut buf) {
                if n == 0 || echo.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        drop(echo);
        let mut buf = [0u8; 64];
        b.iter(|| {
            a.write_all(&[7u8; 24]).unwrap();
            a.read_exact(&mut buf[..24]).unwrap();
        });
        drop(a);
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    });
    let local = local_store(&s.base);
    g.bench_function("in_process_lstat", |b| {
        b.iter(|| local.branch("b").lstat("d/f.txt").unwrap())
    });
    g.bench_function("in_process_open_read_unchanged", |b| {
        let o = agentfs_core::OpenOptions::default();
        b.iter(|| drop(local.branch("b").open("d/f.txt", &o).unwrap()))
    });
    // Copied up once; from then on a write-open finds it in the branch.
    let rw = OpenFlags::READ.union(OpenFlags::WRITE);
    drop(cl.fd_open(open(rw)).unwrap());
    g.bench_function("fd_open_write_in_branch_and_close", |b| {
        b.iter(|| {
            let (o, fd) = cl.fd_open(open(rw)).unwrap();
            drop(fd);
            cl.request(Request::FdClose { record: o.record }).unwrap()
        })
    });
    // The registration handed over: one round trip, then the close is a
    // frame with no reply (the `Ping` after the loop waits for the last).
    g.bench_function("fd_open_with_writer_in_branch_and_close", |b| {
        b.iter(|| {
            let (o, fd, writer) = cl.fd_open_with_writer(open(rw)).unwrap();
            drop(fd);
            drop(writer);
            cl.fd_closed(o.record).unwrap()
        })
    });
    cl.request(Request::Ping).unwrap();
    g.finish();
}

fn burst_size() -> u64 {
    std::env::var("AGENTFS_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Registers one watch per provider on `path`.
fn watch_all(w: &mut Client, path: &str) {
    let pid = std::process::id();
    for r in [
        WatchRegistration::Kqueue {
            pid,
            kqueue_id: 1,
            fd: 3,
            vnode_flags: kq::NOTE_ALL_VNODE,
            path: path.into(),
            branch: None,
        },
        WatchRegistration::FsEvents {
            pid,
            stream_id: 2,
            path_prefixes: vec![path.into()],
            flags: fse::CREATE_FLAG_FILE_EVENTS,
            latency: 0.0,
            visible_root: "/p".into(),
            branch: None,
        },
        WatchRegistration::Inotify {
            pid,
            instance: 3,
            wd: 1,
            path: path.into(),
            mask: ino::IN_MODIFY,
            branch: None,
        },
    ] {
        w.request(Request::WatchRegister(r)).unwrap();
    }
}

/// Appends `n` times to `path` (pipelined, 256 requests in flight).
fn append_burst(m: &mut Client, path: &str, n: u64, at: &mut u64) {
    let mut sent = std::collections::VecDeque::new();
    for _ in 0..n {
        sent.push_back(
            m.send(Request::Fs {
                branch: None,
                snapshot: None,
                op: FsOp::Write {
                    path: path.into(),
                    offset: *at,
                    data: b"x".to_vec(),
                },
            })
            .unwrap(),
        );
        *at += 1;
        if sent.len() >= 256 {
            m.wait(sent.pop_front().unwrap()).unwrap();
        }
    }
    for id in sent {
        m.wait(id).unwrap();
    }
}

/// Reads (and acknowledges) deliveries until every watcher has reported
/// `last`; returns the number of deliveries per API.
fn count_deliveries(w: &mut Client, last: u64) -> BTreeMap<u32, u64> {
    let mut count: BTreeMap<u32, u64> = BTreeMap::new();
    let mut done = std::collections::BTreeSet::new();
    while done.len() < 3 {
        let DaemonFrame::Events(del) = w.next_push().unwrap() else {
            continue;
        };
        *count.entry(del.api).or_default() += 1;
        if del.records.iter().any(|r| r.seq >= last) {
            done.insert(del.api);
        }
        w.ack(del.api, del.instance).unwrap();
    }
    count
}

fn burst(c: &mut Criterion) {
    let s = setup();
    let n = burst_size();
    let mut m = client(&s.daemon.socket, Some("b"));
    let mut at = 0u64;
    let mut worst: BTreeMap<u32, u64> = BTreeMap::new();
    let mut per_burst = Vec::new();
    let mut g = c.benchmark_group("daemon_burst");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(1));
    g.bench_function(format!("modified_x{n}_one_file_three_watchers"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                // A fresh file and watchers for every burst.
                let path = format!("burst-{}-{i}.txt", per_burst.len());
                m.request(Request::Fs {
                    branch: None,
                    snapshot: None,
                    op: FsOp::WriteFile {
                        path: path.as_str().into(),
                        data: Vec::new(),
                    },
                })
                .unwrap();
                let mut w = client(&s.daemon.socket, Some("b"));
                watch_all(&mut w, &path);
                at = 0;
                let t0 = Instant::now();
                append_burst(&mut m, &path, n, &mut at);
                let last = status(&mut m).last_seq;
                let counts = count_deliveries(&mut w, last);
                let dt = t0.elapsed();
                total += dt;
                per_burst.push(dt);
                for (api, k) in counts {
                    let e = worst.entry(api).or_default();
                    *e = (*e).max(k);
                }
            }
            total
        })
    });
    g.finish();
    let names = BTreeMap::from([(1u32, "kqueue"), (2, "fsevents"), (3, "inotify")]);
    for (api, k) in &worst {
        eprintln!(
            "daemon burst of {n} Modified: {} watcher got at most {k} deliveries (target <= 2)",
            names[api]
        );
        assert!(*k <= 2, "{} got {k} deliveries", names[api]);
    }
    let mean = per_burst.iter().sum::<Duration>() / per_burst.len().max(1) as u32;
    eprintln!(
        "daemon burst: {} bursts, mean {:?} each ({:.0} mutations/s through the daemon)",
        per_burst.len(),
        mean,
        n as f64 / mean.as_secs_f64()
    );
}

/// Mutation -> watcher wake-up: a client changes a file through the daemon
/// while another client waits for the inotify record; against the kernel's
/// own inotify waking a reader for a `pwrite` on a real file.
fn wakeup(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("daemon_wakeup");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut w = client(&s.daemon.socket, Some("b"));
    w.request(Request::Fs {
        branch: None,
        snapshot: None,
        op: FsOp::WriteFile {
            path: "w.txt".into(),
            data: b"w".to_vec(),
        },
    })
    .unwrap();
    w.request(Request::WatchRegister(WatchRegistration::Inotify {
        pid: std::process::id(),
        instance: 9,
        wd: 1,
        path: "w.txt".into(),
        mask: ino::IN_MODIFY,
        branch: None,
    }))
    .unwrap();
    let watcher = std::thread::spawn(move || {
        while let Ok(DaemonFrame::Events(del)) = w.next_push() {
            w.ack(del.api, del.instance).unwrap();
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut m = client(&s.daemon.socket, Some("b"));
    g.bench_function("through_the_daemon_inotify", |b| {
        b.iter(|| {
            m.request(Request::Fs {
                branch: None,
                snapshot: None,
                op: FsOp::Write {
                    path: "w.txt".into(),
                    offset: 0,
                    data: b"x".to_vec(),
                },
            })
            .unwrap();
            rx.recv().unwrap();
        })
    });
    // The same mutation with no one watching the file: the difference is
    // the delivery (queue, frame, the watcher's wake-up).
    g.bench_function("fs_write_round_trip_unwatched", |b| {
        b.iter(|| {
            m.request(Request::Fs {
                branch: None,
                snapshot: None,
                op: FsOp::Write {
                    path: "d/f.txt".into(),
                    offset: 0,
                    data: b"x".to_vec(),
                },
            })
            .unwrap()
        })
    });
    #[cfg(target_os = "linux")]
    {
        use std::os::{fd::AsRawFd, unix::fs::FileExt};
        let file = s.base.join("kernel.txt");
        fs::write(&file, b"k").unwrap();
        // SAFETY: plain syscalls; the fd is closed when the thread ends.
        let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: a valid inotify fd and NUL-terminated path.
        assert!(unsafe { libc::inotify_add_watch(ifd, path.as_ptr(), libc::IN_MODIFY) } > 0);
        let (ktx, krx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer of the size given.
            while unsafe { libc::read(ifd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                if ktx.send(()).is_err() {
                    break;
                }
            }
        });
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        let _ = f.as_raw_fd();
        g.bench_function("kernel_inotify", |b| {
            b.iter(|| {
                f.write_all_at(b"x", 0).unwrap();
                krx.recv().unwrap();
            })
        });
    }
    g.finish();
    drop(m);
    drop(s);
    let _ = watcher.join();
}

/// Aggregate throughput of file creation through the daemon with 1, 2 and
/// 8 clients, each in its own branch, all at once: `WriteFile` of a new
/// file (create, write, close in the daemon). Criterion reports elements
/// per second, an element being one file written by one client.
fn throughput(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("daemon_throughput");
    g.sample_size(10);
    for n in [1usize, 2, 8] {
        let mut clients: Vec<(Client, String)> = (0..n)
            .map(|i| {
                let name = format!("t{n}_{i}");
                let mut c = client(&s.daemon.socket, None);
                c.request(Request::BranchCreate {
                    name: name.clone(),
                    base: None,
                })
                .unwrap();
                (c, name)
            })
            .collect();
        let mut next = 0u64;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(
            format!("create_write_close_{n}_clients_{n}_branches"),
            |b| {
                b.iter_custom(|iters| {
                    let first = next;
                    next += iters;
                    let start = Instant::now();
                    std::thread::scope(|sc| {
                        for (c, branch) in clients.iter_mut() {
                            let branch = branch.clone();
                            sc.spawn(move || {
                                for k in first..first + iters {
                                    c.request(Request::Fs {
                                        branch: Some(branch.clone()),
                                        snapshot: None,
                                        op: FsOp::WriteFile {
                                            path: format!("f{k}").into(),
                                            data: b"some bytes of a small file".to_vec(),
                                        },
                                    })
                                    .unwrap();
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, latency, wakeup, burst, throughput);
criterion_main!(benches);
