//! `agentfs mount --branch B MOUNTPOINT` and `agentfs unmount MOUNTPOINT`:
//! a branch as a real FUSE filesystem (Linux), served by an `agentfs`
//! process (detached, or in the foreground with `--foreground`) until it
//! is unmounted or gets SIGTERM/SIGINT. Active mounts are recorded next to
//! the daemon's socket (`mounts/`) for `agentfs status`.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use agentfs_core::LockWait;
use agentfs_host::Host;
use agentfs_mount::registry;
use anyhow::{bail, Context, Result};

/// Arguments of `agentfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The branch to mount.
    #[arg(long)]
    pub branch: String,
    /// An existing directory to mount it on (what it holds is hidden while
    /// mounted).
    pub mountpoint: PathBuf,
    /// Serve in this process until unmounted or SIGTERM/SIGINT (default:
    /// detach once mounted).
    #[arg(long)]
    pub foreground: bool,
    /// Seconds the kernel may cache names and attributes (0: ask every
    /// time). Changes made through other paths (the daemon, the CLI,
    /// another mount) invalidate the caches as they happen; this only
    /// bounds how long a missed invalidation could last.
    #[arg(long, value_name = "SECS", default_value_t = agentfs_mount::DEFAULT_TTL_SECS as f64)]
    pub cache_ttl: f64,
}

/// Arguments of `agentfs unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// Detach even if files are open there (they keep working until closed).
    #[arg(long)]
    pub lazy: bool,
}

/// Where active mounts are recorded: `mounts/` next to the daemon socket.
pub fn registry_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("mounts")
}

/// The active mounts, as JSON for `agentfs status --json`.
pub fn status_json(socket: &Path) -> serde_json::Value {
    serde_json::to_value(registry::list(&registry_dir(socket))).unwrap_or_default()
}

/// Prints the active mounts for `agentfs status`.
pub fn print_status(socket: &Path) {
    let v = registry::list(&registry_dir(socket));
    if v.is_empty() {
        println!("mounts:       -");
    }
    for r in v {
        println!(
            "mount:        {} on {} (pid {}, io: {})",
            r.branch,
            r.mountpoint.display(),
            r.pid,
            r.io_mode
        );
    }
}

/// `agentfs mount`: in the foreground, or by starting a detached
/// `agentfs mount --foreground` and waiting for its readiness line.
pub fn mount(
    socket: &Path,
    global: &[OsString],
    host: impl FnOnce() -> Result<Host>,
    wait: LockWait,
    args: MountArgs,
) -> Result<ExitCode> {
    if !(args.cache_ttl.is_finite() && args.cache_ttl >= 0.0) {
        bail!("--cache-ttl: give a number of seconds, 0 or more");
    }
    if args.foreground {
        return foreground(socket, host, wait, &args);
    }
    let dir = registry_dir(socket);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let log_path = dir.join(format!("mount-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("the agentfs executable")?;
    let mut c = Command::new(exe);
    c.args(global)
        .arg("--socket")
        .arg(socket)
        .arg("mount")
        .arg("--foreground")
        .arg("--branch")
        .arg(&args.branch)
        .arg("--cache-ttl")
        .arg(args.cache_ttl.to_string())
        .arg("--")
        .arg(&args.mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so
    // a hangup or ^C of this terminal does not reach the server.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            Ok(())
        })
    };
    let mut child = c.spawn().context("start the mount server")?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    if line.starts_with("mounted") {
        print!("{line}");
        // The server's log stays for its life only when it has something.
        let _ = std::fs::remove_file(&log_path);
        return Ok(ExitCode::SUCCESS);
    }
    let _ = child.wait();
    let err = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    let err = err
        .lines()
        .filter_map(|l| l.strip_prefix("agentfs: error: "))
        .next_back()
        .unwrap_or(err.trim())
        .to_string();
    bail!("{err}")
}

#[cfg(not(target_os = "linux"))]
fn foreground(
    _socket: &Path,
    _host: impl FnOnce() -> Result<Host>,
    _wait: LockWait,
    _args: &MountArgs,
) -> Result<ExitCode> {
    bail!("agentfs mount: FUSE mounts are Linux only for now")
}

#[cfg(target_os = "linux")]
fn foreground(
    socket: &Path,
    host: impl FnOnce() -> Result<Host>,
    wait: LockWait,
    args: &MountArgs,
) -> Result<ExitCode> {
    use nix::sys::signal::{SigSet, Signal};
    // Signals go to the thread below only (every thread started from here
    // on inherits the mask).
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().context("block signals")?;
    let h = host()?;
    let store = std::sync::Arc::new(super::store::open_store(&h, wait)?);
    let opts = agentfs_mount::MountOptions {
        ttl: std::time::Duration::from_secs_f64(args.cache_ttl),
        ..Default::default()
    };
    store.check_shared_view_dir(&std::path::absolute(&args.mountpoint)?)?;
    forward_events(socket, &store);
    let mut m = agentfs_mount::Mount::new(store, &args.branch, &args.mountpoint, &opts)?;
    let mp = m.mountpoint().to_path_buf();
    let dir = registry_dir(socket);
    let rec = registry::Record {
        pid: std::process::id(),
        branch: args.branch.clone(),
        mountpoint: mp.clone(),
        io_mode: m.io_mode().into(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    if let Err(e) = registry::add(&dir, &rec) {
        tracing::warn!(error = %e, dir = %dir.display(), "could not record the mount for `agentfs status`");
    }
    let mut unmounter = m.unmounter();
    let (mp2, dir2) = (mp.clone(), dir.clone());
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(?sig, "unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed: detaching");
                if let Err(e) = agentfs_mount::unmount(&mp2, true) {
                    // Not mounted here any more (detached already, still
                    // held by another mount namespace): the server ends
                    // anyway, as a signal asks, and what still holds the
                    // mount gets ENOTCONN.
                    tracing::warn!(error = %e, "detaching failed too: ending the server");
                    registry::remove(&dir2, &mp2);
                    std::process::exit(0);
                }
            }
        }
    });
    println!(
        "mounted branch {} at {} (io: {})",
        args.branch,
        mp.display(),
        m.io_mode()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let r = m.run();
    registry::remove(&dir, &mp);
    r?;
    Ok(ExitCode::SUCCESS)
}

