//! Process-wide shim state, shared by the Linux and macOS interposers:
//! configuration, the daemon connection, the chain, the working directory
//! and the shim's view of file descriptors. Every lock here is taken by
//! the `fork` handlers around `fork()` ([`lock_all`]) so a child never
//! inherits one held by a thread that does not exist in it.

use std::{
    collections::HashMap,
    ffi::{c_int, CString},
    os::{
        fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, net::UnixStream},
    },
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockWriteGuard,
    },
};

use agentfs_proto::{
    decode_chain_env, BranchChain, Client, ClientError, FdOpen, FdOpened, FsOp, FsReply, Hello,
    OpenFlags, Request, Response, WirePath, CHAIN_ENV,
};

use crate::{
    paths,
    resolve::{Chain, Errno, Layer, Resolved},
};

use crate::platform;

// ----------------------------------------------------------- reentrancy

std::thread_local! {
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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

/// What `agentfs run` told this process.
pub(crate) struct Config {
    /// Normalised visible root of the branch.
    pub root: Vec<u8>,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The branch.
    pub branch: String,
    /// The store's root (working directories inside a layer map back).
    pub store: Option<Vec<u8>>,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();

/// The configuration, `None` when the process was not started by
/// `agentfs run` (everything passes through).
pub(crate) fn config() -> Option<&'static Config> {
    CONFIG
        .get_or_init(|| {
            let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
            let root = var("AGENTFS_SHIM_ROOT")?;
            let root = paths::normalize(root.as_bytes());
            if !root.starts_with(b"/") {
                return None;
            }
            Some(Config {
                root,
                socket: PathBuf::from(var("AGENTFS_SHIM_SOCKET")?),
                branch: var("AGENTFS_SHIM_BRANCH")?.to_string_lossy().into_owned(),
                store: var("AGENTFS_SHIM_STORE").map(|s| paths::normalize(s.as_bytes())),
            })
        })
        .as_ref()
}

// ---------------------------------------------------------------- daemon

struct Conn {
    pid: u32,
    fd: RawFd,
    ino: u64,
    /// Which of this process's connections it is (see [`CONN_GEN`]).
    generation: u64,
    client: Client,
}

static CONN: Mutex<Option<Conn>> = Mutex::new(None);

/// Counts the connections this process made: the daemon's records of
/// files open for writing belong to the connection that opened them (a
/// restarted daemon knows none of them, and numbers its own from 1 again).
static CONN_GEN: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

fn fd_ino(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat does not keep the fd; a closed or foreign number only
    // makes it fail (or describe that fd, which the caller checks).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    #[allow(clippy::unnecessary_cast)] // ino_t is u64 on Linux
    rustix::fs::fstat(fd).ok().map(|st| st.st_ino as u64)
}

/// The lowest fd number the shim uses for its own descriptors: high, so
/// programs that expect small numbers (or close a range) rarely meet them.
fn high_fd() -> RawFd {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    let lim = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1 << 20) as RawFd
    } else {
        1024
    };
    (lim - 64).max(64)
}

/// Moves `fd` to a high number, close-on-exec.
pub(crate) fn to_high(fd: OwnedFd) -> OwnedFd {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an fd we own; F_DUPFD_CLOEXEC makes a new one.
    let high = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, high_fd()) };
    if high < 0 {
        // SAFETY: we own `raw`.
        return unsafe { OwnedFd::from_raw_fd(raw) };
    }
    // SAFETY: we own `raw` and no longer need it.
    unsafe { rustix::io::close(raw) };
    // SAFETY: `high` is the new fd, ours.
    unsafe { OwnedFd::from_raw_fd(high) }
}

fn connect(cfg: &Config) -> Result<Conn, ClientError> {
    let sock = UnixStream::connect(&cfg.socket).map_err(|error| ClientError::Connect {
        path: cfg.socket.clone(),
        error,
    })?;
    let fd = to_high(sock.into());
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let ino = fd_ino(raw).unwrap_or(0);
    let client = Client::handshake(
        UnixStream::from(fd),
        Hello::current(
            concat!("agentfs-shim ", env!("CARGO_PKG_VERSION")),
            Some(cfg.branch.clone()),
        ),
    )?;
    Ok(Conn {
        pid: pid(),
        fd: raw,
        ino,
        generation: CONN_GEN.fetch_add(1, Ordering::AcqRel) + 1,
        client,
    })
}

/// A new connection of its own to the daemon (handshaken), as a socket.
#[cfg(target_os = "linux")]
pub(crate) fn open_connection() -> Result<OwnedFd, ClientError> {
    let cfg = config().ok_or(ClientError::Closed)?;
    let c = connect(cfg)?;
    Ok(c.client.into_socket().into())
}

fn errno_of(e: &ClientError) -> Errno {
    match e {
        ClientError::Daemon(w) if w.errno != 0 => w.errno,
        ClientError::Daemon(w) => match agentfs_vocab::codes::to_errno(w.error_code()) {
            0 => libc::EIO,
            e => e,
        },
        _ => libc::EIO,
    }
}

/// Runs `f` on the daemon connection, connecting (or reconnecting: after a
/// fork, or when the program closed or replaced the shim's socket) first.
/// A daemon that cannot be reached is `EIO`.
pub(crate) fn with_daemon<T>(
    f: impl Fn(&mut Client) -> Result<T, ClientError>,
) -> Result<T, Errno> {
    with_daemon_conn(|c, _| f(c))
}

/// [`with_daemon`], telling `f` which connection it runs on.
fn with_daemon_conn<T>(f: impl Fn(&mut Client, u64) -> Result<T, ClientError>) -> Result<T, Errno> {
    let cfg = config().ok_or(libc::EIO)?;
    let mut g = lock(&CONN);
    let me = pid();
    if let Some(c) = g.as_ref() {
        let ours = fd_ino(c.fd) == Some(c.ino);
        if c.pid != me || !ours {
            let c = g.take().expect("checked");
            if ours {
                drop(c); // our copy of the socket (inherited over fork)
            } else {
                std::mem::forget(c); // the fd number is the program's now
            }
        }
    }
    for attempt in 0..2 {
        if g.is_none() {
            *g = Some(connect(cfg).map_err(|e| {
                shim_log(&format!("cannot reach the daemon: {e}"));
                libc::EIO
            })?);
        }
        let c = g.as_mut().expect("connected");
        match f(&mut c.client, c.generation) {
            Ok(v) => return Ok(v),
            Err(e @ ClientError::Daemon(_)) => return Err(errno_of(&e)),
            Err(e) => {
                // Connection-level failure: the daemon restarted, say.
                shim_log(&format!("daemon connection lost: {e}"));
                *g = None;
                if attempt == 1 {
                    return Err(libc::EIO);
                }
            }
        }
    }
    Err(libc::EIO)
}

/// The canonical branch paths whose names (or whose parents' layer
/// directories) a change `op` in the daemon may touch; `None` for an op
/// the shim does not send for a change of one entry.
fn touched_by(op: &FsOp) -> Option<Vec<&[u8]>> {
    Some(match op {
        FsOp::Rename { from, to } => vec![from.as_bytes(), to.as_bytes()],
        FsOp::Mkdir { path, .. }
        | FsOp::Rmdir { path }
        | FsOp::Unlink { path }
        | FsOp::Symlink { path, .. }
        | FsOp::Chmod { path, .. }
        | FsOp::Truncate { path, .. }
        | FsOp::SetTimes { path, .. }
        | FsOp::SetXattr { path, .. }
        | FsOp::RemoveXattr { path, .. } => vec![path.as_bytes()],
        _ => return None,
    })
}

