//! inotify in a branch. `inotify_init[1]` gives the program one end of a
//! socket pair instead of a kernel inotify fd; the other end goes to the
//! daemon as the instance's doorbell, and the daemon writes whole
//! `struct inotify_event` records into it for watches on branch paths.
//! Watches on paths outside the branch go to a real inotify fd whose
//! records a small thread copies into the same socket, so the program
//! reads both on one fd with distinct watch descriptors (the daemon's
//! from [`BRANCH_WD_BASE`] up, the kernel's below). `read`, `poll`,
//! `select`, `epoll`, `O_NONBLOCK`, `FIONREAD` and `close` work as on any
//! socket; each `read` acknowledges the daemon's delivery so it sends the
//! next batch.

use std::{
    collections::HashMap,
    ffi::{c_char, c_int},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
};

use agentfs_proto::{Doorbell, DoorbellKind, Request, Response, WatchRegistration};
use agentfs_vocab::native::inotify as ino;

use super::{bytes, classify, fail, orig, resolve, to_high, wire, with_daemon, Guard, Target};
use crate::resolve::{Errno, Resolved};

/// Watch descriptors of branch watches start here (the kernel's are small).
pub const BRANCH_WD_BASE: i32 = 1 << 24;

const INOTIFY_API: u32 = 3;

/// One inotify instance the shim made.
pub(crate) struct Instance {
    id: u64,
    /// Our copy of the daemon's end, to inject records (kernel events,
    /// `IN_IGNORED`).
    writer: OwnedFd,
    /// The kernel inotify fd for paths outside the branch, and the write
    /// end of the pipe that stops its forwarding thread.
    kernel: Option<(RawFd, OwnedFd)>,
    /// Branch wd -> its registration.
    watches: HashMap<i32, BranchWatch>,
    next_wd: i32,
}

/// A watch on a branch path, as registered with the daemon.
struct BranchWatch {
    /// The daemon's id for it.
    id: u64,
    /// Branch-relative canonical path.
    path: Vec<u8>,
    /// The mask in effect (`IN_MASK_ADD` applied).
    mask: u32,
}

static INSTANCES: Mutex<Option<HashMap<RawFd, Instance>>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Locks the instance table (also for the fork handlers).
pub(crate) fn lock_instances() -> MutexGuard<'static, Option<HashMap<RawFd, Instance>>> {
    INSTANCES.lock().unwrap_or_else(|p| p.into_inner())
}

fn pid() -> u32 {
    std::process::id()
}

