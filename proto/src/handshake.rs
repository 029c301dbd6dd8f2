//! The version handshake.

use crate::{Hello, WireError};

/// Magic string a [`Hello`] must carry.
pub const MAGIC: &str = "agentfs";

/// The newest protocol version this crate speaks. 2 added
/// [`Request::FdOpenWithWriter`](crate::Request::FdOpenWithWriter) and
/// [`ClientFrame::FdClosed`](crate::ClientFrame::FdClosed).
pub const VERSION: u32 = 2;

/// The oldest protocol version this crate still speaks.
pub const MIN_VERSION: u32 = 1;

/// Largest frame a daemon takes before the handshake: a [`Hello`] is a few
/// hundred bytes, so a connection that has not said who it is can make the
/// daemon hold no more than this.
pub const MAX_HELLO_LEN: usize = 64 * 1024;

/// The version to use with a client that sent `hello`: the newest one both
/// sides speak, or a `VersionMismatch` error naming both ranges.
pub fn negotiate(hello: &Hello) -> Result<u32, WireError> {
    if hello.magic != MAGIC {
        return Err(WireError::new(
            WireError::PROTOCOL,
            format!("not an AgentFS client (magic {:?})", hello.magic),
        ));
    }
    let (lo, hi) = (
        hello.min_version.max(MIN_VERSION),
        hello.max_version.min(VERSION),
    );
    if lo > hi {
        return Err(WireError::new(
            WireError::VERSION_MISMATCH,
            format!(
                "client {:?} speaks protocol {}..={}, this daemon speaks {MIN_VERSION}..={VERSION}",
                hello.client, hello.min_version, hello.max_version
            ),
        ));
    }
    Ok(hi)
}

impl Hello {
    /// A hello for this process: its pid, parent pid, uid and executable,
    /// asking for `branch` (`None`: the daemon's default), speaking
    /// versions [`MIN_VERSION`]..=[`VERSION`].
    pub fn current(client: &str, branch: Option<String>) -> Self {
        // SAFETY: getppid and getuid have no preconditions and cannot fail.
        let (ppid, uid) = unsafe { (libc::getppid(), libc::getuid()) };
        Self {
            magic: MAGIC.to_string(),
            min_version: MIN_VERSION,
            max_version: VERSION,
            client: client.to_string(),
            pid: std::process::id(),
            ppid: ppid as u32,
            uid,
            executable: std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            branch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_common_version_wins() {
        let mut h = Hello::current("test", None);
        assert_eq!(negotiate(&h), Ok(VERSION));
        h.max_version = 9;
        assert_eq!(negotiate(&h), Ok(VERSION));
    }

    #[test]
    fn disjoint_ranges_are_a_version_mismatch_naming_both() {
        let mut h = Hello::current("shim 9.0", None);
        h.min_version = VERSION + 1;
        h.max_version = VERSION + 3;
        let e = negotiate(&h).unwrap_err();
        assert_eq!(e.code, WireError::VERSION_MISMATCH);
        assert!(
            e.message.contains("shim 9.0")
                && e.message.contains(&format!("{MIN_VERSION}..={VERSION}")),
            "{e}"
        );
        h.min_version = 0;
        h.max_version = 0;
        assert_eq!(negotiate(&h).unwrap_err().code, WireError::VERSION_MISMATCH);
    }

    #[test]
    fn a_protocol_1_peer_gets_protocol_1() {
        let mut h = Hello::current("old shim", None);
        h.max_version = 1;
        assert_eq!(negotiate(&h).unwrap(), 1);
        assert_eq!(negotiate(&Hello::current("new", None)).unwrap(), VERSION);
    }

    #[test]
    fn a_foreign_magic_is_refused() {
        let mut h = Hello::current("x", None);
        h.magic = "HTTP/1.1".into();
        assert_eq!(negotiate(&h).unwrap_err().code, WireError::PROTOCOL);
    }

    #[test]
    fn current_describes_this_process() {
        let h = Hello::current("t", Some("feature".into()));
        assert_eq!(h.pid, std::process::id());
        assert!(h.ppid > 0);
        assert!(!h.executable.is_empty());
        assert_eq!(h.branch.as_deref(), Some("feature"));
    }
}
