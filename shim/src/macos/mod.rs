//! macOS interposition: `DYLD_INSERT_LIBRARIES` loads the shim, and dyld
//! rebinds every other image's calls to the functions named in the shim's
//! `__DATA,__interpose` section (pairs of replacement and replacee). Calls
//! the shim itself makes reach the originals directly (dyld does not
//! interpose an image on itself), so the originals are plain `libc::`
//! calls; calls that libSystem makes internally on the shim's behalf
//! (`realpath` calls `lstat`, say) come back through the interposers and
//! pass straight through inside the per-thread [`Guard`].
//!
//! `open`, `openat` and `fcntl` are variadic in C. On arm64 macOS a
//! variadic argument travels on the stack, not in a register, so a Rust
//! function with a fixed third argument would read garbage: each has a
//! few instructions of assembly (`*_va`) that load the argument from the
//! stack into the register of a fixed-argument Rust implementation and
//! jump to it (on x86_64 the registers are the same and it only jumps).

mod branch;
mod fsevents;
mod interpose;
mod kevent;

use std::ffi::{c_char, c_int, c_void};

pub(crate) use crate::{dirs, state::*};

/// One `__DATA,__interpose` tuple.
#[repr(C)]
pub(crate) struct Interpose {
    /// The shim's function.
    pub replacement: *const c_void,
    /// The function it replaces (an import from libSystem or a framework).
    pub replacee: *const c_void,
}

// SAFETY: two code addresses, never written after link time.
unsafe impl Sync for Interpose {}

/// Declares interpose tuples: `interpose_tuples!(NAME: ours => theirs, ...)`.
macro_rules! interpose_tuples {
    ($($name:ident : $ours:expr => $theirs:expr),* $(,)?) => {
        $(
            #[used]
            #[link_section = "__DATA,__interpose"]
            static $name: $crate::macos::Interpose = $crate::macos::Interpose {
                replacement: $ours as *const ::std::ffi::c_void,
                replacee: $theirs as *const ::std::ffi::c_void,
            };
        )*
    };
}
pub(crate) use interpose_tuples;

/// Sets `errno` and returns -1.
pub(crate) fn fail(e: i32) -> c_int {
    set_errno(e);
    -1
}

/// Sets `errno`.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __error returns this thread's errno slot.
    unsafe { *libc::__error() = e };
}

/// This thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: __error returns this thread's errno slot.
    unsafe { *libc::__error() }
}

pub(crate) use crate::dispatch::bytes;

/// The real `getcwd` (for the shared state).
///
/// # Safety
/// `buf` is valid for `len` bytes.
pub(crate) unsafe fn real_getcwd(buf: *mut c_char, len: usize) -> *mut c_char {
    // SAFETY: the caller's contract; the shim's own call is not interposed.
    unsafe { libc::getcwd(buf, len) }
}

// ------------------------------------------------------------------ fork

type Registry = std::sync::MutexGuard<'static, Option<dirs::Registry>>;
static mut FORK_GUARDS: Option<(kevent::Locked, fsevents::Locked, StateLocks, Registry)> = None;

extern "C" fn before_fork() {
    // The order every other path takes them in: the kqueue or stream
    // table first, then the state's locks (the daemon connection, the fd
    // table).
    let g = (
        kevent::lock(),
        fsevents::lock(),
        lock_all(),
        dirs::lock_registry(),
    );
    // SAFETY: only the forking thread runs between prepare and
    // parent/child (pthread_atfork's contract serialises them for this
    // fork); no one else touches FORK_GUARDS.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARDS) = Some(g) };
}

extern "C" fn after_fork_parent() {
    // SAFETY: as in before_fork.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARDS) = None };
}

extern "C" fn after_fork_child() {
    // A child inherits no kqueue (the kernel does not copy them) and no
    // FSEvents stream: forget their state while the locks are held.
    // SAFETY: as in before_fork.
    if let Some((kq, fse, _, _)) = unsafe { (*std::ptr::addr_of_mut!(FORK_GUARDS)).as_mut() } {
        kevent::forget_all(kq);
        fsevents::forget_all(fse);
    }
    // SAFETY: as in before_fork; the child's only thread is the copy of
    // the one that took the locks in before_fork, so it may release them.
    unsafe { *std::ptr::addr_of_mut!(FORK_GUARDS) = None };
    crate::state::renew_chain_after_fork();
}

/// Installs the fork handlers (once, at load).
extern "C" fn init() {
    // SAFETY: plain function pointers with the C ABI.
    unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_parent),
            Some(after_fork_child),
        )
    };
}

#[used]
#[link_section = "__DATA,__mod_init_func"]
static INIT: extern "C" fn() = init;
