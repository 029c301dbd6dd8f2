//! `agentfs run --branch B [--create] [--at DIR] -- CMD ARGS...`: runs an
//! unmodified program inside a branch. The shim library is injected with
//! `LD_PRELOAD` (`DYLD_INSERT_LIBRARIES` on macOS, where a program that
//! System Integrity Protection would strip it from is refused) and told (by environment) which daemon to talk to, which
//! branch, and where the branch is visible (the base's own path by
//! default). When no daemon serves the store, a private one is started
//! (`serve --exit-when-idle`): it stops when the last process using it has
//! gone, so background processes the program leaves keep their branch. Where the kernel allows, the program
//! runs in a private mount namespace in which the base and the store are
//! read-only, so a write that bypasses the shim (a static binary, a raw
//! syscall) fails with EROFS instead of touching them.

use std::{
    ffi::{CString, OsString},
    io::{BufRead, BufReader, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            process::{CommandExt, ExitStatusExt},
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
};

use agentfs_proto::{encode_chain_env, BranchInfo, Client, Hello, Request, Response, CHAIN_ENV};
use anyhow::{bail, Context, Result};

/// The shim library's file name, found next to the `agentfs` executable.
#[cfg(not(target_os = "macos"))]
pub const SHIM_LIB: &str = "libagentfs_shim.so";
/// The shim library's file name, found next to the `agentfs` executable.
#[cfg(target_os = "macos")]
pub const SHIM_LIB: &str = "libagentfs_shim.dylib";
/// The loader variable that injects the shim.
#[cfg(not(target_os = "macos"))]
const PRELOAD_VAR: &str = "LD_PRELOAD";
/// The loader variable that injects the shim.
#[cfg(target_os = "macos")]
const PRELOAD_VAR: &str = "DYLD_INSERT_LIBRARIES";

/// Arguments of `agentfs run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The branch to run in.
    #[arg(long)]
    pub(crate) branch: String,
    /// Create the branch if it does not exist (over --base, or the current
    /// directory).
    #[arg(long)]
    pub(crate) create: bool,
    /// With --create: the directory to branch (default: the current one).
    #[arg(long, value_name = "DIR", requires = "create")]
    pub(crate) base: Option<PathBuf>,
    /// Where the program sees the branch (default: the base's own path).
    #[arg(long, value_name = "DIR")]
    pub(crate) at: Option<PathBuf>,
    /// Run without the read-only safety net, and without saying so.
    #[arg(long)]
    no_sandbox: bool,
    /// How the program sees the branch: `shim` (LD_PRELOAD, any user) or
    /// `fuse` (a FUSE mount in a private mount namespace; root, Linux).
    #[arg(long, value_enum, default_value_t = super::run_fuse::Frontend::Shim)]
    pub(crate) frontend: super::run_fuse::Frontend,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<OsString>,
}

/// The global options a private daemon needs to serve the same store.
pub fn global_args(
    config: Option<&Path>,
    plugin_dirs: &[PathBuf],
    backstore: Option<&str>,
    backstore_options: &[String],
) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    if let Some(c) = config {
        v.extend(["--config".into(), c.as_os_str().into()]);
    }
    for d in plugin_dirs {
        v.extend(["--plugin-dir".into(), d.as_os_str().into()]);
    }
    if let Some(b) = backstore {
        v.extend(["--backstore".into(), b.into()]);
    }
    for o in backstore_options {
        v.extend(["--backstore-option".into(), o.into()]);
    }
    v
}

/// A daemon this run started (with `--exit-when-idle`): stopped when
/// dropped before [`PrivateDaemon::serving`] (no client ever came, so it
/// would never be idle); after it, it stops by itself when the last
/// process using it has gone, which may be after this run.
struct PrivateDaemon(Option<Child>);

