//! Linux interposition: the process-wide state every interposed function
//! shares (configuration, the daemon connection, the chain, the working
//! directory, the shim's view of file descriptors) and the machinery that
//! keeps calling into libc safe (lazily resolved originals, a per-thread
//! reentrancy guard, fork handlers).

mod dirs;
mod inotify;
mod interpose;
mod state;

use std::{
    cell::Cell,
    ffi::{c_char, c_int, CStr},
};

pub(crate) use state::*;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside the shim: libc calls the shim makes
/// itself (std's file I/O, `dlsym`) go straight to the originals.
pub(crate) struct Guard(());

impl Guard {
    /// `None` when the thread is already inside the shim.
    pub(crate) fn enter() -> Option<Self> {
        BUSY.with(|b| {
            if b.get() {
                None
            } else {
                b.set(true);
                Some(Guard(()))
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

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

/// Sets `errno`.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// The bytes of a C string, `None` for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
pub(crate) unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}
