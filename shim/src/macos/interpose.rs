//! The macOS file API interposers: open, stat, access, links and paths,
//! mutations, descriptors, exec and clones. Each classifies its path
//! argument (branch or not) and either passes the call to libSystem
//! unchanged or handles it in the branch (see [`super::branch`]).

use std::{
    ffi::{c_char, c_int, c_void, CString},
    ptr,
};

use super::{
    branch, bytes, classify, config, cwd, dirs, fail, fd_closed, fd_get, fd_insert_dup, fd_remove,
    interpose_tuples, kevent, resolve, set_cwd, set_errno, Guard, Target,
};
use crate::dispatch::{read_target, rename_across, with_read_path, with_write_path};
use crate::{
    paths,
    resolve::{Errno, Resolved},
};

type Cp = *const c_char;
const CWD: c_int = libc::AT_FDCWD;
/// `clonefile(2)`: do not follow a symlink source (`<sys/clonefile.h>`).
const CLONE_NOFOLLOW: u32 = 0x0001;

fn null_err<T>(e: Errno) -> *mut T {
    set_errno(e);
    ptr::null_mut()
}

// ------------------------------------------------------ variadic entries

// open(path, flags, ...), openat(fd, path, flags, ...), fcntl(fd, cmd, ...):
// on arm64 the variadic argument is the first stack slot.
#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".globl _agentfs_open_va",
    ".p2align 2",
    "_agentfs_open_va:",
    "ldr x2, [sp]",
    "b _agentfs_open_impl",
    ".globl _agentfs_openat_va",
    ".p2align 2",
    "_agentfs_openat_va:",
    "ldr x3, [sp]",
    "b _agentfs_openat_impl",
    ".globl _agentfs_fcntl_va",
    ".p2align 2",
    "_agentfs_fcntl_va:",
    "ldr x2, [sp]",
    "b _agentfs_fcntl_impl",
);

// On x86_64 variadic arguments use the same registers.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".globl _agentfs_open_va",
    "_agentfs_open_va:",
    "jmp _agentfs_open_impl",
    ".globl _agentfs_openat_va",
    "_agentfs_openat_va:",
    "jmp _agentfs_openat_impl",
    ".globl _agentfs_fcntl_va",
    "_agentfs_fcntl_va:",
    "jmp _agentfs_fcntl_impl",
);

extern "C" {
    fn agentfs_open_va();
    fn agentfs_openat_va();
    fn agentfs_fcntl_va();
}

/// `open` with its optional mode as a fixed argument (see the trampoline).
#[no_mangle]
pub unsafe extern "C" fn agentfs_open_impl(path: Cp, flags: c_int, mode: usize) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { agentfs_openat_impl(CWD, path, flags, mode) }
}

/// `openat` with its optional mode as a fixed argument.
#[no_mangle]
pub unsafe extern "C" fn agentfs_openat_impl(
    dirfd: c_int,
    path: Cp,
    flags: c_int,
    mode: usize,
) -> c_int {
    let mode = mode as u32 & 0o7777;
    // SAFETY: the program's arguments, passed on as they came.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| libc::openat(dirfd, p, flags, mode as c_int),
            |rel| branch::open(&rel, flags, mode),
        )
    }
}

/// Copies `v` and a NUL into `buf` of `size` bytes (`ERANGE` when it does
/// not fit); with a null `buf`, into a `malloc`ed buffer.
unsafe fn copy_out(v: &[u8], buf: *mut c_char, size: usize) -> *mut c_char {
    let p = if buf.is_null() {
        // SAFETY: malloc of a positive size.
        let p = unsafe { libc::malloc(v.len() + 1) }.cast::<c_char>();
        if p.is_null() {
            return null_err(libc::ENOMEM);
        }
        p
    } else if size < v.len() + 1 {
        return null_err(libc::ERANGE);
    } else {
        buf
    };
    // SAFETY: `p` has room for `v` and the NUL.
    unsafe {
        ptr::copy_nonoverlapping(v.as_ptr().cast(), p, v.len());
        *p.add(v.len()) = 0;
    }
    p
}

