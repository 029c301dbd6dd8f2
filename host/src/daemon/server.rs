//! The daemon's lifecycle: open the store and the watch providers, bind the
//! socket, accept connections (one task each) until SIGTERM or SIGINT, then
//! shut down cleanly: the socket is removed, connection tasks end, and the
//! store and its backstore are dropped, so the backstore's RAII cleanup
//! runs (a RAM volume is unmounted and deleted). The clean shutdown is
//! bounded: past [`ServeOptions::shutdown_timeout`], or at a second signal,
//! the process exits at once (a request stuck in the kernel or in a plugin
//! cannot keep it alive). With [`ServeOptions::exit_when_idle`] the same
//! clean shutdown also starts when the last connection ends.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_lite::future;
use nix::sys::signal::{SigSet, Signal};
use smol::{channel, Async, Executor};

use super::{
    connection,
    socket_path::bind,
    state::{Daemon, DaemonInfo},
    watch_service::WatchService,
    DaemonError,
};
use crate::Host;
use agentfs_core::{InitOptions, LockWait, Store};

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The socket path.
    pub socket: PathBuf,
    /// Create the store if the backstore has none (with these settings);
    /// without it, a missing store is an error.
    pub init: Option<InitOptions>,
    /// Wait for, or fail on, another process holding the store lock.
    pub wait: LockWait,
    /// At most this many connections per uid at once (more are refused).
    pub max_connections_per_uid: usize,
    /// How long a clean shutdown may take after SIGTERM or SIGINT before
    /// the daemon exits anyway (a second signal exits at once).
    pub shutdown_timeout: Duration,
    /// Stop (cleanly, as on SIGTERM) when the last connection ends.
    pub exit_when_idle: bool,
}

/// Connections from accept until their task ends; says when the count
/// drops to zero.
struct Live {
    count: AtomicUsize,
    idle_tx: channel::Sender<()>,
    idle_rx: channel::Receiver<()>,
}

impl Live {
    fn new() -> Arc<Self> {
        let (idle_tx, idle_rx) = channel::bounded(1);
        Arc::new(Self {
            count: AtomicUsize::new(0),
            idle_tx,
            idle_rx,
        })
    }

    /// Counts a connection until the guard is dropped.
    fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }
}

/// One counted connection.
struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.0.idle_tx.try_send(());
        }
    }
}

/// The default of [`ServeOptions::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT. `ready` is called with the
/// socket path once clients can connect. Must be called before the
/// process starts any thread (it blocks the two signals for every thread
/// and waits for them on its own).
pub fn serve(
    host: &Host,
    opts: ServeOptions,
    ready: impl FnOnce(&Path),
) -> Result<(), DaemonError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| DaemonError::io("block SIGTERM and SIGINT", e.into()))?;

    match super::limits::raise_fd_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let backstore = host.backstore()?;
    let store = match opts.init {
        Some(init) if !Store::exists(&backstore)? => Store::init(backstore, init, opts.wait)?,
        _ => Store::open(backstore, opts.wait)?,
    };
    // Fds handed out for reading must not be reopenable for writing.
    match store.protect_lower_layers() {
        Ok(()) => tracing::info!("fds for reading come from read-only mounts"),
        Err(e) => tracing::warn!(
            "{e}: an fd handed out for reading could be reopened for writing through \
             /proc/self/fd (see docs/daemon.md)"
        ),
    }
    let watch = WatchService::new(host.watch_providers()?).map_err(DaemonError::Watch)?;
    let (listener, bound) = bind(&opts.socket)?;
    let listener = Async::new(listener).map_err(|e| DaemonError::io("listen", e))?;
    let daemon = Arc::new(
        Daemon::new(
            store,
            watch,
            DaemonInfo {
                config: host.config.source.to_string(),
                socket: bound.path().to_path_buf(),
            },
        )
        .with_max_connections_per_uid(opts.max_connections_per_uid),
    );
    for (api, name) in daemon.watch.apis() {
        tracing::info!(api = api.name(), plugin = %name, "watch provider loaded");
    }

    let (stop_tx, stop_rx) = channel::bounded::<Signal>(1);
    let socket_file = bound.detached();
    let grace = opts.shutdown_timeout;
    std::thread::Builder::new()
        .name("agentfs-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                let _ = stop_tx.send_blocking(sig);
                // A request stuck in the kernel (or a plugin) would hold
                // the clean shutdown up forever: bound it.
                let timer_file = socket_file.detached();
                let timer = std::thread::Builder::new()
                    .name("agentfs-shutdown-timer".into())
                    .spawn(move || {
                        std::thread::sleep(grace);
                        force_exit(
                            &format!("the shutdown took longer than {grace:?}"),
                            &timer_file,
                        );
                    });
                if let Err(e) = timer {
                    tracing::warn!(error = %e, "could not start the shutdown timer");
                }
                if let Ok(again) = signals.wait() {
                    force_exit(&format!("a second {again:?}"), &socket_file);
                }
            }
        })
        .map_err(|e| DaemonError::io("start the signal thread", e))?;

    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let ex = Executor::new();
    // Connection tasks answer quick reads in place, so one read waiting for
    // the store must not hold every connection up: several executor threads.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let (run_tx, run_rx) = channel::bounded::<()>(1);
    let sig = std::thread::scope(|scope| {
        for i in 1..threads {
            let (ex, run_rx) = (&ex, run_rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("agentfs-serve-{i}"))
                .spawn_scoped(scope, move || {
                    let _ = smol::block_on(ex.run(run_rx.recv()));
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start an executor thread");
            }
        }
        ready(bound.path());
        let idle = opts.exit_when_idle.then(Live::new);
        let sig = accept_until_stopped(&ex, &listener, &stop_rx, &daemon, uid, idle);
        drop(run_tx); // the other executor threads return
        sig
    });
    match sig {
        Some(sig) => tracing::info!(signal = ?sig, "stopping"),
        None => tracing::info!("stopping: the last client has gone"),
    }
    // No new clients: the socket file goes. Connection tasks end with the
    // executor. Requests still running finish; then the store and its
    // backstore are dropped (RAII cleanup).
    drop(listener);
    drop(bound);
    drop(ex);
    drop(daemon.take_store());
    Ok(())
}

