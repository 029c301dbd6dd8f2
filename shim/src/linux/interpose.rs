//! The interposed libc entry points. Each one passes straight to libc's
//! own definition when the thread is already inside the shim, when the
//! path is outside the branch, or when the process was not started by
//! `agentfs run`; for branch paths, reads are rewritten to the physical
//! path the resolver finds and writes become daemon requests.
//!
//! The C prototypes are spelled out here; the variadic ones (`open`,
//! `openat`, `fcntl`) take their optional argument as a plain parameter,
//! which the Linux x86-64 and AArch64 calling conventions pass in the same
//! register as a variadic one.

#![allow(clippy::missing_safety_doc)]

use std::{
    ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CString},
    ptr,
};

use agentfs_proto::FsOp;
use libc::{mode_t, size_t, ssize_t};
use rustix::fs::FileType;

use crate::dispatch::{
    open_in_branch, read_target, rename_across, umask_now, unless_bad_fd, with_read_path,
    with_read_path_at_then, with_read_path_then, with_write_path,
};

use super::{
    bytes, chain_changed, classify, cwd, dirs, drop_root_fd, drop_root_fds, fail, fd_closed,
    fd_get, fd_insert_phys, fd_remove, fs_op, in_base, kernel_cwd_offset, orig, resolve,
    root_relative, set_cwd, set_errno, shim_log, shown_fsid, shown_identity, shown_identity_of_fd,
    shown_vfs_fsid, text, wire, Guard, Target,
};
use crate::{
    paths,
    resolve::{Errno, Resolved},
};

type Cp = *const c_char;

fn null_err<T>(e: Errno) -> *mut T {
    set_errno(e);
    ptr::null_mut()
}

macro_rules! path_read {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; dirfd: $dirfd:expr ; path: $path:ident ; follow: $follow:expr ; err: $err:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            let Some(o) = orig!($name: fn($($ty),*) -> $ret) else {
                return $err(libc::ENOSYS);
            };
            // SAFETY: the program's arguments, passed on as they came.
            unsafe { with_read_path($dirfd, $path, $follow, $err, |$path| o($($arg),*)) }
        }
    };
}

const CWD: c_int = libc::AT_FDCWD;
fn nofollow(flags: c_int) -> bool {
    flags & libc::AT_SYMLINK_NOFOLLOW != 0
}

// ------------------------------------------------------------- stat family

/// A stat buffer whose identity (`st_dev`, `st_ino`) the shim may show
/// differently (see `crate::ids`).
trait StatIds {
    /// (device, inode, mode).
    fn ids(&self) -> (u64, u64, u32);
    /// Shows `dev` and `ino` instead.
    fn set_ids(&mut self, dev: u64, ino: u64);
}

macro_rules! stat_ids {
    ($t:ty) => {
        impl StatIds for $t {
            fn ids(&self) -> (u64, u64, u32) {
                #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are u64 on 64-bit Linux
                (self.st_dev as u64, self.st_ino as u64, self.st_mode)
            }
            fn set_ids(&mut self, dev: u64, ino: u64) {
                self.st_dev = dev as _;
                self.st_ino = ino as _;
            }
        }
    };
}
stat_ids!(libc::stat);
stat_ids!(libc::stat64);

impl StatIds for libc::statx {
    fn ids(&self) -> (u64, u64, u32) {
        let dev = crate::ids::makedev(self.stx_dev_major.into(), self.stx_dev_minor.into());
        (dev, self.stx_ino, self.stx_mode.into())
    }
    fn set_ids(&mut self, dev: u64, ino: u64) {
        self.stx_dev_major = libc::major(dev);
        self.stx_dev_minor = libc::minor(dev);
        self.stx_ino = ino;
    }
}

/// Whether `buf`, filled by a successful stat call, shows a directory.
fn stat_is_dir<S: StatIds>(buf: *mut S) -> bool {
    // SAFETY: a buffer the stat call just filled (when not null).
    !buf.is_null() && unsafe { &*buf }.ids().2 & libc::S_IFMT == libc::S_IFDIR
}

/// Shows the branch's identity in `buf`, filled by a stat of a branch
/// entry's physical path.
fn show_branch_ids<S: StatIds>(buf: *mut S) {
    if buf.is_null() {
        return;
    }
    // SAFETY: a buffer the stat call just filled.
    let st = unsafe { &mut *buf };
    let (dev, ino, _) = st.ids();
    if let Some((dev, ino)) = shown_identity(dev, ino) {
        st.set_ids(dev, ino);
    }
}

/// Shows the branch's identity in `buf`, filled by a stat of fd `fd`
/// (`AT_FDCWD`: the working directory), when the fd is the branch's.
fn show_fd_ids<S: StatIds>(fd: c_int, buf: *mut S) {
    if buf.is_null() {
        return;
    }
    let Some(_g) = Guard::enter() else {
        return;
    };
    // SAFETY: a buffer the stat call just filled.
    let st = unsafe { &mut *buf };
    let (dev, ino, mode) = st.ids();
    if let Some((dev, ino)) = shown_identity_of_fd(fd, dev, ino, mode) {
        st.set_ids(dev, ino);
    }
}

/// The fd an `AT_EMPTY_PATH` call with an empty path stats, if it is one.
///
/// # Safety
/// `path` is null or points to a NUL-terminated string.
unsafe fn empty_path_fd(dirfd: c_int, path: Cp, flags: c_int) -> Option<c_int> {
    // SAFETY: the caller's contract; a non-null path has a first byte.
    (flags & libc::AT_EMPTY_PATH != 0 && !path.is_null() && unsafe { *path } == 0).then_some(dirfd)
}

/// The `fstatat` form of a stat call (a physical path handed to the
/// kernel relative to a layer root the shim holds an fd on).
macro_rules! stat_at {
    ($helper:ident, $orig:ident, $buf:ty) => {
        unsafe fn $helper(fd: c_int, p: Cp, buf: $buf, flags: c_int) -> Option<c_int> {
            let o = orig!($orig: fn(c_int, Cp, $buf, c_int) -> c_int)?;
            // SAFETY: the program's buffer, a path inside the shim's string.
            unless_bad_fd(unsafe { o(fd, p, buf, flags) })
        }
    };
}
stat_at!(fstatat_at, fstatat, *mut libc::stat);
stat_at!(fstatat64_at, fstatat64, *mut libc::stat64);

/// The `__fxstatat` form of an old `__xstat` call (see [`stat_at`]).
macro_rules! xstat_at {
    ($helper:ident, $orig:ident, $buf:ty) => {
        unsafe fn $helper(ver: c_int, fd: c_int, p: Cp, buf: $buf, flags: c_int) -> Option<c_int> {
            let o = orig!($orig: fn(c_int, c_int, Cp, $buf, c_int) -> c_int)?;
            // SAFETY: the program's buffer, a path inside the shim's string.
            unless_bad_fd(unsafe { o(ver, fd, p, buf, flags) })
        }
    };
}
xstat_at!(fxstatat_at, __fxstatat, *mut libc::stat);
xstat_at!(fxstatat64_at, __fxstatat64, *mut libc::stat64);

/// The stat family: a branch path is read on its physical entry, then its
/// identity shown as the branch's; an `AT_EMPTY_PATH` call on an fd the
/// shim opened in the branch likewise. `at` is the call's `*at()` form
/// (`|fd, path|`), for a physical path under a layer root.
macro_rules! stat_read {
    ($name:ident ( $($arg:ident : $ty:ty),* ) ; dirfd: $dirfd:expr ; path: $path:ident ; follow: $follow:expr ; flags: $flags:expr ; buf: $buf:ident ; at: $at:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let Some(o) = orig!($name: fn($($ty),*) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's path, passed on as it came.
            if let Some(fd) = unsafe { empty_path_fd($dirfd, $path, $flags) } {
                // SAFETY: the program's arguments.
                let r = unsafe { o($($arg),*) };
                if r == 0 {
                    show_fd_ids(fd, $buf);
                }
                return r;
            }
            let at: unsafe fn(c_int, Cp, $($ty),*) -> Option<c_int> = $at;
            // SAFETY: the program's arguments, passed on as they came (the
            // path, or a physical path inside the shim's string).
            unsafe {
                with_read_path_at_then(
                    $dirfd,
                    $path,
                    $follow,
                    fail,
                    |$path| o($($arg),*),
                    Some((
                        |fd, p| at(fd, p, $($arg),*),
                        |&r: &c_int| r == 0 && stat_is_dir($buf),
                    )),
                    |&r| {
                        if r == 0 {
                            show_branch_ids($buf);
                        }
                    },
                )
            }
        }
    };
}

const NOFOLLOW: c_int = libc::AT_SYMLINK_NOFOLLOW;

stat_read!(stat(path: Cp, buf: *mut libc::stat); dirfd: CWD; path: path; follow: true; flags: 0; buf: buf;
    at: |fd, p, _, buf| unsafe { fstatat_at(fd, p, buf, 0) });
stat_read!(stat64(path: Cp, buf: *mut libc::stat64); dirfd: CWD; path: path; follow: true; flags: 0; buf: buf;
    at: |fd, p, _, buf| unsafe { fstatat64_at(fd, p, buf, 0) });
stat_read!(lstat(path: Cp, buf: *mut libc::stat); dirfd: CWD; path: path; follow: false; flags: 0; buf: buf;
    at: |fd, p, _, buf| unsafe { fstatat_at(fd, p, buf, NOFOLLOW) });
stat_read!(lstat64(path: Cp, buf: *mut libc::stat64); dirfd: CWD; path: path; follow: false; flags: 0; buf: buf;
    at: |fd, p, _, buf| unsafe { fstatat64_at(fd, p, buf, NOFOLLOW) });
stat_read!(__xstat(ver: c_int, path: Cp, buf: *mut libc::stat); dirfd: CWD; path: path; follow: true; flags: 0; buf: buf;
    at: |fd, p, ver, _, buf| unsafe { fxstatat_at(ver, fd, p, buf, 0) });
stat_read!(__xstat64(ver: c_int, path: Cp, buf: *mut libc::stat64); dirfd: CWD; path: path; follow: true; flags: 0; buf: buf;
    at: |fd, p, ver, _, buf| unsafe { fxstatat64_at(ver, fd, p, buf, 0) });
stat_read!(__lxstat(ver: c_int, path: Cp, buf: *mut libc::stat); dirfd: CWD; path: path; follow: false; flags: 0; buf: buf;
    at: |fd, p, ver, _, buf| unsafe { fxstatat_at(ver, fd, p, buf, NOFOLLOW) });
stat_read!(__lxstat64(ver: c_int, path: Cp, buf: *mut libc::stat64); dirfd: CWD; path: path; follow: false; flags: 0; buf: buf;
    at: |fd, p, ver, _, buf| unsafe { fxstatat64_at(ver, fd, p, buf, NOFOLLOW) });
stat_read!(fstatat(dirfd: c_int, path: Cp, buf: *mut libc::stat, flags: c_int); dirfd: dirfd; path: path; follow: !nofollow(flags); flags: flags; buf: buf;
    at: |fd, p, _, _, buf, flags| unsafe { fstatat_at(fd, p, buf, flags) });
stat_read!(fstatat64(dirfd: c_int, path: Cp, buf: *mut libc::stat64, flags: c_int); dirfd: dirfd; path: path; follow: !nofollow(flags); flags: flags; buf: buf;
    at: |fd, p, _, _, buf, flags| unsafe { fstatat64_at(fd, p, buf, flags) });
stat_read!(__fxstatat(ver: c_int, dirfd: c_int, path: Cp, buf: *mut libc::stat, flags: c_int); dirfd: dirfd; path: path; follow: !nofollow(flags); flags: flags; buf: buf;
    at: |fd, p, ver, _, _, buf, flags| unsafe { fxstatat_at(ver, fd, p, buf, flags) });
stat_read!(__fxstatat64(ver: c_int, dirfd: c_int, path: Cp, buf: *mut libc::stat64, flags: c_int); dirfd: dirfd; path: path; follow: !nofollow(flags); flags: flags; buf: buf;
    at: |fd, p, ver, _, _, buf, flags| unsafe { fxstatat64_at(ver, fd, p, buf, flags) });
