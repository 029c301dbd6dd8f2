//! FSEvents injection. `FSEventStreamCreate` on paths in the branch
//! registers the branch paths with the daemon's watch service (the
//! `fsevents` provider synthesizes events with the visible paths and the
//! stream's create flags) and makes a real stream for the paths outside
//! the branch (or, when there are none, for an empty private directory, so
//! the program holds a real stream object either way and every FSEvents
//! function works on it). The daemon writes encoded events into the
//! stream's doorbell socket; the shim reads it on the stream's run loop
//! (a `CFFileDescriptor` source) or dispatch queue (a read source), holds
//! the events for the stream's latency ([`crate::fse::Latency`]) and calls
//! the program's callback with the program's stream and context.

use std::{
    collections::HashMap,
    ffi::{c_char, c_void, CString},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
    time::Instant,
};

use agentfs_proto::{Doorbell, DoorbellKind, Request, Response, WatchRegistration};
use core_foundation::{
    array::CFArray,
    base::{CFType, TCFType},
    dictionary::CFDictionary,
    number::CFNumber,
    string::CFString,
};
use core_foundation_sys::{
    base::CFRelease,
    date::CFAbsoluteTimeGetCurrent,
    filedescriptor::{
        kCFFileDescriptorReadCallBack, CFFileDescriptorContext, CFFileDescriptorCreate,
        CFFileDescriptorCreateRunLoopSource, CFFileDescriptorEnableCallBacks,
        CFFileDescriptorInvalidate, CFFileDescriptorRef,
    },
    runloop::{
        CFRunLoopAddSource, CFRunLoopAddTimer, CFRunLoopRef, CFRunLoopTimerContext,
        CFRunLoopTimerCreate, CFRunLoopTimerRef,
    },
    string::CFStringRef,
};
use fsevent_sys as fs;

use super::{config, cwd, interpose_tuples, shim_log, to_high, with_daemon, Guard};
use crate::{
    fse::{self, Batch, Decoder, Event, Latency, PathForm},
    paths,
};

const FSEVENTS_API: u32 = 2;

#[allow(non_upper_case_globals)]
extern "C" {
    static _dispatch_source_type_read: c_void;
    fn dispatch_source_create(
        kind: *const c_void,
        handle: usize,
        mask: usize,
        queue: *mut c_void,
    ) -> *mut c_void;
    fn dispatch_set_context(obj: *mut c_void, ctx: *mut c_void);
    fn dispatch_source_set_event_handler_f(src: *mut c_void, handler: extern "C" fn(*mut c_void));
    fn dispatch_resume(obj: *mut c_void);
    fn dispatch_source_cancel(src: *mut c_void);
    fn dispatch_release(obj: *mut c_void);
    fn dispatch_retain(obj: *mut c_void);
    fn dispatch_after_f(
        when: u64,
        queue: *mut c_void,
        ctx: *mut c_void,
        work: extern "C" fn(*mut c_void),
    );
    fn dispatch_time(when: u64, delta: i64) -> u64;
}

#[link(name = "CoreServices", kind = "framework")]
extern "C" {
    fn FSEventStreamSetDispatchQueue(stream: fs::FSEventStreamRef, queue: *mut c_void);
}

/// Where the program's callbacks run.
#[derive(Clone, Copy)]
enum Sched {
    None,
    RunLoop(CFRunLoopRef, CFStringRef),
    Queue(*mut c_void),
}

/// One stream with branch paths.
struct Stream {
    id: u64,
    callback: fs::FSEventStreamCallback,
    info: *mut c_void,
    form: PathForm,
    watches: Vec<u64>,
    /// The registration (sent again after a daemon restart).
    reg: WatchRegistration,
    bell: Option<OwnedFd>,
    decoder: Decoder,
    latency: Latency,
    sched: Sched,
    /// The read source (a `CFFileDescriptorRef` or a dispatch source).
    source: *mut c_void,
    started: bool,
    latest: u64,
    refs: usize,
    /// The empty directory the real stream watches when every path is in
    /// the branch.
    private_dir: Option<std::path::PathBuf>,
}