/// Runs `request`, a change of the branch's names at canonical paths
/// `touched` made through the daemon, and then keeps the directory cache
/// of the current chain valid where the change cannot have reached (see
/// [`Chain::own_change`]): a program that creates or renames a file (git
/// taking `index.lock`) does not make every directory it lists afterwards
/// be read again.
fn own_change<T>(
    touched: &[&[u8]],
    request: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    let Some((chain, c)) = local_chain() else {
        return request();
    };
    let (graph, before) = (c.graph(), c.namespace());
    let r = request()?;
    if c.graph() == graph {
        chain.own_change(before, c.namespace(), touched);
    }
    Ok(r)
}

/// One file operation in the branch.
pub(crate) fn fs_op(op: FsOp) -> Result<FsReply, Errno> {
    let run = || {
        with_daemon(|c| {
            c.request(Request::Fs {
                branch: None,
                snapshot: None,
                op: op.clone(),
            })
        })
    };
    let r = match touched_by(&op) {
        Some(touched) => own_change(&touched, run)?,
        None => run()?,
    };
    match r {
        Response::Fs(reply) => Ok(reply),
        _ => Err(libc::EIO),
    }
}

/// `fd_open` in the branch: a real fd (close-on-exec), what happened, and
/// the connection it was made on (its record is that connection's).
/// For an open for writing, the branch's writer registration comes with
/// it as a second fd (protocol 2), kept (at a high number) until the
/// file's last descriptor is closed: see [`fd_closed`].
pub(crate) fn fd_open(
    path: &[u8],
    flags: c_int,
    mode: u32,
) -> Result<(FdOpened, OwnedFd, u64), Errno> {
    let open = FdOpen {
        branch: None,
        path: wire(path),
        flags: OpenFlags::from_native(flags),
        mode,
    };
    let (opened, fd, writer, conn) = own_change(&[path], || {
        with_daemon_conn(|c, conn| {
            c.fd_open_with_writer(open.clone())
                .map(|(o, fd, w)| (o, fd, w, conn))
        })
    })?;
    if let Some(w) = writer {
        let w = to_high(w);
        if flags & libc::O_CLOEXEC == 0 {
            // The file's fd survives an exec: so does its registration
            // (held until that program exits, as nothing closes it then).
            // SAFETY: fcntl on the fd we own.
            unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), libc::F_SETFD, 0) };
        }
        writer_insert(
            opened.record,
            conn,
            w,
            file_state(std::os::fd::AsFd::as_fd(&fd)),
        );
    }
    Ok((opened, fd, conn))
}

/// What tells a file's content changed: (inode, size, mtime in ns).
type FileState = (u64, u64, i64);

fn file_state(fd: std::os::fd::BorrowedFd<'_>) -> Option<FileState> {
    rustix::fs::fstat(fd).ok().map(|st| state_of(&st))
}

fn state_of(st: &rustix::fs::Stat) -> FileState {
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    (
        st.st_ino as u64,
        st.st_size as u64,
        st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
    )
}

/// A writer registration the shim holds for a file open for writing: its
/// fd, and the inode that fd had (to tell it from a number the program
/// reused after closing ours).
struct HeldWriter {
    fd: RawFd,
    ino: u64,
    /// The file's state when it was opened (to tell, if the daemon that
    /// made the record restarts, whether the file changed).
    opened: Option<FileState>,
}

/// Writer registrations by the daemon's record of their file (and the
/// connection it belongs to).
static WRITERS: Mutex<Option<HashMap<(u64, u64), HeldWriter>>> = Mutex::new(None);

fn writer_insert(record: u64, conn: u64, fd: OwnedFd, opened: Option<FileState>) {
    let fd = fd.into_raw_fd();
    let Some(ino) = fd_ino(fd) else {
        // SAFETY: we own `fd`.
        unsafe { rustix::io::close(fd) };
        return;
    };
    lock(&WRITERS)
        .get_or_insert_with(HashMap::new)
        .insert((record, conn), HeldWriter { fd, ino, opened });
}

/// Closes the writer registration of `record`, if this process holds
/// one; `Some` (with the file's state when it was opened) if it did (the
/// registration then ends with the last copy of the fd, in the kernel).
fn writer_close(record: u64, conn: u64) -> Option<Option<FileState>> {
    let w = lock(&WRITERS)
        .as_mut()
        .and_then(|m| m.remove(&(record, conn)))?;
    if fd_ino(w.fd) == Some(w.ino) {
        // SAFETY: the fd is still the one we were given (same inode).
        unsafe { rustix::io::close(w.fd) };
    }
    Some(w.opened)
}

/// A path for a request: its exact bytes, whatever they are.
pub(crate) fn wire(p: &[u8]) -> WirePath {
    WirePath::from(p)
}

/// Text for a request field that must be UTF-8 (an xattr name).
#[cfg(target_os = "linux")]
pub(crate) fn text(p: &[u8]) -> Result<String, Errno> {
    String::from_utf8(p.to_vec()).map_err(|_| libc::EILSEQ)
}

/// Writes a line on stderr when `AGENTFS_SHIM_LOG` is set (off by
/// default; raw `write(2)`, no locks).
pub(crate) fn shim_log(msg: &str) {
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("AGENTFS_SHIM_LOG").is_some_and(|v| !v.is_empty())) {
        return;
    }
    let line = format!("agentfs-shim[{}]: {msg}\n", pid());
    // SAFETY: fd 2 is only borrowed for the write.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(stderr, line.as_bytes());
}

// ----------------------------------------------------------------- chain

struct ChainState {
    chain: Arc<Chain>,
    graph_file: CString,
    graph_id: (u64, u64),
    checked_tick: i64,
    /// The store's shared counters, mapped read-only (when the daemon
    /// named them), and the graph counter the chain was fetched at.
    counters: Option<Counters>,
    graph: u64,
}

/// The store's change counters (graph in slot 0, the branch's namespace in
/// its own slot), a read-only shared mapping that lives as long as the
/// process.
#[derive(Clone, Copy)]
pub(crate) struct Counters(*const std::sync::atomic::AtomicU64, usize);

// SAFETY: the mapping is never unmapped and only read with atomic loads.
unsafe impl Send for Counters {}

impl Counters {
    fn map(path: &str, slot: u32) -> Option<Self> {
        let slot = slot as usize;
        if slot == 0 || slot >= 512 {
            return None;
        }
        let c = CString::new(path).ok()?;
        let fd = rustix::fs::open(
            c.as_c_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        // SAFETY: a shared read-only mapping of the first page of an open
        // file (the store makes it a page long); closing the fd after is
        // fine.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(Self(p.cast(), slot))
    }

    fn load(self, i: usize) -> u64 {
        // SAFETY: an aligned u64 slot (< 512) of a live 4096-byte mapping.
        unsafe { (*self.0.add(i)).load(Ordering::Acquire) }
    }

    /// Graph changes so far.
    pub(crate) fn graph(self) -> u64 {
        self.load(0)
    }

    /// Namespace changes so far.
    pub(crate) fn namespace(self) -> u64 {
        self.load(self.1)
    }
}

static CHAIN: Mutex<Option<ChainState>> = Mutex::new(None);

fn coarse_tick() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    let clock = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(target_os = "linux"))]
    let clock = libc::CLOCK_MONOTONIC;
    // SAFETY: a valid out-pointer; the clock does not enter the shim.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn file_id(p: &CString) -> (u64, u64) {
    #[allow(clippy::unnecessary_cast)] // dev_t is i32 on macOS
    match rustix::fs::stat(p.as_c_str()) {
        Ok(st) => (st.st_dev as u64, st.st_ino),
        Err(_) => (0, 0),
    }
}