stat_read!(statx(dirfd: c_int, path: Cp, flags: c_int, mask: c_uint, buf: *mut libc::statx); dirfd: dirfd; path: path; follow: !nofollow(flags); flags: flags; buf: buf;
    at: |fd, p, _, _, flags, mask, buf| unsafe { statx_at(fd, p, flags, mask, buf) });

unsafe fn statx_at(
    fd: c_int,
    p: Cp,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> Option<c_int> {
    let o = orig!(statx: fn(c_int, Cp, c_int, c_uint, *mut libc::statx) -> c_int)?;
    // SAFETY: the program's buffer, a path inside the shim's string.
    unless_bad_fd(unsafe { o(fd, p, flags, mask, buf) })
}

/// `fstat` and its variants: the call itself, then the branch's identity
/// for an fd of the branch.
macro_rules! fstat_fn {
    ($name:ident ( $($arg:ident : $ty:ty),* ) ; fd: $fd:ident ; buf: $buf:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let Some(o) = orig!($name: fn($($ty),*) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments, passed on as they came.
            let r = unsafe { o($($arg),*) };
            if r == 0 {
                show_fd_ids($fd, $buf);
            }
            r
        }
    };
}

fstat_fn!(fstat(fd: c_int, buf: *mut libc::stat); fd: fd; buf: buf);
fstat_fn!(fstat64(fd: c_int, buf: *mut libc::stat64); fd: fd; buf: buf);
fstat_fn!(__fxstat(ver: c_int, fd: c_int, buf: *mut libc::stat); fd: fd; buf: buf);
fstat_fn!(__fxstat64(ver: c_int, fd: c_int, buf: *mut libc::stat64); fd: fd; buf: buf);
/// A `statfs` buffer whose `f_fsid` the shim may show as the base's.
trait FsIds {
    /// Shows the base's `f_fsid` when this is a layer's on another device.
    fn show_base_fsid(&mut self);
}

macro_rules! statfs_ids {
    ($t:ty) => {
        impl FsIds for $t {
            fn show_base_fsid(&mut self) {
                // SAFETY: fsid_t is two C ints (its field is private).
                let raw: [c_int; 2] = unsafe { std::mem::transmute(self.f_fsid) };
                if let Some(f) = shown_fsid(raw) {
                    // SAFETY: as above.
                    self.f_fsid = unsafe { std::mem::transmute::<[c_int; 2], libc::fsid_t>(f) };
                }
            }
        }
    };
}
statfs_ids!(libc::statfs);
statfs_ids!(libc::statfs64);

macro_rules! statvfs_ids {
    ($t:ty) => {
        impl FsIds for $t {
            fn show_base_fsid(&mut self) {
                #[allow(clippy::useless_conversion)] // c_ulong is u64 on 64-bit Linux
                if let Some(f) = shown_vfs_fsid(u64::from(self.f_fsid)) {
                    self.f_fsid = f as _;
                }
            }
        }
    };
}
statvfs_ids!(libc::statvfs);
statvfs_ids!(libc::statvfs64);

/// `statfs` and `statvfs`: the filesystem holding the branch entry (a
/// layer's free space is the store's), its `f_fsid` the base's.
macro_rules! statfs_read {
    ($name:ident ( $($arg:ident : $ty:ty),* ) ; path: $path:ident ; buf: $buf:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            let Some(o) = orig!($name: fn($($ty),*) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments, passed on as they came.
            unsafe {
                with_read_path_then(CWD, $path, true, fail, |$path| o($($arg),*), |&r| {
                    if r == 0 && !$buf.is_null() {
                        // SAFETY: the buffer the call just filled.
                        (*$buf).show_base_fsid();
                    }
                })
            }
        }
    };
}

statfs_read!(statfs(path: Cp, buf: *mut libc::statfs); path: path; buf: buf);
statfs_read!(statfs64(path: Cp, buf: *mut libc::statfs64); path: path; buf: buf);
statfs_read!(statvfs(path: Cp, buf: *mut libc::statvfs); path: path; buf: buf);
statfs_read!(statvfs64(path: Cp, buf: *mut libc::statvfs64); path: path; buf: buf);
path_read!(getxattr(path: Cp, name: Cp, value: *mut c_void, size: size_t) -> ssize_t; dirfd: CWD; path: path; follow: true; err: |e| fail(e) as ssize_t);
path_read!(lgetxattr(path: Cp, name: Cp, value: *mut c_void, size: size_t) -> ssize_t; dirfd: CWD; path: path; follow: false; err: |e| fail(e) as ssize_t);
path_read!(listxattr(path: Cp, list: *mut c_char, size: size_t) -> ssize_t; dirfd: CWD; path: path; follow: true; err: |e| fail(e) as ssize_t);
path_read!(llistxattr(path: Cp, list: *mut c_char, size: size_t) -> ssize_t; dirfd: CWD; path: path; follow: false; err: |e| fail(e) as ssize_t);
path_read!(posix_spawn(pid: *mut libc::pid_t, path: Cp, actions: *const c_void, attr: *const c_void, argv: *const Cp, envp: *const Cp) -> c_int; dirfd: CWD; path: path; follow: true; err: |e| e);

// ------------------------------------------------------------ readlink

/// What a link of the process's own `/proc` entry (`/proc/self/fd/N`,
/// `/proc/<own pid>/fd/N`, `/proc/self/cwd`, and `thread-self`) shows in
/// the branch: the branch path of an fd the shim opened there, or of the
/// working directory; `None` for anything else.
fn proc_link(path: &[u8]) -> Option<Vec<u8>> {
    let cfg = super::config()?;
    let rest = path.strip_prefix(b"/proc/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (who, what) = (&rest[..slash], &rest[slash + 1..]);
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() }.to_string();
    if who != b"self" && who != b"thread-self" && who != me.as_bytes() {
        return None;
    }
    if what == b"cwd" {
        let c = cwd().ok()?;
        return paths::under(&cfg.root, &c).is_some().then_some(c);
    }
    let n: c_int = std::str::from_utf8(what.strip_prefix(b"fd/")?)
        .ok()?
        .parse()
        .ok()?;
    fd_get(n).map(|info| paths::visible(&cfg.root, &info.path))
}

/// A path the kernel's `/proc` link showed, as the program should see it:
/// a layer path maps back to its branch path.
fn visible_of_kernel(kernel: &[u8]) -> Option<Vec<u8>> {
    let cfg = super::config()?;
    let store = cfg.store.as_ref()?;
    paths::shown_for_kernel_path(store, &cfg.root, kernel, |p| {
        super::chain().ok()?.branch_path_of(p)
    })
}

/// Copies link text `v` into the caller's buffer as `readlink` does
/// (truncated, no NUL).
unsafe fn link_out(v: &[u8], buf: *mut c_char, size: size_t) -> ssize_t {
    let n = v.len().min(size);
    // SAFETY: the caller's buffer of `size` bytes.
    unsafe { ptr::copy_nonoverlapping(v.as_ptr().cast(), buf, n) };
    n as ssize_t
}

unsafe fn readlink_impl(
    dirfd: c_int,
    path: Cp,
    buf: *mut c_char,
    size: size_t,
    o: unsafe extern "C" fn(c_int, Cp, *mut c_char, size_t) -> ssize_t,
) -> ssize_t {
    // SAFETY: the program's C string.
    let proc_path = unsafe { bytes(path) }.filter(|p| p.starts_with(b"/proc/"));
    if let (Some(p), Some(_g)) = (proc_path, Guard::enter()) {
        if let Some(v) = proc_link(p) {
            // SAFETY: the caller's buffer.
            return unsafe { link_out(&v, buf, size) };
        }
        // SAFETY: passed on.
        let n = unsafe { o(dirfd, path, buf, size) };
        if n > 0 {
            // SAFETY: the kernel wrote `n` bytes there.
            let got = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n as usize) };
            if let Some(v) = visible_of_kernel(got) {
                // SAFETY: the caller's buffer.
                return unsafe { link_out(&v, buf, size) };
            }
        }
        return n;
    }
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(
            dirfd,
            path,
            false,
            |e| fail(e) as ssize_t,
            |p| o(dirfd, p, buf, size),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn readlink(path: Cp, buf: *mut c_char, size: size_t) -> ssize_t {
    let Some(o) = orig!(readlinkat: fn(c_int, Cp, *mut c_char, size_t) -> ssize_t) else {
        return fail(libc::ENOSYS) as ssize_t;
    };
    // SAFETY: the program's arguments.
    unsafe { readlink_impl(CWD, path, buf, size, o) }
}

#[no_mangle]
pub unsafe extern "C" fn readlinkat(
    dirfd: c_int,
    path: Cp,
    buf: *mut c_char,
    size: size_t,
) -> ssize_t {
    let Some(o) = orig!(readlinkat: fn(c_int, Cp, *mut c_char, size_t) -> ssize_t) else {
        return fail(libc::ENOSYS) as ssize_t;
    };
    // SAFETY: the program's arguments.
    unsafe { readlink_impl(dirfd, path, buf, size, o) }
}

// ---------------------------------------------------------------- dlopen

/// Where the `dlopen` entry goes on: the file name to pass (the program's,
/// or the physical path of a branch entry) and the function to jump to.
#[repr(C)]
struct DlopenRoute {
    file: Cp,
    real: usize,
}

/// `dlopen` when libc has none to go on to, or when a branch path cannot
/// be loaded: fails (as a missing file does).
unsafe extern "C" fn dlopen_fails(_file: Cp, _mode: c_int) -> *mut c_void {
    set_errno(libc::ENOENT);
    ptr::null_mut()
}

/// Decides where a `dlopen(file, ...)` goes. Only a name with a `/` (and
/// no `$`, which glibc expands against the caller) in the branch is
/// translated: a bare name is searched by glibc with the caller's
/// `RUNPATH`, which stays the caller's because the entry jumps to the real
/// `dlopen` with the caller's return address.
extern "C" fn dlopen_route(file: Cp) -> DlopenRoute {
    let real = orig!(dlopen: fn(Cp, c_int) -> *mut c_void)
        .map_or(dlopen_fails as *const () as usize, |f| f as usize);
    let pass = DlopenRoute { file, real };
    let Some(_g) = Guard::enter() else {
        return pass;
    };
    // SAFETY: the program's C string (or null: the main program).
    let Some(p) = (unsafe { bytes(file) }) else {
        return pass;
    };
    if !p.contains(&b'/') || p.contains(&b'$') {
        return pass;
    }
    match classify(CWD, p) {
        Ok(Target::Native) => pass,
        Ok(Target::Branch(rel)) => match read_target(&rel, true) {
            // Kept for the process's life: glibc copies the name, but a
            // library loaded by path is rare enough not to track it.
            Ok(c) => DlopenRoute {
                file: Box::leak(c.into_boxed_c_str()).as_ptr(),
                real,
            },
            Err(_) => DlopenRoute {
                file,
                real: dlopen_fails as *const () as usize,
            },
        },
        Err(_) => DlopenRoute {
            file,
            real: dlopen_fails as *const () as usize,
        },
    }
}

/// `dlopen`: glibc takes the caller from the return address (for the
/// search path and the namespace), so this entry must not be a frame of
/// its own: it asks [`dlopen_route`] and then jumps to the real `dlopen`
/// with the program's return address still in place.
#[cfg(target_arch = "x86_64")]
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen(file: Cp, mode: c_int) -> *mut c_void {
    std::arch::naked_asm!(
        // Keep `mode`; the push also aligns the stack for the call.
        "push rsi",
        "call {route}",
        "pop rsi",
        "mov rdi, rax",
        "jmp rdx",
        route = sym dlopen_route,
    )
}

/// `dlopen` (see the x86_64 entry): the link register is restored before
/// the jump, so the real `dlopen` sees the program's return address.
#[cfg(target_arch = "aarch64")]
#[no_mangle]
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen(file: Cp, mode: c_int) -> *mut c_void {
    std::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "str x1, [sp, #16]",
        "bl {route}",
        "mov x16, x1",
        "ldr x1, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "br x16",
        route = sym dlopen_route,
    )
}

/// The path an `exec` of `path` runs: `Ok(None)` for the program's own.
/// The guard is released before the caller execs: in a `vfork` child the
/// thread (and its guard flag) is the parent's, and a successful exec never
/// returns to release it.
unsafe fn exec_path(path: Cp) -> Result<Option<CString>, Errno> {
    let Some(_g) = Guard::enter() else {
        return Ok(None);
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        return Ok(None);
    };
    if p.is_empty() {
        return Ok(None);
    }
    match classify(CWD, p)? {
        Target::Native => Ok(None),
        Target::Branch(rel) => read_target(&rel, true).map(Some),
    }
}