// SAFETY: the raw pointers are CF and dispatch objects (thread-safe
// reference-counted) and the program's context, used only under the lock
// or on the program's own run loop or queue.
unsafe impl Send for Stream {}

type Table = Option<HashMap<usize, Stream>>;
static STREAMS: Mutex<Table> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The stream table, locked (for the fork handlers).
pub(crate) struct Locked(MutexGuard<'static, Table>);

/// Locks the stream table.
pub(crate) fn lock() -> Locked {
    Locked(STREAMS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Forgets every stream (a forked child has none running).
pub(crate) fn forget_all(l: &mut Locked) {
    if let Some(m) = l.0.as_mut() {
        // Leak the CF objects: they belong to the parent's threads.
        for (_, s) in m.drain() {
            std::mem::forget(s);
        }
    }
    COUNT.store(0, Ordering::Relaxed);
}

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn ours(stream: fs::FSEventStreamRef) -> bool {
    COUNT.load(Ordering::Relaxed) > 0
        && lock()
            .0
            .as_ref()
            .is_some_and(|m| m.contains_key(&(stream as usize)))
}

/// The stream's paths as byte strings.
fn paths_of(array: fs::core_foundation::CFArrayRef) -> Vec<Vec<u8>> {
    if array.is_null() {
        return Vec::new();
    }
    // SAFETY: the program's CFArray of CFString (FSEventStreamCreate's
    // contract); get rule: we do not own it.
    let a: CFArray<CFString> = unsafe { CFArray::wrap_under_get_rule(array as _) };
    a.iter().map(|s| s.to_string().into_bytes()).collect()
}

fn doorbell(id: u64) -> Result<OwnedFd, i32> {
    let mut fds = [0; 2];
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
    }
    with_daemon(|c| {
        c.request_with_fd(
            Request::Doorbell(Doorbell {
                pid: std::process::id(),
                instance: id,
                kind: DoorbellKind::FsEventsSocket,
            }),
            std::os::fd::AsFd::as_fd(&theirs),
        )
    })?;
    Ok(mine)
}

unsafe extern "C" fn create(
    allocator: fs::core_foundation::CFAllocatorRef,
    callback: fs::FSEventStreamCallback,
    context: *const fs::FSEventStreamContext,
    paths_to_watch: fs::core_foundation::CFArrayRef,
    since: fs::FSEventStreamEventId,
    latency: f64,
    flags: fs::FSEventStreamCreateFlags,
) -> fs::FSEventStreamRef {
    let real = |paths| {
        // SAFETY: the program's arguments (with our paths array).
        unsafe {
            fs::FSEventStreamCreate(allocator, callback, context, paths, since, latency, flags)
        }
    };
    let Some(_g) = Guard::enter() else {
        return real(paths_to_watch);
    };
    let Some(cfg) = config() else {
        return real(paths_to_watch);
    };
    let given = paths_of(paths_to_watch);
    let cwd = cwd().unwrap_or_default();
    let split = match fse::split_paths(&cfg.root, &cwd, &given) {
        Ok(s) if !s.branch.is_empty() => s,
        Ok(_) => return real(paths_to_watch),
        Err(p) => {
            shim_log(&format!(
                "FSEvents: {} is not UTF-8: watching it natively",
                String::from_utf8_lossy(&p)
            ));
            return real(paths_to_watch);
        }
    };
    let id = (u64::from(std::process::id()) << 32) | NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut private_dir = None;
    let native: Vec<CFString> = if split.native.is_empty() {
        let dir = std::env::temp_dir().join(format!("agentfs-fse-{id:x}"));
        if std::fs::create_dir(&dir).is_err() {
            return std::ptr::null_mut();
        }
        let s = CFString::new(&dir.to_string_lossy());
        private_dir = Some(dir);
        vec![s]
    } else {
        split
            .native
            .iter()
            .map(|p| CFString::new(&String::from_utf8_lossy(p)))
            .collect()
    };
    let array = CFArray::from_CFTypes(&native);
    let stream = real(array.as_concrete_TypeRef() as _);
    if stream.is_null() {
        return stream;
    }
    let fail = |why: String| {
        shim_log(&format!("FSEvents: {why}"));
        // SAFETY: the stream we just made.
        unsafe { fs::FSEventStreamRelease(stream) };
        std::ptr::null_mut()
    };
    let bell = match doorbell(id) {
        Ok(b) => b,
        Err(e) => return fail(format!("no doorbell (errno {e})")),
    };
    let reg = WatchRegistration::FsEvents {
        pid: std::process::id(),
        stream_id: id,
        path_prefixes: split.branch.clone(),
        flags,
        latency,
        visible_root: String::from_utf8_lossy(&cfg.root).into_owned(),
        branch: None,
    };
    let watch = match with_daemon(|c| c.request(Request::WatchRegister(reg.clone()))) {
        Ok(Response::WatchRegistered { watch_id, .. }) => watch_id,
        Ok(other) => return fail(format!("unexpected answer {other:?}")),
        Err(e) => return fail(format!("cannot register the stream (errno {e})")),
    };
    let info = if context.is_null() {
        std::ptr::null_mut()
    } else {
        // SAFETY: the program's context.
        unsafe { (*context).info }
    };
    let mut g = lock();
    let m = g.0.get_or_insert_with(HashMap::new);
    m.insert(
        stream as usize,
        Stream {
            id,
            callback,
            info,
            form: fse::path_form(flags),
            watches: vec![watch],
            reg,
            bell: Some(bell),
            decoder: Decoder::default(),
            latency: Latency::new(latency, flags),
            sched: Sched::None,
            source: std::ptr::null_mut(),
            started: false,
            latest: 0,
            refs: 1,
            private_dir,
        },
    );
    COUNT.store(m.len(), Ordering::Relaxed);
    stream
}

/// Reads the doorbell into the stream's latency queue; returns when the
/// held events are due. When the daemon closed it (a restart), makes a new
/// doorbell on a new connection and registers the stream again (without
/// one, the source would fire forever at end-of-file).
fn read_bell(stream: fs::FSEventStreamRef, s: &mut Stream) -> Option<u64> {
    let fd: RawFd = s.bell.as_ref()?.as_raw_fd();
    let mut buf = [0u8; 8192];
    let mut events: Vec<Event> = Vec::new();
    let mut got = false;
    loop {
        // SAFETY: our own socket, a buffer of that size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            rearm(stream, s);
            break;
        }
        if n < 0 {
            break;
        }
        got = true;
        match s.decoder.push(&buf[..n as usize]) {
            Ok(e) => events.extend(e),
            Err(e) => shim_log(&format!("FSEvents stream {}: {e}", s.id)),
        }
    }
    if got {
        let id = s.id;
        let _ = with_daemon(|c| c.ack(FSEVENTS_API, id));
    }
    s.latency.push(now_ns(), events)
}

/// A new doorbell and registration after the daemon went away.
fn rearm(stream: fs::FSEventStreamRef, s: &mut Stream) {
    shim_log(&format!(
        "FSEvents stream {}: the daemon closed the doorbell; reconnecting",
        s.id
    ));
    disarm_source(s);
    s.bell = None;
    s.watches.clear();
    let bell = match doorbell(s.id) {
        Ok(b) => b,
        Err(e) => {
            shim_log(&format!(
                "FSEvents stream {}: no doorbell (errno {e})",
                s.id
            ));
            return;
        }
    };
    let reg = s.reg.clone();
    match with_daemon(|c| c.request(Request::WatchRegister(reg.clone()))) {
        Ok(Response::WatchRegistered { watch_id, .. }) => s.watches.push(watch_id),
        _ => {
            shim_log(&format!("FSEvents stream {}: cannot register again", s.id));
            return;
        }
    }
    s.bell = Some(bell);
    if s.started {
        arm_source(stream, s);
    }
}

/// Calls the program's callback with `events` (not under the lock).
fn deliver(stream: fs::FSEventStreamRef, events: Vec<Event>) {
    let (callback, info, form, id) = {
        let mut g = lock();
        let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) else {
            return;
        };
        if !s.started {
            return;
        }
        let b = Batch::of(s.id, &events);
        if let Some(l) = b.latest() {
            s.latest = s.latest.max(l);
        }
        (s.callback, s.info, s.form, s.id)
    };
    let b = Batch::of(id, &events);
    if b.is_empty() {
        return;
    }
    let n = b.len();
    match form {
        PathForm::CStrings => {
            let c: Vec<CString> = b
                .paths
                .iter()
                .map(|p| CString::new(p.as_str()).unwrap_or_default())
                .collect();
            let ptrs: Vec<*const c_char> = c.iter().map(|s| s.as_ptr()).collect();
            callback(
                stream,
                info,
                n,
                ptrs.as_ptr() as *mut c_void,
                b.flags.as_ptr(),
                b.ids.as_ptr(),
            );
        }
        PathForm::CfStrings => {
            let v: Vec<CFString> = b.paths.iter().map(|p| CFString::new(p)).collect();
            let a = CFArray::from_CFTypes(&v);
            callback(
                stream,
                info,
                n,
                a.as_concrete_TypeRef() as *mut c_void,
                b.flags.as_ptr(),
                b.ids.as_ptr(),
            );
        }
        PathForm::Extended => {
            let path_key = CFString::from_static_string("path");
            let id_key = CFString::from_static_string("fileID");
            let dicts: Vec<CFDictionary<CFString, CFType>> = b
                .paths
                .iter()
                .map(|p| {
                    let mut pairs = vec![(path_key.clone(), CFString::new(p).as_CFType())];
                    if let Some(ino) = inode_of(p) {
                        pairs.push((id_key.clone(), CFNumber::from(ino as i64).as_CFType()));
                    }
                    CFDictionary::from_CFType_pairs(&pairs)
                })
                .collect();
            let a = CFArray::from_CFTypes(&dicts);
            callback(
                stream,
                info,
                n,
                a.as_concrete_TypeRef() as *mut c_void,
                b.flags.as_ptr(),
                b.ids.as_ptr(),
            );
        }
    }
}