/// The branch's chain: fetched from the daemon on first use and again
/// whenever the store's graph counter moved (or, from a daemon that names
/// no counters, when the graph file has been replaced, checked at most once
/// per tick of the coarse monotonic clock).
pub(crate) fn chain() -> Result<Arc<Chain>, Errno> {
    chain_and_counters().map(|(c, _)| c)
}

/// Moves whenever the process-wide chain is replaced (and in a forked
/// child): a thread's own copy of it is current while this and the graph
/// counter stay.
static CHAIN_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A thread's copy of the chain, checked without a lock.
struct LocalChain {
    chain: Arc<Chain>,
    counters: Counters,
    graph: u64,
    epoch: u64,
}

std::thread_local! {
    static LOCAL_CHAIN: std::cell::RefCell<Option<LocalChain>> =
        const { std::cell::RefCell::new(None) };
}

fn local_chain() -> Option<(Arc<Chain>, Counters)> {
    LOCAL_CHAIN
        .try_with(|l| {
            let l = l.try_borrow().ok()?;
            let l = l.as_ref()?;
            (l.epoch == CHAIN_EPOCH.load(Ordering::Acquire) && l.counters.graph() == l.graph)
                .then(|| (l.chain.clone(), l.counters))
        })
        .ok()
        .flatten()
}

fn keep_local_chain(chain: &Arc<Chain>, counters: Counters, graph: u64, epoch: u64) {
    let _ = LOCAL_CHAIN.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Some(LocalChain {
                chain: chain.clone(),
                counters,
                graph,
                epoch,
            });
        }
    });
}

fn chain_and_counters() -> Result<(Arc<Chain>, Option<Counters>), Errno> {
    // The common case, from every thread at once (git's preload threads
    // stat in parallel): no lock.
    if let Some((chain, c)) = local_chain() {
        return Ok((chain, Some(c)));
    }
    let cfg = config().ok_or(libc::EIO)?;
    let mut g = lock(&CHAIN);
    let tick = coarse_tick();
    if let Some(s) = g.as_mut() {
        if let Some(c) = s.counters {
            if c.graph() == s.graph {
                let epoch = CHAIN_EPOCH.load(Ordering::Acquire);
                keep_local_chain(&s.chain, c, s.graph, epoch);
                return Ok((s.chain.clone(), s.counters));
            }
        } else if s.checked_tick == tick {
            return Ok((s.chain.clone(), None));
        }
        s.checked_tick = tick;
        if s.counters.is_none() && file_id(&s.graph_file) == s.graph_id {
            return Ok((s.chain.clone(), None));
        }
    }
    let mut counters = g.as_ref().and_then(|s| s.counters);
    // A process's first chain comes from `agentfs run` through the
    // environment when the graph has not changed since: no connection.
    let inherited = if g.is_none() {
        inherited_chain(cfg, &mut counters)
    } else {
        None
    };
    let bc = match inherited {
        Some(bc) => bc,
        None => {
            let r = with_daemon(|c| c.request(Request::BranchChain { branch: None }))?;
            let Response::Chain(bc) = r else {
                return Err(libc::EIO);
            };
            if counters.is_none() {
                counters = map_counters(&bc);
            }
            bc
        }
    };
    let (chain, state) = chain_state(cfg, bc, counters, tick)?;
    *g = Some(state);
    Ok((chain, counters))
}

/// The store's counters a chain names, mapped.
fn map_counters(bc: &BranchChain) -> Option<Counters> {
    match (bc.generation_file.as_str(), bc.namespace_slot) {
        ("", _) | (_, None) => None,
        (f, Some(slot)) => Counters::map(f, slot),
    }
}

/// The chain `agentfs run` handed down in [`CHAIN_ENV`], when it is this
/// branch's and the graph counter still holds the value it was made at;
/// the counters it names are mapped into `counters` either way.
fn inherited_chain(cfg: &Config, counters: &mut Option<Counters>) -> Option<BranchChain> {
    let v = std::env::var_os(CHAIN_ENV)?;
    let Some(bc) = decode_chain_env(v.as_bytes(), &cfg.branch) else {
        shim_log(&format!(
            "{CHAIN_ENV} is not a chain of this branch: asking the daemon"
        ));
        return None;
    };
    if counters.is_none() {
        *counters = map_counters(&bc);
    }
    let now = counters.map(Counters::graph)?;
    (Some(now) == bc.graph).then_some(bc)
}

/// The process's chain state from a chain the daemon made (`counters`:
/// the store's counters, when mapped).
fn chain_state(
    cfg: &Config,
    bc: BranchChain,
    counters: Option<Counters>,
    tick: i64,
) -> Result<(Arc<Chain>, ChainState), Errno> {
    // The counter the chain is current for: the daemon's (read under the
    // store lock the chain was made under), else read now, after it was
    // made (a change in between goes unnoticed until the next).
    let graph = match (bc.graph, counters) {
        (Some(g), _) => g,
        (None, c) => c.map_or(0, Counters::graph),
    };
    let graph_file = CString::new(bc.graph_file).map_err(|_| libc::EIO)?;
    let graph_id = file_id(&graph_file);
    let mut layers: Vec<Layer> = bc
        .layers
        .iter()
        .map(|l| Layer {
            root: paths::normalize(l.as_bytes()),
            base: false,
        })
        .collect();
    if let Some(b) = &bc.base {
        layers.push(Layer {
            root: paths::normalize(b.as_bytes()),
            base: true,
        });
    }
    let mut chain = Chain::new(layers, cfg.root.clone())?;
    let roots = hold_roots(&chain);
    chain.use_root_fds(roots);
    let chain = Arc::new(chain);
    SHOWN_DEV.store(chain.ids.device().unwrap_or(0), Ordering::Relaxed);
    CHAIN_FETCHED.store(true, Ordering::Relaxed);
    let epoch = CHAIN_EPOCH.fetch_add(1, Ordering::AcqRel) + 1;
    if let Some(c) = counters {
        keep_local_chain(&chain, c, graph, epoch);
    }
    let state = ChainState {
        chain: chain.clone(),
        graph_file,
        graph_id,
        checked_tick: tick,
        counters,
        graph,
    };
    Ok((chain, state))
}

// ----------------------------------------------------------- layer roots

/// Most layer roots (over every chain the process has seen) the shim
/// holds a directory fd on; a root beyond them is reached by its
/// absolute path.
const ROOT_SLOTS: usize = 16;

/// One layer root the shim holds an `O_PATH` fd on (at a high number,
/// close-on-exec): a physical path under it is handed to the kernel
/// relative to that fd (a walk of the part under the root only, as a
/// program's own relative path is, instead of the root's whole path).
struct RootSlot {
    path: OnceLock<Vec<u8>>,
    /// -1 once the program closed or replaced it (or none was opened).
    fd: AtomicI32,
}

static ROOTS: [RootSlot; ROOT_SLOTS] = [const {
    RootSlot {
        path: OnceLock::new(),
        fd: AtomicI32::new(-1),
    }
}; ROOT_SLOTS];

/// Slots of [`ROOTS`] filled so far (only grows; filled under the chain's
/// lock, so never while a `fork` is under way).
static ROOTS_USED: AtomicUsize = AtomicUsize::new(0);

/// The lowest fd number among [`ROOTS`]: a `close` of a lower number
/// costs one compare.
static ROOT_FD_MIN: AtomicI32 = AtomicI32::new(i32::MAX);

/// Opens a directory fd on each root of `chain` the shim holds none on
/// yet (called with the chain's lock held), and returns each layer's slot.
/// The fds are never closed by the shim: another thread may be using one
/// of an older chain.
fn hold_roots(chain: &Chain) -> Vec<Option<&'static AtomicI32>> {
    #[cfg(target_os = "linux")]
    {
        chain.layers.iter().map(|l| hold_root(&l.root)).collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = chain;
        Vec::new()
    }
}

