//! The kevent hook: `kqueue`, `kevent` and `kevent64` are interposed.
//! `EVFILT_VNODE` registrations on fds the shim opened in the branch go to
//! the daemon's watch service instead of the kernel; everything else
//! (other filters, fds outside the branch) stays native. The daemon's
//! records arrive on a doorbell socket registered in the same kqueue as
//! `EVFILT_READ` under the socket's own fd number, so a `kevent()` blocked
//! in the kernel wakes when they come; the bookkeeping (merging, flags,
//! `nevents`, filtering the doorbell out) is [`crate::kq`].

use std::{
    collections::HashMap,
    ffi::c_int,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
    time::Instant,
};

use agentfs_proto::{Doorbell, DoorbellKind, Request, Response, WatchRegistration};

use super::{
    config, fail, fd_get, interpose_tuples, set_errno, shim_log, to_high, wire, with_daemon, Guard,
};
use crate::{
    kq::{self, Change, Kev, KqState, EVFILT_READ, EVFILT_VNODE, EV_ADD, EV_ERROR, EV_RECEIPT},
    resolve::Errno,
};

const KQUEUE_API: u32 = 1;

/// One of the program's kqueues with branch registrations.
struct Kq {
    st: KqState,
    /// The shim's end of the doorbell.
    bell: Option<OwnedFd>,
}