macro_rules! exec_fn {
    ($name:ident ( $p:ident : Cp $(, $arg:ident : $ty:ty)* )) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($p: Cp $(, $arg: $ty)*) -> c_int {
            let Some(o) = orig!($name: fn(Cp $(, $ty)*) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's C string.
            match unsafe { exec_path($p) } {
                // SAFETY: passed on, with the branch entry's path.
                Ok(Some(c)) => unsafe { o(c.as_ptr() $(, $arg)*) },
                // SAFETY: passed on.
                Ok(None) => unsafe { o($p $(, $arg)*) },
                Err(e) => fail(e),
            }
        }
    };
}

exec_fn!(execve(path: Cp, argv: *const Cp, envp: *const Cp));
exec_fn!(execv(path: Cp, argv: *const Cp));

/// `execvp`/`execvpe` with a name holding a slash are plain paths.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: Cp, argv: *const Cp) -> c_int {
    let Some(o) = orig!(execvp: fn(Cp, *const Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's C string.
    if unsafe { bytes(file) }.is_some_and(|f| f.contains(&b'/')) {
        // SAFETY: as above.
        return match unsafe { exec_path(file) } {
            // SAFETY: passed on, with the branch entry's path.
            Ok(Some(c)) => unsafe { o(c.as_ptr(), argv) },
            // SAFETY: passed on.
            Ok(None) => unsafe { o(file, argv) },
            Err(e) => fail(e),
        };
    }
    // SAFETY: passed on.
    unsafe { o(file, argv) }
}

/// `access` and friends: existence, read and execute checks on the
/// physical entry; a write check is answered from the mode bits (the
/// branch is writable even where the layer holding the entry is not).
unsafe fn access_impl(dirfd: c_int, path: Cp, mode: c_int, flags: c_int) -> c_int {
    let Some(o) = orig!(faccessat: fn(c_int, Cp, c_int, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(dirfd, path, !nofollow(flags), fail, |p| {
            if p == path || mode & libc::W_OK == 0 {
                return o(dirfd, p, mode, flags);
            }
            let r = o(dirfd, p, mode & !libc::W_OK, flags);
            if r != 0 {
                return r;
            }
            let Ok(st) = rustix::fs::stat(std::ffi::CStr::from_ptr(p)) else {
                return fail(libc::ENOENT);
            };
            let euid = libc::geteuid();
            let ok = euid == 0
                || (st.st_uid == euid && st.st_mode & 0o200 != 0)
                || st.st_mode & 0o022 != 0;
            if ok {
                0
            } else {
                fail(libc::EACCES)
            }
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn access(path: Cp, mode: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(CWD, path, mode, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn faccessat(dirfd: c_int, path: Cp, mode: c_int, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(dirfd, path, mode, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn euidaccess(path: Cp, mode: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(CWD, path, mode, libc::AT_EACCESS) }
}

#[no_mangle]
pub unsafe extern "C" fn eaccess(path: Cp, mode: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(CWD, path, mode, libc::AT_EACCESS) }
}

// -------------------------------------------------------------- open family

type OpenFn = unsafe extern "C" fn(c_int, Cp, c_int, mode_t) -> c_int;

fn orig_openat() -> Option<OpenFn> {
    orig!(openat: fn(c_int, Cp, c_int, mode_t) -> c_int)
}

/// Opens branch path `rel`: reads on the physical entry, writes through
/// the daemon's `fd_open`.
fn open_branch(rel: &[u8], flags: c_int, mode: mode_t) -> Result<c_int, Errno> {
    let o = orig_openat().ok_or(libc::ENOSYS)?;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        shim_log("O_TMPFILE in the branch is not supported");
        return Err(libc::EOPNOTSUPP);
    }
    // SAFETY: a valid C string and the program's flags and mode.
    open_in_branch(rel, flags, mode, |p, f, m| unsafe {
        o(CWD, p.as_ptr(), f, m)
    })
}

unsafe fn open_impl(dirfd: c_int, path: Cp, flags: c_int, mode: mode_t) -> c_int {
    let Some(o) = orig_openat() else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, flags, mode),
            |rel| open_branch(&rel, flags, mode),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn open(path: Cp, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(CWD, path, flags, mode) }
}

#[no_mangle]
pub unsafe extern "C" fn open64(path: Cp, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(CWD, path, flags | libc::O_LARGEFILE, mode) }
}

#[no_mangle]
pub unsafe extern "C" fn __open_2(path: Cp, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(CWD, path, flags, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: Cp, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(CWD, path, flags | libc::O_LARGEFILE, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: Cp, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(dirfd, path, flags, mode) }
}

#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: Cp, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(dirfd, path, flags | libc::O_LARGEFILE, mode) }
}

#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: Cp, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(dirfd, path, flags, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: Cp, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { open_impl(dirfd, path, flags | libc::O_LARGEFILE, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn creat(path: Cp, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        open_impl(
            CWD,
            path,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode,
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn creat64(path: Cp, mode: mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        open_impl(
            CWD,
            path,
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_LARGEFILE,
            mode,
        )
    }
}

/// `open(2)` flags for an `fopen` mode string, and the mode without the
/// glibc-only `x`.
fn fopen_flags(mode: &[u8]) -> Option<(c_int, CString)> {
    let mut flags = match mode.first()? {
        b'r' => libc::O_RDONLY,
        b'w' => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        b'a' => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        _ => return None,
    };
    let rest = &mode[1..];
    let rest = rest.split(|&b| b == b',').next().unwrap_or(rest);
    if rest.contains(&b'+') {
        flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
    }
    if rest.contains(&b'x') {
        flags |= libc::O_EXCL;
    }
    if rest.contains(&b'e') {
        flags |= libc::O_CLOEXEC;
    }
    let clean: Vec<u8> = mode.iter().copied().filter(|&b| b != b'x').collect();
    Some((flags, CString::new(clean).ok()?))
}

unsafe fn fopen_impl(
    path: Cp,
    mode: Cp,
    native: impl FnOnce() -> *mut libc::FILE,
) -> *mut libc::FILE {
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's C strings.
    let (Some(p), Some(m)) = (unsafe { bytes(path) }, unsafe { bytes(mode) }) else {
        return native();
    };
    let rel = match classify(CWD, p) {
        Ok(Target::Native) => return native(),
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let Some((flags, clean)) = fopen_flags(m) else {
        return null_err(libc::EINVAL);
    };
    let fd = match open_branch(&rel, flags, 0o666) {
        Ok(fd) if fd >= 0 => fd,
        Ok(_) => return ptr::null_mut(),
        Err(e) => return null_err(e),
    };
    let Some(fdopen) = orig!(fdopen: fn(c_int, Cp) -> *mut libc::FILE) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: an fd we own and a valid mode string.
    let f = unsafe { fdopen(fd, clean.as_ptr()) };
    if f.is_null() {
        close_tracked(fd);
    }
    f
}

#[no_mangle]
pub unsafe extern "C" fn fopen(path: Cp, mode: Cp) -> *mut libc::FILE {
    let Some(o) = orig!(fopen: fn(Cp, Cp) -> *mut libc::FILE) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { fopen_impl(path, mode, || o(path, mode)) }
}

#[no_mangle]
pub unsafe extern "C" fn fopen64(path: Cp, mode: Cp) -> *mut libc::FILE {
    let Some(o) = orig!(fopen64: fn(Cp, Cp) -> *mut libc::FILE) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { fopen_impl(path, mode, || o(path, mode)) }
}

unsafe fn freopen_impl(
    path: Cp,
    mode: Cp,
    stream: *mut libc::FILE,
    reopen: unsafe extern "C" fn(Cp, Cp, *mut libc::FILE) -> *mut libc::FILE,
) -> *mut libc::FILE {
    // SAFETY: the program's arguments, passed on.
    let native = || unsafe { reopen(path, mode, stream) };
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's C strings (path may be null: reopen in place).
    let (Some(p), Some(m)) = (unsafe { bytes(path) }, unsafe { bytes(mode) }) else {
        return native();
    };
    let rel = match classify(CWD, p) {
        Ok(Target::Native) => return native(),
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let Some((flags, _)) = fopen_flags(m) else {
        return null_err(libc::EINVAL);
    };
    let fd = match open_branch(&rel, flags, 0o666) {
        Ok(fd) if fd >= 0 => fd,
        Ok(_) => return ptr::null_mut(),
        Err(e) => return null_err(e),
    };
    // SAFETY: `stream` is the program's open FILE; the fds are valid.
    unsafe {
        libc::fflush(stream);
        let target = libc::fileno(stream);
        if let Some(old) = fd_remove(target) {
            fd_closed(&old);
        }
        if libc::dup3(
            fd,
            target,
            if flags & libc::O_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            },
        ) < 0
        {
            close_tracked(fd);
            return ptr::null_mut();
        }
        if let Some(info) = fd_remove(fd) {
            super::fd_insert_dup(target, info);
        }
        libc::syscall(libc::SYS_close, fd);
        // The stream's own mode (read/write flags, buffer) is reset by
        // libc's reopen-in-place of the fd it now has (the file is the
        // branch's, already opened through the daemon).
        reopen(ptr::null(), mode, stream)
    }
}

#[no_mangle]
pub unsafe extern "C" fn freopen(path: Cp, mode: Cp, stream: *mut libc::FILE) -> *mut libc::FILE {
    let Some(o) = orig!(freopen: fn(Cp, Cp, *mut libc::FILE) -> *mut libc::FILE) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { freopen_impl(path, mode, stream, o) }
}

#[no_mangle]
pub unsafe extern "C" fn freopen64(path: Cp, mode: Cp, stream: *mut libc::FILE) -> *mut libc::FILE {
    let Some(o) = orig!(freopen64: fn(Cp, Cp, *mut libc::FILE) -> *mut libc::FILE) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { freopen_impl(path, mode, stream, o) }
}

// ------------------------------------------------------------- temp files

fn random_byte() -> u8 {
    let mut b = [0u8; 1];
    // SAFETY: getrandom into a one-byte buffer we own.
    if unsafe { libc::syscall(libc::SYS_getrandom, b.as_mut_ptr(), 1, 0) } != 1 {
        b[0] = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7)
            & 0xff) as u8;
    }
    b[0]
}

/// Fills the `XXXXXX` before a suffix of `suffix` bytes with random
/// letters and digits; false when the template is malformed.
unsafe fn fill_template(tmpl: *mut c_char, suffix: c_int) -> bool {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // SAFETY: the program's writable C string.
    let len = unsafe { libc::strlen(tmpl) };
    let suffix = suffix.max(0) as usize;
    if len < 6 + suffix {
        return false;
    }
    let start = len - suffix - 6;
    // SAFETY: indexes within the string.
    let x = unsafe { std::slice::from_raw_parts_mut(tmpl.cast::<u8>().add(start), 6) };
    for c in x.iter_mut() {
        *c = CHARS[random_byte() as usize % CHARS.len()];
    }
    true
}

unsafe fn template_is_ok(tmpl: *mut c_char, suffix: c_int) -> bool {
    // SAFETY: the program's C string.
    let Some(b) = (unsafe { bytes(tmpl) }) else {
        return false;
    };
    let suffix = suffix.max(0) as usize;
    b.len() >= 6 + suffix && &b[b.len() - suffix - 6..b.len() - suffix] == b"XXXXXX"
}

unsafe fn mkostemps_impl(
    tmpl: *mut c_char,
    suffix: c_int,
    flags: c_int,
    native: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(tmpl) }) else {
        return native();
    };
    match classify(CWD, p) {
        Ok(Target::Native) => return native(),
        Ok(Target::Branch(_)) => {}
        Err(e) => return fail(e),
    }
    // SAFETY: the program's template.
    if !unsafe { template_is_ok(tmpl, suffix) } {
        return fail(libc::EINVAL);
    }
    for _ in 0..100 {
        // SAFETY: checked above.
        unsafe { fill_template(tmpl, suffix) };
        // SAFETY: still the program's C string.
        let p = unsafe { bytes(tmpl) }.unwrap_or_default();
        let Ok(Target::Branch(rel)) = classify(CWD, p) else {
            return fail(libc::EIO);
        };
        let fl = (flags & !libc::O_ACCMODE) | libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        match open_branch(&rel, fl, 0o600) {
            Err(libc::EEXIST) => continue,
            Ok(fd) => return fd,
            Err(e) => return fail(e),
        }
    }
    fail(libc::EEXIST)
}

macro_rules! mkstemp_fns {
    ($($name:ident ( $t:ident : $tty:ty $(, $arg:ident : $ty:ty)* ) => ($s:expr, $f:expr);)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($t: $tty $(, $arg: $ty)*) -> c_int {
            let Some(o) = orig!($name: fn($tty $(, $ty)*) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            unsafe { mkostemps_impl($t, $s, $f, || o($t $(, $arg)*)) }
        }
    )*};
}

mkstemp_fns! {
    mkstemp(tmpl: *mut c_char) => (0, 0);
    mkstemp64(tmpl: *mut c_char) => (0, 0);
    mkostemp(tmpl: *mut c_char, flags: c_int) => (0, flags);
    mkostemp64(tmpl: *mut c_char, flags: c_int) => (0, flags);
    mkstemps(tmpl: *mut c_char, suffix: c_int) => (suffix, 0);
    mkstemps64(tmpl: *mut c_char, suffix: c_int) => (suffix, 0);
    mkostemps(tmpl: *mut c_char, suffix: c_int, flags: c_int) => (suffix, flags);
    mkostemps64(tmpl: *mut c_char, suffix: c_int, flags: c_int) => (suffix, flags);
}

#[no_mangle]
pub unsafe extern "C" fn mkdtemp(tmpl: *mut c_char) -> *mut c_char {
    let Some(o) = orig!(mkdtemp: fn(*mut c_char) -> *mut c_char) else {
        return null_err(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(tmpl) };
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(tmpl) }) else {
        // SAFETY: passed on.
        return unsafe { o(tmpl) };
    };
    match classify(CWD, p) {
        // SAFETY: passed on.
        Ok(Target::Native) => return unsafe { o(tmpl) },
        Ok(Target::Branch(_)) => {}
        Err(e) => return null_err(e),
    }
    // SAFETY: the program's template.
    if !unsafe { template_is_ok(tmpl, 0) } {
        return null_err(libc::EINVAL);
    }
    for _ in 0..100 {
        // SAFETY: checked above.
        unsafe { fill_template(tmpl, 0) };
        // SAFETY: still the program's C string.
        let p = unsafe { bytes(tmpl) }.unwrap_or_default();
        let Ok(Target::Branch(rel)) = classify(CWD, p) else {
            return null_err(libc::EIO);
        };
        match mkdir_branch(&rel, 0o700) {
            Err(libc::EEXIST) => continue,
            Ok(_) => return tmpl,
            Err(e) => return null_err(e),
        }
    }
    null_err(libc::EEXIST)
}

