//! Linux interposition: the process-wide state every interposed function
//! shares (configuration, the daemon connection, the chain, the working
//! directory, the shim's view of file descriptors) and the machinery that
//! keeps calling into libc safe (lazily resolved originals, a per-thread
//! reentrancy guard, fork handlers).

use crate::dirs;
mod inotify;
mod interpose;

use std::ffi::{c_char, c_int};

pub(crate) use crate::state::*;

/// Resolves the next definition of a libc symbol once (`dlsym(RTLD_NEXT)`),
/// as a function pointer of the given type; `None` when libc lacks it.
macro_rules! orig {
    ($name:ident : fn($($t:ty),*) -> $r:ty) => {{
        static P: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = P.load(std::sync::atomic::Ordering::Relaxed);
        if p == 0 {
            // dlsym may call back into interposed functions (it allocates):
            // inside the guard they pass through.
            let _g = $crate::linux::Guard::enter();
            // SAFETY: a NUL-terminated symbol name; RTLD_NEXT is valid in a
            // shared object.
            p = unsafe {
                libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast())
            } as usize;
            P.store(p, std::sync::atomic::Ordering::Relaxed);
        }
        if p == 0 {
            None
        } else {
            // SAFETY: `p` is libc's definition of the symbol, whose C type is
            // the one spelled here.
            Some(unsafe {
                std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(p)
            })
        }
    }};
}
pub(crate) use orig;

/// Sets `errno` and returns -1.
pub(crate) fn fail(e: i32) -> c_int {
    set_errno(e);
    -1
}

/// This thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets `errno`.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

pub(crate) use crate::dispatch::bytes;

/// The real `getcwd` (for the shared state).
///
/// # Safety
/// `buf` is valid for `len` bytes.
pub(crate) unsafe fn real_getcwd(buf: *mut c_char, len: usize) -> *mut c_char {
    match orig!(getcwd: fn(*mut c_char, usize) -> *mut c_char) {
        // SAFETY: the caller's contract.
        Some(f) => unsafe { f(buf, len) },
        None => {
            set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    }
}

// ------------------------------------------------------------------ fork

type Guards = (
    std::sync::MutexGuard<
        'static,
        Option<std::collections::HashMap<std::os::fd::RawFd, inotify::Instance>>,
    >,
    crate::state::StateLocks,
    std::sync::MutexGuard<'static, Option<dirs::Registry>>,
);

static mut FORK_GUARDS: Option<Guards> = None;

extern "C" fn before_fork() {
    // The order every other path takes them in: the inotify table first
    // (a watch is registered with the daemon while it is held), then the
    // state's locks, then the directory-stream registry (a leaf).
    let g = (
        inotify::lock_instances(),
        crate::state::lock_all(),
        dirs::lock_registry(),
    );
    // SAFETY: only the forking thread runs between prepare and
    // parent/child (pthread_atfork's contract serialises them for this
    // fork); no one else touches FORK_GUARDS.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARDS) = Some(g) };
}

extern "C" fn after_fork() {
    // SAFETY: as in before_fork; dropping the guards unlocks (futex
    // mutexes have no owner to check, so the child may unlock too).
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARDS) = None };
}

extern "C" fn after_fork_in_child() {
    after_fork();
    crate::state::renew_chain_after_fork();
}

/// Installs the fork handlers (once, at load).
pub(crate) fn install_fork_handlers() {
    // SAFETY: plain function pointers with the C ABI.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork),
            Some(after_fork_in_child),
        )
    };
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = {
    extern "C" fn init() {
        install_fork_handlers();
    }
    init
};
