//! File descriptors in `SCM_RIGHTS` ancillary data. A frame
//! that carries an fd is sent with the fd attached to its first byte; a
//! receiver reads every chunk with `recvmsg` and queues the fds that came
//! with it, so that when a frame that [carries one](crate::DaemonFrame::carries_fd)
//! is decoded, its fd is already at the front of the queue.
//!
//! Both functions do one system call and report `WouldBlock` as an error,
//! so they serve blocking sockets and non-blocking ones driven by an
//! event loop (the daemon wraps them in smol's `Async::read_with` /
//! `write_with`).

use std::{
    collections::VecDeque,
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use nix::{
    errno::Errno,
    sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags},
};

/// Most fds one `recvmsg` accepts; more (a misbehaving peer) are closed and
/// reported as an error.
pub const MAX_FDS_PER_CHUNK: usize = 4;

fn send_flags() -> MsgFlags {
    // Never raise SIGPIPE in the calling process (the shim runs inside
    // apps that may not ignore it); macOS sockets get SO_NOSIGPIPE instead.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        MsgFlags::MSG_NOSIGNAL
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        MsgFlags::empty()
    }
}

fn recv_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        MsgFlags::MSG_CMSG_CLOEXEC
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        MsgFlags::empty()
    }
}

/// Sends `bytes` with one `sendmsg`, attaching `fd` when given; returns
/// how many bytes went (the fd goes with the first of them). Retries on
/// `EINTR`; never raises `SIGPIPE` on Linux.
pub fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    send_with_fds(sock, bytes, fd.as_slice())
}

/// [`send_with_fd`] with any number of fds (at most
/// [`MAX_FDS_PER_CHUNK`]), in order, attached to the first byte.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = (!raw.is_empty()).then(|| ControlMessage::ScmRights(&raw));
    let cmsgs: &[ControlMessage<'_>] = match &rights {
        Some(c) => std::slice::from_ref(c),
        None => &[],
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, send_flags(), None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends all of `bytes`, `fd` attached to the first byte, on a blocking
/// socket.
pub fn send_all_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut sent = 0;
    let mut fd = fd;
    while sent < bytes.len() {
        let n = send_with_fd(sock, &bytes[sent..], fd.take())?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Receives into `buf` with one `recvmsg`, appending any fds that came
/// with the bytes to `fds` (close-on-exec set). Returns the bytes read; 0
/// is the end of the stream. Retries on `EINTR`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_PER_CHUNK]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), recv_flags()) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut got = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: the kernel just installed `r` in this
                        // process for us; nothing else owns it.
                        got.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        if truncated {
            // Some fds were discarded by the kernel: the stream can no
            // longer be matched with its fds.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("peer sent more than {MAX_FDS_PER_CHUNK} file descriptors at once"),
            ));
        }
        for fd in got {
            set_cloexec(&fd)?;
            fds.push_back(fd);
        }
        return Ok(n);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_cloexec(_fd: &OwnedFd) -> io::Result<()> {
    Ok(()) // MSG_CMSG_CLOEXEC did it atomically
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Seek, Write},
        os::{fd::AsFd, unix::net::UnixStream},
    };

    #[test]
    fn an_fd_travels_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"through the socket").unwrap();
        send_all_with_fd(a.as_fd(), b"hello", Some(f.as_fd())).unwrap();
        send_all_with_fd(a.as_fd(), b" world", None).unwrap();
        drop(a);
        let mut fds = VecDeque::new();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello world");
        assert_eq!(fds.len(), 1);
        let mut received = std::fs::File::from(fds.pop_front().unwrap());
        let mut s = String::new();
        received.rewind().unwrap();
        received.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the socket");
        let flags = nix::fcntl::fcntl(&received, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fds are close-on-exec"
        );
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = send_all_with_fd(a.as_fd(), b"x", None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