/// The inode of a visible branch path (for `fileID`), if it exists.
fn inode_of(visible: &str) -> Option<u64> {
    let cfg = config()?;
    let rel = paths::under(&cfg.root, visible.as_bytes())?;
    let phys = crate::dispatch::read_target(rel, false).ok()?;
    // SAFETY: a valid C string and an out-buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::lstat(phys.as_ptr(), &mut st) == 0).then_some(st.st_ino)
    }
}

/// The doorbell is readable (on the program's run loop or queue).
fn on_readable(stream: fs::FSEventStreamRef) {
    let Some(_g) = Guard::enter() else {
        return;
    };
    let due = {
        let mut g = lock();
        let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) else {
            return;
        };
        let due = read_bell(stream, s);
        if let (Sched::RunLoop(..), false) = (s.sched, s.source.is_null()) {
            // CFFileDescriptor callbacks are one-shot.
            // SAFETY: our live CFFileDescriptor.
            unsafe {
                CFFileDescriptorEnableCallBacks(s.source.cast(), kCFFileDescriptorReadCallBack)
            };
        }
        due.map(|d| (d, s.sched))
    };
    if let Some((due, sched)) = due {
        arm_timer(stream, due, sched);
    }
}

/// Delivers what is due now, or arms a timer for when it is.
fn arm_timer(stream: fs::FSEventStreamRef, due: u64, sched: Sched) {
    let now = now_ns();
    if due <= now {
        flush_due(stream);
        return;
    }
    let delta = due - now;
    match sched {
        Sched::RunLoop(rl, mode) => {
            let mut ctx = CFRunLoopTimerContext {
                version: 0,
                info: stream,
                retain: None,
                release: None,
                copyDescription: None,
            };
            // SAFETY: a one-shot timer on the program's run loop and mode.
            unsafe {
                let t = CFRunLoopTimerCreate(
                    std::ptr::null(),
                    CFAbsoluteTimeGetCurrent() + delta as f64 / 1e9,
                    0.0,
                    0,
                    0,
                    timer_fired,
                    &mut ctx,
                );
                CFRunLoopAddTimer(rl, t, mode);
                CFRelease(t as _);
            }
        }
        Sched::Queue(q) if !q.is_null() => {
            // SAFETY: the program's queue; the context is the stream key.
            unsafe {
                dispatch_after_f(
                    dispatch_time(0, delta.min(i64::MAX as u64) as i64),
                    q,
                    stream,
                    queue_timer_fired,
                )
            };
        }
        _ => {}
    }
}