/// The path the program should see for a path the kernel gave: a layer
/// path maps back to its branch path; anything else is unchanged.
fn visible_of(kernel: &[u8]) -> Option<Vec<u8>> {
    let cfg = config()?;
    let store = cfg.store.as_ref()?;
    paths::shown_for_kernel_path(store, &cfg.root, kernel, |p| {
        super::chain().ok()?.branch_path_of(p)
    })
}

/// `fcntl` with its optional argument as a fixed one: `F_GETPATH` shows the
/// branch path, `F_DUPFD*` keep the shim's fd table.
#[no_mangle]
pub unsafe extern "C" fn agentfs_fcntl_impl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: passed on as it came.
    let r = unsafe { libc::fcntl(fd, cmd, arg) };
    if r < 0 {
        return r;
    }
    let Some(_g) = Guard::enter() else {
        return r;
    };
    match cmd {
        libc::F_GETPATH => {
            let out = arg as *mut c_char;
            // SAFETY: the kernel wrote a C string into the program's
            // MAXPATHLEN buffer.
            let kernel = unsafe { bytes(out) }.map(<[u8]>::to_vec);
            let shown = match (fd_get(fd), config()) {
                (Some(info), Some(cfg)) => Some(paths::visible(&cfg.root, &info.path)),
                _ => kernel.as_deref().and_then(visible_of),
            };
            if let Some(v) = shown {
                // SAFETY: the program's MAXPATHLEN buffer.
                if unsafe { copy_out(&v, out, libc::MAXPATHLEN as usize) }.is_null() {
                    return -1;
                }
            }
            r
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            if let Some(info) = fd_get(fd) {
                fd_insert_dup(r, info);
            }
            r
        }
        _ => r,
    }
}

// ---------------------------------------------------------------- reads

unsafe extern "C" fn stat(path: Cp, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { with_read_path(CWD, path, true, fail, |p| libc::stat(p, buf)) }
}

unsafe extern "C" fn lstat(path: Cp, buf: *mut libc::stat) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { with_read_path(CWD, path, false, fail, |p| libc::lstat(p, buf)) }
}

unsafe extern "C" fn fstatat(dirfd: c_int, path: Cp, buf: *mut libc::stat, flags: c_int) -> c_int {
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(dirfd, path, follow, fail, |p| {
            libc::fstatat(dirfd, p, buf, flags)
        })
    }
}

unsafe extern "C" fn statfs(path: Cp, buf: *mut libc::statfs) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { with_read_path(CWD, path, true, fail, |p| libc::statfs(p, buf)) }
}

/// `W_OK` in the branch: every entry is writable through the daemon, so
/// it is decided by the mode bits (the base may be on a read-only volume).
unsafe fn access_impl(dirfd: c_int, path: Cp, mode: c_int, flags: c_int) -> c_int {
    if !in_branch(dirfd, path) {
        // SAFETY: passed on.
        return unsafe { libc::faccessat(dirfd, path, mode, flags) };
    }
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    // SAFETY: the program's arguments; `p` is the physical entry.
    unsafe {
        with_read_path(dirfd, path, follow, fail, |p| {
            let r = libc::faccessat(CWD, p, mode & !libc::W_OK, flags);
            if r != 0 || mode & libc::W_OK == 0 {
                return r;
            }
            let mut st: libc::stat = std::mem::zeroed();
            let r = if follow {
                libc::stat(p, &mut st)
            } else {
                libc::lstat(p, &mut st)
            };
            if r != 0 {
                -1
            } else if st.st_mode & 0o222 == 0 {
                fail(libc::EACCES)
            } else {
                0
            }
        })
    }
}