/// What ends the accept loop.
enum Stop {
    Signal(Option<Signal>),
    Idle,
}

/// Accepts connections, one task each, until a signal comes (`Some`), or,
/// with `idle`, until the last connection has ended (`None`).
fn accept_until_stopped(
    ex: &Executor<'_>,
    listener: &Async<std::os::unix::net::UnixListener>,
    stop_rx: &channel::Receiver<Signal>,
    daemon: &Arc<Daemon>,
    uid: u32,
    idle: Option<Arc<Live>>,
) -> Option<Signal> {
    smol::block_on(ex.run(async {
        loop {
            let stopped = future::or(async { Stop::Signal(stop_rx.recv().await.ok()) }, async {
                match &idle {
                    Some(l) => {
                        let _ = l.idle_rx.recv().await;
                        Stop::Idle
                    }
                    None => future::pending().await,
                }
            });
            let next = future::or(async { Ok(listener.accept().await) }, async {
                Err(stopped.await)
            })
            .await;
            match next {
                Ok(Ok((stream, _))) => {
                    // Counted from here, before its task first runs, so
                    // a connection being set up is never taken for idle.
                    let live = idle.as_ref().map(|l| l.enter());
                    let d = daemon.clone();
                    ex.spawn(async move {
                        connection::run(d, stream, uid).await;
                        drop(live);
                    })
                    .detach();
                }
                Ok(Err(e)) => {
                    // EMFILE and the like: keep serving those connected.
                    tracing::warn!(error = %e, "accept failed");
                }
                Err(Stop::Signal(sig)) => break sig,
                Err(Stop::Idle) => {
                    if idle
                        .as_ref()
                        .is_some_and(|l| l.count.load(Ordering::SeqCst) == 0)
                    {
                        break None;
                    }
                }
            }
        }
    }))
}

/// Exits the process now, without waiting for what is still running: the
/// socket file goes, the store's lock goes with the process; a RAM
/// backstore's volume is left for its next start to reclaim.
fn force_exit(why: &str, socket: &super::socket_path::BoundSocket) -> ! {
    tracing::error!("{why}: exiting without waiting for the requests still running");
    socket.remove_now();
    // SAFETY: _exit ends the process at once; nothing runs after it, so no
    // destructor or atexit handler can block (other threads may hold
    // locks those would need).
    unsafe { libc::_exit(1) }
}
