//! Bounds on what clients can make the daemon hold: connections per uid
//! (counted from accept, before the handshake). Frame sizes are bounded by
//! the connection's reader: [`MAX_HELLO_LEN`](agentfs_proto::MAX_HELLO_LEN)
//! before the handshake, [`MAX_FRAME_LEN`](agentfs_proto::MAX_FRAME_LEN)
//! after it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Default of [`ConnLimits`]' connections per uid: every process under the
/// shim holds one, so a parallel build needs hundreds; about what a
/// default `RLIMIT_NOFILE` of 1024 lets the daemon accept anyway.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 1024;

/// Open connections per peer uid, and the cap.
#[derive(Debug)]
pub struct ConnLimits {
    max_per_uid: usize,
    open: Mutex<HashMap<u32, usize>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    uid: u32,
}

impl ConnLimits {
    /// At most `max_per_uid` connections per uid at once.
    pub fn new(max_per_uid: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_uid,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The cap.
    pub fn max_per_uid(&self) -> usize {
        self.max_per_uid
    }

    /// A place for a connection of `uid`, or the number it already has
    /// open when that is the cap.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<ConnSlot, usize> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= self.max_per_uid {
            return Err(*n);
        }
        *n += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            uid,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit and
/// returns the new soft limit: the daemon holds one fd per connection and
/// one per file open for writing through `fd_open` (its writer lock), far
/// past the usual soft limit of 1,024 under a parallel build.
pub fn raise_fd_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_gets_its_cap_and_places_come_back() {
        let l = ConnLimits::new(2);
        let a = l.admit(7).unwrap();
        let _b = l.admit(7).unwrap();
        assert_eq!(l.admit(7).unwrap_err(), 2);
        let _other = l.admit(8).unwrap();
        drop(a);
        let _c = l.admit(7).unwrap();
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_one() {
        let n = raise_fd_limit().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, lim.rlim_cur), (n, lim.rlim_max));
    }
}
