//! Doorbells: how the daemon wakes a process that is blocked in its own
//! `kevent()`, `read()` or run loop, with an fd the shim passed in
//! `SCM_RIGHTS`.
//!
//! Every doorbell is a socket: one end of a socket pair whose other end the
//! shim keeps. The daemon writes each delivery's encoded records into it
//! (instead of sending an `Events` frame); the process wakes because the
//! socket became readable.
//!
//! - macOS, `KqueueSocket`: the shim registered its end in the app's kqueue
//!   as `EVFILT_READ`; the records are 32-byte `struct kevent`s.
//! - macOS, `FsEventsSocket`: the shim reads its end on the stream's run
//!   loop or dispatch queue; the records are the FSEvents provider's
//!   encoded events.
//! - Linux, `InotifySocket`: the shim gave its end to the app as its
//!   inotify fd; the records are `struct inotify_event`s in the kernel's
//!   layout.
//!
//! The app's kqueue itself never travels: XNU refuses to send a kqueue fd
//! in `SCM_RIGHTS` (only vnodes, sockets, pipes and POSIX shared memory
//! may cross a UNIX socket).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use agentfs_plugin_api::{watch::WatchApi, PluginError, PluginResult};
use agentfs_proto::{fd_passing::send_with_fd, DoorbellKind};
use smol::Async;

/// A doorbell socket (the daemon's end of the shim's socket pair).
pub struct DoorbellSocket {
    fd: Async<OwnedFd>,
    /// Bytes not written yet (the app has not read enough), in order.
    pending: std::sync::Mutex<Vec<u8>>,
    /// A task is draining `pending`.
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DoorbellSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorbellSocket").finish_non_exhaustive()
    }
}

impl DoorbellSocket {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: Async::new(fd)?,
            pending: std::sync::Mutex::new(Vec::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Writes one batch of encoded records after those before it, without
    /// waiting: what the socket cannot take now is written by a background
    /// task as the app reads.
    pub fn push(self: &Arc<Self>, bytes: Vec<u8>) {
        use std::sync::atomic::Ordering;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if self.draining.load(Ordering::Acquire) {
            pending.extend_from_slice(&bytes);
            return;
        }
        let mut sent = 0;
        while sent < bytes.len() {
            match send_with_fd(self.fd.as_fd(), &bytes[sent..], None) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "doorbell socket write failed");
                    return;
                }
            }
        }
        if sent == bytes.len() {
            return;
        }
        pending.extend_from_slice(&bytes[sent..]);
        self.draining.store(true, Ordering::Release);
        let me = self.clone();
        smol::spawn(async move { me.drain().await }).detach();
    }

    async fn drain(&self) {
        use std::sync::atomic::Ordering;
        loop {
            if let Err(e) = self.fd.writable().await {
                tracing::debug!(error = %e, "doorbell socket");
                break;
            }
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match send_with_fd(self.fd.as_fd(), &pending, None) {
                Ok(n) => {
                    pending.drain(..n);
                    if pending.is_empty() {
                        self.draining.store(false, Ordering::Release);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "doorbell socket write failed");
                    break;
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.draining.store(false, Ordering::Release);
    }
}

/// How a watcher's deliveries reach its process, when it gave a doorbell.
#[derive(Debug, Clone)]
pub enum DoorbellTarget {
    /// Write the encoded records into this socket instead of sending a
    /// frame.
    Socket(Arc<DoorbellSocket>),
}

/// The watch API a doorbell serves.
pub fn api_of(kind: &DoorbellKind) -> WatchApi {
    match kind {
        DoorbellKind::KqueueSocket => WatchApi::KQUEUE,
        DoorbellKind::FsEventsSocket => WatchApi::FSEVENTS,
        DoorbellKind::InotifySocket => WatchApi::INOTIFY,
    }
}

/// Builds the doorbell for `kind` from the fd that came with the request
/// (it must be a socket).
pub fn make(kind: &DoorbellKind, fd: OwnedFd) -> PluginResult<DoorbellTarget> {
    let st = nix::sys::stat::fstat(&fd).map_err(|e| {
        PluginError::from_io("doorbell fd", &io::Error::from_raw_os_error(e as i32))
    })?;
    #[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
    if st.st_mode as u32 & libc::S_IFMT as u32 != libc::S_IFSOCK as u32 {
        return Err(PluginError::invalid(format!(
            "a {kind:?} doorbell must be a socket (one end of a socket pair)"
        )));
    }
    let sock = DoorbellSocket::new(fd).map_err(|e| PluginError::from_io("doorbell socket", &e))?;
    Ok(DoorbellTarget::Socket(Arc::new(sock)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;

    #[test]
    fn every_doorbell_must_be_a_socket() {
        for kind in [
            DoorbellKind::KqueueSocket,
            DoorbellKind::FsEventsSocket,
            DoorbellKind::InotifySocket,
        ] {
            let f = tempfile::tempfile().unwrap();
            let e = make(&kind, f.into()).unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
            assert!(e.message.contains("must be a socket"), "{}", e.message);
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            assert!(make(&kind, a.into()).is_ok());
        }
    }
}