/// Whether `path` (from `dirfd`) is in the branch.
fn in_branch(dirfd: c_int, path: Cp) -> bool {
    let Some(_g) = Guard::enter() else {
        return false;
    };
    // SAFETY: the program's C string.
    match unsafe { bytes(path) } {
        Some(p) if !p.is_empty() => matches!(classify(dirfd, p), Ok(Target::Branch(_))),
        _ => false,
    }
}

unsafe extern "C" fn access(path: Cp, mode: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(CWD, path, mode, 0) }
}

unsafe extern "C" fn faccessat(dirfd: c_int, path: Cp, mode: c_int, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe { access_impl(dirfd, path, mode, flags) }
}

unsafe extern "C" fn readlink(path: Cp, buf: *mut c_char, size: usize) -> isize {
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(
            CWD,
            path,
            false,
            |e| fail(e) as isize,
            |p| libc::readlink(p, buf, size),
        )
    }
}

unsafe extern "C" fn readlinkat(dirfd: c_int, path: Cp, buf: *mut c_char, size: usize) -> isize {
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(
            dirfd,
            path,
            false,
            |e| fail(e) as isize,
            |p| libc::readlinkat(dirfd, p, buf, size),
        )
    }
}

unsafe extern "C" fn getattrlist(
    path: Cp,
    list: *mut c_void,
    buf: *mut c_void,
    size: usize,
    options: u32,
) -> c_int {
    let follow = options & libc::FSOPT_NOFOLLOW == 0;
    // SAFETY: the program's arguments.
    unsafe {
        with_read_path(CWD, path, follow, fail, |p| {
            libc::getattrlist(p, list, buf, size, options)
        })
    }
}

// --------------------------------------------------------- paths and cwd

unsafe extern "C" fn realpath(path: Cp, out: *mut c_char) -> *mut c_char {
    let native = |p: Cp| {
        // SAFETY: the program's buffer (or null).
        let r = unsafe { libc::realpath(p, out) };
        if r.is_null() {
            return r;
        }
        // A path the kernel resolved into a layer maps back.
        // SAFETY: realpath returned a C string.
        match unsafe { bytes(r) }.and_then(visible_of) {
            Some(v) => {
                if out.is_null() {
                    // SAFETY: realpath malloc'ed it.
                    unsafe { libc::free(r.cast()) };
                }
                // SAFETY: `out` is null or the caller's PATH_MAX buffer.
                unsafe { copy_out(&v, out, libc::PATH_MAX as usize) }
            }
            None => r,
        }
    };
    let Some(_g) = Guard::enter() else {
        // SAFETY: the program's arguments.
        return unsafe { libc::realpath(path, out) };
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        return native(path);
    };
    let rel = match classify(CWD, p) {
        Ok(Target::Native) => return native(path),
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let Some(cfg) = config() else {
        return native(path);
    };
    match resolve(&rel, true) {
        Ok(Resolved::Found(e)) => {
            let v = paths::visible(&cfg.root, &e.path);
            // SAFETY: `out` is null or the caller's PATH_MAX buffer.
            unsafe { copy_out(&v, out, libc::PATH_MAX as usize) }
        }
        Ok(Resolved::Absent(_)) => null_err(libc::ENOENT),
        Ok(Resolved::Outside(n)) => match CString::new(n) {
            Ok(c) => native(c.as_ptr()),
            Err(_) => null_err(libc::EINVAL),
        },
        Err(e) => null_err(e),
    }
}

unsafe extern "C" fn getcwd(buf: *mut c_char, size: usize) -> *mut c_char {
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { libc::getcwd(buf, size) };
    };
    if config().is_none() {
        // SAFETY: passed on.
        return unsafe { libc::getcwd(buf, size) };
    }
    let size = if buf.is_null() { 0 } else { size };
    match cwd() {
        // SAFETY: the caller's buffer (or null: malloc'ed, as macOS does).
        Ok(v) => unsafe { copy_out(&v, buf, size) },
        Err(e) => null_err(e),
    }
}

