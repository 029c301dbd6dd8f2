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

fn spawn_watcher(role: &str, shm: &Path, target: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, role)
        .env(SHM_ENV, shm)
        .env(TARGET_ENV, target)
        .spawn()
        .unwrap()
}

/// Runs `samples` (+ warm-up) one-way measurements; `mutate` is the write.
fn measure(
    role: &str,
    shm: &Path,
    target: &str,
    samples: usize,
    mut mutate: impl FnMut(),
) -> Vec<u64> {
    let sh = Shared::map(shm);
    let mut child = spawn_watcher(role, shm, target);
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
    let daemon = DaemonProc::start(
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
        samples,
        || f.write_all_at(b"x", 0).unwrap(),
    );
    let via_daemon = measure(
        "daemon",
        &t.path().join("shm-daemon"),
        socket.to_str().unwrap(),
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
    println!("{:<34} {:>8} {:>8}", "path", "p50", "p99");
    for (name, v) in [
        ("kernel inotify (pwrite -> read)", &kernel),
        ("daemon (Fs Write -> doorbell read)", &via_daemon),
    ] {
        println!("{name:<34} {:>8.1} {:>8.1}", pct(v, 0.5), pct(v, 0.99));
    }
    println!(
        "p50 ratio daemon/kernel: {:.2}x (target <= 3x); p99 ratio {:.2}x",
        pct(&via_daemon, 0.5) / pct(&kernel, 0.5),
        pct(&via_daemon, 0.99) / pct(&kernel, 0.99)
    );
    drop(m);
    drop(daemon);
}
