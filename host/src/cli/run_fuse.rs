//! `agentfs run --frontend fuse --branch B -- CMD`: runs a program in a
//! private mount namespace where the branch, served over FUSE by this
//! process, is mounted over the base's own path (or `--at DIR`). Every
//! program sees the branch, static binaries and raw-syscall runtimes
//! included. The branch is first mounted on a private temporary directory;
//! the child then unshares its mount namespace and bind-mounts that over
//! the path, so nothing outside the run sees the change. As root the child
//! unshares only its mount namespace; an ordinary user's child first enters
//! a user namespace of its own (its own uid and gid mapped to themselves),
//! which gives it the right to a private mount namespace, and the branch
//! is mounted through fusermount3 (`/dev/fuse` must be usable).

// Elsewhere only the stub below is built.
#![cfg_attr(not(target_os = "linux"), allow(unused_imports))]

use std::{
    ffi::CString,
    os::unix::{
        ffi::OsStrExt,
        process::{CommandExt, ExitStatusExt},
    },
    path::PathBuf,
    process::{Command, ExitCode},
    sync::Arc,
};

use agentfs_core::{LockWait, Store};
use agentfs_host::Host;
use anyhow::{bail, Context, Result};

use super::run::RunArgs;

/// How `agentfs run` presents the branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Frontend {
    /// The LD_PRELOAD shim, talking to the daemon.
    Shim,
    /// A FUSE mount in a private mount namespace.
    Fuse,
}

/// Runs `args.command` in the branch through a FUSE mount (Linux only).
#[cfg(not(target_os = "linux"))]
pub fn run(
    _host: impl FnOnce() -> Result<Host>,
    _wait: LockWait,
    _args: RunArgs,
) -> Result<ExitCode> {
    bail!("--frontend fuse: Linux only")
}

/// Runs `args.command` in the branch through a FUSE mount.
#[cfg(target_os = "linux")]
pub fn run(host: impl FnOnce() -> Result<Host>, wait: LockWait, args: RunArgs) -> Result<ExitCode> {
    let h = host()?;
    let store = if Store::exists(&h.backstore()?)? {
        Store::open(h.backstore()?, wait)?
    } else if args.create {
        Store::init(h.backstore()?, agentfs_core::InitOptions::default(), wait)?
    } else {
        bail!("no store yet: run `agentfs init`, or pass --create");
    };
    let branch = match store
        .list_branches()?
        .into_iter()
        .find(|b| b.name == args.branch)
    {
        Some(b) => b,
        None if args.create => {
            let base = match &args.base {
                Some(b) => std::path::absolute(b)?,
                None => std::env::current_dir()?,
            };
            let base = base
                .canonicalize()
                .with_context(|| format!("base {}", base.display()))?;
            store.create_branch(&args.branch, None, Some(&base))?
        }
        None => bail!(
            "branch {}: no such branch (pass --create to make it)",
            args.branch
        ),
    };
    let target: PathBuf = match (&args.at, &branch.base) {
        (Some(at), _) => std::path::absolute(at)?,
        (None, Some(base)) => base.clone(),
        (None, None) => bail!(
            "branch {} has no base directory: say where to show it with --at DIR",
            branch.name
        ),
    };
    if !target.is_dir() {
        bail!("{}: not a directory", target.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix("agentfs-run-")
        .tempdir()
        .context("a private mountpoint")?;
    let mut m = agentfs_mount::Mount::new(
        Arc::new(store),
        &branch.name,
        tmp.path(),
        &agentfs_mount::MountOptions::default(),
    )?;
    let mp = m.mountpoint().to_path_buf();
    let mut unmounter = m.unmounter();
    let server = std::thread::spawn(move || m.run());
    let status = spawn_inside(&mp, &target, &args);
    // A background process the program left may still hold files open
    // there: then detach the mount (it goes when they close).
    if unmounter.unmount().is_err() {
        if let Err(e) = agentfs_mount::unmount(&mp, true) {
            tracing::warn!(error = %e, "unmount the private mount");
        }
    }
    match server.join() {
        Ok(Err(e)) => tracing::warn!(error = %e, "the mount server"),
        Err(_) => tracing::warn!("the mount server panicked"),
        Ok(Ok(())) => {}
    }
    drop(tmp);
    let status = status?;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    })
}

#[cfg(target_os = "linux")]
/// Starts the program in a new mount namespace with `mp` bind-mounted over
/// `target`, and waits for it.
fn spawn_inside(
    mp: &std::path::Path,
    target: &std::path::Path,
    args: &RunArgs,
) -> Result<std::process::ExitStatus> {
    let src = CString::new(mp.as_os_str().as_bytes())?;
    let dst = CString::new(target.as_os_str().as_bytes())?;
    let cwd = std::env::current_dir()?;
    let cwd = CString::new(cwd.as_os_str().as_bytes())?;
    // An ordinary user: a user namespace first, mapping the user's own uid
    // and gid to themselves (files keep their owners, the program keeps
    // its identity).
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let userns = uid != 0;
    let uid_map = format!("{uid} {uid} 1\n");
    let gid_map = format!("{gid} {gid} 1\n");
    let mut c = Command::new(&args.command[0]);
    c.args(&args.command[1..]);
    // SAFETY: between fork and exec only async-signal-safe calls run
    // (unshare, open, write, close, mount, chdir) on C strings and buffers
    // prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if userns {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                // setgroups must be denied before an unprivileged gid_map.
                if !write_proc(c"/proc/self/setgroups", b"deny")
                    || !write_proc(c"/proc/self/uid_map", uid_map.as_bytes())
                    || !write_proc(c"/proc/self/gid_map", gid_map.as_bytes())
                {
                    return fail();
                }
            } else if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            // Re-enter the working directory: inside the target it now
            // resolves into the branch.
            libc::chdir(cwd.as_ptr());
            Ok(())
        })
    };
    // A SIGTERM from here on is passed on to the program.
    super::run::pass_signals_on()?;
    let mut child = c.spawn().map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) && userns {
            anyhow::anyhow!(
                "--frontend fuse needs a user namespace, which this system does not allow \
                 ordinary users ({e}): `agentfs mount` the branch and work in the mountpoint"
            )
        } else if e.raw_os_error() == Some(libc::EPERM) {
            anyhow::anyhow!(
                "--frontend fuse needs the right to create a mount namespace ({e}): \
                 `agentfs mount` the branch and work in the mountpoint"
            )
        } else {
            anyhow::Error::new(e).context(format!("run {}", args.command[0].to_string_lossy()))
        }
    })?;
    Ok(super::run::wait_passing_signals(&mut child)?)
}

/// Writes `data` to the file at `path` (a /proc file) with raw calls that
/// are safe between fork and exec; false on failure (errno says why).
#[cfg(target_os = "linux")]
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: open with a NUL-terminated path; write from a valid buffer
    // of `data.len()` bytes to the fd just opened, which is then closed.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        n == data.len() as isize
    }
}