fn flush_due(stream: fs::FSEventStreamRef) {
    let events = {
        let mut g = lock();
        match g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) {
            Some(s) => s.latency.take(now_ns()),
            None => return,
        }
    };
    deliver(stream, events);
}

extern "C" fn timer_fired(_t: CFRunLoopTimerRef, info: *mut c_void) {
    if let Some(_g) = Guard::enter() {
        flush_due(info);
    }
}

extern "C" fn queue_timer_fired(ctx: *mut c_void) {
    if let Some(_g) = Guard::enter() {
        flush_due(ctx);
    }
}

extern "C" fn fd_readable(_f: CFFileDescriptorRef, _types: usize, info: *mut c_void) {
    on_readable(info);
}

extern "C" fn queue_readable(ctx: *mut c_void) {
    on_readable(ctx);
}

/// Starts reading the doorbell where the program's callbacks run.
fn arm_source(stream: fs::FSEventStreamRef, s: &mut Stream) {
    let Some(fd) = s.bell.as_ref().map(AsRawFd::as_raw_fd) else {
        return;
    };
    if !s.source.is_null() {
        return;
    }
    match s.sched {
        Sched::RunLoop(rl, mode) => {
            let ctx = CFFileDescriptorContext {
                version: 0,
                info: stream,
                retain: None,
                release: None,
                copyDescription: None,
            };
            // SAFETY: our socket (not closed on invalidate: we own it), the
            // program's run loop and mode.
            unsafe {
                let f = CFFileDescriptorCreate(std::ptr::null(), fd, 0, fd_readable, &ctx);
                if f.is_null() {
                    return;
                }
                CFFileDescriptorEnableCallBacks(f, kCFFileDescriptorReadCallBack);
                let src = CFFileDescriptorCreateRunLoopSource(std::ptr::null(), f, 0);
                CFRunLoopAddSource(rl, src, mode);
                CFRelease(src as _);
                s.source = f.cast();
            }
        }
        Sched::Queue(q) if !q.is_null() => {
            // SAFETY: a read source on our socket, on the program's queue.
            unsafe {
                let src = dispatch_source_create(
                    std::ptr::addr_of!(_dispatch_source_type_read),
                    fd as usize,
                    0,
                    q,
                );
                if src.is_null() {
                    return;
                }
                dispatch_set_context(src, stream);
                dispatch_source_set_event_handler_f(src, queue_readable);
                dispatch_resume(src);
                s.source = src;
            }
        }
        _ => {}
    }
}