/// Forwards the core events of changes made through the mount to a daemon
/// serving the same store on `socket` (when one does), so `agentfs watch`
/// and shim-injected watchers of the branch see them: each batch is one
/// `PublishEvents` request, sent from a thread of its own so no FUSE
/// request waits for it. A daemon that starts later is found at the next
/// batch; without one the events only reach this process's subscribers.
#[cfg(target_os = "linux")]
fn forward_events(socket: &Path, store: &agentfs_core::Store) {
    use agentfs_host::{daemon::abi_wire, loader::abi_event};
    use agentfs_proto::{Request, Response};
    let sub = store.subscribe();
    let root = store.layer_store().status().ok().map(|s| s.root);
    let socket = socket.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("agentfs-events".into())
        .spawn(move || {
            let mut daemon: Option<super::backend::DaemonClient> = None;
            // Ends when the store (and its event bus) is dropped.
            while let Ok(first) = sub.events.recv() {
                let mut batch = vec![first];
                batch.extend(sub.events.try_iter());
                if daemon.is_none() {
                    daemon = same_store_daemon(&socket, root.as_deref());
                }
                let Some(d) = daemon.as_mut() else {
                    continue;
                };
                let events = batch
                    .iter()
                    .map(|e| abi_wire::wire_event(&abi_event(e)))
                    .collect();
                match d.client.request(Request::PublishEvents { events }) {
                    Ok(Response::Done) => {}
                    other => {
                        tracing::debug!(answer = ?other, "forwarding events to the daemon failed");
                        daemon = None;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "events of the mount will not reach the daemon's watchers");
    }
}

/// A connection to the daemon on `socket` if it serves the store whose
/// layers live under `root`.
#[cfg(target_os = "linux")]
fn same_store_daemon(socket: &Path, root: Option<&Path>) -> Option<super::backend::DaemonClient> {
    use agentfs_proto::{Request, Response};
    use std::os::unix::fs::FileTypeExt;
    // No socket there, no daemon: one stat instead of a socket, a failed
    // connect and the checks around it for every batch of events (a
    // create through the mount makes a batch or two).
    if !std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        return None;
    }
    let mut d = super::backend::connect_daemon(socket).ok()??;
    match d.client.request(Request::Status) {
        Ok(Response::Status(st)) if Some(Path::new(&st.backstore.root)) == root => Some(d),
        _ => {
            tracing::debug!(socket = %socket.display(), "the daemon there serves another store: not forwarding events");
            None
        }
    }
}

/// `agentfs unmount`: unmounts, then waits for the server to exit.
pub fn unmount(socket: &Path, args: UnmountArgs) -> Result<ExitCode> {
    let mp = std::path::absolute(&args.mountpoint)
        .with_context(|| format!("{}", args.mountpoint.display()))?;
    let rec = registry::find(&registry_dir(socket), &mp);
    if !agentfs_mount::is_mounted(&mp) {
        bail!("{}: not mounted", mp.display());
    }
    if !agentfs_mount::is_agentfs_mount(&mp) {
        bail!("{}: not an AgentFS mount", mp.display());
    }
    agentfs_mount::unmount(&mp, args.lazy).map_err(|e| match e {
        agentfs_mount::MountError::Io { source, .. }
            if source.raw_os_error() == Some(libc::EBUSY) =>
        {
            anyhow::anyhow!(
                "{}: busy (files open or a process inside): close them, or use --lazy",
                mp.display()
            )
        }
        e => e.into(),
    })?;
    if let Some(r) = rec {
        wait_exit(r.pid);
    }
    println!("unmounted {}", mp.display());
    Ok(ExitCode::SUCCESS)
}

/// Waits (up to 10 s) for process `pid` to exit (elsewhere than Linux:
/// does not wait).
#[cfg(not(target_os = "linux"))]
fn wait_exit(_pid: u32) {}

/// Waits (up to 10 s) for process `pid` to exit, through a pidfd.
#[cfg(target_os = "linux")]
fn wait_exit(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return;
    }
    let mut p = libc::pollfd {
        fd: fd as i32,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the fd is ours and closed right after.
    unsafe {
        libc::poll(&mut p, 1, 10_000);
        libc::close(fd as i32);
    }
}