unsafe extern "C" fn chdir(path: Cp) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| {
                let r = libc::chdir(p);
                if r == 0 {
                    set_cwd(None);
                }
                r
            },
            |rel| {
                let e = branch::existing(&rel, true)?;
                if e.kind != rustix::fs::FileType::Directory {
                    return Err(libc::ENOTDIR);
                }
                let r = libc::chdir(e.phys.as_ptr());
                if r == 0 {
                    let root = &config().ok_or(libc::EIO)?.root;
                    set_cwd(Some(paths::visible(root, &e.path)));
                }
                Ok(r)
            },
        )
    }
}

unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    // SAFETY: passed on.
    let r = unsafe { libc::fchdir(fd) };
    if r == 0 {
        if let Some(_g) = Guard::enter() {
            match (fd_get(fd), config()) {
                (Some(info), Some(cfg)) => set_cwd(Some(paths::visible(&cfg.root, &info.path))),
                _ => set_cwd(None),
            }
        }
    }
    r
}

// ------------------------------------------------------------- mutations

unsafe extern "C" fn mkdir(path: Cp, mode: libc::mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::mkdir(p, mode),
            |rel| branch::mkdir(&rel, u32::from(mode)),
        )
    }
}

unsafe extern "C" fn unlink(path: Cp) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::unlink(p),
            |rel| branch::remove(&rel, false),
        )
    }
}

unsafe extern "C" fn rmdir(path: Cp) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::rmdir(p),
            |rel| branch::remove(&rel, true),
        )
    }
}

unsafe extern "C" fn rename(old: Cp, new: Cp) -> c_int {
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { libc::rename(old, new) };
    };
    // SAFETY: the program's C strings.
    let (a, b) = unsafe { (bytes(old), bytes(new)) };
    let (Some(a), Some(b)) = (a, b) else {
        return fail(libc::EFAULT);
    };
    match (classify(CWD, a), classify(CWD, b)) {
        // SAFETY: passed on.
        (Ok(Target::Native), Ok(Target::Native)) => unsafe { libc::rename(old, new) },
        (Ok(Target::Branch(f)), Ok(Target::Branch(t))) => {
            branch::rename(&f, &t).unwrap_or_else(fail)
        }
        (Err(e), _) | (_, Err(e)) => fail(e),
        (Ok(Target::Branch(side)), _) | (_, Ok(Target::Branch(side))) => fail(rename_across(&side)),
    }
}

unsafe extern "C" fn symlink(target: Cp, path: Cp) -> c_int {
    // SAFETY: the program's C string.
    let Some(t) = (unsafe { bytes(target) }) else {
        return fail(libc::EFAULT);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::symlink(target, p),
            |rel| branch::symlink(t, &rel),
        )
    }
}

unsafe extern "C" fn chmod(path: Cp, mode: libc::mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::chmod(p, mode),
            |rel| branch::chmod(&rel, u32::from(mode)),
        )
    }
}

unsafe extern "C" fn truncate(path: Cp, len: libc::off_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::truncate(p, len),
            |rel| branch::truncate(&rel, len),
        )
    }
}

unsafe extern "C" fn mkdirat(dirfd: c_int, path: Cp, mode: libc::mode_t) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| libc::mkdirat(dirfd, p, mode),
            |rel| branch::mkdir(&rel, u32::from(mode)),
        )
    }
}

unsafe extern "C" fn unlinkat(dirfd: c_int, path: Cp, flags: c_int) -> c_int {
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| libc::unlinkat(dirfd, p, flags),
            |rel| branch::remove(&rel, flags & libc::AT_REMOVEDIR != 0),
        )
    }
}

unsafe extern "C" fn symlinkat(target: Cp, dirfd: c_int, path: Cp) -> c_int {
    // SAFETY: the program's C string.
    let Some(t) = (unsafe { bytes(target) }) else {
        return fail(libc::EFAULT);
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| libc::symlinkat(target, dirfd, p),
            |rel| branch::symlink(t, &rel),
        )
    }
}