fn disarm_source(s: &mut Stream) {
    if s.source.is_null() {
        return;
    }
    // SAFETY: the source made by arm_source, released once.
    unsafe {
        match s.sched {
            Sched::RunLoop(..) => {
                CFFileDescriptorInvalidate(s.source.cast());
                CFRelease(s.source as _);
            }
            Sched::Queue(_) => {
                dispatch_source_cancel(s.source);
                dispatch_release(s.source);
            }
            Sched::None => {}
        }
    }
    s.source = std::ptr::null_mut();
}

unsafe extern "C" fn schedule_with_run_loop(
    stream: fs::FSEventStreamRef,
    rl: fs::core_foundation::CFRunLoopRef,
    mode: fs::core_foundation::CFStringRef,
) {
    // SAFETY: the program's arguments.
    unsafe { fs::FSEventStreamScheduleWithRunLoop(stream, rl, mode) };
    if let Some(_g) = Guard::enter() {
        if let Some(s) = lock()
            .0
            .as_mut()
            .and_then(|m| m.get_mut(&(stream as usize)))
        {
            s.sched = Sched::RunLoop(rl as _, mode as _);
        }
    }
}

unsafe extern "C" fn set_dispatch_queue(stream: fs::FSEventStreamRef, queue: *mut c_void) {
    // SAFETY: the program's arguments.
    unsafe { FSEventStreamSetDispatchQueue(stream, queue) };
    if let Some(_g) = Guard::enter() {
        if let Some(s) = lock()
            .0
            .as_mut()
            .and_then(|m| m.get_mut(&(stream as usize)))
        {
            disarm_source(s);
            if let Sched::Queue(old) = s.sched {
                if !old.is_null() {
                    // SAFETY: retained below when it was set.
                    unsafe { dispatch_release(old) };
                }
            }
            if !queue.is_null() {
                // SAFETY: the program's queue, kept while we use it.
                unsafe { dispatch_retain(queue) };
            }
            s.sched = Sched::Queue(queue);
            if s.started {
                arm_source(stream, s);
            }
        }
    }
}