impl PrivateDaemon {
    /// A client is connected: from now on the daemon's own idle rule
    /// decides when it stops.
    fn serving(mut self) {
        self.0 = None;
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

fn hello() -> Hello {
    Hello::current(&format!("agentfs-run {}", env!("CARGO_PKG_VERSION")), None)
}

/// Starts `agentfs serve` on `socket` and waits for its readiness line.
fn start_daemon(socket: &Path, global: &[OsString], init: bool) -> Result<PrivateDaemon> {
    let exe = std::env::current_exe().context("the agentfs executable")?;
    let mut c = Command::new(exe);
    c.args(global)
        .arg("--socket")
        .arg(socket)
        .args(["serve", "--exit-when-idle"]);
    if init {
        c.arg("--init");
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(PRELOAD_VAR)
        // Its own process group: a ^C for the program does not stop it.
        .process_group(0);
    let mut child = c
        .spawn()
        .context("start a private daemon (agentfs serve)")?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)
        .context("read the daemon's readiness line")?;
    if !line.contains("ready on") {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.wait();
        bail!("the private daemon did not start: {}", err.trim());
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut e, &mut std::io::stderr()));
    }
    Ok(PrivateDaemon(Some(child)))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn find_shim() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AGENTFS_SHIM_LIB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("the agentfs executable")?;
    let p = exe.with_file_name(SHIM_LIB);
    if !p.is_file() {
        bail!(
            "{} is missing (it is built with the workspace: cargo build --workspace)",
            p.display()
        );
    }
    Ok(p)
}