fn new_instance(flags: c_int) -> Result<c_int, Errno> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: a two-element out array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: both fds are new and ours.
    let (app, daemon_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let daemon_end = to_high(daemon_end);
    let id = (u64::from(pid()) << 32) | NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let r = with_daemon(|c| {
        c.request_with_fd(
            Request::Doorbell(Doorbell {
                pid: pid(),
                instance: id,
                kind: DoorbellKind::InotifySocket,
            }),
            std::os::fd::AsFd::as_fd(&daemon_end),
        )
    })?;
    if r != Response::Done {
        return Err(libc::EIO);
    }
    let app = app.into_raw_fd();
    // SAFETY: fcntl on our new fd.
    unsafe {
        if flags & libc::IN_CLOEXEC == 0 {
            libc::fcntl(app, libc::F_SETFD, 0);
        }
        if flags & libc::IN_NONBLOCK != 0 {
            let fl = libc::fcntl(app, libc::F_GETFL);
            libc::fcntl(app, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let mut g = lock_instances();
    let m = g.get_or_insert_with(HashMap::new);
    m.insert(
        app,
        Instance {
            id,
            writer: daemon_end,
            kernel: None,
            watches: HashMap::new(),
            next_wd: BRANCH_WD_BASE,
        },
    );
    COUNT.store(m.len(), Ordering::Relaxed);
    Ok(app)
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    let Some(o) = orig!(inotify_init1: fn(c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(flags) };
    };
    if super::config().is_none() {
        // SAFETY: passed on.
        return unsafe { o(flags) };
    }
    new_instance(flags).unwrap_or_else(fail)
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init() -> c_int {
    // SAFETY: the same call with no flags.
    unsafe { inotify_init1(0) }
}

/// Copies kernel records from `kernel` into `writer` until `stop` is
/// readable or either end goes away. Whole records: the kernel returns
/// only whole ones, and one `send` of a buffer is written in order.
fn forward(kernel: OwnedFd, writer: OwnedFd, stop: OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: kernel.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: raw syscalls on fds this thread owns.
        unsafe {
            if libc::syscall(libc::SYS_poll, pfd.as_mut_ptr(), 2, -1) < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                return;
            }
            if pfd[1].revents != 0 {
                return;
            }
            let n = libc::syscall(
                libc::SYS_read,
                kernel.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            );
            if n <= 0 {
                return;
            }
            let mut sent = 0usize;
            while sent < n as usize {
                let w = libc::send(
                    writer.as_raw_fd(),
                    buf[sent..].as_ptr().cast(),
                    n as usize - sent,
                    libc::MSG_NOSIGNAL,
                );
                if w <= 0 {
                    return;
                }
                sent += w as usize;
            }
        }
    }
}

/// The kernel inotify fd of instance `inst`, made (with its forwarding
/// thread) on first use.
fn kernel_fd(inst: &mut Instance) -> Result<RawFd, Errno> {
    if let Some((fd, _)) = &inst.kernel {
        return Ok(*fd);
    }
    let init = orig!(inotify_init1: fn(c_int) -> c_int).ok_or(libc::ENOSYS)?;
    // SAFETY: a plain syscall wrapper.
    let k = unsafe { init(libc::IN_CLOEXEC) };
    if k < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: `k` is new and ours.
    let kernel = to_high(unsafe { OwnedFd::from_raw_fd(k) });
    let mut p = [0 as c_int; 2];
    // SAFETY: a two-element out array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(libc::EIO);
    }
    // SAFETY: both new and ours.
    let (stop_r, stop_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let (stop_r, stop_w) = (to_high(stop_r), to_high(stop_w));
    let writer = inst.writer.try_clone().map_err(|_| libc::EIO)?;
    let writer = to_high(writer);
    let thread_kernel = kernel.try_clone().map_err(|_| libc::EIO)?;
    let thread_kernel = to_high(thread_kernel);
    std::thread::Builder::new()
        .name("agentfs-inotify".into())
        .spawn(move || forward(thread_kernel, writer, stop_r))
        .map_err(|_| libc::EAGAIN)?;
    let raw = kernel.into_raw_fd();
    inst.kernel = Some((raw, stop_w));
    Ok(raw)
}

fn add_watch(fd: c_int, path: &[u8], mask: u32) -> Result<c_int, Errno> {
    let target = classify(libc::AT_FDCWD, path)?;
    let mut g = lock_instances();
    let inst = g.as_mut().and_then(|m| m.get_mut(&fd)).ok_or(libc::EBADF)?;
    let rel = match target {
        Target::Native => {
            let k = kernel_fd(inst)?;
            let add = orig!(inotify_add_watch: fn(c_int, *const c_char, u32) -> c_int)
                .ok_or(libc::ENOSYS)?;
            let c = std::ffi::CString::new(path).map_err(|_| libc::EINVAL)?;
            // SAFETY: the kernel fd and a valid path.
            let wd = unsafe { add(k, c.as_ptr(), mask) };
            if wd < 0 {
                return Err(std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO));
            }
            return Ok(wd);
        }
        Target::Branch(rel) => rel,
    };
    let canon = match resolve(&rel, mask & ino::IN_DONT_FOLLOW == 0)? {
        Resolved::Found(e) => e.path,
        Resolved::Absent(_) => return Err(libc::ENOENT),
        Resolved::Outside(_) => return Err(libc::EXDEV),
    };
    let existing = inst.watches.iter().find(|(_, w)| w.path == canon);
    let wd = existing.map(|(wd, _)| *wd).unwrap_or(inst.next_wd);
    let effective = match existing {
        Some((_, w)) if mask & ino::IN_MASK_ADD != 0 => w.mask | (mask & !ino::IN_MASK_ADD),
        _ => mask & !ino::IN_MASK_ADD,
    };
    let id = inst.id;
    let path_text = wire(&canon);
    let r = with_daemon(|c| {
        c.request(Request::WatchRegister(WatchRegistration::Inotify {
            pid: pid(),
            instance: id,
            wd,
            path: path_text.clone(),
            mask,
            branch: None,
        }))
    })?;
    let Response::WatchRegistered { watch_id, handle } = r else {
        return Err(libc::EIO);
    };
    let wd = handle as i32;
    if wd >= inst.next_wd {
        inst.next_wd = wd + 1;
    }
    inst.watches.insert(
        wd,
        BranchWatch {
            id: watch_id,
            path: canon,
            mask: effective,
        },
    );
    ensure_reconnector();
    Ok(wd)
}

#[no_mangle]
pub unsafe extern "C" fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int {
    let Some(o) = orig!(inotify_add_watch: fn(c_int, *const c_char, u32) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    if COUNT.load(Ordering::Relaxed) == 0 {
        // SAFETY: passed on.
        return unsafe { o(fd, path, mask) };
    }
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, path, mask) };
    };
    let ours = lock_instances()
        .as_ref()
        .is_some_and(|m| m.contains_key(&fd));
    if !ours {
        // SAFETY: passed on.
        return unsafe { o(fd, path, mask) };
    }
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        return fail(libc::EFAULT);
    };
    add_watch(fd, p, mask).unwrap_or_else(fail)
}