unsafe extern "C" fn start(stream: fs::FSEventStreamRef) -> fs::core_foundation::Boolean {
    // SAFETY: the program's stream.
    let r = unsafe { fs::FSEventStreamStart(stream) };
    if r != 0 {
        if let Some(_g) = Guard::enter() {
            if let Some(s) = lock()
                .0
                .as_mut()
                .and_then(|m| m.get_mut(&(stream as usize)))
            {
                s.started = true;
                arm_source(stream, s);
            }
        }
    }
    r
}

unsafe extern "C" fn stop(stream: fs::FSEventStreamRef) {
    // SAFETY: the program's stream.
    unsafe { fs::FSEventStreamStop(stream) };
    if let Some(_g) = Guard::enter() {
        if let Some(s) = lock()
            .0
            .as_mut()
            .and_then(|m| m.get_mut(&(stream as usize)))
        {
            s.started = false;
            disarm_source(s);
        }
    }
}

unsafe extern "C" fn invalidate(stream: fs::FSEventStreamRef) {
    // SAFETY: the program's stream.
    unsafe { fs::FSEventStreamInvalidate(stream) };
    let Some(_g) = Guard::enter() else {
        return;
    };
    let watches = {
        let mut g = lock();
        let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) else {
            return;
        };
        s.started = false;
        disarm_source(s);
        s.bell = None;
        std::mem::take(&mut s.watches)
    };
    for watch_id in watches {
        let _ = with_daemon(|c| c.request(Request::WatchUnregister { watch_id }));
    }
}

unsafe extern "C" fn retain(stream: fs::FSEventStreamRef) {
    // SAFETY: the program's stream.
    unsafe { fs::FSEventStreamRetain(stream) };
    if let Some(_g) = Guard::enter() {
        if let Some(s) = lock()
            .0
            .as_mut()
            .and_then(|m| m.get_mut(&(stream as usize)))
        {
            s.refs += 1;
        }
    }
}