/// The slot of [`ROOTS`] holding an fd on `root`, opened first if needed.
#[cfg(target_os = "linux")]
fn hold_root(root: &[u8]) -> Option<&'static AtomicI32> {
    let used = ROOTS_USED.load(Ordering::Acquire);
    if let Some(s) = ROOTS[..used]
        .iter()
        .find(|s| s.path.get().is_some_and(|p| p == root))
    {
        return Some(&s.fd);
    }
    if used == ROOT_SLOTS {
        return None;
    }
    let c = CString::new(root).ok()?;
    let fd = rustix::fs::open(
        c.as_c_str(),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let fd = to_high(fd).into_raw_fd();
    let slot = &ROOTS[used];
    let _ = slot.path.set(root.to_vec());
    slot.fd.store(fd, Ordering::Release);
    ROOT_FD_MIN.fetch_min(fd, Ordering::AcqRel);
    ROOTS_USED.store(used + 1, Ordering::Release);
    Some(&slot.fd)
}

/// A directory fd the shim holds on a layer root that physical path
/// `phys` lies under, and where in `phys` the part under it starts.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn root_relative(phys: &[u8]) -> Option<(RawFd, usize)> {
    let used = ROOTS_USED.load(Ordering::Acquire);
    let mut best: Option<(RawFd, usize)> = None;
    for s in &ROOTS[..used] {
        let Some(root) = s.path.get() else {
            continue;
        };
        if phys.len() > root.len() + 1
            && phys[root.len()] == b'/'
            && phys.starts_with(root)
            && best.is_none_or(|(_, off)| root.len() + 1 > off)
        {
            let fd = s.fd.load(Ordering::Acquire);
            if fd >= 0 {
                best = Some((fd, root.len() + 1));
            }
        }
    }
    best
}

/// Stops using root fd `fd` (the program is closing or replacing that
/// number, or a call on it failed with `EBADF`): paths under its root go
/// to the kernel whole from now on.
pub(crate) fn drop_root_fd(fd: RawFd) {
    if fd < ROOT_FD_MIN.load(Ordering::Acquire) {
        return;
    }
    let used = ROOTS_USED.load(Ordering::Acquire);
    for s in &ROOTS[..used] {
        let _ =
            s.fd.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// [`drop_root_fd`] for every number in `first..=last`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn drop_root_fds(first: RawFd, last: RawFd) {
    if last < ROOT_FD_MIN.load(Ordering::Acquire) {
        return;
    }
    let used = ROOTS_USED.load(Ordering::Acquire);
    for s in &ROOTS[..used] {
        let fd = s.fd.load(Ordering::Acquire);
        if fd >= first && fd <= last {
            drop_root_fd(fd);
        }
    }
}

/// The device every entry of the branch shows when some layer lies on
/// another (0: no identity is rewritten; see [`crate::ids`]), kept beside
/// the chain so that an entry on the base's device costs one load and one
/// compare.
static SHOWN_DEV: AtomicU64 = AtomicU64::new(0);

/// Whether this process has fetched a chain (and set [`SHOWN_DEV`]).
static CHAIN_FETCHED: AtomicBool = AtomicBool::new(false);

/// The identity (device, inode) to show for a branch entry whose physical
/// entry is on device `dev` with inode `ino`, when it is not that.
#[cfg(target_os = "linux")]
pub(crate) fn shown_identity(dev: u64, ino: u64) -> Option<(u64, u64)> {
    let shown = SHOWN_DEV.load(Ordering::Relaxed);
    if shown == 0 || dev == shown {
        return None;
    }
    chain().ok()?.ids.map(dev, ino)
}

/// The `f_fsid` to show for a `statfs` of a branch entry that answered
/// `fsid`, when it is not that.
#[cfg(target_os = "linux")]
pub(crate) fn shown_fsid(fsid: [i32; 2]) -> Option<[i32; 2]> {
    if SHOWN_DEV.load(Ordering::Relaxed) == 0 {
        return None;
    }
    chain().ok()?.ids.map_fsid(fsid)
}

/// [`shown_fsid`] for `statvfs`'s one-number `f_fsid`.
#[cfg(target_os = "linux")]
pub(crate) fn shown_vfs_fsid(fsid: u64) -> Option<u64> {
    if SHOWN_DEV.load(Ordering::Relaxed) == 0 {
        return None;
    }
    chain().ok()?.ids.map_vfs_fsid(fsid)
}

/// [`shown_identity`] for what `fstat` of `fd` (`AT_FDCWD`: the working
/// directory) found, `mode` its type: rewritten only for an fd the shim
/// opened in the branch, or one whose kernel path lies in the store (an
/// fd inherited from a parent in the branch).
#[cfg(target_os = "linux")]
pub(crate) fn shown_identity_of_fd(fd: c_int, dev: u64, ino: u64, mode: u32) -> Option<(u64, u64)> {
    let shown = SHOWN_DEV.load(Ordering::Relaxed);
    if dev == shown {
        return None;
    }
    let kind = mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFDIR && kind != libc::S_IFLNK {
        // Pipes, sockets, terminals: never an entry of the branch.
        return None;
    }
    if shown == 0 {
        // Before the process looked at the branch it cannot know the
        // layers' devices; an inherited fd in the store makes it look.
        if CHAIN_FETCHED.load(Ordering::Relaxed) || dev == visible_root_dev() || !fd_in_store(fd) {
            return None;
        }
        return chain().ok()?.ids.map(dev, ino);
    }
    let mapped = chain().ok()?.ids.map(dev, ino)?;
    let cwd_in_branch = fd == libc::AT_FDCWD
        && config().is_some_and(|cfg| cwd().is_ok_and(|c| paths::under(&cfg.root, &c).is_some()));
    (cwd_in_branch || fd_with(fd, |_| ()).is_some() || fd_in_store(fd)).then_some(mapped)
}

/// The device of the branch's visible root as the kernel sees it (the
/// base's, when the branch is visible at its own path), read once.
#[cfg(target_os = "linux")]
fn visible_root_dev() -> u64 {
    static DEV: OnceLock<u64> = OnceLock::new();
    *DEV.get_or_init(|| {
        config()
            .and_then(|c| CString::new(c.root.clone()).ok())
            .and_then(|r| rustix::fs::stat(r.as_c_str()).ok())
            .map_or(0, |st| st.st_dev)
    })
}

/// Whether the kernel's path of `fd` (`AT_FDCWD`: the working directory)
/// lies in the store.
#[cfg(target_os = "linux")]
fn fd_in_store(fd: c_int) -> bool {
    let Some(store) = config().and_then(|c| c.store.as_ref()) else {
        return false;
    };
    let link = if fd == libc::AT_FDCWD {
        c"/proc/self/cwd".to_owned()
    } else {
        match CString::new(format!("/proc/self/fd/{fd}")) {
            Ok(c) => c,
            Err(_) => return false,
        }
    };
    rustix::fs::readlinkat(rustix::fs::CWD, link.as_c_str(), Vec::new())
        .is_ok_and(|k| paths::under(store, k.as_bytes()).is_some())
}

/// Forget the cached chain check: the next lookup revalidates.
pub(crate) fn chain_changed() {
    if let Some(s) = lock(&CHAIN).as_mut() {
        s.checked_tick = -1;
    }
}

// ------------------------------------------------------------------- cwd

static CWD: RwLock<Option<Vec<u8>>> = RwLock::new(None);

/// The kernel's own working directory (a physical path), when the shim
/// knows it: relative paths of the program's reads are handed to the
/// kernel relative to it (a shorter walk than the absolute path).
static KERNEL_CWD: RwLock<Option<Vec<u8>>> = RwLock::new(None);

fn kernel_cwd_write() -> RwLockWriteGuard<'static, Option<Vec<u8>>> {
    KERNEL_CWD.write().unwrap_or_else(|p| p.into_inner())
}