unsafe extern "C" fn renameat(od: c_int, old: Cp, nd: c_int, new: Cp) -> c_int {
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { libc::renameat(od, old, nd, new) };
    };
    // SAFETY: the program's C strings.
    let (a, b) = unsafe { (bytes(old), bytes(new)) };
    let (Some(a), Some(b)) = (a, b) else {
        return fail(libc::EFAULT);
    };
    match (classify(od, a), classify(nd, b)) {
        // SAFETY: passed on.
        (Ok(Target::Native), Ok(Target::Native)) => unsafe { libc::renameat(od, old, nd, new) },
        (Ok(Target::Branch(f)), Ok(Target::Branch(t))) => {
            branch::rename(&f, &t).unwrap_or_else(fail)
        }
        (Err(e), _) | (_, Err(e)) => fail(e),
        (Ok(Target::Branch(side)), _) | (_, Ok(Target::Branch(side))) => fail(rename_across(&side)),
    }
}

/// `fchmod` on an fd the shim opened in the branch changes the branch
/// entry (an fd opened for reading may point into the base).
unsafe extern "C" fn fchmod(fd: c_int, mode: libc::mode_t) -> c_int {
    if let Some(_g) = Guard::enter() {
        if let Some(info) = fd_get(fd) {
            return branch::chmod(&info.path, u32::from(mode)).unwrap_or_else(fail);
        }
    }
    // SAFETY: passed on.
    unsafe { libc::fchmod(fd, mode) }
}

unsafe extern "C" fn utimes(path: Cp, times: *const libc::timeval) -> c_int {
    let t = if times.is_null() {
        let n = branch::now_ns();
        (Some(n), Some(n))
    } else {
        let ns = |t: &libc::timeval| t.tv_sec * 1_000_000_000 + i64::from(t.tv_usec) * 1000;
        // SAFETY: the program's two-element array.
        unsafe { (Some(ns(&*times)), Some(ns(&*times.add(1)))) }
    };
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            CWD,
            path,
            |p| libc::utimes(p, times),
            |rel| branch::set_times(&rel, true, t.0, t.1),
        )
    }
}

unsafe extern "C" fn utimensat(
    dirfd: c_int,
    path: Cp,
    times: *const libc::timespec,
    flags: c_int,
) -> c_int {
    let t = if times.is_null() {
        let n = branch::now_ns();
        (Some(n), Some(n))
    } else {
        let one = |t: &libc::timespec| match t.tv_nsec {
            libc::UTIME_OMIT => None,
            libc::UTIME_NOW => Some(branch::now_ns()),
            n => Some(t.tv_sec * 1_000_000_000 + n),
        };
        // SAFETY: the program's two-element array.
        unsafe { (one(&*times), one(&*times.add(1))) }
    };
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    // SAFETY: the program's arguments.
    unsafe {
        with_write_path(
            dirfd,
            path,
            |p| libc::utimensat(dirfd, p, times, flags),
            |rel| branch::set_times(&rel, follow, t.0, t.1),
        )
    }
}

/// Changes the branch cannot make are refused with `errno` instead of
/// reaching the base (there is no read-only safety net on macOS).
macro_rules! refused {
    ($name:ident ( $p:ident : Cp $(, $arg:ident : $ty:ty)* ) => $errno:expr, $orig:path) => {
        unsafe extern "C" fn $name($p: Cp $(, $arg: $ty)*) -> c_int {
            // SAFETY: the program's arguments.
            unsafe { with_write_path(CWD, $p, |p| $orig(p $(, $arg)*), |_| Err($errno)) }
        }
    };
}