unsafe extern "C" fn release(stream: fs::FSEventStreamRef) {
    let gone = Guard::enter().and_then(|_g| {
        let mut g = lock();
        let m = g.0.as_mut()?;
        let s = m.get_mut(&(stream as usize))?;
        s.refs = s.refs.saturating_sub(1);
        if s.refs > 0 {
            return None;
        }
        let s = m.remove(&(stream as usize))?;
        COUNT.store(m.len(), Ordering::Relaxed);
        Some(s)
    });
    if let Some(mut s) = gone {
        disarm_source(&mut s);
        if let Sched::Queue(q) = s.sched {
            if !q.is_null() {
                // SAFETY: retained in set_dispatch_queue.
                unsafe { dispatch_release(q) };
            }
        }
        if let Some(d) = &s.private_dir {
            let _ = std::fs::remove_dir(d);
        }
        for watch_id in std::mem::take(&mut s.watches) {
            let _ = with_daemon(|c| c.request(Request::WatchUnregister { watch_id }));
        }
    }
    // SAFETY: the program's stream.
    unsafe { fs::FSEventStreamRelease(stream) };
}

unsafe extern "C" fn flush_sync(stream: fs::FSEventStreamRef) {
    // SAFETY: the program's stream.
    unsafe { fs::FSEventStreamFlushSync(stream) };
    if !ours(stream) {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    let events = {
        let mut g = lock();
        let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) else {
            return;
        };
        read_bell(stream, s);
        s.latency.flush(now_ns())
    };
    deliver(stream, events);
}

unsafe extern "C" fn flush_async(stream: fs::FSEventStreamRef) -> fs::FSEventStreamEventId {
    // SAFETY: the program's stream.
    let id = unsafe { fs::FSEventStreamFlushAsync(stream) };
    let Some(_g) = Guard::enter() else {
        return id;
    };
    let mut g = lock();
    let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) else {
        return id;
    };
    read_bell(stream, s);
    let latest = s.latest;
    let sched = s.sched;
    // Everything held is due now: delivered from the run loop or queue.
    let held = s.latency.flush(now_ns());
    drop(g);
    if !held.is_empty() {
        let mut g = lock();
        if let Some(s) = g.0.as_mut().and_then(|m| m.get_mut(&(stream as usize))) {
            let due = s.latency.push(0, held);
            drop(g);
            if let Some(d) = due {
                arm_timer(stream, d.max(1), sched);
            }
        }
    }
    id.max(latest)
}

unsafe extern "C" fn latest_event_id(
    stream: fs::ConstFSEventStreamRef,
) -> fs::FSEventStreamEventId {
    // SAFETY: the program's stream.
    let id = unsafe { fs::FSEventStreamGetLatestEventId(stream) };
    let ours = Guard::enter().and_then(|_g| {
        lock()
            .0
            .as_ref()
            .and_then(|m| m.get(&(stream as usize)))
            .map(|s| s.latest)
    });
    id.max(ours.unwrap_or(0))
}

interpose_tuples! {
    I_CREATE: create => fs::FSEventStreamCreate,
    I_SCHEDULE: schedule_with_run_loop => fs::FSEventStreamScheduleWithRunLoop,
    I_QUEUE: set_dispatch_queue => FSEventStreamSetDispatchQueue,
    I_START: start => fs::FSEventStreamStart,
    I_STOP: stop => fs::FSEventStreamStop,
    I_INVALIDATE: invalidate => fs::FSEventStreamInvalidate,
    I_RETAIN: retain => fs::FSEventStreamRetain,
    I_RELEASE: release => fs::FSEventStreamRelease,
    I_FLUSH_SYNC: flush_sync => fs::FSEventStreamFlushSync,
    I_FLUSH_ASYNC: flush_async => fs::FSEventStreamFlushAsync,
    I_LATEST: latest_event_id => fs::FSEventStreamGetLatestEventId,
}