/// Moves (under the working directory's write lock) whenever the shim's
/// record of it changes: a thread's own copy is current while it stays.
static CWD_GEN: AtomicU64 = AtomicU64::new(0);

/// A thread's copy of the working directory records: (generation, as
/// the program sees it, the kernel's, its branch path when it is in the
/// branch and normalised).
type LocalCwd = (u64, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

std::thread_local! {
    static LOCAL_CWD: std::cell::RefCell<Option<LocalCwd>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` on the working directory records without touching a lock
/// (no write to a cache line the program's threads share: git's preload
/// threads resolve relative paths in parallel); `None` when the thread's
/// copy cannot be used.
fn with_local_cwd<R>(f: impl FnOnce(Option<&[u8]>, Option<&[u8]>) -> R) -> Option<R> {
    with_local_cwd_full(|v, k, _| f(v, k))
}

/// [`with_local_cwd`], with the working directory's branch path too.
fn with_local_cwd_full<R>(
    f: impl FnOnce(Option<&[u8]>, Option<&[u8]>, Option<&[u8]>) -> R,
) -> Option<R> {
    with_local_cwd_gen(|_, v, k, b| f(v, k, b))
}

/// [`with_local_cwd_full`], with the generation of the records (current
/// while [`CWD_GEN`] holds it).
fn with_local_cwd_gen<R>(
    f: impl FnOnce(u64, Option<&[u8]>, Option<&[u8]>, Option<&[u8]>) -> R,
) -> Option<R> {
    let now = CWD_GEN.load(Ordering::Acquire);
    LOCAL_CWD
        .try_with(|l| {
            let mut l = l.try_borrow_mut().ok()?;
            if l.as_ref().is_none_or(|c| c.0 != now) {
                let v = CWD.read().unwrap_or_else(|p| p.into_inner());
                let k = KERNEL_CWD.read().unwrap_or_else(|p| p.into_inner());
                // Read under the lock its writers hold.
                let generation = CWD_GEN.load(Ordering::Acquire);
                let branch = v
                    .as_deref()
                    .filter(|c| paths::is_normal(c))
                    .zip(config())
                    .and_then(|(c, cfg)| paths::under(&cfg.root, c))
                    .map(<[u8]>::to_vec);
                *l = Some((generation, v.clone(), k.clone(), branch));
            }
            let c = l.as_ref()?;
            Some(f(c.0, c.1.as_deref(), c.2.as_deref(), c.3.as_deref()))
        })
        .ok()
        .flatten()
}

/// Runs `f` on the branch path of the working directory (`None` when it
/// is not in the branch), as [`with_local_cwd`].
fn with_local_cwd_branch<R>(f: impl FnOnce(Option<&[u8]>) -> R) -> Option<R> {
    with_local_cwd_full(|_, _, b| f(b))
}

/// Where in physical path `phys` the part relative to the kernel's
/// working directory starts, when `phys` lies under it.
pub(crate) fn kernel_cwd_offset(phys: &[u8]) -> Option<usize> {
    with_local_cwd(|_, k| {
        let k = k?;
        if k == b"/" {
            return (phys.len() > 1).then_some(1);
        }
        (phys.len() > k.len() + 1 && phys.starts_with(k) && phys[k.len()] == b'/')
            .then_some(k.len() + 1)
    })
    .flatten()
}

fn cwd_write() -> RwLockWriteGuard<'static, Option<Vec<u8>>> {
    CWD.write().unwrap_or_else(|p| p.into_inner())
}

/// `path` joined to the working directory as the program sees it.
fn join_cwd(path: &[u8]) -> Result<Vec<u8>, Errno> {
    if let Some(Some(v)) = with_local_cwd(|c, _| c.map(|c| paths::join(c, path))) {
        return Ok(v);
    }
    Ok(paths::join(&cwd()?, path))
}

/// The working directory as the program sees it (a visible path when it
/// is in the branch).
pub(crate) fn cwd() -> Result<Vec<u8>, Errno> {
    if let Some(c) = CWD.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Ok(c.clone());
    }
    let mut g = cwd_write();
    if let Some(c) = g.as_ref() {
        return Ok(c.clone());
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: a buffer of the size given.
    if unsafe { platform::real_getcwd(buf.as_mut_ptr().cast(), buf.len()) }.is_null() {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(n);
    let mut visible = buf.clone();
    if let Some(cfg) = config() {
        let in_store = cfg
            .store
            .as_ref()
            .is_some_and(|s| paths::under(s, &buf).is_some());
        if in_store && paths::under(&cfg.root, &buf).is_none() {
            drop(g);
            let mapped = chain().ok().and_then(|c| c.branch_path_of(&buf));
            g = cwd_write();
            if let Some(rel) = mapped {
                visible = paths::visible(&cfg.root, &rel);
            }
        }
    }
    *kernel_cwd_write() = Some(buf);
    *g = Some(visible.clone());
    CWD_GEN.fetch_add(1, Ordering::AcqRel);
    Ok(visible)
}

/// The physical directory a `chdir` to branch directory `e` makes the
/// kernel's working directory: when the branch is visible at its base's
/// path, the base's own directory of that path if there is one (so
/// `/proc/self/cwd`, and children that run without the shim, see the
/// branch's path), else the entry's topmost copy.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn cwd_target(e: &crate::resolve::Entry) -> CString {
    let base = chain().ok().and_then(|c| {
        // Only where the branch is visible at the base's own path: a
        // base path elsewhere would not map back to the branch.
        c.layers
            .last()
            .filter(|l| l.base && l.root == c.visible_root)?;
        CString::new(c.base_dir_of(&e.path)?).ok()
    });
    base.unwrap_or_else(|| e.phys.clone())
}

/// Records the working directory after a `chdir` (`None`: ask the kernel
/// next time).
pub(crate) fn set_cwd(v: Option<Vec<u8>>) {
    set_cwd_phys(v, None);
}

/// [`set_cwd`], with the physical directory the kernel's working
/// directory now is, when known.
pub(crate) fn set_cwd_phys(v: Option<Vec<u8>>, phys: Option<Vec<u8>>) {
    let mut g = cwd_write();
    *kernel_cwd_write() = phys;
    *g = v;
    CWD_GEN.fetch_add(1, Ordering::AcqRel);
}

// ------------------------------------------------------------------- fds

/// What the shim knows about a descriptor it handed out in the branch.
#[derive(Debug, Clone)]
pub(crate) struct FdInfo {
    /// Canonical branch path.
    pub path: Vec<u8>,
    /// The daemon's record for an fd open for writing (0: read-only).
    pub record: u64,
    /// The process whose connection owns `record` (0 without a record).
    pub pid: u32,
    /// That connection (see [`CONN_GEN`]).
    pub conn: u64,
    /// The physical path the shim opened it on, when it opened it itself
    /// (reads): a `*at()` call's entry under it is handed to the kernel
    /// relative to the fd, as the program asked.
    pub phys: Option<Vec<u8>>,
}

/// A hasher for fd numbers: the program's own small integers, looked up
/// on every `*at()` call, where SipHash's flooding resistance buys nothing.
#[derive(Default)]
pub(crate) struct FdHasher(u64);

impl std::hash::Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i32(&mut self, n: i32) {
        // Multiplicative hashing: hashbrown takes the top bits.
        self.0 = (n as u32 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The shim's table of branch fds.
type FdMap = HashMap<RawFd, FdInfo, std::hash::BuildHasherDefault<FdHasher>>;

static FDS: Mutex<Option<FdMap>> = Mutex::new(None);

/// Moves (under the fd table's lock) whenever the table changes: what a
/// thread copied out of it for an fd is current while it stays.
static FD_GEN: AtomicU64 = AtomicU64::new(0);
static FD_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Remembers that `fd` is branch path `path`, open for writing with the
/// daemon's `record` made on connection `conn` (0: read-only).
pub(crate) fn fd_insert(fd: RawFd, path: Vec<u8>, record: u64, conn: u64) {
    fd_insert_info(
        fd,
        FdInfo {
            path,
            record,
            pid: pid(),
            conn,
            phys: None,
        },
    );
}

/// Remembers that `fd`, opened by the shim on physical path `phys`, is
/// branch path `path` (read-only).
pub(crate) fn fd_insert_phys(fd: RawFd, path: Vec<u8>, phys: Option<Vec<u8>>) {
    fd_insert_info(
        fd,
        FdInfo {
            path,
            record: 0,
            // No record to own: the process does not matter.
            pid: 0,
            conn: 0,
            phys,
        },
    );
}

/// Remembers that `fd` is a copy (`dup`) of the descriptor `info`
/// describes: both hold the daemon's record; the last to close ends it.
pub(crate) fn fd_insert_dup(fd: RawFd, info: FdInfo) {
    fd_insert_info(fd, info);
}

fn fd_insert_info(fd: RawFd, info: FdInfo) {
    let mut g = lock(&FDS);
    let m = g.get_or_insert_with(FdMap::default);
    m.insert(fd, info);
    FD_COUNT.store(m.len(), Ordering::Relaxed);
    FD_GEN.fetch_add(1, Ordering::AcqRel);
}

/// Where in physical path `phys` the part relative to directory fd `fd`
/// starts, when the shim opened `fd` on a directory `phys` lies under.
pub(crate) fn fd_relative_offset(fd: RawFd, phys: &[u8]) -> Option<usize> {
    if FD_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let g = lock(&FDS);
    let d = g.as_ref()?.get(&fd)?.phys.as_ref()?;
    (phys.len() > d.len() + 1 && phys.starts_with(d) && phys[d.len()] == b'/')
        .then_some(d.len() + 1)
}

/// `f` of what the shim knows about `fd`, without copying it.
fn fd_with<R>(fd: RawFd, f: impl FnOnce(&FdInfo) -> R) -> Option<R> {
    if FD_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    lock(&FDS).as_ref().and_then(|m| m.get(&fd)).map(f)
}

/// What the shim knows about `fd`.
pub(crate) fn fd_get(fd: RawFd) -> Option<FdInfo> {
    if FD_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    lock(&FDS).as_ref().and_then(|m| m.get(&fd).cloned())
}

/// Forgets `fd` (it was closed or replaced).
pub(crate) fn fd_remove(fd: RawFd) -> Option<FdInfo> {
    if FD_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut g = lock(&FDS);
    let m = g.as_mut()?;
    let r = m.remove(&fd);
    FD_COUNT.store(m.len(), Ordering::Relaxed);
    FD_GEN.fetch_add(1, Ordering::AcqRel);
    r
}

/// Forgets every fd in `first..=last` (a `close_range`), returning them.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // close_range is Linux's
pub(crate) fn fd_remove_range(first: RawFd, last: RawFd) -> Vec<FdInfo> {
    if FD_COUNT.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let mut g = lock(&FDS);
    let Some(m) = g.as_mut() else {
        return Vec::new();
    };
    let gone: Vec<RawFd> = m
        .keys()
        .copied()
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    let out = gone.iter().filter_map(|fd| m.remove(fd)).collect();
    FD_COUNT.store(m.len(), Ordering::Relaxed);
    FD_GEN.fetch_add(1, Ordering::AcqRel);
    out
}

/// When `info` was the last descriptor of a file opened for writing:
/// closes the writer registration that came with it (a forked child
/// closes its inherited copy), then tells the daemon (only the process
/// whose connection opened it can): with a registration held here, by a
/// frame that needs no reply (the registration already ended in the
/// kernel, so a snapshot asked for next finds the branch free), else by
/// an `FdClose` request.
pub(crate) fn fd_closed(info: &FdInfo) {
    if info.record == 0 {
        return;
    }
    // Another descriptor (a dup) still holds the file open.
    let shared = lock(&FDS).as_ref().is_some_and(|m| {
        m.values()
            .any(|i| i.record == info.record && i.conn == info.conn && i.pid == info.pid)
    });
    if shared {
        return;
    }
    let held = writer_close(info.record, info.conn);
    if info.pid != pid() {
        return;
    }
    let record = info.record;
    let stale = with_daemon_conn(|c, conn| {
        if conn != info.conn {
            // The connection that opened the file is gone (the daemon
            // restarted): its record went with it.
            return Ok(true);
        }
        if held.is_some() {
            c.fd_closed(record)?;
        } else {
            c.request(Request::FdClose { record })?;
        }
        Ok(false)
    });
    if stale == Ok(true) {
        report_modified_after_restart(&info.path, held.flatten());
    }
}

/// Publishes `Modified` for branch file `path`, closed after the daemon
/// that recorded its opening restarted, if it changed since `opened` (its
/// state then; unknown: assumed changed), as the daemon would have at the
/// close (`PublishEvents`, the way a mount server reports its changes).
/// A file removed meanwhile reports nothing.
fn report_modified_after_restart(path: &[u8], opened: Option<FileState>) {
    let Some(cfg) = config() else {
        return;
    };
    let Ok(Resolved::Found(e)) = resolve(path, false) else {
        return;
    };
    let Ok(st) = rustix::fs::lstat(e.phys.as_c_str()) else {
        return;
    };
    let now = state_of(&st);
    if opened == Some(now) {
        return;
    }
    let event = agentfs_proto::WireCoreEvent {
        seq: 0,
        pid: pid(),
        kind: agentfs_proto::WireEventKind::Modified,
        branch: cfg.branch.clone(),
        path: wire(path),
        to: WirePath::default(),
        is_dir: false,
        size_before: opened.map_or(u64::MAX, |o| o.1),
        size_after: now.1,
    };
    let _ = with_daemon(|c| {
        c.request(Request::PublishEvents {
            events: vec![event.clone()],
        })
    });
}

// ---------------------------------------------------------- classification

/// Where a path argument leads.
pub(crate) enum Target {
    /// Not the shim's business.
    Native,
    /// A branch path (relative to the root, normalised).
    Branch(Vec<u8>),
}

/// Classifies `path` given relative to `dirfd` (`AT_FDCWD` for the cwd).
pub(crate) fn classify(dirfd: c_int, path: &[u8]) -> Result<Target, Errno> {
    let Some(cfg) = config() else {
        return Ok(Target::Native);
    };
    let abs = if path.starts_with(b"/") {
        if paths::clearly_outside(&cfg.root, path) {
            return Ok(Target::Native);
        }
        path.to_vec()
    } else if dirfd == libc::AT_FDCWD {
        // The common case (git's and find's names under a working
        // directory in the branch): the branch path in one allocation.
        if paths::is_clean_relative(path) {
            let fast = with_local_cwd_branch(|dir| {
                let dir = dir?;
                let mut rel = Vec::with_capacity(dir.len() + path.len() + 1);
                rel.extend_from_slice(dir);
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(path);
                Some(rel)
            });
            if let Some(Some(rel)) = fast {
                return Ok(Target::Branch(rel));
            }
        }
        join_cwd(path)?
    } else {
        // Under the fd's branch path, without copying its record.
        let clean = paths::is_clean_relative(path);
        let joined = fd_with(dirfd, |info| {
            if clean {
                let mut rel = Vec::with_capacity(info.path.len() + path.len() + 1);
                rel.extend_from_slice(&info.path);
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(path);
                Err(rel)
            } else {
                Ok(paths::join(&paths::visible(&cfg.root, &info.path), path))
            }
        });
        match joined {
            Some(Ok(abs)) => abs,
            Some(Err(rel)) => return Ok(Target::Branch(rel)),
            None => return Ok(Target::Native),
        }
    };
    let mut abs = paths::normalize(&abs);
    Ok(match paths::under(&cfg.root, &abs).map(<[u8]>::len) {
        Some(n) => {
            // The branch path is the tail: keep the allocation.
            let cut = abs.len() - n;
            abs.drain(..cut);
            Target::Branch(abs)
        }
        None => Target::Native,
    })
}

/// What [`read_fast`] learnt of the last directory it looked at, on one
/// thread: a program stats the names of one directory one after the
/// other, and each then costs no look at the shared cache.
struct DirMemo {
    /// The chain's epoch and the namespace counter it holds for.
    epoch: u64,
    stamp: u64,
    /// The directory's branch path as asked (the cache's key).
    key: Vec<u8>,
    /// What the cache knew.
    known: crate::resolve::BaseDir,
    /// What the path was relative to when it was made: `AT_FDCWD` with
    /// the generation of the working directory's records, or a directory
    /// fd with the fd table's ([`FD_GEN`]); with the path's parent as the
    /// program gave it, and for each part of `known` whether the kernel
    /// walks to it from there along that parent (the program's own call
    /// then reaches the entry).
    origin: Option<(c_int, u64)>,
    parent: Vec<u8>,
    here: Vec<bool>,
}

/// Per-thread buffers of the fast read: the directory the path is
/// relative to (branch and physical), the branch path it builds, the
/// whiteout name, a path for the kernel, and its memory of the last two
/// directories (the last one first).
struct Scratch {
    branch_dir: Vec<u8>,
    phys_dir: Vec<u8>,
    key: Vec<u8>,
    whiteout: Vec<u8>,
    path: Vec<u8>,
    memo: [Option<DirMemo>; 2],
}

std::thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            branch_dir: Vec::new(),
            phys_dir: Vec::new(),
            key: Vec::new(),
            whiteout: Vec::new(),
            path: Vec::new(),
            memo: [None, None],
        })
    };
}

/// Where the last `/` of relative path `path` is, when `path` is in
/// normal form (no empty, `.` or `..` component, no leading or trailing
/// slash): `Some(None)` for a single name.
fn clean_relative_last_slash(path: &[u8]) -> Option<Option<usize>> {
    let (mut last, mut at) = (None, 0);
    loop {
        let rest = &path[at..];
        let end = rest.iter().position(|&b| b == b'/');
        let comp = &rest[..end.unwrap_or(rest.len())];
        if comp.is_empty() || comp == b"." || comp == b".." {
            return None;
        }
        match end {
            Some(e) => {
                last = Some(at + e);
                at += e + 1;
            }
            None => return Some(last),
        }
    }
}

/// A call that does not follow a final symlink (`lstat`, `fstatat` with
/// `AT_SYMLINK_NOFOLLOW`) on relative path `path` (under `dirfd`,
/// `AT_FDCWD` for the working directory), answered without building the
/// entry's branch and physical paths when the cache knows, at the
/// current namespace counter, the frame of the path's parent directory
/// (ending in the base) and the names of its parts above the base: the
/// entry is then in the first part that holds the name, or in the base's
/// directory when none holds or hides it (what [`Chain::resolve_at`] with
/// `lazy` answers). `run(None)` makes the program's own call, when the
/// kernel starts from that very directory (the kernel's working
/// directory, or a directory fd the shim opened there) and so walks to
/// the entry anyway; `run(Some((fd, path)))` makes it on the entry's path
/// under its layer root's fd, and gives `None` when that fd is bad.
/// `None`: not answered here.
pub(crate) fn read_fast<R>(
    dirfd: c_int,
    path: &[u8],
    run: impl FnOnce(Option<(RawFd, *const std::ffi::c_char)>) -> Option<R>,
    is_dir: impl Fn(&R) -> bool,
) -> Option<R> {
    let slash = clean_relative_last_slash(path)?;
    let (parent, name) = match slash {
        Some(p) => (&path[..p], &path[p + 1..]),
        None => (&b""[..], path),
    };
    let (epoch, stamp) = LOCAL_CHAIN
        .try_with(|l| {
            let l = l.try_borrow().ok()?;
            let l = l.as_ref()?;
            if l.epoch != CHAIN_EPOCH.load(Ordering::Acquire) || l.counters.graph() != l.graph {
                return None;
            }
            Some((l.epoch, l.counters.namespace()))
        })
        .ok()??;
    SCRATCH
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let s = &mut *s;
            // The common case: the same directory as one of the last two
            // calls (git checks a file's leading directory, then the
            // file), relative to a working directory or directory fd
            // whose record has not changed since. Nothing is copied, and
            // where the kernel starts is known.
            let origin = Some(if dirfd == libc::AT_FDCWD {
                (dirfd, CWD_GEN.load(Ordering::Acquire))
            } else {
                (dirfd, FD_GEN.load(Ordering::Acquire))
            });
            let hit = |m: &Option<DirMemo>| {
                m.as_ref().is_some_and(|m| {
                    m.epoch == epoch
                        && m.stamp == stamp
                        && m.origin == origin
                        && same_bytes(&m.parent, parent)
                })
            };
            let mut here = false;
            if hit(&s.memo[0]) {
                here = true;
            } else if hit(&s.memo[1]) {
                s.memo.swap(0, 1);
                here = true;
            }
            if !here {
                memo_for(s, dirfd, parent, epoch, stamp)?;
            }
            let m = s.memo[0].as_ref()?;
            let part = m.known.locate_part(name, &mut s.whiteout)?;
            let dir = m.known.part(part);
            let starts_here = if here {
                m.here.get(part).copied().unwrap_or(false)
            } else {
                crate::resolve::dir_is(dir, &s.phys_dir, parent)
            };
            if starts_here {
                let r = run(None);
                // A directory of the base's, which the call showed is one
                // (not a symlink): the cache learns its frame exactly, so
                // the lookups under it and an `opendir` of it need no
                // syscall of the shim's own.
                if part + 1 == m.known.parts() && r.as_ref().is_some_and(is_dir) {
                    if let Some((chain, _)) = local_chain() {
                        chain.note_base_dir(stamp, &m.key, name);
                    }
                }
                return r;
            }
            // The kernel starts elsewhere (a directory fd on a layer's
            // copy of a merged directory, a name a layer holds under the
            // base's directory): the entry's path under its root's fd.
            let (fd, off) = root_relative(dir)?;
            s.path.clear();
            s.path.extend_from_slice(&dir[off..]);
            s.path.push(b'/');
            s.path.extend_from_slice(name);
            s.path.push(0);
            let r = run(Some((fd, s.path.as_ptr().cast())));
            #[cfg(target_os = "linux")]
            if r.is_none() && platform::errno() == libc::EBADF {
                drop_root_fd(fd);
            }
            r
        })
        .ok()
        .flatten()
}

/// `a == b`, without a call to libc's `memcmp` for two empty slices. An
/// empty `Vec`'s pointer is dangling, and glibc's `memcmp` for AVX-512
/// machines reads short inputs with masked loads, which from an unmapped
/// page cost a microcode assist even when nothing is read (here 68 ns a
/// call instead of 2): the fast lane compares an empty parent (a name
/// relative to a directory fd) on every such call, one per file in
/// `find`, where it showed as 7% of the samples.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Fills the scratch's directory (branch and physical) for a path
/// relative to `dirfd` with parent `parent`, and its memory of that
/// directory from the cache (`None`: not known there).
fn memo_for(s: &mut Scratch, dirfd: c_int, parent: &[u8], epoch: u64, stamp: u64) -> Option<()> {
    // The directory the path is relative to, copied out of the working
    // directory's records or the fd table (no lock held during the call).
    let copy = |s: &mut Scratch, b: Option<&[u8]>, p: Option<&[u8]>| {
        let (b, p) = (b?, p?);
        s.branch_dir.clear();
        s.branch_dir.extend_from_slice(b);
        s.phys_dir.clear();
        s.phys_dir.extend_from_slice(p);
        Some(())
    };
    let origin = if dirfd == libc::AT_FDCWD {
        with_local_cwd_gen(|g, _, k, b| copy(s, b, k).map(|()| (dirfd, g)))??
    } else {
        // Read under the lock its writers hold.
        fd_with(dirfd, |info| {
            copy(s, Some(&info.path), info.phys.as_deref())
                .map(|()| (dirfd, FD_GEN.load(Ordering::Acquire)))
        })??
    };
    s.key.clear();
    s.key.extend_from_slice(&s.branch_dir);
    if !parent.is_empty() {
        if !s.key.is_empty() {
            s.key.push(b'/');
        }
        s.key.extend_from_slice(parent);
    }
    let key = &s.key;
    let same = |m: &Option<DirMemo>| {
        m.as_ref()
            .is_some_and(|m| m.epoch == epoch && m.stamp == stamp && same_bytes(&m.key, key))
    };
    if same(&s.memo[1]) {
        s.memo.swap(0, 1);
    } else if !same(&s.memo[0]) {
        // What the cache did not know yet it may know next time (the
        // call that finds it out fills it in): only what it knew is kept.
        let known = local_chain()?.0.base_dir_cached(stamp, &s.key)?;
        s.memo.swap(0, 1);
        s.memo[0] = Some(DirMemo {
            epoch,
            stamp,
            key: s.key.clone(),
            known,
            origin: None,
            parent: Vec::new(),
            here: Vec::new(),
        });
    }
    let m = s.memo[0].as_mut()?;
    m.origin = Some(origin);
    m.parent.clear();
    m.parent.extend_from_slice(parent);
    m.here.clear();
    for i in 0..m.known.parts() {
        let here = crate::resolve::dir_is(m.known.part(i), &s.phys_dir, parent);
        m.here.push(here);
    }
    Some(())
}

/// Resolves branch path `rel` on the current chain, reusing directory
/// frames while the store's namespace counter stays.
pub(crate) fn resolve(rel: &[u8], follow: bool) -> Result<Resolved, Errno> {
    resolve_with(rel, follow, false)
}

/// [`resolve`] for a caller that runs its own `lstat`-like syscall on the
/// result: a path under a directory only the base has is not checked first
/// (one syscall instead of two; see [`Chain::resolve_at`]).
pub(crate) fn resolve_for_read(rel: &[u8], follow: bool) -> Result<Resolved, Errno> {
    resolve_with(rel, follow, true)
}

fn resolve_with(rel: &[u8], follow: bool, lazy: bool) -> Result<Resolved, Errno> {
    // The thread's own copy, borrowed: no reference count to move on a
    // cache line every thread shares.
    let local = LOCAL_CHAIN.try_with(|l| {
        let l = l.try_borrow().ok()?;
        let l = l.as_ref()?;
        if l.epoch != CHAIN_EPOCH.load(Ordering::Acquire) || l.counters.graph() != l.graph {
            return None;
        }
        let before = l.counters.namespace();
        let r = l.chain.resolve_at(rel, follow, Some(before), lazy);
        if l.counters.namespace() != before {
            l.chain.forget();
        }
        Some(r)
    });
    if let Ok(Some(r)) = local {
        return r;
    }
    let (chain, counters) = chain_and_counters()?;
    let Some(c) = counters else {
        return chain.resolve_at(rel, follow, None, lazy);
    };
    let before = c.namespace();
    let r = chain.resolve_at(rel, follow, Some(before), lazy);
    if c.namespace() != before {
        chain.forget();
    }
    r
}

/// Whether branch directory `rel` is held by the base alone (no layer
/// above holds it, so none holds or hides a name in it): its listing is
/// the base directory's own.
#[cfg(target_os = "linux")]
pub(crate) fn base_only_dir(rel: &[u8]) -> bool {
    let Ok(Resolved::Found(e)) = resolve(rel, true) else {
        return false;
    };
    e.kind == rustix::fs::FileType::Directory && in_base(e.layer)
}

/// Whether layer `layer` of the chain is the base (a directory an entry
/// of it names is held by the base alone: see [`base_only_dir`]).
#[cfg(target_os = "linux")]
pub(crate) fn in_base(layer: usize) -> bool {
    chain().is_ok_and(|c| c.layers.get(layer).is_some_and(|l| l.base))
}

/// The merged listing of branch directory `rel`, reused while the store's
/// namespace counter stays; `top` is an fd the shim opened on it (read
/// instead of opening its top part again).
pub(crate) fn list(rel: &[u8], top: Option<RawFd>) -> Result<Arc<crate::resolve::Listing>, Errno> {
    let (chain, counters) = chain_and_counters()?;
    // SAFETY: the caller's fd, open for the duration of the call.
    let top = top.map(|fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
    let Some(c) = counters else {
        return chain.list_at(rel, None, top);
    };
    let before = c.namespace();
    let r = chain.list_at(rel, Some(before), top);
    if c.namespace() != before {
        chain.forget();
    }
    r
}

// ------------------------------------------------------------------ fork

/// Every lock of this module, held (for the `fork` handlers).
pub(crate) struct StateLocks {
    _conn: MutexGuard<'static, Option<Conn>>,
    _chain: MutexGuard<'static, Option<ChainState>>,
    _cwd: RwLockWriteGuard<'static, Option<Vec<u8>>>,
    _kernel_cwd: RwLockWriteGuard<'static, Option<Vec<u8>>>,
    _fds: MutexGuard<'static, Option<FdMap>>,
    _writers: MutexGuard<'static, Option<HashMap<(u64, u64), HeldWriter>>>,
}

/// In a forked child, once the fork handlers released the locks: the
/// chain's cache has a lock of its own, which a thread of the parent may
/// have held at the fork; the child gets a copy with a fresh one.
pub(crate) fn renew_chain_after_fork() {
    if let Some(st) = lock(&CHAIN).as_mut() {
        st.chain = Arc::new(st.chain.fresh_copy());
    }
    // Every thread's copy (the forking thread's is the only one left) is
    // the parent's chain, whose cache lock another thread may have held.
    CHAIN_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Takes every lock of this module, in the order other paths nest them:
/// the chain before the daemon connection (a chain refresh asks the daemon
/// while it holds the chain's lock); the working directory, the fd table
/// and the writer registrations are never held around another.
pub(crate) fn lock_all() -> StateLocks {
    let chain = lock(&CHAIN);
    let conn = lock(&CONN);
    StateLocks {
        _conn: conn,
        _chain: chain,
        _cwd: cwd_write(),
        _kernel_cwd: kernel_cwd_write(),
        _fds: lock(&FDS),
        _writers: lock(&WRITERS),
    }
}
