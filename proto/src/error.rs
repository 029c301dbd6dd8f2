//! Typed errors on the wire: an errno-like code plus a message.

use agentfs_vocab::codes;
use serde::{Deserialize, Serialize};

/// An error as it travels: `code` is one of `agentfs_vocab::codes` (the
/// plugin ABI's `ErrorCode` numbers)
/// or one of the protocol codes (1000 and up); `errno` is the OS errno
/// behind it, or 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({})", self.code_name())]
pub struct WireError {
    /// What kind of failure.
    pub code: u32,
    /// The OS errno, or 0.
    pub errno: i32,
    /// For a person.
    pub message: String,
}

impl WireError {
    /// The peers share no protocol version.
    pub const VERSION_MISMATCH: u32 = 1001;
    /// A frame could not be decoded, or a message came out of order.
    pub const PROTOCOL: u32 = 1002;
    /// A frame exceeded the receiver's size limit.
    pub const FRAME_TOO_LARGE: u32 = 1003;
    /// A request arrived before the handshake.
    pub const NOT_HANDSHAKEN: u32 = 1004;
    /// The peer's uid is not allowed.
    pub const PEER_REFUSED: u32 = 1005;

    /// Builds an error from a code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            errno: 0,
            message: message.into(),
        }
    }

    /// Builds an error from an I/O error, with context.
    pub fn from_io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(0);
        let code = if errno != 0 {
            codes::from_errno(errno)
        } else {
            match err.kind() {
                std::io::ErrorKind::NotFound => codes::NOT_FOUND,
                std::io::ErrorKind::AlreadyExists => codes::ALREADY_EXISTS,
                std::io::ErrorKind::PermissionDenied => codes::PERMISSION_DENIED,
                std::io::ErrorKind::InvalidInput => codes::INVALID_ARGUMENT,
                std::io::ErrorKind::Unsupported => codes::UNSUPPORTED,
                _ => codes::IO,
            }
        };
        Self {
            code,
            errno,
            message: format!("{context}: {err}"),
        }
    }

    /// The code's stable name (`"not-found"`, `"version-mismatch"`, ...).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            Self::VERSION_MISMATCH => "version-mismatch",
            Self::PROTOCOL => "protocol",
            Self::FRAME_TOO_LARGE => "frame-too-large",
            Self::NOT_HANDSHAKEN => "not-handshaken",
            Self::PEER_REFUSED => "peer-refused",
            c => codes::name(c),
        }
    }

    /// The closest plugin error code: plugin codes map to themselves;
    /// protocol codes map to `UNSUPPORTED` (version mismatch),
    /// `PERMISSION_DENIED` (peer refused) or `INVALID_ARGUMENT`.
    pub fn error_code(&self) -> u32 {
        match self.code {
            Self::VERSION_MISMATCH => codes::UNSUPPORTED,
            Self::PEER_REFUSED => codes::PERMISSION_DENIED,
            c if c >= 1000 => codes::INVALID_ARGUMENT,
            c => c,
        }
    }

    /// The errno a process should see: the OS's own, else the code's.
    pub fn errno(&self) -> i32 {
        if self.errno != 0 {
            self.errno
        } else {
            codes::to_errno(self.error_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_errno_and_get_the_closest_code() {
        let w = WireError::from_io("open x", &std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(w.code, codes::NOT_FOUND);
        assert_eq!(w.errno(), libc::ENOENT);
        assert_eq!(w.code_name(), "not-found");
        assert!(w.message.starts_with("open x: "));
        assert_eq!(WireError::new(codes::BUSY, "b").errno(), libc::EBUSY);
    }

    #[test]
    fn protocol_codes_map_to_the_closest_plugin_code() {
        let w = WireError::new(WireError::VERSION_MISMATCH, "no common version");
        assert_eq!(w.error_code(), codes::UNSUPPORTED);
        assert_eq!(w.to_string(), "no common version (version-mismatch)");
        let w = WireError::new(WireError::PEER_REFUSED, "uid 1000 is not 0");
        assert_eq!(w.error_code(), codes::PERMISSION_DENIED);
        assert_eq!(
            WireError::new(WireError::FRAME_TOO_LARGE, "x").error_code(),
            codes::INVALID_ARGUMENT
        );
        assert_eq!(
            WireError::new(4242, "future").error_code(),
            codes::INVALID_ARGUMENT
        );
        assert_eq!(WireError::new(77, "future plugin code").error_code(), 77);
    }
}