/// An `IN_IGNORED` record for `wd`, as the kernel writes it.
fn ignored(wd: i32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..4].copy_from_slice(&wd.to_ne_bytes());
    r[4..8].copy_from_slice(&ino::IN_IGNORED.to_ne_bytes());
    r
}

#[no_mangle]
pub unsafe extern "C" fn inotify_rm_watch(fd: c_int, wd: c_int) -> c_int {
    let Some(o) = orig!(inotify_rm_watch: fn(c_int, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    if COUNT.load(Ordering::Relaxed) == 0 {
        // SAFETY: passed on.
        return unsafe { o(fd, wd) };
    }
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, wd) };
    };
    let mut g = lock_instances();
    let Some(inst) = g.as_mut().and_then(|m| m.get_mut(&fd)) else {
        drop(g);
        // SAFETY: passed on.
        return unsafe { o(fd, wd) };
    };
    if wd < BRANCH_WD_BASE {
        return match &inst.kernel {
            // SAFETY: the instance's kernel fd.
            Some((k, _)) => unsafe { o(*k, wd) },
            None => fail(libc::EINVAL),
        };
    }
    let Some(BranchWatch { id: watch_id, .. }) = inst.watches.remove(&wd) else {
        return fail(libc::EINVAL);
    };
    let rec = ignored(wd);
    // SAFETY: writing our record into our end of the socket.
    unsafe {
        libc::send(
            inst.writer.as_raw_fd(),
            rec.as_ptr().cast(),
            rec.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    drop(g);
    let _ = with_daemon(|c| c.request(Request::WatchUnregister { watch_id }));
    0
}

/// The process whose reconnect thread runs (0: none; a forked child has
/// none until it makes a branch watch of its own).
static RECONNECTOR: AtomicU32 = AtomicU32::new(0);

/// Starts this process's reconnect thread, once: it holds a connection of
/// its own to notice the daemon going away, and when a daemon serves the
/// socket again, hands it every instance's doorbell and watch again (the
/// program's fds and watch descriptors stay the same).
fn ensure_reconnector() {
    let me = pid();
    if RECONNECTOR.swap(me, Ordering::AcqRel) == me {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("agentfs-reconnect".into())
        .spawn(reconnect_loop);
    if spawned.is_err() {
        RECONNECTOR.store(0, Ordering::Release);
    }
}

fn reconnect_loop() {
    // Everything this thread does is the shim's own work: the sockets it
    // opens and closes must pass through the interposers untouched.
    let Some(_inside) = Guard::enter() else {
        RECONNECTOR.store(0, Ordering::Release);
        return;
    };
    let mut lost = false;
    let mut backoff_ms = 10u64;
    while COUNT.load(Ordering::Relaxed) > 0 {
        let Ok(conn) = super::open_connection() else {
            // No daemon yet: try again, less often the longer it takes.
            lost = true;
            std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms * 2).min(1000);
            continue;
        };
        backoff_ms = 10;
        if lost {
            let n = reregister_all();
            super::shim_log(&format!("daemon back: {n} watches registered again"));
        }
        // The daemon sends nothing on this connection: a read returns when
        // it goes away.
        let mut b = [0u8; 1];
        // SAFETY: a one-byte read into our buffer on our socket.
        let _ = unsafe { libc::recv(conn.as_raw_fd(), b.as_mut_ptr().cast(), 1, 0) };
        lost = true;
    }
    RECONNECTOR.store(0, Ordering::Release);
}

/// Registers every instance's doorbell and watches with the daemon again;
/// returns how many watches were registered.
fn reregister_all() -> usize {
    let mut n = 0;
    let mut g = lock_instances();
    let Some(m) = g.as_mut() else {
        return 0;
    };
    for inst in m.values_mut() {
        let id = inst.id;
        let bell = with_daemon(|c| {
            c.request_with_fd(
                Request::Doorbell(Doorbell {
                    pid: pid(),
                    instance: id,
                    kind: DoorbellKind::InotifySocket,
                }),
                std::os::fd::AsFd::as_fd(&inst.writer),
            )
        });
        if bell != Ok(Response::Done) {
            super::shim_log("the daemon refused an inotify doorbell again");
            continue;
        }
        for (wd, w) in inst.watches.iter_mut() {
            let r = with_daemon(|c| {
                c.request(Request::WatchRegister(WatchRegistration::Inotify {
                    pid: pid(),
                    instance: id,
                    wd: *wd,
                    path: wire(&w.path),
                    mask: w.mask,
                    branch: None,
                }))
            });
            match r {
                Ok(Response::WatchRegistered { watch_id, .. }) => {
                    w.id = watch_id;
                    n += 1;
                }
                other => super::shim_log(&format!("watch {wd} not registered again: {other:?}")),
            }
        }
    }
    n
}

/// After the program read from fd `fd`: acknowledge the daemon's delivery
/// when it is an instance of ours.
pub(crate) fn after_read(fd: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    let id = lock_instances()
        .as_ref()
        .and_then(|m| m.get(&fd))
        .map(|i| i.id);
    if let Some(id) = id {
        let _ = with_daemon(|c| c.ack(INOTIFY_API, id));
    }
}

/// The program closes fd `fd`: forget an instance of ours (its watches
/// are unregistered; the forwarding thread stops).
pub(crate) fn closed(fd: c_int) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let inst = {
        let mut g = lock_instances();
        let Some(m) = g.as_mut() else {
            return;
        };
        let i = m.remove(&fd);
        COUNT.store(m.len(), Ordering::Relaxed);
        i
    };
    let Some(inst) = inst else {
        return;
    };
    if let Some((k, stop)) = inst.kernel {
        // SAFETY: a one-byte write to our pipe, then closing our kernel fd.
        unsafe {
            libc::write(stop.as_raw_fd(), b"x".as_ptr().cast(), 1);
            libc::syscall(libc::SYS_close, k);
        }
    }
    for w in inst.watches.into_values() {
        let _ = with_daemon(|c| c.request(Request::WatchUnregister { watch_id: w.id }));
    }
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut libc::c_void, n: libc::size_t) -> libc::ssize_t {
    let Some(o) = orig!(read: fn(c_int, *mut libc::c_void, libc::size_t) -> libc::ssize_t) else {
        return fail(libc::ENOSYS) as libc::ssize_t;
    };
    // SAFETY: passed on.
    let r = unsafe { o(fd, buf, n) };
    if r > 0 && COUNT.load(Ordering::Relaxed) != 0 {
        let e = std::io::Error::last_os_error();
        after_read(fd);
        super::set_errno(e.raw_os_error().unwrap_or(0));
    }
    r
}