type Table = Option<HashMap<RawFd, Kq>>;
static KQS: Mutex<Table> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The kqueue table, locked (for the fork handlers).
pub(crate) struct Locked(MutexGuard<'static, Table>);

/// Locks the kqueue table.
pub(crate) fn lock() -> Locked {
    Locked(KQS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Forgets every kqueue (in a forked child, which inherits none).
pub(crate) fn forget_all(l: &mut Locked) {
    *l.0 = None;
    COUNT.store(0, Ordering::Relaxed);
}

fn pid() -> u32 {
    std::process::id()
}

fn unregister(watch_id: u64) {
    let _ = with_daemon(|c| c.request(Request::WatchUnregister { watch_id }));
}

/// Called before `close(fd)`: a kqueue's registrations go, and a watched
/// fd's registrations in every kqueue go (as the kernel drops knotes).
pub(crate) fn closed(fd: RawFd) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut gone = Vec::new();
    {
        let mut g = lock();
        let Some(m) = g.0.as_mut() else {
            return;
        };
        if let Some(k) = m.remove(&fd) {
            gone.extend(k.st.watches().map(|(_, r)| r.watch_id));
        }
        for k in m.values_mut() {
            gone.extend(k.st.forget(fd as u64));
        }
        COUNT.store(m.len(), Ordering::Relaxed);
    }
    for w in gone.into_iter().filter(|&w| w != 0) {
        unregister(w);
    }
}

/// Makes the doorbell of `k` (a socket pair: the daemon's end sent as a
/// `KqueueSocket` doorbell, the shim's registered in kqueue `kq`).
fn ring_up(kq: c_int, k: &mut Kq) -> Result<(), Errno> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: a two-element out array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(super::errno());
    }
    // SAFETY: both fds are new and ours.
    let (mine, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mine = to_high(mine);
    // SAFETY: fcntl on our own fd.
    unsafe {
        let fl = libc::fcntl(mine.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(mine.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        libc::fcntl(mine.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let id = k.st.id;
    with_daemon(|c| {
        c.request_with_fd(
            Request::Doorbell(Doorbell {
                pid: pid(),
                instance: id,
                kind: DoorbellKind::KqueueSocket,
            }),
            std::os::fd::AsFd::as_fd(&theirs),
        )
    })?;
    let ev = libc::kevent {
        ident: mine.as_raw_fd() as libc::uintptr_t,
        filter: EVFILT_READ,
        flags: EV_ADD,
        fflags: 0,
        data: 0,
        udata: std::ptr::null_mut(),
    };
    // SAFETY: the program's kqueue, one valid change, no event list; the
    // shim's own call is not interposed.
    if unsafe { libc::kevent(kq, &ev, 1, std::ptr::null_mut(), 0, std::ptr::null()) } != 0 {
        return Err(super::errno());
    }
    k.st.doorbell = Some(mine.as_raw_fd() as u64);
    k.bell = Some(mine);
    Ok(())
}

/// Registers fd `ident` of kqueue `k` with the daemon.
fn register(k: &mut Kq, ident: u64, fflags: u32) -> Result<(), Errno> {
    let info = fd_get(ident as RawFd).ok_or(libc::EBADF)?;
    let reg = WatchRegistration::Kqueue {
        pid: pid(),
        kqueue_id: k.st.id,
        fd: ident as i32,
        vnode_flags: fflags,
        path: wire(&info.path),
        branch: None,
    };
    match with_daemon(|c| c.request(Request::WatchRegister(reg.clone())))? {
        Response::WatchRegistered { watch_id, .. } => {
            k.st.registered(ident, watch_id);
            Ok(())
        }
        _ => Err(libc::EIO),
    }
}

/// After the daemon went away (the doorbell read end-of-file): a new
/// doorbell on a new connection, and every registration again.
fn rearm(kq: c_int, k: &mut Kq) {
    k.bell = None; // closing it drops its knote
    k.st.doorbell = None;
    if let Err(e) = ring_up(kq, k) {
        shim_log(&format!(
            "kqueue {kq}: cannot re-arm the doorbell (errno {e})"
        ));
        return;
    }
    let regs: Vec<(u64, u32)> = k.st.watches().map(|(i, r)| (i, r.fflags)).collect();
    for (ident, fflags) in regs {
        if let Err(e) = register(k, ident, fflags) {
            shim_log(&format!(
                "kqueue {kq}: cannot re-register fd {ident} (errno {e})"
            ));
        }
    }
}

/// Reads what the doorbell holds into `k`'s queue and acknowledges it.
fn drain_bell(kq: c_int, k: &mut Kq) {
    let Some(bell) = k.bell.as_ref().map(AsRawFd::as_raw_fd) else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut got = false;
    loop {
        // SAFETY: our own socket, a buffer of that size.
        let n = unsafe { libc::read(bell, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            k.st.ingest(&buf[..n as usize]);
            got = true;
            continue;
        }
        if n == 0 {
            shim_log(&format!(
                "kqueue {kq}: the daemon closed the doorbell; reconnecting"
            ));
            rearm(kq, k);
        }
        break;
    }
    if got {
        let id = k.st.id;
        let _ = with_daemon(|c| c.ack(KQUEUE_API, id));
    }
}

/// A kevent record type (`struct kevent` or `struct kevent64_s`).
trait Rec: Copy {
    fn kev(&self) -> Kev;
    fn make(k: Kev) -> Self;
}

impl Rec for libc::kevent {
    fn kev(&self) -> Kev {
        Kev {
            ident: self.ident as u64,
            filter: self.filter,
            flags: self.flags,
            fflags: self.fflags,
            data: self.data as i64,
            udata: self.udata as u64,
        }
    }
    fn make(k: Kev) -> Self {
        libc::kevent {
            ident: k.ident as libc::uintptr_t,
            filter: k.filter,
            flags: k.flags,
            fflags: k.fflags,
            data: k.data as libc::intptr_t,
            udata: k.udata as *mut libc::c_void,
        }
    }
}

impl Rec for libc::kevent64_s {
    fn kev(&self) -> Kev {
        Kev {
            ident: self.ident,
            filter: self.filter,
            flags: self.flags,
            fflags: self.fflags,
            data: self.data,
            udata: self.udata,
        }
    }
    fn make(k: Kev) -> Self {
        libc::kevent64_s {
            ident: k.ident,
            filter: k.filter,
            flags: k.flags,
            fflags: k.fflags,
            data: k.data,
            udata: k.udata,
            ext: [0; 2],
        }
    }
}

fn ns_of(t: *const libc::timespec) -> Option<u64> {
    if t.is_null() {
        return None;
    }
    // SAFETY: the program's timespec.
    let t = unsafe { *t };
    Some((t.tv_sec.max(0) as u64).saturating_mul(1_000_000_000) + t.tv_nsec.max(0) as u64)
}

fn timespec_of(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// The hook shared by `kevent` and `kevent64`. `real` is the kernel call
/// (changes, nchanges, events, nevents, timeout).
///
/// # Safety
/// The program's arguments, as `kevent(2)` defines them.
unsafe fn hook<R: Rec>(
    kq: c_int,
    changes: *const R,
    nchanges: c_int,
    events: *mut R,
    nevents: c_int,
    timeout: *const libc::timespec,
    real: impl Fn(*const R, c_int, *mut R, c_int, *const libc::timespec) -> c_int,
) -> c_int {
    let Some(_g) = Guard::enter() else {
        return real(changes, nchanges, events, nevents, timeout);
    };
    if config().is_none() || nchanges < 0 || nevents < 0 {
        return real(changes, nchanges, events, nevents, timeout);
    }
    let changes: &[R] = if nchanges == 0 || changes.is_null() {
        &[]
    } else {
        // SAFETY: the program's changelist of `nchanges` entries.
        unsafe { std::slice::from_raw_parts(changes, nchanges as usize) }
    };
    let known =
        COUNT.load(Ordering::Relaxed) > 0 && lock().0.as_ref().is_some_and(|m| m.contains_key(&kq));
    let branch_change = changes.iter().any(|c| {
        let k = c.kev();
        k.filter == EVFILT_VNODE && fd_get(k.ident as RawFd).is_some()
    });
    if !known && !branch_change {
        return real(changes.as_ptr(), nchanges, events, nevents, timeout);
    }

    // Changes: the shim's first, the rest to the kernel with the wait.
    let mut native: Vec<R> = Vec::new();
    let mut receipts: Vec<Kev> = Vec::new();
    let mut gone = Vec::new();
    {
        let mut g = lock();
        let m = g.0.get_or_insert_with(HashMap::new);
        let k = m.entry(kq).or_insert_with(|| Kq {
            st: KqState::new((u64::from(pid()) << 32) | NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            bell: None,
        });
        for c in changes {
            let kev = c.kev();
            let outcome = match k.st.apply(&kev, |fd| fd_get(fd as RawFd).is_some()) {
                Change::Native => {
                    native.push(*c);
                    continue;
                }
                Change::Updated => Ok(()),
                Change::Unregister(w) => {
                    gone.push(w);
                    Ok(())
                }
                Change::Register { ident, fflags } => {
                    let r = if k.bell.is_none() {
                        ring_up(kq, k)
                    } else {
                        Ok(())
                    }
                    .and_then(|()| register(k, ident, fflags));
                    if r.is_err() {
                        k.st.forget(ident);
                    }
                    r
                }
                Change::Error(e) => Err(e),
            };
            match outcome {
                Err(e) => receipts.push(Kev {
                    flags: EV_ERROR,
                    data: i64::from(e),
                    ..kev
                }),
                Ok(()) if kev.flags & EV_RECEIPT != 0 => receipts.push(Kev {
                    flags: EV_ERROR,
                    data: 0,
                    ..kev
                }),
                Ok(()) => {}
            }
        }
        COUNT.store(m.len(), Ordering::Relaxed);
    }
    for w in gone.into_iter().filter(|&w| w != 0) {
        unregister(w);
    }
    if !receipts.is_empty() && (receipts.len() as c_int) > nevents {
        // No room for the error records: the first error is the result.
        let r = real(
            native.as_ptr(),
            native.len() as c_int,
            events,
            0,
            &timespec_of(0),
        );
        if r < 0 {
            return r;
        }
        return match receipts.iter().find(|k| k.data != 0) {
            Some(k) => fail(k.data as i32),
            None => 0,
        };
    }
    let mut filled = 0usize;
    for r in &receipts {
        // SAFETY: within the program's event list (checked above).
        unsafe { *events.add(filled) = R::make(*r) };
        filled += 1;
    }
    let total_ns = ns_of(timeout);
    let start = Instant::now();
    loop {
        let room = nevents as usize - filled;
        let ready = lock()
            .0
            .as_ref()
            .and_then(|m| m.get(&kq))
            .is_some_and(|k| k.st.ready());
        // Errors or queued records: do not block in the kernel.
        let wait = if filled > 0 || ready {
            Some(0)
        } else {
            kq::remaining(total_ns, start.elapsed().as_nanos() as u64)
        };
        let ts = wait.map(timespec_of);
        let tp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: the rest of the program's event list.
        let n = real(
            native.as_ptr(),
            native.len() as c_int,
            unsafe { events.add(filled) },
            room as c_int,
            tp,
        );
        native.clear();
        if n < 0 {
            return if filled > 0 { filled as c_int } else { n };
        }
        // SAFETY: the kernel filled `n` entries there.
        let got = unsafe { std::slice::from_raw_parts_mut(events.add(filled), n as usize) };
        let mut kevs: Vec<Kev> = got.iter().map(Rec::kev).collect();
        let mut g = lock();
        let Some(k) = g.0.as_mut().and_then(|m| m.get_mut(&kq)) else {
            return (filled + n as usize) as c_int;
        };
        let (kept, rang) = k.st.take_doorbell(&mut kevs);
        for (i, kev) in kevs[..kept].iter().enumerate() {
            got[i] = R::make(*kev);
        }
        filled += kept;
        if rang {
            drain_bell(kq, k);
        }
        let (syn, dead) = k.st.drain(nevents as usize - filled);
        drop(g);
        for kev in &syn {
            // SAFETY: within the program's event list (drain respects the room).
            unsafe { *events.add(filled) = R::make(*kev) };
            filled += 1;
        }
        for w in dead {
            unregister(w);
        }
        let timed_out =
            wait == Some(0) || total_ns.is_some_and(|t| start.elapsed().as_nanos() as u64 >= t);
        if filled > 0 || !rang || timed_out || nevents == 0 {
            set_errno(0);
            return filled as c_int;
        }
        // Only the doorbell rang, and what it brought was not for the
        // program (a registration deleted meanwhile): wait on.
    }
}

unsafe extern "C" fn kqueue() -> c_int {
    // SAFETY: no arguments.
    let fd = unsafe { libc::kqueue() };
    if fd >= 0 && COUNT.load(Ordering::Relaxed) > 0 {
        if let Some(_g) = Guard::enter() {
            // A number reused without the shim seeing its close (a raw
            // syscall): the old kqueue's state is stale.
            closed(fd);
        }
    }
    fd
}

unsafe extern "C" fn kevent(
    kq: c_int,
    changes: *const libc::kevent,
    nchanges: c_int,
    events: *mut libc::kevent,
    nevents: c_int,
    timeout: *const libc::timespec,
) -> c_int {
    // SAFETY: the program's arguments; `real` is the kernel's kevent.
    unsafe {
        hook(
            kq,
            changes,
            nchanges,
            events,
            nevents,
            timeout,
            |c, nc, e, ne, t| libc::kevent(kq, c, nc, e, ne, t),
        )
    }
}

unsafe extern "C" fn kevent64(
    kq: c_int,
    changes: *const libc::kevent64_s,
    nchanges: c_int,
    events: *mut libc::kevent64_s,
    nevents: c_int,
    flags: libc::c_uint,
    timeout: *const libc::timespec,
) -> c_int {
    // SAFETY: the program's arguments; `real` is the kernel's kevent64.
    unsafe {
        hook(
            kq,
            changes,
            nchanges,
            events,
            nevents,
            timeout,
            |c, nc, e, ne, t| libc::kevent64(kq, c, nc, e, ne, flags, t),
        )
    }
}

interpose_tuples! {
    I_KQUEUE: kqueue => libc::kqueue,
    I_KEVENT: kevent => libc::kevent,
    I_KEVENT64: kevent64 => libc::kevent64,
}