refused!(chown(path: Cp, uid: libc::uid_t, gid: libc::gid_t) => libc::EPERM, libc::chown);
refused!(lchown(path: Cp, uid: libc::uid_t, gid: libc::gid_t) => libc::EPERM, libc::lchown);
refused!(mkfifo(path: Cp, mode: libc::mode_t) => libc::EPERM, libc::mkfifo);
refused!(mknod(path: Cp, mode: libc::mode_t, dev: libc::dev_t) => libc::EPERM, libc::mknod);
refused!(setxattr(path: Cp, name: Cp, value: *const c_void, size: usize, pos: u32, options: c_int) => libc::ENOTSUP, libc::setxattr);
refused!(removexattr(path: Cp, name: Cp, options: c_int) => libc::ENOTSUP, libc::removexattr);

/// `link` in the branch is `EXDEV` (programs fall back to copying); a
/// link between the branch and elsewhere too.
unsafe extern "C" fn link(old: Cp, new: Cp) -> c_int {
    if in_branch(CWD, old) || in_branch(CWD, new) {
        return fail(libc::EXDEV);
    }
    // SAFETY: passed on.
    unsafe { libc::link(old, new) }
}

/// `clonefile` into the branch is refused with `ENOTSUP` (a clone would
/// bypass the daemon): `copyfile(COPYFILE_CLONE)`, `cp -c` and Finder fall
/// back to copying, which goes through the interposed `open`. A branch
/// source is cloned from its physical entry.
unsafe extern "C" fn clonefile(src: Cp, dst: Cp, flags: u32) -> c_int {
    if in_branch(CWD, dst) {
        return fail(libc::ENOTSUP);
    }
    let follow = flags & CLONE_NOFOLLOW == 0;
    // SAFETY: the program's arguments.
    unsafe { with_read_path(CWD, src, follow, fail, |p| libc::clonefile(p, dst, flags)) }
}

// ----------------------------------------------------------- descriptors

unsafe extern "C" fn close(fd: c_int) -> c_int {
    let tracked = Guard::enter().map(|_g| {
        kevent::closed(fd);
        fd_remove(fd)
    });
    // SAFETY: passed on.
    let r = unsafe { libc::close(fd) };
    if let Some(Some(info)) = tracked {
        if let Some(_g) = Guard::enter() {
            fd_closed(&info);
        }
    }
    r
}

unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: passed on.
    let r = unsafe { libc::dup(fd) };
    if r >= 0 {
        if let (Some(_g), Some(info)) = (Guard::enter(), fd_get(fd)) {
            fd_insert_dup(r, info);
        }
    }
    r
}

unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let replaced = if old != new {
        Guard::enter().and_then(|_g| fd_remove(new))
    } else {
        None
    };
    // SAFETY: passed on.
    let r = unsafe { libc::dup2(old, new) };
    if let Some(_g) = Guard::enter() {
        if let Some(info) = replaced {
            fd_closed(&info);
        }
        if r >= 0 && old != new {
            if let Some(info) = fd_get(old) {
                fd_insert_dup(r, info);
            }
        }
    }
    r
}

// ----------------------------------------------------------- directories

fn open_dir_stream(fd: c_int, path: Vec<u8>) -> *mut libc::DIR {
    match super::list(&path, Some(fd)) {
        Ok(entries) => dirs::register(dirs::ShimDir::new(fd, path, entries)),
        Err(e) => {
            // SAFETY: the fd the shim just opened.
            unsafe { close(fd) };
            null_err(e)
        }
    }
}

unsafe extern "C" fn opendir(path: Cp) -> *mut libc::DIR {
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { libc::opendir(path) };
    };
    // SAFETY: the program's C string.
    let Some(p) = (unsafe { bytes(path) }) else {
        // SAFETY: passed on.
        return unsafe { libc::opendir(path) };
    };
    let rel = match classify(CWD, p) {
        // SAFETY: passed on.
        Ok(Target::Native) => return unsafe { libc::opendir(path) },
        Ok(Target::Branch(rel)) => rel,
        Err(e) => return null_err(e),
    };
    let fd = match branch::open(
        &rel,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) {
        Ok(fd) if fd >= 0 => fd,
        Ok(_) => return ptr::null_mut(),
        Err(e) => return null_err(e),
    };
    match fd_get(fd) {
        Some(info) => open_dir_stream(fd, info.path),
        // Left the branch through a symlink: a native stream.
        // SAFETY: an fd we own.
        None => unsafe { libc::fdopendir(fd) },
    }
}

