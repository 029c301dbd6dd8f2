//! Doorbells: how the daemon wakes a process that is
//! blocked in its own `kevent()` or `read()`, with an fd the shim passed
//! in `SCM_RIGHTS`.
//!
//! - macOS, `KqueueUser`: the fd is the app's kqueue, on which the shim
//!   added an `EVFILT_USER` event with an ident in the reserved range
//!   `0xAFFE_0000_0000 | n`. After sending a delivery frame the daemon
//!   posts `NOTE_TRIGGER` on it, so the app's `kevent()` returns and the
//!   shim merges the records. Idents outside the range are refused, so the
//!   daemon never fires one of the app's own user events.
//! - Linux, `InotifySocket`: the fd is one end of a socket pair whose other
//!   end the shim gave the app as its inotify fd. The daemon writes the
//!   encoded `struct inotify_event` records into it (instead of sending a
//!   frame); the app's `read()`/`poll()` see them like kernel events.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use agentfs_plugin_api::{watch::WatchApi, PluginError, PluginResult};
use agentfs_proto::{fd_passing::send_with_fd, DoorbellKind};
use smol::Async;

/// The reserved `EVFILT_USER` ident range: idents are `KQUEUE_IDENT_BASE | n`
/// with `n < 2^32`.
pub const KQUEUE_IDENT_BASE: u64 = 0xAFFE_0000_0000;
const KQUEUE_IDENT_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// A socket standing in for an app's inotify fd.
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
                    tracing::debug!(error = %e, "inotify doorbell socket write failed");
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
                tracing::debug!(error = %e, "inotify doorbell socket");
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
                    tracing::debug!(error = %e, "inotify doorbell socket write failed");
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
    /// Post `NOTE_TRIGGER` with `ident` on the app's kqueue after sending
    /// the delivery frame.
    KqueueUser {
        /// The app's kqueue.
        kqueue: Arc<OwnedFd>,
        /// The reserved ident.
        ident: u64,
    },
    /// Write the encoded records into this socket instead of sending a
    /// frame.
    InotifySocket(Arc<DoorbellSocket>),
}

/// Checks an `EVFILT_USER` ident against the reserved range.
pub fn check_kqueue_ident(ident: u64) -> PluginResult<()> {
    if ident & KQUEUE_IDENT_MASK == KQUEUE_IDENT_BASE {
        Ok(())
    } else {
        Err(PluginError::invalid(format!(
            "kqueue doorbell ident {ident:#x} is outside the reserved range {KQUEUE_IDENT_BASE:#x}..={:#x}",
            KQUEUE_IDENT_BASE | 0xFFFF_FFFF
        )))
    }
}

/// The watch API a doorbell serves.
pub fn api_of(kind: &DoorbellKind) -> WatchApi {
    match kind {
        DoorbellKind::KqueueUser { .. } => WatchApi::KQUEUE,
        DoorbellKind::InotifySocket => WatchApi::INOTIFY,
    }
}

/// Builds the doorbell for `kind` from the fd that came with the request.
pub fn make(kind: &DoorbellKind, fd: OwnedFd) -> PluginResult<DoorbellTarget> {
    match kind {
        DoorbellKind::KqueueUser { ident } => {
            check_kqueue_ident(*ident)?;
            kqueue_target(fd, *ident)
        }
        DoorbellKind::InotifySocket => {
            let st = nix::sys::stat::fstat(&fd).map_err(|e| {
                PluginError::from_io("doorbell fd", &io::Error::from_raw_os_error(e as i32))
            })?;
            #[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
            if st.st_mode as u32 & libc::S_IFMT as u32 != libc::S_IFSOCK as u32 {
                return Err(PluginError::invalid(
                    "an InotifySocket doorbell must be a socket (one end of a socket pair)",
                ));
            }
            let sock =
                DoorbellSocket::new(fd).map_err(|e| PluginError::from_io("doorbell socket", &e))?;
            Ok(DoorbellTarget::InotifySocket(Arc::new(sock)))
        }
    }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn kqueue_target(fd: OwnedFd, ident: u64) -> PluginResult<DoorbellTarget> {
    Ok(DoorbellTarget::KqueueUser {
        kqueue: Arc::new(fd),
        ident,
    })
}

#[cfg(not(any(target_os = "macos", target_os = "ios")))]
fn kqueue_target(_fd: OwnedFd, _ident: u64) -> PluginResult<DoorbellTarget> {
    Err(PluginError::unsupported(
        "kqueue doorbells need macOS (on Linux, use an InotifySocket doorbell)",
    ))
}

/// Posts `NOTE_TRIGGER` on `ident` of kqueue `kq` (does not block).
#[cfg(any(target_os = "macos", target_os = "ios"))]
pub fn trigger_kqueue(kq: &OwnedFd, ident: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let kev = libc::kevent {
        ident: ident as libc::uintptr_t,
        filter: libc::EVFILT_USER,
        flags: 0,
        fflags: libc::NOTE_TRIGGER,
        data: 0,
        udata: std::ptr::null_mut(),
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `kq` is an open fd we own; one valid changelist entry, no
    // eventlist, a valid timeout.
    let r = unsafe { libc::kevent(kq.as_raw_fd(), &kev, 1, std::ptr::null_mut(), 0, &zero) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Posts `NOTE_TRIGGER` (macOS only; kqueue doorbells are refused
/// elsewhere, so this is never reached).
#[cfg(not(any(target_os = "macos", target_os = "ios")))]
pub fn trigger_kqueue(_kq: &OwnedFd, _ident: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_plugin_api::ErrorCode;

    #[test]
    fn kqueue_idents_must_be_in_the_reserved_range() {
        assert!(check_kqueue_ident(0xAFFE_0000_0001).is_ok());
        assert!(check_kqueue_ident(0xAFFE_FFFF_FFFF).is_ok());
        assert!(check_kqueue_ident(123).is_err(), "an app's own ident");
        assert!(check_kqueue_ident(0xAFFF_0000_0001).is_err());
        assert!(check_kqueue_ident(0x1_AFFE_0000_0001).is_err());
    }

    #[test]
    fn an_inotify_doorbell_must_be_a_socket() {
        let f = tempfile::tempfile().unwrap();
        let e = make(&DoorbellKind::InotifySocket, f.into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(make(&DoorbellKind::InotifySocket, a.into()).is_ok());
    }
}
