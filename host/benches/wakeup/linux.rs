//! The wake-up bench on Linux (see `../wakeup.rs`).

#[path = "../../tests/common/daemon.rs"]
#[allow(dead_code)]
mod daemon_proc;

use std::{
    fs,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use agentfs_proto::{
    Client, Doorbell, DoorbellKind, FsOp, Hello, Request, Response, WatchRegistration,
};
use agentfs_vocab::native::inotify as ino;
use daemon_proc::{write_config, DaemonProc};

const ROLE_ENV: &str = "AGENTFS_WAKEUP_WATCHER";
const SHM_ENV: &str = "AGENTFS_WAKEUP_SHM";
const TARGET_ENV: &str = "AGENTFS_WAKEUP_TARGET";
const INOTIFY_API: u32 = 3;
/// Runs this `agentfs` binary as the daemon instead of the one built with
/// the bench.
const DAEMON_ENV: &str = "AGENTFS_WAKEUP_DAEMON";

/// The shared page: slots of `AtomicU64`.
struct Shared {
    ptr: *mut AtomicU64,
}

const READY: usize = 0;
const DONE: usize = 1;
const STAMP: usize = 2;
const LATENCY: usize = 3;

impl Shared {
    fn map(path: &Path) -> Self {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        f.set_len(4096).unwrap();
        // SAFETY: a fresh shared mapping of a 4096-byte file we hold open;
        // it is never unmapped while the process runs.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap {}", path.display());
        Self { ptr: ptr.cast() }
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < 4096 / 8);
        // SAFETY: in bounds of the page, 8-byte aligned, mapped for the
        // process's life; AtomicU64 has the layout of u64.
        unsafe { &*self.ptr.add(i) }
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The watcher's side after each wake-up: the latency, then the sample
/// count (release, so the mutator sees the latency with it).
fn woke(sh: &Shared) {
    let t = now_ns();
    let stamp = sh.slot(STAMP).load(Ordering::Acquire);
    sh.slot(LATENCY)
        .store(t.saturating_sub(stamp), Ordering::Relaxed);
}

fn blocking_read(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: reading into a buffer of the size given.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn kernel_watcher(sh: &Shared, file: &str) {
    // SAFETY: plain syscall.
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(ifd >= 0);
    let path = std::ffi::CString::new(file).unwrap();
    // SAFETY: a valid inotify fd and NUL-terminated path.
    assert!(unsafe { libc::inotify_add_watch(ifd, path.as_ptr(), libc::IN_MODIFY) } > 0);
    sh.slot(READY).store(1, Ordering::Release);
    let mut buf = [0u8; 4096];
    while blocking_read(ifd, &mut buf) > 0 {
        woke(sh);
        sh.slot(DONE).fetch_add(1, Ordering::Release);
    }
}

fn daemon_watcher(sh: &Shared, socket: &str) {
    let mut c = Client::connect(
        Path::new(socket),
        Hello::current("wakeup bench watcher", Some("b".into())),
    )
    .unwrap();
    let pid = std::process::id();
    let instance = (u64::from(pid) << 32) | 1;
    let r = c
        .request(Request::WatchRegister(WatchRegistration::Inotify {
            pid,
            instance,
            wd: 1,
            path: "w.txt".into(),
            mask: ino::IN_MODIFY,
            branch: None,
        }))
        .unwrap();
    assert!(matches!(r, Response::WatchRegistered { .. }), "{r:?}");
    let mut fds = [0i32; 2];
    // SAFETY: a two-element out array.
    assert_eq!(
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        },
        0
    );
    // SAFETY: both fds are new and ours.
    let (app, daemon_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let r = c
        .request_with_fd(
            Request::Doorbell(Doorbell {
                pid,
                instance,
                kind: DoorbellKind::InotifySocket,
            }),
            daemon_end.as_fd(),
        )
        .unwrap();
    assert_eq!(r, Response::Done);
    drop(daemon_end);
    sh.slot(READY).store(1, Ordering::Release);
    let mut buf = [0u8; 4096];
    while blocking_read(app.as_raw_fd(), &mut buf) > 0 {
        woke(sh);
        // What the shim does after the app read: the daemon may deliver
        // this watcher's next batch.
        c.ack(INOTIFY_API, instance).unwrap();
        sh.slot(DONE).fetch_add(1, Ordering::Release);
    }
}

/// The floor of any design with a daemon process between the two: a relay
/// thread blocked in `read` on the socket the mutator writes to forwards
/// the byte to the socket the watcher thread blocks on (two idle-to-wake
/// hops, nothing else). Fds 3 (from the mutator) and 4, 5 (a pair) were
/// set up by the parent.
fn relay_watcher(sh: &Shared) {
    // SAFETY: fds 3 and 4 were placed by the parent for this process.
    let (from_mutator, relay_out) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) };
    // SAFETY: as above.
    let watch_in = unsafe { OwnedFd::from_raw_fd(5) };
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        loop {
            let n = blocking_read(from_mutator.as_raw_fd(), &mut b);
            if n <= 0 {
                break;
            }
            // SAFETY: writing the bytes just read from a valid buffer.
            unsafe { libc::write(relay_out.as_raw_fd(), b.as_ptr().cast(), n as usize) };
        }
    });
    sh.slot(READY).store(1, Ordering::Release);
    let mut buf = [0u8; 64];
    while blocking_read(watch_in.as_raw_fd(), &mut buf) > 0 {
        woke(sh);
        sh.slot(DONE).fetch_add(1, Ordering::Release);
    }
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: a two-element out array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn wait_for(sh: &Shared, slot: usize, value: u64, what: &str) {
    let start = Instant::now();
    while sh.slot(slot).load(Ordering::Acquire) < value {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the watcher did not {what} within 20 s"
        );
        std::thread::yield_now();
    }
}