unsafe extern "C" fn fdopendir(fd: c_int) -> *mut libc::DIR {
    let Some(_g) = Guard::enter() else {
        // SAFETY: passed on.
        return unsafe { libc::fdopendir(fd) };
    };
    match fd_get(fd) {
        Some(info) => open_dir_stream(fd, info.path),
        // SAFETY: passed on.
        None => unsafe { libc::fdopendir(fd) },
    }
}

unsafe extern "C" fn readdir(dirp: *mut libc::DIR) -> *mut libc::dirent {
    match dirs::lookup(dirp) {
        Some(d) => {
            // SAFETY: a live registered stream; the program does not use
            // one stream from two threads at once (POSIX).
            let d = unsafe { &mut *d };
            let buf = std::ptr::addr_of_mut!(d.buf);
            if d.next_into(buf) {
                buf
            } else {
                ptr::null_mut()
            }
        }
        // SAFETY: passed on.
        None => unsafe { libc::readdir(dirp) },
    }
}

unsafe extern "C" fn readdir_r(
    dirp: *mut libc::DIR,
    entry: *mut libc::dirent,
    result: *mut *mut libc::dirent,
) -> c_int {
    match dirs::lookup(dirp) {
        Some(d) => {
            // SAFETY: a live registered stream; the caller's buffers.
            unsafe {
                *result = if (*d).next_into(entry) {
                    entry
                } else {
                    ptr::null_mut()
                };
            }
            0
        }
        // SAFETY: passed on.
        None => unsafe { libc::readdir_r(dirp, entry, result) },
    }
}

unsafe extern "C" fn closedir(dirp: *mut libc::DIR) -> c_int {
    match dirs::unregister(dirp) {
        // SAFETY: the stream's own fd.
        Some(d) => unsafe { close(d.fd) },
        // SAFETY: passed on.
        None => unsafe { libc::closedir(dirp) },
    }
}

unsafe extern "C" fn dirfd(dirp: *mut libc::DIR) -> c_int {
    match dirs::lookup(dirp) {
        // SAFETY: a live registered stream.
        Some(d) => unsafe { (*d).fd },
        // SAFETY: passed on.
        None => unsafe { libc::dirfd(dirp) },
    }
}

unsafe extern "C" fn rewinddir(dirp: *mut libc::DIR) {
    match dirs::lookup(dirp) {
        Some(d) => {
            let _g = Guard::enter();
            // SAFETY: a live registered stream.
            let d = unsafe { &mut *d };
            if let Ok(entries) = super::list(&d.path, None) {
                d.entries = entries;
            }
            d.pos = 0;
        }
        // SAFETY: passed on.
        None => unsafe { libc::rewinddir(dirp) },
    }
}

unsafe extern "C" fn telldir(dirp: *mut libc::DIR) -> libc::c_long {
    match dirs::lookup(dirp) {
        // SAFETY: a live registered stream.
        Some(d) => unsafe { (*d).pos as libc::c_long },
        // SAFETY: passed on.
        None => unsafe { libc::telldir(dirp) },
    }
}

unsafe extern "C" fn seekdir(dirp: *mut libc::DIR, loc: libc::c_long) {
    match dirs::lookup(dirp) {
        // SAFETY: a live registered stream.
        Some(d) => unsafe { (*d).pos = loc.max(0) as usize },
        // SAFETY: passed on.
        None => unsafe { libc::seekdir(dirp, loc) },
    }
}

// ------------------------------------------------------------------ exec

/// The path an exec of `path` runs (`None`: the program's own).
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