fn find_branch(c: &mut Client, name: &str) -> Result<Option<BranchInfo>> {
    match c.request(Request::BranchList)? {
        Response::Branches(list) => Ok(list.into_iter().find(|b| b.name == name)),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// The value of [`CHAIN_ENV`] for the run's processes: the branch's chain
/// with the graph counter it is current for, so that a process that only
/// reads never connects to the daemon. `None` (each process asks the
/// daemon) when the daemon does not name the counter, or cannot say.
fn inherited_chain(c: &mut Client, branch: &str) -> Option<String> {
    match c.request(Request::BranchChain {
        branch: Some(branch.to_string()),
    }) {
        Ok(Response::Chain(chain)) if chain.graph.is_some() => {
            encode_chain_env(branch, &chain).ok()
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "no chain to hand down");
            None
        }
    }
}

/// Runs `agentfs run`. `global` holds the global options to start a
/// private daemon with; `store_exists` says whether the store exists
/// (asked only when no daemon serves it).
pub fn run(
    socket: &Path,
    global: &[OsString],
    store_exists: impl FnOnce() -> Result<bool>,
    args: RunArgs,
) -> Result<ExitCode> {
    if !cfg!(any(target_os = "linux", target_os = "macos")) {
        bail!("agentfs run injects its shim with LD_PRELOAD or DYLD_INSERT_LIBRARIES: Linux and macOS only");
    }
    if cfg!(target_os = "macos") {
        let cwd = std::env::current_dir().context("the current directory")?;
        let path = std::env::var_os("PATH");
        if let Some(why) = super::sip::check(&args.command[0], path.as_deref(), &cwd) {
            bail!("{why}");
        }
    }
    let socket = absolute(socket)?;
    let shim = find_shim()?;
    // This connection stays open until the program has exited (and while
    // any process of the run holds it: see `inheritable`): a private
    // daemon lives while some client is connected.
    let mut client = match Client::connect(&socket, hello()) {
        Ok(c) => c,
        Err(e) if e.is_no_daemon() => {
            let exists = store_exists()?;
            if !exists && !args.create {
                bail!("no store yet: run `agentfs init`, or pass --create");
            }
            let private = start_daemon(&socket, global, !exists)?;
            let c = Client::connect(&socket, hello())?;
            private.serving();
            c
        }
        Err(e) => return Err(e.into()),
    };
    let branch = match find_branch(&mut client, &args.branch)? {
        Some(b) => b,
        None if args.create => {
            let base = match &args.base {
                Some(b) => absolute(b)?,
                None => std::env::current_dir()?,
            };
            let base = base
                .canonicalize()
                .with_context(|| format!("base {}", base.display()))?;
            match client.request(Request::BranchCreate {
                name: args.branch.clone(),
                base: Some(base.to_string_lossy().into_owned()),
            })? {
                Response::Branch(b) => b,
                other => bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
        None => bail!(
            "branch {}: no such branch (pass --create to make it)",
            args.branch
        ),
    };
    let root = match (&args.at, &branch.base) {
        (Some(at), _) => absolute(at)?,
        (None, Some(base)) => PathBuf::from(base),
        (None, None) => bail!(
            "branch {} has no base directory: say where to show it with --at DIR",
            branch.name
        ),
    };
    let store_root = match client.request(Request::Status)? {
        Response::Status(st) => PathBuf::from(&st.backstore.root),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    };
    // The shim reads the branch's layers under the store's directory: a
    // branch shown over it would hide them from the shim itself.
    let shown = root.canonicalize().unwrap_or_else(|_| root.clone());
    let store_dir = store_root
        .canonicalize()
        .unwrap_or_else(|_| store_root.clone());
    if let Some(why) = agentfs_core::overlap(&shown, &store_dir) {
        bail!(
            "--at {}: {why} the store's directory {}: choose a directory apart from it",
            shown.display(),
            store_dir.display()
        );
    }

    let chain = inherited_chain(&mut client, &branch.name);

    let mut preload = shim.as_os_str().to_os_string();
    if let Some(old) = std::env::var_os(PRELOAD_VAR).filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    // The connection becomes one every process of the run inherits (not
    // close-on-exec), so the daemon counts the run as a client while any
    // of its processes lives, background ones included, whether or not
    // they have used the branch yet.
    let keepalive = inheritable(client)?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env(PRELOAD_VAR, &preload)
        .env("AGENTFS_SHIM_SOCKET", &socket)
        .env("AGENTFS_SHIM_BRANCH", &branch.name)
        .env("AGENTFS_SHIM_ROOT", &root)
        .env("AGENTFS_SHIM_STORE", &store_root);
    match &chain {
        Some(c) => cmd.env(CHAIN_ENV, c),
        // Never a chain of an enclosing run's branch.
        None => cmd.env_remove(CHAIN_ENV),
    };

    let mut read_only = Vec::new();
    if let Some(b) = &branch.base {
        read_only.push(PathBuf::from(b));
    }
    read_only.push(store_root.clone());
    // A SIGTERM from here on is passed on to the program.
    pass_signals_on().context("pass SIGTERM and SIGHUP on")?;
    let child = if args.no_sandbox {
        cmd.spawn()
    } else {
        let net = Sandbox::new(&read_only)?;
        let mut sandboxed = Command::new(&args.command[0]);
        sandboxed.args(&args.command[1..]);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sandboxed.env(k, v),
                None => sandboxed.env_remove(k),
            };
        }
        // SAFETY: the closure only makes raw syscalls on data prepared
        // before the fork (no allocation, no locks).
        unsafe { sandboxed.pre_exec(move || net.enter()) };
        match sandboxed.spawn() {
            Ok(c) => Ok(c),
            // The namespace could not be made (or the program could not
            // be started at all: then it fails the same way without).
            Err(e) if Sandbox::is_unavailable(&e) => match cmd.spawn() {
                Ok(c) => {
                    eprintln!(
                        "agentfs run: warning: no read-only safety net ({e}): a program that \
                         bypasses the shim (static binary, raw syscalls) could write the base; \
                         --no-sandbox accepts this silently"
                    );
                    Ok(c)
                }
                Err(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    };
    let mut child =
        child.with_context(|| format!("run {}", Path::new(&args.command[0]).display()))?;
    let status = wait_passing_signals(&mut child).context("wait for the program")?;
    drop(keepalive);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The program's pid while it may be signalled (0: not started yet, or
/// about to be reaped).
static PROGRAM: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// A SIGTERM or SIGHUP that came before the program started.
static PENDING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Passes a SIGTERM or SIGHUP on to the program (async-signal-safe: two
/// atomics and `kill`).
extern "C" fn pass_on(sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    let pid = PROGRAM.load(Ordering::Acquire);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; `pid` is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    } else {
        PENDING.store(sig, Ordering::Release);
    }
}

/// From now on, SIGTERM and SIGHUP sent to this process are passed on to
/// the program (held until it starts): a supervisor or `kill` stopping
/// `agentfs run` stops the program, as with `timeout` or `env`, instead of
/// leaving it orphaned. A handler, not a mask: it holds whichever thread
/// the signal lands on, and the program starts with default dispositions
/// (exec resets caught signals).
pub(crate) fn pass_signals_on() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty
        // mask, installed for two catchable signals.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = pass_on as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the program started after [`pass_signals_on`], passing on
/// SIGTERM and SIGHUP until it is reaped; ^C and ^\ reach the program
/// from the terminal itself and are ignored here.
pub(crate) fn wait_passing_signals(child: &mut Child) -> std::io::Result<ExitStatus> {
    use std::sync::atomic::Ordering;
    // SAFETY: setting dispositions of two signals in this process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let pid = child.id() as libc::pid_t;
    PROGRAM.store(pid, Ordering::Release);
    let early = PENDING.swap(0, Ordering::AcqRel);
    if early != 0 {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(pid, early) };
    }
    // Wait without reaping, stop passing signals on, then reap: once the
    // pid may belong to another process only a handler that read it in
    // the few instructions before could still signal it.
    // SAFETY: siginfo_t is plain data, valid when zeroed.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid on our own child with a valid out-pointer; WNOWAIT
        // leaves it to be reaped below.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    PROGRAM.store(0, Ordering::Release);
    child.wait()
}

/// Daemon connection `c` moved to a high fd number without close-on-exec,
/// for the run's processes to inherit.
fn inheritable(c: Client) -> Result<OwnedFd> {
    let sock: OwnedFd = c.into_socket().into();
    // SAFETY: F_DUPFD on an fd we own gives a new one we own (without
    // FD_CLOEXEC); the original is closed when `sock` drops.
    let mut high = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_DUPFD, 900) };
    if high < 0 {
        // A descriptor limit below 900: the lowest free number will do.
        // SAFETY: as above.
        high = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_DUPFD, 3) };
    }
    if high < 0 {
        return Err(std::io::Error::last_os_error()).context("keep a daemon connection");
    }
    // SAFETY: `high` is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// The read-only safety net, prepared before the fork: a private mount
/// namespace (and a user namespace when not root) in which each directory
/// is bind-mounted read-only over itself.
struct Sandbox {
    root: bool,
    paths: Vec<CString>,
    cwd: Option<CString>,
    uid_map: CString,
    gid_map: CString,
}

impl Sandbox {
    fn new(paths: &[PathBuf]) -> Result<Self> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte");
        // SAFETY: getters without preconditions.
        let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
        Ok(Self {
            root: euid == 0,
            paths: paths.iter().map(|p| c(p)).collect::<Result<_>>()?,
            cwd: std::env::current_dir().ok().map(|d| c(&d)).transpose()?,
            uid_map: CString::new(format!("{uid} {uid} 1"))?,
            gid_map: CString::new(format!("{gid} {gid} 1"))?,
        })
    }

    fn is_unavailable(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EACCES)
        )
    }

    /// In the child, before exec (no mount namespaces off Linux).
    #[cfg(not(target_os = "linux"))]
    fn enter(&self) -> std::io::Result<()> {
        let _ = (
            self.root,
            &self.paths,
            &self.cwd,
            &self.uid_map,
            &self.gid_map,
        );
        Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
    }

    /// In the child, before exec.
    #[cfg(target_os = "linux")]
    fn enter(&self) -> std::io::Result<()> {
        let err = || std::io::Error::last_os_error();
        // SAFETY: raw syscalls on NUL-terminated strings prepared before
        // the fork.
        unsafe {
            if self.root {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(err());
                }
            } else {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return Err(err());
                }
                write_file(c"/proc/self/setgroups", c"deny");
                if !write_file(c"/proc/self/uid_map", &self.uid_map)
                    || !write_file(c"/proc/self/gid_map", &self.gid_map)
                {
                    return Err(err());
                }
            }
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            for p in &self.paths {
                if libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                if libc::mount(none, p.as_ptr(), none, flags, std::ptr::null()) != 0 {
                    return Err(err());
                }
            }
            // The working directory still points into the old mounts.
            if let Some(cwd) = &self.cwd {
                libc::chdir(cwd.as_ptr());
            }
        }
        Ok(())
    }
}

/// Writes `data` to `path` with raw syscalls; true on success.
#[cfg(target_os = "linux")]
///
/// # Safety
/// Async-signal-safe: callable between fork and exec.
unsafe fn write_file(path: &std::ffi::CStr, data: &std::ffi::CStr) -> bool {
    // SAFETY: valid C strings; the fd is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let b = data.to_bytes();
        let ok = libc::write(fd, b.as_ptr().cast(), b.len()) == b.len() as isize;
        libc::close(fd);
        ok
    }
}