fn spawn_watcher(role: &str, shm: &Path, target: &str, fds: &[i32]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE_ENV, role)
        .env(SHM_ENV, shm)
        .env(TARGET_ENV, target);
    let fds = fds.to_vec();
    // SAFETY: only dup2 (async-signal-safe) between fork and exec; the
    // sources are above the targets (fds 3.. are free in a new process
    // only after the dup2s, so the sources must not be 3..3+n).
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// Runs `samples` (+ warm-up) one-way measurements; `mutate` is the write.
fn measure(
    role: &str,
    shm: &Path,
    target: &str,
    fds: &[i32],
    samples: usize,
    mut mutate: impl FnMut(),
) -> Vec<u64> {
    let sh = Shared::map(shm);
    let mut child = spawn_watcher(role, shm, target, fds);
    wait_for(&sh, READY, 1, "get ready");
    let warmup = samples / 10;
    let mut out = Vec::with_capacity(samples);
    for n in 1..=(warmup + samples) as u64 {
        wait_for(&sh, DONE, n - 1, "finish the previous sample");
        // Let the watcher block in read() again: every sample is a wake-up
        // of an idle reader, as for an app waiting on its inotify fd.
        std::thread::sleep(Duration::from_micros(200));
        sh.slot(STAMP).store(now_ns(), Ordering::Release);
        mutate();
        wait_for(&sh, DONE, n, "wake up");
        if n > warmup as u64 {
            out.push(sh.slot(LATENCY).load(Ordering::Relaxed));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out.sort_unstable();
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let sh = Shared::map(&PathBuf::from(std::env::var_os(SHM_ENV).unwrap()));
        let target = std::env::var(TARGET_ENV).unwrap();
        match role.as_str() {
            "kernel" => kernel_watcher(&sh, &target),
            "relay" => relay_watcher(&sh),
            _ => daemon_watcher(&sh, &target),
        }
        return;
    }
    // `cargo test --benches` runs bench binaries with no `--bench`: a quick
    // check that both paths work, not a measurement.
    let quick = !std::env::args().any(|a| a == "--bench");
    let samples: usize = if quick {
        20
    } else {
        std::env::var("AGENTFS_BENCH_SAMPLES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000)
    };

    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir_all(&base).unwrap();
    fs::write(base.join("w.txt"), b"w").unwrap();
    let config = write_config(t.path(), "mock", "");
    let socket = t.path().join("agentfs.sock");
    // Another build's daemon (its plugins next to it), to compare two
    // daemons with the same bench binary.
    let daemon_bin = std::env::var_os(DAEMON_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(daemon_proc::agentfs_bin()));
    eprintln!("daemon: {}", daemon_bin.display());
    let daemon = DaemonProc::start_bin(
        &daemon_bin,
        &config,
        &socket,
        &[],
        &["--init", "--base", base.to_str().unwrap()],
    );
    let mut m = Client::connect(&socket, Hello::current("wakeup bench", None)).unwrap();
    m.request(Request::BranchCreate {
        name: "b".into(),
        base: None,
    })
    .unwrap();

    let kfile = t.path().join("kernel.txt");
    fs::write(&kfile, b"k").unwrap();
    let f = fs::OpenOptions::new().write(true).open(&kfile).unwrap();
    let kernel = measure(
        "kernel",
        &t.path().join("shm-kernel"),
        kfile.to_str().unwrap(),
        &[],
        samples,
        || f.write_all_at(b"x", 0).unwrap(),
    );
    // Kept at high numbers so that the child's dup2 to 3, 4, 5 cannot
    // overwrite a source before it is copied.
    let high = |fd: OwnedFd| {
        // SAFETY: F_DUPFD_CLOEXEC makes a new fd from one we own.
        let h = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(h >= 100);
        // SAFETY: `h` is new and ours.
        unsafe { OwnedFd::from_raw_fd(h) }
    };
    let (to_relay, relay_in) = socket_pair();
    let (relay_out, watch_in) = socket_pair();
    let (to_relay, relay_in, relay_out, watch_in) = (
        high(to_relay),
        high(relay_in),
        high(relay_out),
        high(watch_in),
    );
    let relay = measure(
        "relay",
        &t.path().join("shm-relay"),
        "",
        &[
            relay_in.as_raw_fd(),
            relay_out.as_raw_fd(),
            watch_in.as_raw_fd(),
        ],
        samples,
        || {
            // SAFETY: one byte from a valid buffer.
            assert_eq!(
                unsafe { libc::write(to_relay.as_raw_fd(), b"x".as_ptr().cast(), 1) },
                1
            );
        },
    );
    drop((relay_in, relay_out, watch_in));
    let via_daemon = measure(
        "daemon",
        &t.path().join("shm-daemon"),
        socket.to_str().unwrap(),
        &[],
        samples,
        || {
            let r = m
                .request(Request::Fs {
                    branch: Some("b".into()),
                    snapshot: None,
                    op: FsOp::Write {
                        path: "w.txt".into(),
                        offset: 0,
                        data: b"x".to_vec(),
                    },
                })
                .unwrap();
            assert!(matches!(r, Response::Fs(_)), "{r:?}");
        },
    );
    println!("one-way wake-up, {samples} samples each (microseconds)");
    println!("{:<40} {:>8} {:>8}", "path", "p50", "p99");
    for (name, v) in [
        ("kernel inotify (pwrite -> read)", &kernel),
        ("relay floor (write -> relay -> read)", &relay),
        ("daemon (Fs Write -> doorbell read)", &via_daemon),
    ] {
        println!("{name:<40} {:>8.1} {:>8.1}", pct(v, 0.5), pct(v, 0.99));
    }
    println!(
        "p50 ratio daemon/kernel: {:.2}x (target <= 3x); p99 ratio {:.2}x",
        pct(&via_daemon, 0.5) / pct(&kernel, 0.5),
        pct(&via_daemon, 0.99) / pct(&kernel, 0.99)
    );
    println!(
        "relay floor / kernel p50: {:.2}x (two idle-to-wake hops, no work)",
        pct(&relay, 0.5) / pct(&kernel, 0.5)
    );
    drop(to_relay);
    drop(m);
    drop(daemon);
}