// ------------------------------------------------------ fd bookkeeping

/// Closes an fd the shim may track, telling the daemon about a writer.
fn close_tracked(fd: c_int) -> c_int {
    let info = fd_remove(fd);
    // SAFETY: closing the program's fd, as it asked.
    let r = unsafe { libc::syscall(libc::SYS_close, fd) } as c_int;
    if let Some(info) = info {
        let e = std::io::Error::last_os_error();
        fd_closed(&info);
        if r < 0 {
            set_errno(e.raw_os_error().unwrap_or(libc::EIO));
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(o) = orig!(close: fn(c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    drop_root_fd(fd);
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd) };
    };
    super::inotify::closed(fd);
    match fd_remove(fd) {
        // SAFETY: passed on.
        None => unsafe { o(fd) },
        Some(info) => {
            // SAFETY: passed on.
            let r = unsafe { o(fd) };
            let e = std::io::Error::last_os_error();
            fd_closed(&info);
            if r < 0 {
                set_errno(e.raw_os_error().unwrap_or(libc::EIO));
            }
            r
        }
    }
}

/// Forgets the branch fds of a closed range (their daemon records end).
fn forget_range(first: c_uint, last: c_uint) {
    let last = last.min(i32::MAX as c_uint) as c_int;
    let infos = super::fd_remove_range(first.min(i32::MAX as c_uint) as c_int, last);
    for info in &infos {
        fd_closed(info);
    }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let Some(o) = orig!(close_range: fn(c_uint, c_uint, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) == 0 {
        drop_root_fds(
            first.min(c_int::MAX as c_uint) as c_int,
            last.min(c_int::MAX as c_uint) as c_int,
        );
    }
    // SAFETY: passed on.
    let r = unsafe { o(first, last, flags) };
    if r == 0 && flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) == 0 {
        if let Some(_g) = Guard::enter() {
            forget_range(first, last);
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(first: c_int) {
    let Some(o) = orig!(closefrom: fn(c_int) -> ()) else {
        return;
    };
    drop_root_fds(first, c_int::MAX);
    // SAFETY: passed on.
    unsafe { o(first) };
    if let Some(_g) = Guard::enter() {
        forget_range(first.max(0) as c_uint, c_uint::MAX);
    }
}

fn copy_fd_entry(from: c_int, to: c_int) {
    if to < 0 {
        return;
    }
    if let Some(old) = fd_remove(to) {
        fd_closed(&old);
    }
    if let Some(info) = fd_get(from) {
        // Both hold the daemon's record: the last to close ends it.
        super::fd_insert_dup(to, info);
    }
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let Some(o) = orig!(dup: fn(c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: passed on.
    let r = unsafe { o(fd) };
    if let Some(_g) = Guard::enter() {
        copy_fd_entry(fd, r);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let Some(o) = orig!(dup2: fn(c_int, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    if old != new {
        drop_root_fd(new);
    }
    // SAFETY: passed on.
    let r = unsafe { o(old, new) };
    if r >= 0 && old != new {
        if let Some(_g) = Guard::enter() {
            copy_fd_entry(old, r);
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let Some(o) = orig!(dup3: fn(c_int, c_int, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    drop_root_fd(new);
    // SAFETY: passed on.
    let r = unsafe { o(old, new, flags) };
    if r >= 0 {
        if let Some(_g) = Guard::enter() {
            copy_fd_entry(old, r);
        }
    }
    r
}

unsafe fn fcntl_impl(
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
    o: unsafe extern "C" fn(c_int, c_int, c_ulong) -> c_int,
) -> c_int {
    // SAFETY: passed on.
    let r = unsafe { o(fd, cmd, arg) };
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        if let Some(_g) = Guard::enter() {
            copy_fd_entry(fd, r);
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let Some(o) = orig!(fcntl: fn(c_int, c_int, c_ulong) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: passed on.
    unsafe { fcntl_impl(fd, cmd, arg, o) }
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let Some(o) = orig!(fcntl64: fn(c_int, c_int, c_ulong) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: passed on.
    unsafe { fcntl_impl(fd, cmd, arg, o) }
}

// ---------------------------------------------------------- directories

/// A stream over directory `fd`, which the shim opened on branch
/// directory `path`.
fn open_dir_stream(fd: c_int, path: Vec<u8>) -> *mut libc::DIR {
    if super::base_only_dir(&path) {
        // Only the base holds it: libc reads it, no merged copy is made.
        let Some(o) = orig!(fdopendir: fn(c_int) -> *mut libc::DIR) else {
            close_tracked(fd);
            return null_err(libc::ENOSYS);
        };
        // SAFETY: an fd of the program's that the shim opened on the
        // base's directory.
        let native = unsafe { o(fd) };
        if native.is_null() {
            let e = super::errno();
            close_tracked(fd);
            return null_err(e);
        }
        return dirs::register(dirs::ShimDir::over_native(fd, path, native));
    }
    match super::list(&path, Some(fd)) {
        Ok(entries) => dirs::register(dirs::ShimDir::new(fd, path, entries)),
        Err(e) => {
            close_tracked(fd);
            null_err(e)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn opendir(path: Cp) -> *mut libc::DIR {
    let Some(o) = orig!(opendir: fn(Cp) -> *mut libc::DIR) else {
        return null_err(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(path) };
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        // SAFETY: passed on.
        return unsafe { o(path) };
    };
    let rel = match classify(CWD, p) {
        // SAFETY: passed on.
        Ok(Target::Native) => return unsafe { o(path) },
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let e = match resolve(&rel, true) {
        Ok(Resolved::Found(e)) if e.kind == FileType::Directory => e,
        Ok(Resolved::Found(_)) => return null_err(libc::ENOTDIR),
        Ok(Resolved::Absent(_)) => return null_err(libc::ENOENT),
        // Left the branch through a symlink: a native stream.
        Ok(Resolved::Outside(p)) => {
            let Ok(c) = CString::new(p) else {
                return null_err(libc::EINVAL);
            };
            // SAFETY: a NUL-terminated path.
            return unsafe { o(c.as_ptr()) };
        }
        Err(e) => return null_err(e),
    };
    let phys = e.phys.as_bytes();
    if in_base(e.layer) {
        // Only the base holds it: libc's own `opendir` on the base's
        // directory (the program's syscalls: no `fcntl`s of `fdopendir`),
        // relative to the kernel's working directory when under it. No
        // merged copy is made.
        let off = kernel_cwd_offset(phys).unwrap_or(0);
        // SAFETY: `off` is inside the C string, before its NUL.
        let native = unsafe { o(e.phys.as_ptr().add(off)) };
        if native.is_null() {
            return native;
        }
        let Some(dfd) = orig!(dirfd: fn(*mut libc::DIR) -> c_int) else {
            // SAFETY: libc's own live stream, closed once.
            unsafe { libc::closedir(native) };
            return null_err(libc::ENOSYS);
        };
        // SAFETY: libc's own live stream.
        let fd = unsafe { dfd(native) };
        fd_insert_phys(fd, e.path.clone(), Some(phys.to_vec()));
        return dirs::register(dirs::ShimDir::over_native(fd, e.path, native));
    }
    // A merged directory: its listing comes from the layer parts' cached
    // names and a read of the base's part. The layer's copy, where the
    // stream's fd would be, is not opened until the program asks for that
    // fd (`dirfd`): a check that it could be opened for reading now
    // (what the open would have checked) is one syscall instead of an
    // open and a close.
    if let Err(err) = readable_dir(&e.phys) {
        return null_err(err);
    }
    match super::list(&e.path, None) {
        Ok(entries) => {
            let mut d = dirs::ShimDir::new(-1, e.path, entries);
            d.lazy = Some(e.phys);
            dirs::register(d)
        }
        Err(err) => null_err(err),
    }
}

/// Whether physical directory `phys` may be opened for reading by this
/// process (`faccessat` with the effective ids, as `open` checks),
/// relative to its layer root's fd.
fn readable_dir(phys: &std::ffi::CStr) -> Result<(), Errno> {
    let o = orig!(faccessat: fn(c_int, Cp, c_int, c_int) -> c_int).ok_or(libc::ENOSYS)?;
    let check = |fd: c_int, p: Cp| {
        // SAFETY: a NUL-terminated path; no buffer.
        let r = unsafe { o(fd, p, libc::R_OK, libc::AT_EACCESS) };
        if r == 0 {
            Ok(())
        } else {
            Err(super::errno())
        }
    };
    if let Some((root, off)) = root_relative(phys.to_bytes()) {
        // SAFETY: `off` is inside the C string, before its NUL.
        match check(root, unsafe { phys.as_ptr().add(off) }) {
            // The program closed the number behind the shim's back.
            Err(libc::EBADF) => drop_root_fd(root),
            r => return r,
        }
    }
    check(CWD, phys.as_ptr())
}

/// Opens physical directory `phys` for reading, relative to its layer
/// root's fd (a walk of the part under the root only); -1 with `errno`.
fn open_dir_phys(phys: &std::ffi::CStr) -> c_int {
    let Some(o) = orig_openat() else {
        return fail(libc::ENOSYS);
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    if let Some((root, off)) = root_relative(phys.to_bytes()) {
        // SAFETY: `off` is inside the C string, before its NUL.
        let fd = unsafe { o(root, phys.as_ptr().add(off), flags, 0) };
        if fd >= 0 || super::errno() != libc::EBADF {
            return fd;
        }
        // The program closed the number behind the shim's back.
        drop_root_fd(root);
    }
    // SAFETY: a NUL-terminated path.
    unsafe { o(CWD, phys.as_ptr(), flags, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn fdopendir(fd: c_int) -> *mut libc::DIR {
    let Some(o) = orig!(fdopendir: fn(c_int) -> *mut libc::DIR) else {
        return null_err(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd) };
    };
    match fd_get(fd) {
        Some(info) => open_dir_stream(fd, info.path),
        // SAFETY: passed on.
        None => unsafe { o(fd) },
    }
}

macro_rules! readdir_fn {
    ($name:ident, $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(dirp: *mut libc::DIR) -> *mut $ret {
            let Some(o) = orig!($name: fn(*mut libc::DIR) -> *mut $ret) else {
                return null_err(libc::ENOSYS);
            };
            match dirs::lookup(dirp) {
                Some(d) => {
                    // SAFETY: a live registered stream; the program does
                    // not use one stream from two threads at once (POSIX).
                    let d = unsafe { &mut *d };
                    if d.use_native {
                        // SAFETY: libc's own live stream.
                        return unsafe { o(d.native) };
                    }
                    let buf = std::ptr::addr_of_mut!(d.buf);
                    if d.next_into(buf) {
                        buf.cast()
                    } else {
                        ptr::null_mut()
                    }
                }
                // SAFETY: passed on.
                None => unsafe { o(dirp) },
            }
        }
    };
}

readdir_fn!(readdir, libc::dirent);
readdir_fn!(readdir64, libc::dirent64);

macro_rules! readdir_r_fn {
    ($name:ident, $ret:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirp: *mut libc::DIR,
            entry: *mut $ret,
            result: *mut *mut $ret,
        ) -> c_int {
            let Some(o) = orig!($name: fn(*mut libc::DIR, *mut $ret, *mut *mut $ret) -> c_int)
            else {
                return libc::ENOSYS;
            };
            match dirs::lookup(dirp) {
                // SAFETY: libc's own live stream, the caller's buffers.
                Some(d) if unsafe { (*d).use_native } => unsafe { o((*d).native, entry, result) },
                Some(d) => {
                    // SAFETY: a live registered stream; `entry` and
                    // `result` are the caller's (dirent and dirent64 share
                    // their layout on 64-bit Linux).
                    unsafe {
                        *result = if (*d).next_into(entry.cast()) {
                            entry
                        } else {
                            ptr::null_mut()
                        };
                    }
                    0
                }
                // SAFETY: passed on.
                None => unsafe { o(dirp, entry, result) },
            }
        }
    };
}

readdir_r_fn!(readdir_r, libc::dirent);
readdir_r_fn!(readdir64_r, libc::dirent64);

#[no_mangle]
pub unsafe extern "C" fn closedir(dirp: *mut libc::DIR) -> c_int {
    let Some(o) = orig!(closedir: fn(*mut libc::DIR) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    match dirs::unregister(dirp) {
        Some(d) if !d.native.is_null() => {
            let _g = Guard::enter();
            // libc's stream closes the fd itself.
            let info = fd_remove(d.fd);
            // SAFETY: libc's own live stream, closed once.
            let r = unsafe { o(d.native) };
            if let Some(info) = info {
                let e = super::errno();
                fd_closed(&info);
                set_errno(e);
            }
            r
        }
        // Its fd was never opened (see `opendir`).
        Some(d) if d.fd < 0 => 0,
        Some(d) => {
            let _g = Guard::enter();
            close_tracked(d.fd)
        }
        // SAFETY: passed on.
        None => unsafe { o(dirp) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn dirfd(dirp: *mut libc::DIR) -> c_int {
    let Some(o) = orig!(dirfd: fn(*mut libc::DIR) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    match dirs::lookup(dirp) {
        Some(d) => {
            // SAFETY: a live registered stream; the program does not use
            // one stream from two threads at once (POSIX).
            let d = unsafe { &mut *d };
            if d.fd < 0 {
                if let Some(phys) = d.lazy.take() {
                    let _g = Guard::enter();
                    let fd = open_dir_phys(&phys);
                    if fd < 0 {
                        let e = super::errno();
                        d.lazy = Some(phys);
                        set_errno(e);
                        return -1;
                    }
                    fd_insert_phys(fd, d.path.clone(), Some(phys.into_bytes()));
                    d.fd = fd;
                }
            }
            d.fd
        }
        // SAFETY: passed on.
        None => unsafe { o(dirp) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn rewinddir(dirp: *mut libc::DIR) {
    let Some(o) = orig!(rewinddir: fn(*mut libc::DIR) -> ()) else {
        return;
    };
    match dirs::lookup(dirp) {
        Some(d) => {
            let _g = Guard::enter();
            // SAFETY: a live registered stream.
            let d = unsafe { &mut *d };
            if d.use_native {
                if super::base_only_dir(&d.path) {
                    // SAFETY: libc's own live stream.
                    return unsafe { o(d.native) };
                }
                // A layer holds it now (the program changed it while
                // listing it): the merged listing from here on.
                d.use_native = false;
            }
            if let Ok(entries) = super::list(&d.path, None) {
                d.entries = entries;
            }
            d.pos = 0;
        }
        // SAFETY: passed on.
        None => unsafe { o(dirp) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn telldir(dirp: *mut libc::DIR) -> c_long {
    let Some(o) = orig!(telldir: fn(*mut libc::DIR) -> c_long) else {
        return fail(libc::ENOSYS) as c_long;
    };
    match dirs::lookup(dirp) {
        // SAFETY: libc's own live stream.
        Some(d) if unsafe { (*d).use_native } => unsafe { o((*d).native) },
        // SAFETY: a live registered stream.
        Some(d) => unsafe { (*d).pos as c_long },
        // SAFETY: passed on.
        None => unsafe { o(dirp) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn seekdir(dirp: *mut libc::DIR, loc: c_long) {
    let Some(o) = orig!(seekdir: fn(*mut libc::DIR, c_long) -> ()) else {
        return;
    };
    match dirs::lookup(dirp) {
        // SAFETY: libc's own live stream.
        Some(d) if unsafe { (*d).use_native } => unsafe { o((*d).native, loc) },
        // SAFETY: a live registered stream.
        Some(d) => unsafe { (*d).pos = loc.max(0) as usize },
        // SAFETY: passed on.
        None => unsafe { o(dirp, loc) },
    }
}

// ------------------------------------------------------------------ glob

/// glibc's `glob_t` (and `glob64_t`, the same layout on 64-bit Linux),
/// with the directory callbacks `GLOB_ALTDIRFUNC` uses (the `libc` crate
/// keeps them private).
#[repr(C)]
pub struct GlobT {
    gl_pathc: size_t,
    gl_pathv: *mut *mut c_char,
    gl_offs: size_t,
    gl_flags: c_int,
    gl_closedir: *const c_void,
    gl_readdir: *const c_void,
    gl_opendir: *const c_void,
    gl_lstat: *const c_void,
    gl_stat: *const c_void,
}

/// glibc's `GLOB_ALTDIRFUNC`.
const GLOB_ALTDIRFUNC: c_int = 1 << 9;

/// Is `pattern` (the program's) a pattern in the branch?
///
/// # Safety
/// `pattern` is null or a C string.
unsafe fn glob_in_branch(pattern: Cp) -> bool {
    let Some(_g) = Guard::enter() else {
        return false;
    };
    // SAFETY: the caller's contract.
    unsafe { bytes(pattern) }
        .filter(|p| !p.is_empty())
        .is_some_and(|p| matches!(classify(CWD, p), Ok(Target::Branch(_))))
}

/// `glob` and `glob64`: glibc reads directories with its internal
/// `__opendir`/`__readdir`/`__lstat`, which no preload sees; for a
/// pattern in the branch the real `glob` runs with `GLOB_ALTDIRFUNC` and
/// the shim's own directory and stat functions as its callbacks (which
/// pass anything outside the branch to libc).
macro_rules! glob_fn {
    ($name:ident, $readdir:ident, $lstat:ident, $stat:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pattern: Cp,
            flags: c_int,
            errfunc: *const c_void,
            pglob: *mut GlobT,
        ) -> c_int {
            let Some(o) = orig!($name: fn(Cp, c_int, *const c_void, *mut GlobT) -> c_int) else {
                return libc::GLOB_ABORTED;
            };
            // SAFETY: the program's pattern.
            if flags & GLOB_ALTDIRFUNC != 0 || pglob.is_null() || !unsafe { glob_in_branch(pattern) } {
                // SAFETY: passed on.
                return unsafe { o(pattern, flags, errfunc, pglob) };
            }
            // SAFETY: the program's glob_t; the callbacks have the C types
            // glibc calls them with.
            unsafe {
                (*pglob).gl_closedir = closedir as *const () as *const c_void;
                (*pglob).gl_readdir = $readdir as *const () as *const c_void;
                (*pglob).gl_opendir = opendir as *const () as *const c_void;
                (*pglob).gl_lstat = $lstat as *const () as *const c_void;
                (*pglob).gl_stat = $stat as *const () as *const c_void;
                let r = o(pattern, flags | GLOB_ALTDIRFUNC, errfunc, pglob);
                (*pglob).gl_flags &= !GLOB_ALTDIRFUNC;
                r
            }
        }
    };
}

glob_fn!(glob, readdir, lstat, stat);
glob_fn!(glob64, readdir64, lstat64, stat64);

// ------------------------------------------------------------ nftw, ftw

/// glibc's `struct FTW`.
#[repr(C)]
pub struct FtwInfo {
    base: c_int,
    level: c_int,
}

type NftwFn = unsafe extern "C" fn(Cp, *const libc::stat, c_int, *mut FtwInfo) -> c_int;
type FtwFn = unsafe extern "C" fn(Cp, *const libc::stat, c_int) -> c_int;

const FTW_F: c_int = 0;
const FTW_D: c_int = 1;
const FTW_DNR: c_int = 2;
const FTW_NS: c_int = 3;
const FTW_SL: c_int = 4;
const FTW_DP: c_int = 5;
const FTW_SLN: c_int = 6;
const FTW_PHYS: c_int = 1;
const FTW_MOUNT: c_int = 2;
const FTW_CHDIR: c_int = 4;
const FTW_DEPTH: c_int = 8;
const FTW_ACTIONRETVAL: c_int = 16;
const FTW_STOP: c_int = 1;
const FTW_SKIP_SUBTREE: c_int = 2;
const FTW_SKIP_SIBLINGS: c_int = 3;

/// A walk of a tree in the branch, as glibc's `nftw`/`ftw` make it, over
/// the shim's own `stat`/`lstat`/`opendir`/`readdir64`/`chdir` (glibc's
/// call its internal functions, which no preload sees). Each directory's
/// names are read whole before its entries are visited, so one directory
/// is open at a time (within any `nopenfd`). Entries come in the merged
/// listing's order (by name), not the disk's.
struct Walk {
    nftw: Option<NftwFn>,
    ftw: Option<FtwFn>,
    flags: c_int,
    dev: u64,
    /// Directories visited (device, inode): without `FTW_PHYS` a directory
    /// reached again (through a symlink) is skipped, as glibc does.
    seen: std::cell::RefCell<std::collections::HashSet<(u64, u64)>>,
}

/// What a visit tells its directory: go on, or stop with this value.
enum Next {
    Go,
    SkipSiblings,
    Stop(c_int),
}

impl Walk {
    fn call(
        &self,
        path: &CString,
        st: &libc::stat,
        flag: c_int,
        base: usize,
        level: usize,
    ) -> c_int {
        let mut info = FtwInfo {
            base: base as c_int,
            level: level as c_int,
        };
        // SAFETY: the program's callback, with the arguments its type
        // promises (valid for the call).
        unsafe {
            match (self.nftw, self.ftw) {
                (Some(f), _) => f(path.as_ptr(), st, flag, &mut info),
                (None, Some(f)) => f(
                    path.as_ptr(),
                    st,
                    if flag == FTW_SLN { FTW_NS } else { flag },
                ),
                (None, None) => 0,
            }
        }
    }

    /// The callback's value as a step of the walk.
    fn next(&self, r: c_int, dir: bool) -> (Next, bool) {
        if self.flags & FTW_ACTIONRETVAL == 0 {
            return (if r == 0 { Next::Go } else { Next::Stop(r) }, false);
        }
        match r {
            FTW_STOP => (Next::Stop(FTW_STOP), false),
            FTW_SKIP_SUBTREE => (Next::Go, dir),
            FTW_SKIP_SIBLINGS => (Next::SkipSiblings, dir),
            _ => (Next::Go, false),
        }
    }

    /// Visits `path` (its name starts at `base`); `in_parent`: the working
    /// directory is its parent (`FTW_CHDIR`), so it is looked at by name.
    fn visit(&self, path: &mut Vec<u8>, base: usize, level: usize, in_parent: bool) -> Next {
        let Ok(c) = CString::new(path.clone()) else {
            return Next::Go;
        };
        let by_name = if in_parent {
            CString::new(&path[base..]).ok()
        } else {
            None
        };
        let look = by_name.as_ref().unwrap_or(&c);
        // SAFETY: a stat buffer is plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let phys = self.flags & FTW_PHYS != 0;
        // SAFETY: a C string and a stat buffer (the shim's own entry points).
        let r = unsafe {
            if phys {
                lstat(look.as_ptr(), &mut st)
            } else {
                stat(look.as_ptr(), &mut st)
            }
        };
        let kind = st.st_mode & libc::S_IFMT;
        let flag = if r < 0 {
            // SAFETY: as above.
            let dangling = !phys
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT)
                && unsafe { lstat(look.as_ptr(), &mut st) } == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFLNK;
            if dangling {
                FTW_SLN
            } else {
                FTW_NS
            }
        } else if kind == libc::S_IFDIR {
            FTW_D
        } else if kind == libc::S_IFLNK {
            FTW_SL
        } else {
            FTW_F
        };
        #[allow(clippy::unnecessary_cast)] // dev_t is u64 on Linux
        if r == 0 && level > 0 && self.flags & FTW_MOUNT != 0 && st.st_dev as u64 != self.dev {
            return Next::Go;
        }
        if flag != FTW_D {
            return self.next(self.call(&c, &st, flag, base, level), false).0;
        }
        #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are u64 on Linux
        if !phys
            && !self
                .seen
                .borrow_mut()
                .insert((st.st_dev as u64, st.st_ino as u64))
        {
            return Next::Go;
        }
        // SAFETY: a C string (the shim's own opendir).
        let dirp = unsafe { opendir(look.as_ptr()) };
        if dirp.is_null() {
            return self.next(self.call(&c, &st, FTW_DNR, base, level), false).0;
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: a stream opendir gave.
            let e = unsafe { readdir64(dirp) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir64 returned a dirent whose name is a C string.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        // SAFETY: the stream, closed once.
        unsafe { closedir(dirp) };
        if self.flags & FTW_DEPTH == 0 {
            match self.next(self.call(&c, &st, FTW_D, base, level), true) {
                (Next::Stop(v), _) => return Next::Stop(v),
                (Next::SkipSiblings, _) => return Next::SkipSiblings,
                (Next::Go, true) => return Next::Go,
                (Next::Go, false) => {}
            }
        }
        // FTW_CHDIR: into the directory for its entries, and back to the
        // parent (by an fd of it, as glibc does) after them.
        let back = if self.flags & FTW_CHDIR != 0 {
            // SAFETY: C strings; the shim's own open, chdir and close.
            unsafe {
                let fd = open(
                    c".".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    0,
                );
                if fd >= 0 && chdir(look.as_ptr()) != 0 {
                    close(fd);
                    -1
                } else {
                    fd
                }
            }
        } else {
            -1
        };
        let len = path.len();
        for name in names {
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            let child_base = path.len();
            path.extend_from_slice(&name);
            let n = self.visit(path, child_base, level + 1, back >= 0);
            path.truncate(len);
            match n {
                Next::Stop(v) => {
                    if back >= 0 {
                        // SAFETY: as below.
                        unsafe {
                            fchdir(back);
                            close(back);
                        }
                    }
                    return Next::Stop(v);
                }
                Next::SkipSiblings => break,
                Next::Go => {}
            }
        }
        // glibc reports FTW_DP from inside the directory (FTW_CHDIR).
        let done = if self.flags & FTW_DEPTH != 0 {
            self.next(self.call(&c, &st, FTW_DP, base, level), false).0
        } else {
            Next::Go
        };
        if back >= 0 {
            // SAFETY: the fd opened above, used and closed once.
            unsafe {
                fchdir(back);
                close(back);
            }
        }
        done
    }
}

/// Runs a walk from `dir` when it is in the branch; `None` otherwise (the
/// caller runs glibc's).
///
/// # Safety
/// `dir` is null or a C string.
unsafe fn walk(dir: Cp, nftw: Option<NftwFn>, ftw: Option<FtwFn>, flags: c_int) -> Option<c_int> {
    {
        let _g = Guard::enter()?;
        // SAFETY: the caller's contract.
        let p = unsafe { bytes(dir) }.filter(|p| !p.is_empty())?;
        if !matches!(classify(CWD, p), Ok(Target::Branch(_))) {
            return None;
        }
    }
    // SAFETY: the caller's contract (checked non-null above).
    let mut path = unsafe { bytes(dir) }?.to_vec();
    while path.len() > 1 && path.ends_with(b"/") {
        path.pop();
    }
    let base = path.iter().rposition(|&b| b == b'/').map_or(0, |p| p + 1);
    let base = if path == b"/" { 0 } else { base };
    let mut walk = Walk {
        nftw,
        ftw,
        flags,
        dev: 0,
        seen: Default::default(),
    };
    let c = CString::new(path.clone()).ok()?;
    // SAFETY: a stat buffer is plain data; the shim's own stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe {
        if flags & FTW_PHYS != 0 {
            lstat(c.as_ptr(), &mut st)
        } else {
            stat(c.as_ptr(), &mut st)
        }
    };
    if r < 0 {
        // glibc fails the call when the start cannot be looked at.
        return Some(-1);
    }
    #[allow(clippy::unnecessary_cast)] // dev_t is u64 on Linux
    {
        walk.dev = st.st_dev as u64;
    }
    // The working directory to come back to (FTW_CHDIR).
    // SAFETY: "." is a C string; the shim's own open.
    let saved = if flags & FTW_CHDIR != 0 {
        unsafe {
            open(
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )
        }
    } else {
        -1
    };
    let r = match walk.visit(&mut path, base, 0, false) {
        Next::Stop(v) => v,
        Next::Go | Next::SkipSiblings => 0,
    };
    if saved >= 0 {
        // SAFETY: the fd opened above, used and closed once.
        unsafe {
            fchdir(saved);
            close(saved);
        }
    }
    Some(r)
}

macro_rules! nftw_fn {
    ($name:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(dir: Cp, f: Option<NftwFn>, nopenfd: c_int, flags: c_int) -> c_int {
            let Some(o) = orig!($name: fn(Cp, Option<NftwFn>, c_int, c_int) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            match f.and_then(|f| unsafe { walk(dir, Some(f), None, flags) }) {
                Some(r) => r,
                // SAFETY: passed on.
                None => unsafe { o(dir, f, nopenfd, flags) },
            }
        }
    };
}

macro_rules! ftw_fn {
    ($name:ident) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(dir: Cp, f: Option<FtwFn>, nopenfd: c_int) -> c_int {
            let Some(o) = orig!($name: fn(Cp, Option<FtwFn>, c_int) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            match f.and_then(|f| unsafe { walk(dir, None, Some(f), 0) }) {
                Some(r) => r,
                // SAFETY: passed on.
                None => unsafe { o(dir, f, nopenfd) },
            }
        }
    };
}

nftw_fn!(nftw);
nftw_fn!(nftw64);
ftw_fn!(ftw);
ftw_fn!(ftw64);

type Filter = Option<unsafe extern "C" fn(*const libc::dirent64) -> c_int>;
type Compar = Option<
    unsafe extern "C" fn(*const *const libc::dirent64, *const *const libc::dirent64) -> c_int,
>;

unsafe fn scandir_impl(
    path: Cp,
    namelist: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
    native: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        return native();
    };
    let rel = match classify(CWD, p) {
        Ok(Target::Native) => return native(),
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return fail(e),
    };
    let entries = match super::list(&rel, None) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let mut d = dirs::ShimDir::new(-1, rel, entries);
    let size = std::mem::size_of::<libc::dirent64>();
    let mut out: Vec<*mut libc::dirent64> = Vec::new();
    loop {
        // SAFETY: malloc of a dirent64; the program frees it with free().
        let e = unsafe { libc::malloc(size) }.cast::<libc::dirent64>();
        if e.is_null() {
            return fail(libc::ENOMEM);
        }
        if !d.next_into(e) {
            // SAFETY: ours, unused.
            unsafe { libc::free(e.cast()) };
            break;
        }
        // SAFETY: the program's filter on a valid entry.
        if filter.is_some_and(|f| unsafe { f(e) } == 0) {
            // SAFETY: ours, rejected.
            unsafe { libc::free(e.cast()) };
            continue;
        }
        out.push(e);
    }
    // SAFETY: malloc of the pointer array the program frees.
    let arr = unsafe { libc::malloc(out.len().max(1) * std::mem::size_of::<usize>()) }
        .cast::<*mut libc::dirent64>();
    if arr.is_null() {
        return fail(libc::ENOMEM);
    }
    // SAFETY: `arr` has room for every pointer.
    unsafe { ptr::copy_nonoverlapping(out.as_ptr(), arr, out.len()) };
    if let Some(c) = compar {
        // SAFETY: qsort over the array with the program's comparison,
        // which takes pointers to elements, as qsort passes them.
        unsafe {
            libc::qsort(
                arr.cast(),
                out.len(),
                std::mem::size_of::<usize>(),
                Some(std::mem::transmute::<
                    unsafe extern "C" fn(
                        *const *const libc::dirent64,
                        *const *const libc::dirent64,
                    ) -> c_int,
                    unsafe extern "C" fn(*const c_void, *const c_void) -> c_int,
                >(c)),
            )
        };
    }
    // SAFETY: the program's out-pointer.
    unsafe { *namelist = arr };
    out.len() as c_int
}

#[no_mangle]
pub unsafe extern "C" fn scandir(
    path: Cp,
    namelist: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
) -> c_int {
    let Some(o) = orig!(scandir: fn(Cp, *mut *mut *mut libc::dirent64, Filter, Compar) -> c_int)
    else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        scandir_impl(path, namelist, filter, compar, || {
            o(path, namelist, filter, compar)
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn scandir64(
    path: Cp,
    namelist: *mut *mut *mut libc::dirent64,
    filter: Filter,
    compar: Compar,
) -> c_int {
    let Some(o) = orig!(scandir64: fn(Cp, *mut *mut *mut libc::dirent64, Filter, Compar) -> c_int)
    else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        scandir_impl(path, namelist, filter, compar, || {
            o(path, namelist, filter, compar)
        })
    }
}

// --------------------------------------------------- working directory

unsafe fn copy_out(v: &[u8], buf: *mut c_char, size: size_t) -> *mut c_char {
    if buf.is_null() {
        let n = if size == 0 { v.len() + 1 } else { size };
        if n < v.len() + 1 {
            return null_err(libc::ERANGE);
        }
        // SAFETY: malloc; the program frees the result.
        let p = unsafe { libc::malloc(n) }.cast::<c_char>();
        if p.is_null() {
            return null_err(libc::ENOMEM);
        }
        // SAFETY: `p` has room for `v` and the NUL.
        unsafe {
            ptr::copy_nonoverlapping(v.as_ptr().cast(), p, v.len());
            *p.add(v.len()) = 0;
        }
        return p;
    }
    if size < v.len() + 1 {
        return null_err(libc::ERANGE);
    }
    // SAFETY: the caller's buffer of `size` bytes.
    unsafe {
        ptr::copy_nonoverlapping(v.as_ptr().cast(), buf, v.len());
        *buf.add(v.len()) = 0;
    }
    buf
}

#[no_mangle]
pub unsafe extern "C" fn getcwd(buf: *mut c_char, size: size_t) -> *mut c_char {
    let Some(o) = orig!(getcwd: fn(*mut c_char, size_t) -> *mut c_char) else {
        return null_err(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(buf, size) };
    };
    if super::config().is_none() {
        // SAFETY: passed on.
        return unsafe { o(buf, size) };
    }
    match cwd() {
        // SAFETY: the caller's buffer.
        Ok(v) => unsafe { copy_out(&v, buf, size) },
        Err(e) => null_err(e),
    }
}

#[no_mangle]
pub unsafe extern "C" fn get_current_dir_name() -> *mut c_char {
    // SAFETY: getcwd allocates the result.
    unsafe { getcwd(ptr::null_mut(), 0) }
}

#[no_mangle]
pub unsafe extern "C" fn chdir(path: Cp) -> c_int {
    let Some(o) = orig!(chdir: fn(Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| {
                let r = o(p);
                if r == 0 {
                    set_cwd(None);
                }
                r
            },
            |rel| match resolve(&rel, true)? {
                Resolved::Found(e) if e.kind == FileType::Directory => {
                    let phys = super::cwd_target(&e);
                    let r = o(phys.as_ptr());
                    if r == 0 {
                        let root = &super::config().ok_or(libc::EIO)?.root;
                        super::set_cwd_phys(
                            Some(paths::visible(root, &e.path)),
                            Some(phys.into_bytes()),
                        );
                    }
                    Ok(r)
                }
                Resolved::Found(_) => Err(libc::ENOTDIR),
                Resolved::Absent(_) => Err(libc::ENOENT),
                Resolved::Outside(p) => {
                    let c = CString::new(p).map_err(|_| libc::EINVAL)?;
                    let r = o(c.as_ptr());
                    if r == 0 {
                        set_cwd(None);
                    }
                    Ok(r)
                }
            },
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    let Some(o) = orig!(fchdir: fn(c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: passed on.
    let r = unsafe { o(fd) };
    if r == 0 {
        if let Some(_g) = Guard::enter() {
            match (fd_get(fd), super::config()) {
                (Some(info), Some(cfg)) => set_cwd(Some(paths::visible(&cfg.root, &info.path))),
                _ => set_cwd(None),
            }
        }
    }
    r
}

unsafe fn realpath_impl(
    path: Cp,
    out: *mut c_char,
    native: impl FnOnce(Cp) -> *mut c_char,
) -> *mut c_char {
    let Some(_g) = Guard::enter() else {
        return native(path);
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        return native(path);
    };
    if p.is_empty() {
        return native(path);
    }
    let rel = match classify(CWD, p) {
        Ok(Target::Native) => return native(path),
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let Some(cfg) = super::config() else {
        return native(path);
    };
    match resolve(&rel, true) {
        Ok(Resolved::Found(e)) => {
            let v = paths::visible(&cfg.root, &e.path);
            // SAFETY: `out` is null or the caller's PATH_MAX buffer.
            unsafe {
                copy_out(
                    &v,
                    out,
                    if out.is_null() {
                        0
                    } else {
                        libc::PATH_MAX as usize
                    },
                )
            }
        }
        Ok(Resolved::Absent(_)) => null_err(libc::ENOENT),
        Ok(Resolved::Outside(n)) => match CString::new(n) {
            Ok(c) => native(c.as_ptr()),
            Err(_) => null_err(libc::EINVAL),
        },
        Err(e) => null_err(e),
    }
}

#[no_mangle]
pub unsafe extern "C" fn realpath(path: Cp, out: *mut c_char) -> *mut c_char {
    let Some(o) = orig!(realpath: fn(Cp, *mut c_char) -> *mut c_char) else {
        return null_err(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { realpath_impl(path, out, |p| o(p, out)) }
}

#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(path: Cp, out: *mut c_char, _len: size_t) -> *mut c_char {
    // SAFETY: the program's arguments.
    unsafe { realpath(path, out) }
}

#[no_mangle]
pub unsafe extern "C" fn canonicalize_file_name(path: Cp) -> *mut c_char {
    // SAFETY: the program's argument.
    unsafe { realpath(path, ptr::null_mut()) }
}

// ------------------------------------------------------------ mutations

fn done(r: Result<agentfs_proto::FsReply, Errno>) -> Result<c_int, Errno> {
    r.map(|_| 0)
}

fn mkdir_branch(rel: &[u8], mode: mode_t) -> Result<c_int, Errno> {
    match resolve(rel, false)? {
        Resolved::Found(_) => Err(libc::EEXIST),
        Resolved::Outside(_) => Err(libc::EXDEV),
        Resolved::Absent(c) => done(fs_op(FsOp::Mkdir {
            path: wire(&c),
            mode: mode & 0o7777 & !umask_now(),
        })),
    }
}

#[no_mangle]
pub unsafe extern "C" fn mkdir(path: Cp, mode: mode_t) -> c_int {
    let Some(o) = orig!(mkdir: fn(Cp, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p, mode), |rel| mkdir_branch(&rel, mode)) }
}

#[no_mangle]
pub unsafe extern "C" fn mkdirat(dirfd: c_int, path: Cp, mode: mode_t) -> c_int {
    let Some(o) = orig!(mkdirat: fn(c_int, Cp, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, mode),
            |rel| mkdir_branch(&rel, mode),
        )
    }
}

fn remove_branch(rel: &[u8], dir: bool) -> Result<c_int, Errno> {
    match resolve(rel, false)? {
        Resolved::Found(e) if e.path.is_empty() => Err(libc::EBUSY),
        Resolved::Found(e) if dir => {
            if e.kind != FileType::Directory {
                return Err(libc::ENOTDIR);
            }
            let r = done(fs_op(FsOp::Rmdir {
                path: wire(&e.path),
            }));
            chain_changed();
            r
        }
        Resolved::Found(e) => {
            if e.kind == FileType::Directory {
                return Err(libc::EISDIR);
            }
            done(fs_op(FsOp::Unlink {
                path: wire(&e.path),
            }))
        }
        Resolved::Absent(_) => Err(libc::ENOENT),
        Resolved::Outside(_) => Err(libc::EXDEV),
    }
}

#[no_mangle]
pub unsafe extern "C" fn unlink(path: Cp) -> c_int {
    let Some(o) = orig!(unlink: fn(Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p), |rel| remove_branch(&rel, false)) }
}

#[no_mangle]
pub unsafe extern "C" fn rmdir(path: Cp) -> c_int {
    let Some(o) = orig!(rmdir: fn(Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p), |rel| remove_branch(&rel, true)) }
}

#[no_mangle]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: Cp, flags: c_int) -> c_int {
    let Some(o) = orig!(unlinkat: fn(c_int, Cp, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, flags),
            |rel| remove_branch(&rel, flags & libc::AT_REMOVEDIR != 0),
        )
    }
}

/// Classifies a path argument inside the guard.
unsafe fn target_of(dirfd: c_int, path: Cp) -> Result<Target, Errno> {
    // SAFETY: the program's C string.
    match unsafe { bytes(path) } {
        None => Err(libc::EFAULT),
        Some([]) => Err(libc::ENOENT),
        Some(p) => classify(dirfd, p),
    }
}

unsafe fn rename_impl(
    olddir: c_int,
    old: Cp,
    newdir: c_int,
    new: Cp,
    flags: c_uint,
    native: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's arguments.
    let (a, b) = unsafe { (target_of(olddir, old), target_of(newdir, new)) };
    let (from, to) = match (a, b) {
        (Ok(Target::Native), Ok(Target::Native)) => return native(),
        (Ok(Target::Branch(f)), Ok(Target::Branch(t))) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(e),
        (Ok(Target::Branch(side)), _) | (_, Ok(Target::Branch(side))) => {
            return fail(rename_across(&side))
        }
    };
    let r = (|| -> Result<c_int, Errno> {
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(libc::EINVAL);
        }
        let from = match resolve(&from, false)? {
            Resolved::Found(e) if e.path.is_empty() => return Err(libc::EBUSY),
            Resolved::Found(e) => e.path,
            Resolved::Absent(_) => return Err(libc::ENOENT),
            Resolved::Outside(_) => return Err(libc::EXDEV),
        };
        let to = match resolve(&to, false)? {
            Resolved::Found(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
            Resolved::Found(e) => e.path,
            Resolved::Absent(c) => c,
            Resolved::Outside(_) => return Err(libc::EXDEV),
        };
        if from == to {
            return Ok(0);
        }
        let r = done(fs_op(FsOp::Rename {
            from: wire(&from),
            to: wire(&to),
        }));
        chain_changed();
        r
    })();
    r.unwrap_or_else(fail)
}

#[no_mangle]
pub unsafe extern "C" fn rename(old: Cp, new: Cp) -> c_int {
    let Some(o) = orig!(rename: fn(Cp, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { rename_impl(CWD, old, CWD, new, 0, || o(old, new)) }
}

#[no_mangle]
pub unsafe extern "C" fn renameat(od: c_int, old: Cp, nd: c_int, new: Cp) -> c_int {
    let Some(o) = orig!(renameat: fn(c_int, Cp, c_int, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { rename_impl(od, old, nd, new, 0, || o(od, old, nd, new)) }
}

#[no_mangle]
pub unsafe extern "C" fn renameat2(od: c_int, old: Cp, nd: c_int, new: Cp, flags: c_uint) -> c_int {
    let Some(o) = orig!(renameat2: fn(c_int, Cp, c_int, Cp, c_uint) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { rename_impl(od, old, nd, new, flags, || o(od, old, nd, new, flags)) }
}

fn symlink_branch(target: Cp, rel: &[u8]) -> Result<c_int, Errno> {
    // SAFETY: the program's C string.
    let t = unsafe { bytes(target) }.ok_or(libc::EFAULT)?;
    match resolve(rel, false)? {
        Resolved::Found(_) => Err(libc::EEXIST),
        Resolved::Outside(_) => Err(libc::EXDEV),
        Resolved::Absent(c) => done(fs_op(FsOp::Symlink {
            target: wire(t),
            path: wire(&c),
        })),
    }
}

#[no_mangle]
pub unsafe extern "C" fn symlink(target: Cp, path: Cp) -> c_int {
    let Some(o) = orig!(symlink: fn(Cp, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| o(target, p),
            |rel| symlink_branch(target, &rel),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn symlinkat(target: Cp, dirfd: c_int, path: Cp) -> c_int {
    let Some(o) = orig!(symlinkat: fn(Cp, c_int, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(target, dirfd, p),
            |rel| symlink_branch(target, &rel),
        )
    }
}

unsafe fn link_impl(
    od: c_int,
    old: Cp,
    nd: c_int,
    new: Cp,
    native: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_g) = Guard::enter() else {
        return native();
    };
    // SAFETY: the program's arguments.
    match unsafe { (target_of(od, old), target_of(nd, new)) } {
        (Ok(Target::Native), Ok(Target::Native)) => native(),
        (Err(e), _) | (_, Err(e)) => fail(e),
        // Hard links in a branch are not supported: EXDEV makes programs
        // fall back to copying or renaming, as across filesystems.
        _ => fail(libc::EXDEV),
    }
}

#[no_mangle]
pub unsafe extern "C" fn link(old: Cp, new: Cp) -> c_int {
    let Some(o) = orig!(link: fn(Cp, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { link_impl(CWD, old, CWD, new, || o(old, new)) }
}

#[no_mangle]
pub unsafe extern "C" fn linkat(od: c_int, old: Cp, nd: c_int, new: Cp, flags: c_int) -> c_int {
    let Some(o) = orig!(linkat: fn(c_int, Cp, c_int, Cp, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { link_impl(od, old, nd, new, || o(od, old, nd, new, flags)) }
}

/// The existing entry at `rel` (following a final symlink with `follow`).
fn existing(rel: &[u8], follow: bool) -> Result<crate::resolve::Entry, Errno> {
    match resolve(rel, follow)? {
        Resolved::Found(e) => Ok(e),
        Resolved::Absent(_) => Err(libc::ENOENT),
        Resolved::Outside(_) => Err(libc::EXDEV),
    }
}

fn chmod_branch(rel: &[u8], mode: mode_t, follow: bool) -> Result<c_int, Errno> {
    if !follow {
        return Err(libc::EOPNOTSUPP);
    }
    let e = existing(rel, true)?;
    done(fs_op(FsOp::Chmod {
        path: wire(&e.path),
        mode: mode & 0o7777,
    }))
}

#[no_mangle]
pub unsafe extern "C" fn chmod(path: Cp, mode: mode_t) -> c_int {
    let Some(o) = orig!(chmod: fn(Cp, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| o(p, mode),
            |rel| chmod_branch(&rel, mode, true),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn fchmodat(dirfd: c_int, path: Cp, mode: mode_t, flags: c_int) -> c_int {
    let Some(o) = orig!(fchmodat: fn(c_int, Cp, mode_t, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, mode, flags),
            |rel| chmod_branch(&rel, mode, !nofollow(flags)),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn fchmod(fd: c_int, mode: mode_t) -> c_int {
    let Some(o) = orig!(fchmod: fn(c_int, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, mode) };
    };
    match fd_get(fd) {
        Some(info) => chmod_branch(&info.path, mode, true).unwrap_or_else(fail),
        // SAFETY: passed on.
        None => unsafe { o(fd, mode) },
    }
}

/// Ownership cannot change in a branch: asking for the owner it already
/// has succeeds (as `cp -a` and `tar` do), anything else is `EPERM`.
fn chown_branch(
    rel: &[u8],
    uid: libc::uid_t,
    gid: libc::gid_t,
    follow: bool,
) -> Result<c_int, Errno> {
    let e = existing(rel, follow)?;
    let st = rustix::fs::statat(
        rustix::fs::CWD,
        e.phys.as_c_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| e.raw_os_error())?;
    let same = (uid == u32::MAX || uid == st.st_uid) && (gid == u32::MAX || gid == st.st_gid);
    if same {
        Ok(0)
    } else {
        shim_log("chown in a branch is refused (ownership is the layer's)");
        Err(libc::EPERM)
    }
}

macro_rules! chown_fn {
    ($name:ident, $follow:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: Cp, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
            let Some(o) = orig!($name: fn(Cp, libc::uid_t, libc::gid_t) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            unsafe {
                with_write_path(CWD, path, |p| o(p, uid, gid), |rel| {
                    chown_branch(&rel, uid, gid, $follow)
                })
            }
        }
    };
}

chown_fn!(chown, true);
chown_fn!(lchown, false);

#[no_mangle]
pub unsafe extern "C" fn fchownat(
    dirfd: c_int,
    path: Cp,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: c_int,
) -> c_int {
    let Some(o) = orig!(fchownat: fn(c_int, Cp, libc::uid_t, libc::gid_t, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, uid, gid, flags),
            |rel| chown_branch(&rel, uid, gid, !nofollow(flags)),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn fchown(fd: c_int, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    let Some(o) = orig!(fchown: fn(c_int, libc::uid_t, libc::gid_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, uid, gid) };
    };
    match fd_get(fd) {
        Some(info) => chown_branch(&info.path, uid, gid, true).unwrap_or_else(fail),
        // SAFETY: passed on.
        None => unsafe { o(fd, uid, gid) },
    }
}

fn truncate_branch(rel: &[u8], len: i64) -> Result<c_int, Errno> {
    let e = existing(rel, true)?;
    if e.kind == FileType::Directory {
        return Err(libc::EISDIR);
    }
    done(fs_op(FsOp::Truncate {
        path: wire(&e.path),
        size: u64::try_from(len).map_err(|_| libc::EINVAL)?,
    }))
}

#[no_mangle]
pub unsafe extern "C" fn truncate(path: Cp, len: libc::off_t) -> c_int {
    let Some(o) = orig!(truncate: fn(Cp, libc::off_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p, len), |rel| truncate_branch(&rel, len)) }
}

#[no_mangle]
pub unsafe extern "C" fn truncate64(path: Cp, len: libc::off64_t) -> c_int {
    let Some(o) = orig!(truncate64: fn(Cp, libc::off64_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p, len), |rel| truncate_branch(&rel, len)) }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// (atime, mtime) in nanoseconds for `utimensat`'s `times` (`None`: leave).
unsafe fn times_of(times: *const libc::timespec) -> (Option<i64>, Option<i64>) {
    if times.is_null() {
        let n = now_ns();
        return (Some(n), Some(n));
    }
    let one = |t: &libc::timespec| match t.tv_nsec {
        libc::UTIME_OMIT => None,
        libc::UTIME_NOW => Some(now_ns()),
        n => Some(t.tv_sec * 1_000_000_000 + n),
    };
    // SAFETY: the program's two-element array.
    unsafe { (one(&*times), one(&*times.add(1))) }
}

fn set_times_branch(
    rel: &[u8],
    follow: bool,
    t: (Option<i64>, Option<i64>),
) -> Result<c_int, Errno> {
    let e = existing(rel, follow)?;
    if t.0.is_none() && t.1.is_none() {
        return Ok(0);
    }
    done(fs_op(FsOp::SetTimes {
        path: wire(&e.path),
        atime_ns: t.0,
        mtime_ns: t.1,
    }))
}

#[no_mangle]
pub unsafe extern "C" fn utimensat(
    dirfd: c_int,
    path: Cp,
    times: *const libc::timespec,
    flags: c_int,
) -> c_int {
    let Some(o) = orig!(utimensat: fn(c_int, Cp, *const libc::timespec, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    if path.is_null() {
        // SAFETY: futimens's contract is utimensat's with a null path.
        return unsafe { futimens(dirfd, times) };
    }
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| o(dirfd, p, times, flags),
            |rel| set_times_branch(&rel, !nofollow(flags), times_of(times)),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn futimens(fd: c_int, times: *const libc::timespec) -> c_int {
    let Some(o) = orig!(futimens: fn(c_int, *const libc::timespec) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, times) };
    };
    match fd_get(fd) {
        // SAFETY: the program's array.
        Some(info) => {
            set_times_branch(&info.path, true, unsafe { times_of(times) }).unwrap_or_else(fail)
        }
        // SAFETY: passed on.
        None => unsafe { o(fd, times) },
    }
}

unsafe fn timeval_times(tv: *const libc::timeval) -> (Option<i64>, Option<i64>) {
    if tv.is_null() {
        let n = now_ns();
        return (Some(n), Some(n));
    }
    let one = |t: &libc::timeval| Some(t.tv_sec * 1_000_000_000 + t.tv_usec * 1000);
    // SAFETY: the program's two-element array.
    unsafe { (one(&*tv), one(&*tv.add(1))) }
}

#[no_mangle]
pub unsafe extern "C" fn utimes(path: Cp, tv: *const libc::timeval) -> c_int {
    let Some(o) = orig!(utimes: fn(Cp, *const libc::timeval) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| o(p, tv),
            |rel| set_times_branch(&rel, true, timeval_times(tv)),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn lutimes(path: Cp, tv: *const libc::timeval) -> c_int {
    let Some(o) = orig!(lutimes: fn(Cp, *const libc::timeval) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| o(p, tv),
            |rel| set_times_branch(&rel, false, timeval_times(tv)),
        )
    }
}

#[no_mangle]
pub unsafe extern "C" fn futimes(fd: c_int, tv: *const libc::timeval) -> c_int {
    let Some(o) = orig!(futimes: fn(c_int, *const libc::timeval) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, tv) };
    };
    match fd_get(fd) {
        // SAFETY: the program's array.
        Some(info) => {
            set_times_branch(&info.path, true, unsafe { timeval_times(tv) }).unwrap_or_else(fail)
        }
        // SAFETY: passed on.
        None => unsafe { o(fd, tv) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn utime(path: Cp, times: *const libc::utimbuf) -> c_int {
    let Some(o) = orig!(utime: fn(Cp, *const libc::utimbuf) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| o(p, times),
            |rel| {
                let t = if times.is_null() {
                    let n = now_ns();
                    (Some(n), Some(n))
                } else {
                    (
                        Some((*times).actime * 1_000_000_000),
                        Some((*times).modtime * 1_000_000_000),
                    )
                };
                set_times_branch(&rel, true, t)
            },
        )
    }
}

fn xattr_name(name: Cp) -> Result<String, Errno> {
    // SAFETY: the program's C string.
    text(unsafe { bytes(name) }.ok_or(libc::EFAULT)?)
}

fn setxattr_branch(
    rel: &[u8],
    follow: bool,
    name: Cp,
    value: *const c_void,
    size: size_t,
) -> Result<c_int, Errno> {
    let e = existing(rel, follow)?;
    let value = if size == 0 {
        Vec::new()
    } else {
        // SAFETY: the program's buffer of `size` bytes.
        unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()
    };
    done(fs_op(FsOp::SetXattr {
        path: wire(&e.path),
        name: xattr_name(name)?,
        value,
    }))
}

fn removexattr_branch(rel: &[u8], follow: bool, name: Cp) -> Result<c_int, Errno> {
    let e = existing(rel, follow)?;
    done(fs_op(FsOp::RemoveXattr {
        path: wire(&e.path),
        name: xattr_name(name)?,
    }))
}

macro_rules! setxattr_fn {
    ($name:ident, $follow:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            path: Cp,
            name: Cp,
            value: *const c_void,
            size: size_t,
            flags: c_int,
        ) -> c_int {
            let Some(o) = orig!($name: fn(Cp, Cp, *const c_void, size_t, c_int) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            unsafe {
                with_write_path(CWD, path, |p| o(p, name, value, size, flags), |rel| {
                    setxattr_branch(&rel, $follow, name, value, size)
                })
            }
        }
    };
}

setxattr_fn!(setxattr, true);
setxattr_fn!(lsetxattr, false);

macro_rules! removexattr_fn {
    ($name:ident, $follow:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: Cp, name: Cp) -> c_int {
            let Some(o) = orig!($name: fn(Cp, Cp) -> c_int) else {
                return fail(libc::ENOSYS);
            };
            // SAFETY: the program's arguments.
            unsafe {
                with_write_path(CWD, path, |p| o(p, name), |rel| {
                    removexattr_branch(&rel, $follow, name)
                })
            }
        }
    };
}

removexattr_fn!(removexattr, true);
removexattr_fn!(lremovexattr, false);

#[no_mangle]
pub unsafe extern "C" fn fsetxattr(
    fd: c_int,
    name: Cp,
    value: *const c_void,
    size: size_t,
    flags: c_int,
) -> c_int {
    let Some(o) = orig!(fsetxattr: fn(c_int, Cp, *const c_void, size_t, c_int) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, name, value, size, flags) };
    };
    match fd_get(fd) {
        Some(info) => setxattr_branch(&info.path, true, name, value, size).unwrap_or_else(fail),
        // SAFETY: passed on.
        None => unsafe { o(fd, name, value, size, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn fremovexattr(fd: c_int, name: Cp) -> c_int {
    let Some(o) = orig!(fremovexattr: fn(c_int, Cp) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { o(fd, name) };
    };
    match fd_get(fd) {
        Some(info) => removexattr_branch(&info.path, true, name).unwrap_or_else(fail),
        // SAFETY: passed on.
        None => unsafe { o(fd, name) },
    }
}

/// Device nodes and fifos cannot be made in a branch.
fn refuse_node(_rel: Vec<u8>) -> Result<c_int, Errno> {
    shim_log("mknod/mkfifo in a branch is refused");
    Err(libc::EPERM)
}

#[no_mangle]
pub unsafe extern "C" fn mknod(path: Cp, mode: mode_t, dev: libc::dev_t) -> c_int {
    let Some(o) = orig!(mknod: fn(Cp, mode_t, libc::dev_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p, mode, dev), refuse_node) }
}

#[no_mangle]
pub unsafe extern "C" fn mknodat(dirfd: c_int, path: Cp, mode: mode_t, dev: libc::dev_t) -> c_int {
    let Some(o) = orig!(mknodat: fn(c_int, Cp, mode_t, libc::dev_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(dirfd, path, |p| o(dirfd, p, mode, dev), refuse_node) }
}

#[no_mangle]
pub unsafe extern "C" fn mkfifo(path: Cp, mode: mode_t) -> c_int {
    let Some(o) = orig!(mkfifo: fn(Cp, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(CWD, path, |p| o(p, mode), refuse_node) }
}

#[no_mangle]
pub unsafe extern "C" fn mkfifoat(dirfd: c_int, path: Cp, mode: mode_t) -> c_int {
    let Some(o) = orig!(mkfifoat: fn(c_int, Cp, mode_t) -> c_int) else {
        return fail(libc::ENOSYS);
    };
    // SAFETY: the program's arguments.
    unsafe { with_write_path(dirfd, path, |p| o(dirfd, p, mode), refuse_node) }
}
