//! Who is on the other end of a UNIX socket, from the kernel (never from
//! what the client says): `SO_PEERCRED` on Linux, `getpeereid` plus
//! `LOCAL_PEERPID` on macOS.

use std::{io, os::fd::AsFd};

/// The peer's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid when it connected.
    pub uid: u32,
    /// Process id, where the platform reports it.
    pub pid: Option<u32>,
}

/// The credentials of the process connected to `sock`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_of(sock: &impl AsFd) -> io::Result<Peer> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let c = getsockopt(sock, PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        uid: c.uid(),
        pid: u32::try_from(c.pid()).ok().filter(|p| *p != 0),
    })
}

/// The credentials of the process connected to `sock`.
#[cfg(any(target_os = "macos", target_os = "ios"))]
pub fn peer_of(sock: &impl AsFd) -> io::Result<Peer> {
    use nix::sys::socket::{getsockopt, sockopt::LocalPeerPid};
    let (uid, _gid) = nix::unistd::getpeereid(sock.as_fd()).map_err(io::Error::from)?;
    let pid = getsockopt(sock, LocalPeerPid)
        .ok()
        .and_then(|p| u32::try_from(p).ok());
    Ok(Peer {
        uid: uid.as_raw(),
        pid,
    })
}

/// The credentials of the process connected to `sock`.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
pub fn peer_of(sock: &impl AsFd) -> io::Result<Peer> {
    let (uid, _gid) = nix::unistd::getpeereid(sock.as_fd()).map_err(io::Error::from)?;
    Ok(Peer {
        uid: uid.as_raw(),
        pid: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer_of(&a).unwrap();
        // SAFETY: getuid cannot fail.
        assert_eq!(p.uid, unsafe { libc::getuid() });
        if cfg!(any(target_os = "linux", target_os = "macos")) {
            assert_eq!(p.pid, Some(std::process::id()));
        }
    }
}