unsafe extern "C" fn execve(path: Cp, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int {
    // SAFETY: the program's arguments, with the branch entry's path.
    match unsafe { exec_path(path) } {
        Ok(Some(c)) => unsafe { libc::execve(c.as_ptr(), argv.cast(), envp.cast()) },
        // SAFETY: passed on.
        Ok(None) => unsafe { libc::execve(path, argv.cast(), envp.cast()) },
        Err(e) => fail(e),
    }
}

unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: Cp,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the program's arguments (posix_spawn returns the error).
    match unsafe { exec_path(path) } {
        Ok(Some(c)) => unsafe { libc::posix_spawn(pid, c.as_ptr(), actions, attr, argv, envp) },
        // SAFETY: passed on.
        Ok(None) => unsafe { libc::posix_spawn(pid, path, actions, attr, argv, envp) },
        Err(e) => e,
    }
}

interpose_tuples! {
    I_OPEN: agentfs_open_va => libc::open,
    I_OPENAT: agentfs_openat_va => libc::openat,
    I_FCNTL: agentfs_fcntl_va => libc::fcntl,
    I_STAT: stat => libc::stat,
    I_LSTAT: lstat => libc::lstat,
    I_FSTATAT: fstatat => libc::fstatat,
    I_STATFS: statfs => libc::statfs,
    I_ACCESS: access => libc::access,
    I_FACCESSAT: faccessat => libc::faccessat,
    I_READLINK: readlink => libc::readlink,
    I_READLINKAT: readlinkat => libc::readlinkat,
    I_GETATTRLIST: getattrlist => libc::getattrlist,
    I_REALPATH: realpath => libc::realpath,
    I_GETCWD: getcwd => libc::getcwd,
    I_CHDIR: chdir => libc::chdir,
    I_FCHDIR: fchdir => libc::fchdir,
    I_MKDIR: mkdir => libc::mkdir,
    I_UNLINK: unlink => libc::unlink,
    I_RMDIR: rmdir => libc::rmdir,
    I_RENAME: rename => libc::rename,
    I_MKDIRAT: mkdirat => libc::mkdirat,
    I_UNLINKAT: unlinkat => libc::unlinkat,
    I_SYMLINKAT: symlinkat => libc::symlinkat,
    I_RENAMEAT: renameat => libc::renameat,
    I_FCHMOD: fchmod => libc::fchmod,
    I_UTIMES: utimes => libc::utimes,
    I_UTIMENSAT: utimensat => libc::utimensat,
    I_CHOWN: chown => libc::chown,
    I_LCHOWN: lchown => libc::lchown,
    I_MKFIFO: mkfifo => libc::mkfifo,
    I_MKNOD: mknod => libc::mknod,
    I_SETXATTR: setxattr => libc::setxattr,
    I_REMOVEXATTR: removexattr => libc::removexattr,
    I_LINK: link => libc::link,
    I_SYMLINK: symlink => libc::symlink,
    I_CHMOD: chmod => libc::chmod,
    I_TRUNCATE: truncate => libc::truncate,
    I_CLONEFILE: clonefile => libc::clonefile,
    I_CLOSE: close => libc::close,
    I_OPENDIR: opendir => libc::opendir,
    I_FDOPENDIR: fdopendir => libc::fdopendir,
    I_READDIR: readdir => libc::readdir,
    I_READDIR_R: readdir_r => libc::readdir_r,
    I_CLOSEDIR: closedir => libc::closedir,
    I_DIRFD: dirfd => libc::dirfd,
    I_REWINDDIR: rewinddir => libc::rewinddir,
    I_TELLDIR: telldir => libc::telldir,
    I_SEEKDIR: seekdir => libc::seekdir,
    I_DUP: dup => libc::dup,
    I_DUP2: dup2 => libc::dup2,
    I_EXECVE: execve => libc::execve,
    I_POSIX_SPAWN: posix_spawn => libc::posix_spawn,
}
